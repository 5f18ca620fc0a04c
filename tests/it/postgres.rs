//! The store on PostgreSQL (cargo feature `postgres`): `micro server --store postgres://…` keeps the records in
//! the database, so they outlive the server's data dir and are shared by servers that use the same database.
//! `MICRO_TEST_POSTGRES_URL` must name a database the tests may write to (`.ci/run` starts one with
//! `.ci/postgres`); these tests are skipped when it is unset, except in CI (`CI` set), where they fail.

use crate::support::{Cli, Dirs, Platform};

fn url() -> Option<String> {
    micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres")
}

#[test]
fn records_live_in_postgres_across_restarts_and_servers() {
    let Some(url) = url() else { return };
    // Keys of this run only: the database may hold records of earlier runs.
    let run = format!("it-{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let key = |k: &str| format!("{run}/{k}");
    let mut p = Platform::start_env(&[("MICRO_STORE", &url)]);
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        p.micro(["store", "write", &key(k), v]).ok();
    }
    assert_eq!(p.micro(["store", "read", &key("b")]).ok().stdout, "2\n");
    let listed = p.micro(["store", "list", "--prefix", &run]).ok().stdout;
    assert_eq!(listed.lines().collect::<Vec<_>>(), [key("a"), key("b"), key("c")]);
    p.micro(["store", "delete", &key("c")]).ok();
    assert_eq!(p.micro(["store", "read", &key("c")]).code(6).stderr, "Not found\n");
    // Expiry works as in the embedded store.
    p.micro(["store", "write", "--expiry", "1s", &key("ttl"), "x"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(p.micro(["store", "read", &key("ttl")]).code(6).stderr, "Not found\n");

    // A SIGKILL of the server loses nothing that was acknowledged.
    p.restart_server(true);
    assert_eq!(p.micro(["store", "read", &key("a")]).ok().stdout, "1\n");

    // A second server with its own, empty data dir sees the same records: they are in PostgreSQL, not on disk.
    let other = Platform::start_env(&[("MICRO_STORE", &url)]);
    let listed = other.micro(["store", "list", "--prefix", &run]).ok().stdout;
    assert_eq!(listed.lines().collect::<Vec<_>>(), [key("a"), key("b")]);
    // And a server on the embedded store does not.
    let embedded = Platform::start();
    assert_eq!(embedded.micro(["store", "list", "--prefix", &run]).ok().stdout, "");
}

#[test]
fn servers_that_share_a_database_share_accounts_tokens_and_config() {
    let Some(url) = url() else { return };
    let run = format!("{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let a = Platform::start_env(&[("MICRO_STORE", &url)]);
    let b = Platform::start_env(&[("MICRO_STORE", &url)]);

    // An account made on A logs in on B.
    let user = format!("user-{run}");
    a.micro(["auth", "create", "account", &user, "--secret", "pw-1"]).ok();
    let dirs = Dirs::new();
    let login = |p: &Platform| p.cli_in(&dirs, ["login", "--username", &user, "--password-stdin"]).stdin("pw-1").run();
    b.wait_until("B knows the account made on A", |b| login(b).code == 0);

    // A token that A issued is accepted by B: both hold the same signing key.
    let on_a = Dirs::new();
    a.cli_in(&on_a, ["login", "--username", &user, "--password-stdin"]).stdin("pw-1").run().ok();
    let token = a.cli_in(&on_a, ["user", "token"]).run().ok().stdout.trim().to_string();
    let with_token = |p: &Platform, token: &str| {
        Cli::new(&p.addr, &Dirs::new(), ["store", "list", "--table", &run]).env("MICRO_AUTH_TOKEN", token).run()
    };
    with_token(&b, &token).ok();

    // Config set on A, a secret included, is read on B.
    let key = format!("shared{}", run.replace('-', ""));
    a.micro(["config", "set", &format!("{key}.plain"), "v"]).ok();
    a.micro(["config", "set", "--secret", &format!("{key}.pw"), "hunter2"]).ok();
    assert_eq!(b.micro(["config", "get", &format!("{key}.plain")]).ok().stdout, "v\n");
    assert_eq!(b.micro(["config", "get", "--secret", &format!("{key}.pw")]).ok().stdout, "hunter2\n");

    // Deleting the account on A reaches B: the login and the token A issued stop working there.
    a.micro(["auth", "delete", "account", &user]).ok();
    b.wait_until("B forgets the account deleted on A", |b| login(b).code != 0);
    assert_eq!(
        login(&b).code(2).stderr,
        a.cli_in(&Dirs::new(), ["login", "--username", &user, "--password-stdin"]).stdin("pw-1").run().code(2).stderr
    );
    b.wait_until("B refuses the deleted account's token", |b| with_token(b, &token).code == 2);

    // A server with keys of its own is refused: what it signed or sealed would not open on the others.
    let (code, stderr) = crate::support::server_that_stops(&["--store", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "auth.key is not the key of the other servers that share this database; copy auth.key from one of them"
        ),
        "{stderr}"
    );
}

#[test]
fn servers_that_share_a_database_share_events_and_serve_a_group_one_at_a_time() {
    use micro::client::Client;
    use micro::events::{ConsumeOptions, Events};
    use std::time::Duration;

    let Some(url) = url() else { return };
    let a = Platform::start_env(&[("MICRO_STORE", &url)]);
    let b = Platform::start_env(&[("MICRO_STORE", &url)]);
    let topic = format!("work-{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    let events = |p: &Platform| Events::from_client(&Client::new(&p.addr, "micro").unwrap().with_token(p.token()));
    let wait = Duration::from_secs(10);
    crate::support::block_on(async {
        let (on_a, on_b) = (events(&a), events(&b));
        let group = || ConsumeOptions::group("workers").from_sequence(1);

        // Published on A, consumed on B.
        assert_eq!(on_a.publish(&topic, "e1", Default::default()).await.unwrap().sequence, 1);
        let mut served_by_b = on_b.consume(&topic, group()).await.unwrap();
        let e = tokio::time::timeout(wait, served_by_b.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((e.sequence, e.payload.as_slice()), (1, b"e1".as_slice()));
        e.ack().await.unwrap();
        // A consumer on B is woken by a publish on A.
        on_a.publish(&topic, "e2", Default::default()).await.unwrap();
        let e = tokio::time::timeout(wait, served_by_b.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.sequence, 2);
        e.ack().await.unwrap();

        // A member of the same group on A waits while B serves the group: each event goes to one member.
        let mut standby_on_a = on_a.consume(&topic, group()).await.unwrap();
        on_a.publish(&topic, "e3", Default::default()).await.unwrap();
        let e = tokio::time::timeout(wait, served_by_b.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.sequence, 3);
        e.ack().await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(500), standby_on_a.next()).await.is_err());

        // When B's member leaves, A takes the group over where B left off.
        served_by_b.close().await;
        on_b.publish(&topic, "e4", Default::default()).await.unwrap();
        let e = tokio::time::timeout(wait, standby_on_a.next()).await.unwrap().unwrap().unwrap();
        assert_eq!((e.sequence, e.redelivered), (4, 0), "A resumes after B's last ack");
        e.ack().await.unwrap();
    });
}
