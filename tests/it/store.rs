//! The store service through the real CLI and library: reads, writes, listings and deletes with their options and
//! outputs, expiry, databases and tables, namespace isolation, snapshots and restores, bad input, and a crash test
//! (SIGKILL during a burst of concurrent writes: every acknowledged write survives).

use crate::support::{Dirs, Platform, block_on, snapshot_settings};
use micro::client::Client;
use micro::store::{Query, Store, WriteOptions};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[test]
fn write_read_list_delete_with_options_and_outputs() {
    let p = Platform::start();
    for (k, v) in [("somekey1", "val1"), ("somekey2", "val2"), ("other3", "val3"), ("somekey4", "two words")] {
        let mut args = vec!["store", "write", k];
        args.extend(v.split(' '));
        let run = p.micro(&args).ok();
        assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""), "no output: {}", run.snapshot());
    }
    assert_eq!(p.micro(["store", "read", "somekey1"]).ok().stdout, "val1\n");
    assert_eq!(p.micro(["store", "read", "somekey4"]).ok().stdout, "two words\n", "value words are joined");
    let run = p.micro(["store", "read", "missing"]).code(6);
    assert_eq!(run.stderr, "Not found\n");

    // Prefix, suffix, limit, offset (an offset, not a limit as in Micro) and order.
    let read = |args: &[&str]| {
        let mut all = vec!["store", "read"];
        all.extend_from_slice(args);
        p.micro(all).ok().stdout
    };
    assert_eq!(lines(&read(&["--prefix", "somekey"])), ["val1", "val2", "two words"]);
    assert_eq!(lines(&read(&["--suffix", "3"])), ["val3"]);
    assert_eq!(lines(&read(&["--prefix", "somekey", "--limit", "2"])), ["val1", "val2"]);
    assert_eq!(lines(&read(&["--prefix", "somekey", "--offset", "1"])), ["val2", "two words"]);
    assert_eq!(lines(&read(&["--prefix", "somekey", "--offset", "1", "--limit", "1"])), ["val2"]);
    assert_eq!(lines(&read(&["--prefix", "somekey", "--order", "desc", "--limit", "2"])), ["two words", "val2"]);
    assert_eq!(read(&["--prefix", "nothing"]), "", "a prefix that matches nothing reads nothing");

    let list = |args: &[&str]| {
        let mut all = vec!["store", "list"];
        all.extend_from_slice(args);
        p.micro(all).ok().stdout
    };
    assert_eq!(lines(&list(&[])), ["other3", "somekey1", "somekey2", "somekey4"]);
    assert_eq!(lines(&list(&["--prefix", "some"])), ["somekey1", "somekey2", "somekey4"]);
    assert_eq!(lines(&list(&["--prefix", "--", "some"])), ["somekey1", "somekey2", "somekey4"], "Micro's form");
    assert_eq!(lines(&list(&["--suffix", "2"])), ["somekey2"]);
    assert_eq!(lines(&list(&["other"])), ["other3"], "a bare argument is a prefix");
    assert_eq!(lines(&list(&["--order", "desc", "--offset", "1", "--limit", "2"])), ["somekey2", "somekey1"]);
    assert_eq!(
        p.micro(["store", "list", "--prefix", "some", "-o", "json"]).ok().json(),
        serde_json::json!(["somekey1", "somekey2", "somekey4"])
    );

    // `-v` is a table, `-o json` the records (values in base64).
    let _s = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("read_verbose", p.micro(["store", "read", "--prefix", "somekey", "-v"]).ok().snapshot());
    insta::assert_snapshot!(
        "read_json",
        p.micro(["store", "read", "--prefix", "somekey", "--limit", "2", "-o", "json"]).ok().snapshot()
    );

    let run = p.micro(["store", "delete", "somekey1"]).ok();
    assert_eq!(run.stdout, "");
    p.micro(["store", "delete", "somekey1"]).ok();
    assert_eq!(p.micro(["store", "read", "somekey1"]).code(6).stderr, "Not found\n");
    assert_eq!(lines(&list(&[])), ["other3", "somekey2", "somekey4"]);
}

