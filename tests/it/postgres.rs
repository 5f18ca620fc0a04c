//! The store on PostgreSQL (cargo feature `postgres`): `micro server --store postgres://…` keeps the records in
//! the database, so they outlive the server's data dir and are shared by servers that use the same database.
//! `MICRO_TEST_POSTGRES_URL` must name a database the tests may write to (`.ci/run` starts one with
//! `.ci/postgres`); these tests fail when it is unset.

use crate::support::Platform;

fn url() -> String {
    std::env::var("MICRO_TEST_POSTGRES_URL")
        .expect("MICRO_TEST_POSTGRES_URL is not set: the postgres tests need a PostgreSQL (see .ci/postgres)")
}

#[test]
fn records_live_in_postgres_across_restarts_and_servers() {
    let url = url();
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
    assert_eq!(p.micro(["store", "read", &key("c")]).code(1).stderr, "Not found\n");
    // Expiry works as in the embedded store.
    p.micro(["store", "write", "--expiry", "1s", &key("ttl"), "x"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(p.micro(["store", "read", &key("ttl")]).code(1).stderr, "Not found\n");

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