#[test]
fn records_expire() {
    let p = Platform::start();
    p.micro(["store", "write", "--expiry", "2s", "short", "lived"]).ok();
    p.micro(["store", "write", "--expiry", "1h", "long", "lived"]).ok();
    let table = p.micro(["store", "read", "-v", "--prefix", ""]).ok().stdout;
    assert_eq!(
        table.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["KEY", "VALUE", "EXPIRY"])
    );
    assert!(table.lines().any(|l| l.starts_with("long") && l.ends_with("in 1 hour")), "{table}");
    let short = |l: &str| l.starts_with("short") && (l.ends_with("in 2 seconds") || l.ends_with("in 1 second"));
    assert!(table.lines().any(short), "{table}");
    let json = p.micro(["store", "read", "short", "-o", "json"]).ok().json();
    let ns = json[0]["expiry"].as_i64().expect("expiry in nanoseconds");
    assert!(ns > 0 && ns <= 2_000_000_000, "{json}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while p.micro(["store", "read", "short"]).code != 6 {
        assert!(Instant::now() < deadline, "the record did not expire");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.micro(["store", "read", "short"]).code(6).stderr, "Not found\n");
    assert_eq!(lines(&p.micro(["store", "list"]).ok().stdout), ["long"]);
    assert_eq!(p.micro(["store", "read", "long"]).ok().stdout, "lived\n");
}

#[test]
fn databases_and_tables_are_selectable() {
    let p = Platform::start();
    p.micro(["store", "write", "k", "in-micro"]).ok();
    p.micro(["store", "write", "--table", "users", "k", "in-users"]).ok();
    p.micro(["store", "write", "--database", "other", "k", "in-other"]).ok();
    p.micro(["store", "write", "--database", "other", "--table", "t2", "k", "in-other-t2"]).ok();

    assert_eq!(p.micro(["store", "read", "k"]).ok().stdout, "in-micro\n");
    assert_eq!(p.micro(["store", "read", "--table", "users", "k"]).ok().stdout, "in-users\n");
    assert_eq!(p.micro(["store", "read", "--database", "other", "k"]).ok().stdout, "in-other\n");
    assert_eq!(p.micro(["store", "read", "--database", "other", "--table", "t2", "k"]).ok().stdout, "in-other-t2\n");
    assert_eq!(lines(&p.micro(["store", "list", "--table", "users"]).ok().stdout), ["k"]);
    p.micro(["store", "delete", "--table", "users", "k"]).ok();
    assert_eq!(p.micro(["store", "read", "--table", "users", "k"]).code(6).stderr, "Not found\n");
    assert_eq!(p.micro(["store", "read", "k"]).ok().stdout, "in-micro\n", "other tables are untouched");

    assert_eq!(lines(&p.micro(["store", "databases"]).ok().stdout), ["micro", "other"]);
    assert_eq!(lines(&p.micro(["store", "tables"]).ok().stdout), ["micro", "users"]);
    assert_eq!(lines(&p.micro(["store", "tables", "--database", "other"]).ok().stdout), ["micro", "t2"]);
    assert_eq!(p.micro(["store", "databases", "-o", "json"]).ok().json(), serde_json::json!(["micro", "other"]));
    // The namespace flag picks the database too.
    assert_eq!(p.micro(["store", "read", "--namespace", "other", "k"]).ok().stdout, "in-other\n");
}

#[test]
fn namespaces_are_isolated() {
    let p = Platform::start();
    p.micro(["store", "write", "secret-plan", "world domination"]).ok();
    p.micro(["auth", "create", "account", "tadmin", "--secret", "t-pw", "--scopes", "admin", "--namespace", "tenant"])
        .ok();
    let tenant = Dirs::new();
    p.cli_in(&tenant, ["login", "--username", "tadmin", "--password-stdin", "--namespace", "tenant"])
        .stdin("t-pw\n")
        .run()
        .ok();
    p.cli_in(&tenant, ["user", "namespace", "set", "tenant"]).run().ok();
    let t = |args: &[&str]| p.cli_in(&tenant, args).run();

    // The tenant has its own database…
    t(&["store", "write", "secret-plan", "tenant plan"]).ok();
    assert_eq!(t(&["store", "read", "secret-plan"]).ok().stdout, "tenant plan\n");
    assert_eq!(p.micro(["store", "read", "secret-plan"]).ok().stdout, "world domination\n");
    assert_eq!(lines(&t(&["store", "databases"]).ok().stdout), ["tenant"]);
    // …and cannot reach micro's, whichever way it asks.
    for args in [
        &["store", "read", "--database", "micro", "secret-plan"][..],
        &["store", "read", "--namespace", "micro", "secret-plan"],
        &["store", "list", "--database", "micro"],
        &["store", "write", "--database", "micro", "secret-plan", "overwritten"],
        &["store", "delete", "--database", "micro", "secret-plan"],
        &["store", "tables", "--database", "micro"],
        &["store", "snapshot", "--database", "micro", "--destination", "/nonexistent-micro-dir/x.snap"],
    ] {
        let run = t(args).code(2);
        assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    }
    assert_eq!(p.micro(["store", "read", "secret-plan"]).ok().stdout, "world domination\n");
    // Anonymous callers get nothing.
    p.cli_in(&Dirs::new(), ["store", "read", "secret-plan"]).run().code(2);
    // The micro admin sees every database, the tenant's included.
    assert_eq!(lines(&p.micro(["store", "databases"]).ok().stdout), ["micro", "tenant"]);
    assert_eq!(p.micro(["store", "read", "--database", "tenant", "secret-plan"]).ok().stdout, "tenant plan\n");
}

#[test]
fn snapshot_then_restore_gives_back_the_same_records() {
    let p = Platform::start();
    p.micro(["store", "write", "--metadata", "owner=alice", "--metadata", "kind=doc", "a", "alpha"]).ok();
    p.micro(["store", "write", "--expiry", "1h", "b", "beta"]).ok();
    p.micro(["store", "write", "--table", "users", "u1", "Jane"]).ok();
    let store = || Store::from_client(&Client::new(&p.addr, "micro").expect("a client").with_token(p.token()));
    block_on(async { store().write("binary", vec![0u8, 159, 146, 150, 255]).await }).expect("a binary value");

    let first = p.path("first.snapshot");
    let url = format!("file://{}", first.display());
    let run = p.micro(["store", "snapshot", "--destination", &url]).ok();
    assert!(run.stderr.contains("4 records from 2 tables"), "{}", run.snapshot());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).expect("the snapshot exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may read a snapshot");
    }
    let text = std::fs::read_to_string(&first).expect("a snapshot");
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!((header["format"].as_str(), header["version"].as_u64()), (Some("micro-store-snapshot"), Some(1)));
    assert_eq!(text.lines().last(), Some(r#"{"end":true,"records":4}"#));

    // Delete everything, then restore.
    for (table, key) in [("micro", "a"), ("micro", "b"), ("micro", "binary"), ("users", "u1")] {
        p.micro(["store", "delete", "--table", table, key]).ok();
    }
    assert_eq!(p.micro(["store", "list"]).ok().stdout, "");
    let run = p.micro(["store", "restore", "--source", &url]).ok();
    assert!(run.stderr.contains("Restored 4 of 4 records into database micro"), "{}", run.snapshot());

    // A second snapshot is identical to the first, line for line (keys, values, metadata, exact expiry).
    let second = p.path("second.snapshot");
    p.micro(["store", "snapshot", "--destination", &second.display().to_string()]).ok();
    let again = std::fs::read_to_string(&second).expect("a second snapshot");
    let records = |t: &str| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(records(&again), records(&text));
    assert!(
        text.contains(
            r#""metadata":{"kind":{"type":"string","value":"doc"},"owner":{"type":"string","value":"alice"}}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#""key":"b","value":"YmV0YQ==","expires_at":"#), "{text}");
    assert_eq!(p.micro(["store", "read", "--table", "users", "u1"]).ok().stdout, "Jane\n");
    let binary = block_on(async { store().read("binary").await }).expect("a read").expect("the binary record");
    assert_eq!(binary.value, [0u8, 159, 146, 150, 255]);

    // A restore into another database.
    p.micro(["store", "restore", "--source", &url, "--database", "copy"]).ok();
    assert_eq!(p.micro(["store", "read", "--database", "copy", "a"]).ok().stdout, "alpha\n");

    // A truncated or foreign file is refused, and nothing is written.
    let truncated = p.path("truncated.snapshot");
    let cut: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&truncated, cut.join("\n") + "\n").unwrap();
    p.micro(["store", "delete", "a"]).ok();
    let run = p.micro(["store", "restore", "--source", &truncated.display().to_string()]).code(128);
    assert!(run.stderr.contains("end line is missing"), "{}", run.snapshot());
    assert_eq!(p.micro(["store", "read", "a"]).code(6).stderr, "Not found\n");
    std::fs::write(&truncated, "hello\n").unwrap();
    let run = p.micro(["store", "restore", "--source", &truncated.display().to_string()]).code(128);
    assert!(run.stderr.contains("is not a micro store snapshot"), "{}", run.snapshot());
    let run = p.micro(["store", "snapshot", "--destination", "s3://bucket/key"]).code(128);
    assert_eq!(run.stderr, "unsupported destination scheme: s3\n");
    let run = p.micro(["store", "restore"]).code(128);
    assert!(run.stderr.starts_with("--source is required"), "{}", run.snapshot());
}

#[test]
fn bad_input_is_refused_with_clear_errors() {
    let p = Platform::start();
    let fails = |args: &[&str], code: i32, message: &str| {
        let run = p.micro(args).code(code);
        assert!(run.stderr.contains(message), "expected {message:?}:\n{}", run.snapshot());
        assert_eq!(run.stdout, "", "{}", run.snapshot());
    };
    fails(&["store", "write", "lonely"], 128, "Key and Value args are required");
    fails(&["store", "write"], 128, "Key and Value args are required");
    fails(&["store", "read"], 128, "Key arg is required");
    fails(&["store", "delete"], 128, "key is required");
    fails(
        &["store", "write", "--expiry", "soon", "k", "v"],
        128,
        "expiry flag is invalid: \"soon\" is not a duration; use a duration such as 10s, 5m, 1h",
    );
    fails(&["store", "read", "--order", "up", "k"], 128, "invalid --order \"up\": use asc or desc");
    fails(&["store", "write", "--metadata", "novalue", "k", "v"], 128, "use NAME=VALUE");
    let long_key = "k".repeat(1025);
    fails(&["store", "write", &long_key, "v"], 128, "the limit is 1024 bytes (1 KiB)");
    fails(
        &["store", "write", "--database", "a/b", "k", "v"],
        128,
        "Couldn't write k to store: invalid database name \"a/b\"",
    );

    // A value over 4 MiB, from stdin, is refused before it is sent; 4 MiB exactly is fine.
    let big = "x".repeat(4 * 1024 * 1024 + 1);
    let run = p.cli(["store", "write", "big", "-"]).stdin(&big).run().code(128);
    assert!(run.stderr.contains("the limit of 4194304 bytes (4 MiB)"), "{}", run.snapshot());
    p.cli(["store", "write", "big", "-"]).stdin(&big[1..]).run().ok();
    let len = p.micro(["store", "read", "big"]).ok().stdout.len();
    assert_eq!(len, 4 * 1024 * 1024 + 1, "the value and a newline");
    // The server checks too (a client that skips the CLI's check).
    let err = block_on(async {
        let client = Client::new(&p.addr, "micro").expect("a client").with_token(p.token());
        Store::from_client(&client).write("big", big.into_bytes()).await
    })
    .expect_err("too large");
    assert!(err.to_string().contains("the limit is 4194304 bytes (4 MiB)"), "{err}");
}

#[test]
fn the_library_reads_and_writes_typed_records() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        name: String,
        age: u32,
    }
    let p = Platform::start();
    block_on(async {
        let client = Client::new(&p.addr, "micro").expect("a client").with_token(p.token());
        let users = Store::from_client(&client).table("users");
        users.write_json("u1", &User { name: "Jane".into(), age: 30 }).await.unwrap();
        let options = WriteOptions::default().ttl(Duration::from_secs(60)).metadata("owner", "lib");
        users.write_json_with("u2", &User { name: "John".into(), age: 40 }, options).await.unwrap();
        assert_eq!(users.read_json::<User>("u1").await.unwrap(), Some(User { name: "Jane".into(), age: 30 }));
        assert_eq!(users.read_json::<User>("nobody").await.unwrap(), None);
        let r = users.read("u2").await.unwrap().expect("u2");
        assert_eq!(r.metadata.get("owner").map(String::as_str), Some("lib"));
        assert!(r.expires_at.is_some());
        assert_eq!(users.list(Query::all()).await.unwrap(), ["u1", "u2"]);
        let last = users.read_many(Query::prefix("u").descending().limit(1)).await.unwrap();
        assert_eq!(last[0].json::<User>().unwrap().name, "John");
        users.delete("u1").await.unwrap();
        assert_eq!(users.list(Query::all()).await.unwrap(), ["u2"]);
    });
    // What the library wrote, the CLI reads.
    assert_eq!(p.micro(["store", "read", "--table", "users", "u2"]).ok().stdout, "{\"name\":\"John\",\"age\":40}\n");
}

#[test]
fn acknowledged_writes_survive_a_sigkill() {
    let mut p = Platform::start();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, token) = (p.addr.clone(), p.token().to_string());
    let writers = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = crate::support::runtime();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for w in 0..16 {
                    let client = Client::new(&addr, "micro").expect("a client").with_token(&token);
                    let store = Store::from_client(&client).table("crash");
                    let (acked, stop) = (acked.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        for i in 0.. {
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                return;
                            }
                            let (key, value) = (format!("w{w:02}-{i:06}"), format!("value {w} {i}"));
                            let write = tokio::time::timeout(Duration::from_secs(10), store.write(&key, value.clone()));
                            match write.await {
                                Ok(Ok(())) => acked.lock().unwrap().push((key, value)),
                                // The server is gone: this write may or may not have landed.
                                _ => return,
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    // Kill the server in the middle of the burst.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the writers made no progress:\n{}", p.server_log());
        std::thread::sleep(Duration::from_millis(10));
    }
    p.kill_server();
    let at_kill = acked.lock().unwrap().len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writers.join().expect("the writers");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= at_kill);

    p.restart_server(true);
    let found: std::collections::HashMap<String, Vec<u8>> = block_on(async {
        let client = Client::new(&p.addr, "micro").expect("a client").with_token(p.token());
        Store::from_client(&client).table("crash").read_many(Query::prefix("w")).await
    })
    .expect("the store reads after the crash")
    .into_iter()
    .map(|r| (r.key, r.value))
    .collect();
    let lost: Vec<&String> =
        acked.iter().filter(|(k, v)| found.get(k).map(Vec::as_slice) != Some(v.as_bytes())).map(|(k, _)| k).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes were lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    // The store works normally after the crash.
    p.micro(["store", "write", "--table", "crash", "after", "crash"]).ok();
    assert_eq!(p.micro(["store", "read", "--table", "crash", "after"]).ok().stdout, "crash\n");
    assert!(!p.server_log().contains("panicked"), "{}", p.server_log());
}
