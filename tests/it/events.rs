//! The events service through the real CLI and library: publish, consume and ack; consumer groups that resume
//! after their last ack, also across a restart; redelivery after the ack wait and the retry limit; reading past
//! events; namespace isolation; bad input.

use crate::broker::Background;
use crate::support::{Dirs, Platform, block_on, snapshot_settings};
use micro::client::Client;
use micro::events::{ConsumeOptions, Events};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn consumer(p: &Platform, args: &[&str]) -> Background {
    let mut all = vec!["events", "consume"];
    all.extend_from_slice(args);
    let mut c = Background::spawn(p, &p.path(""), &all);
    c.wait_stderr("Consuming");
    c
}

fn payloads(docs: &[Value]) -> Vec<String> {
    docs.iter().map(|d| d["payload"].as_str().expect("a text payload").to_string()).collect()
}

fn sequences(docs: &[Value]) -> Vec<u64> {
    docs.iter().map(|d| d["sequence"].as_u64().expect("a sequence")).collect()
}

/// A library client as the admin (inside a runtime: the channel needs one).
fn events(p: &Platform) -> Events {
    Events::from_client(&Client::new(&p.addr, "micro").unwrap().with_token(p.token()))
}

#[test]
fn publish_consume_ack_and_resume() {
    let p = Platform::start();
    let run = p.micro(["events", "publish", "orders", "one", "--metadata", "k=v", "-o", "json"]).ok();
    assert_eq!(run.json()["sequence"], 1);
    p.micro(["events", "publish", "orders", "two"]).ok();

    // A new group from the first sequence gets both, acks them as it prints them.
    let c = consumer(&p, &["orders", "--group", "billing", "--sequence", "1", "--count", "2"]);
    let docs = c.docs(2);
    assert_eq!(payloads(&docs), ["one", "two"]);
    assert_eq!(sequences(&docs), [1, 2]);
    assert_eq!(docs[0]["metadata"], json!({"k": "v"}));
    assert_eq!((docs[0]["topic"].clone(), docs[0]["redelivered"].clone()), (json!("orders"), json!(0)));
    assert_eq!(c.wait(), (0, vec![]));

    // The group resumes after its last ack: a live consumer gets only what comes next.
    let c = consumer(&p, &["orders", "--group", "billing", "--count", "1"]);
    p.micro(["events", "publish", "orders", "three"]).ok();
    assert_eq!(payloads(&c.docs(1)), ["three"]);
    assert_eq!(c.wait().0, 0);

    // A new group without an offset starts at the head, as in Micro; another group with --offset sees everything.
    let fresh = consumer(&p, &["orders", "--group", "late"]);
    let all = consumer(&p, &["orders", "--group", "audit", "--offset", "1h", "--auto-ack"]);
    assert_eq!(payloads(&all.docs(3)), ["one", "two", "three"]);
    assert!(fresh.next_line(Duration::from_millis(300)).is_none());
    p.micro(["events", "publish", "orders", "four"]).ok();
    assert_eq!(payloads(&fresh.docs(1)), ["four"]);
    assert_eq!(payloads(&all.docs(1)), ["four"]);
}

#[test]
fn unacked_events_are_delivered_again_until_the_retry_limit() {
    let p = Platform::start();
    block_on(async {
        let events = events(&p);
        let opts = ConsumeOptions::group("g").ack_wait(Duration::from_millis(300));
        let mut c = events.consume("jobs", opts).await.unwrap();
        events.publish("jobs", "a", Default::default()).await.unwrap();
        let first = c.next().await.unwrap().unwrap();
        assert_eq!((first.payload.as_slice(), first.redelivered), (b"a".as_slice(), 0));
        // Not acked: it comes back after the ack wait.
        let started = Instant::now();
        let again = c.next().await.unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.redelivered), (first.id.as_str(), 1));
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
        // A nack brings it back at once.
        again.nack().await.unwrap();
        let third = c.next().await.unwrap().unwrap();
        assert_eq!(third.redelivered, 2);
        third.ack().await.unwrap();
        events.publish("jobs", "b", Default::default()).await.unwrap();
        let b = c.next().await.unwrap().unwrap();
        assert_eq!((b.payload.as_slice(), b.redelivered), (b"b".as_slice(), 0));
        b.ack().await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(700), c.next()).await.is_err(), "acked events stay acked");

        // With a retry limit of 1, an event is delivered twice at most.
        let opts = ConsumeOptions::group("limited").ack_wait(Duration::from_millis(200)).retry_limit(1);
        let mut c = events.consume("poison", opts).await.unwrap();
        events.publish("poison", "p", Default::default()).await.unwrap();
        assert_eq!(c.next().await.unwrap().unwrap().redelivered, 0);
        assert_eq!(c.next().await.unwrap().unwrap().redelivered, 1);
        assert!(tokio::time::timeout(Duration::from_millis(800), c.next()).await.is_err(), "given up after 1 retry");
        // It counts as done: the next event is delivered.
        events.publish("poison", "q", Default::default()).await.unwrap();
        assert_eq!(c.next().await.unwrap().unwrap().payload, b"q");
    });
}

#[test]
fn a_group_shares_events_and_takes_back_what_a_leaving_member_held() {
    let p = Platform::start();
    block_on(async {
        let events = events(&p);
        let opts = || ConsumeOptions::group("workers").from_sequence(1);
        for i in 0..4 {
            events.publish("work", format!("w{i}"), Default::default()).await.unwrap();
        }
        let mut a = events.consume("work", opts()).await.unwrap();
        // `a` holds every event without acking; when it leaves, `b` gets them all.
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(a.next().await.unwrap().unwrap().sequence);
        }
        assert_eq!(held, [1, 2, 3, 4]);
        let mut b = events.consume("work", opts()).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), b.next()).await.is_err(), "a still holds them");
        drop(a);
        let mut got = Vec::new();
        for _ in 0..4 {
            let e = b.next().await.unwrap().unwrap();
            assert_eq!(e.redelivered, 1);
            got.push(e.sequence);
            e.ack().await.unwrap();
        }
        got.sort();
        assert_eq!(got, [1, 2, 3, 4]);
        b.close().await;
        // Closing applied every ack: a new member of the group has nothing to catch up on.
        events.publish("work", "w4", Default::default()).await.unwrap();
        let mut c = events.consume("work", opts()).await.unwrap();
        let next = c.next().await.unwrap().unwrap();
        assert_eq!((next.sequence, next.redelivered), (5, 0));
    });
}

#[test]
fn events_and_group_positions_survive_a_restart() {
    let mut p = Platform::start();
    p.cli(["events", "publish", "log", "-"]).stdin("e1\ne2\ne3\n").run().ok();
    let c = consumer(&p, &["log", "--group", "g", "--sequence", "1", "--count", "1"]);
    assert_eq!(payloads(&c.docs(1)), ["e1"]);
    assert_eq!(c.wait().0, 0);

    p.restart_server(false);
    let run = p.micro(["events", "read", "log", "-o", "json"]).ok();
    assert_eq!(payloads(run.json().as_array().unwrap()), ["e1", "e2", "e3"]);
    let c = consumer(&p, &["log", "--group", "g", "--count", "2"]);
    assert_eq!(payloads(&c.docs(2)), ["e2", "e3"]);
    assert_eq!(c.wait().0, 0);
    // Sequences go on after the restart.
    let run = p.micro(["events", "publish", "log", "e4", "-o", "json"]).ok();
    assert_eq!(run.json()["sequence"], 4);

    // Even a kill loses nothing that was published (each publish is durable when it returns).
    p.restart_server(true);
    let run = p.micro(["events", "read", "log", "-o", "json"]).ok();
    assert_eq!(sequences(run.json().as_array().unwrap()), [1, 2, 3, 4]);
}

#[test]
fn read_pages_with_limit_and_offset() {
    let p = Platform::start();
    let input: String = (1..=5).map(|i| format!("event {i}\n")).collect();
    p.cli(["events", "publish", "pages", "--metadata", "src=test"]).stdin(&input).run().ok();
    let run = p.micro(["events", "read", "pages", "--limit", "2", "--offset", "1", "-o", "json"]).ok();
    let docs = run.json();
    assert_eq!(payloads(docs.as_array().unwrap()), ["event 2", "event 3"]);
    assert_eq!(sequences(docs.as_array().unwrap()), [2, 3]);
    let run = p.micro(["events", "read", "pages", "--offset", "4", "-o", "json"]).ok();
    assert_eq!(payloads(run.json().as_array().unwrap()), ["event 5"]);
    let run = p.micro(["events", "read", "pages", "--offset", "9", "-o", "json"]).ok();
    assert_eq!(run.json(), json!([]));
    let run = p.micro(["events", "read", "pages", "--limit", "2"]).ok();
    let _s = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!(run.snapshot());

    // The library reads the same.
    let read = block_on(async { events(&p).read("pages", 0, 3).await });
    assert_eq!(read.unwrap().iter().map(|e| e.sequence).collect::<Vec<_>>(), [4, 5]);
}

#[test]
fn streams_are_per_namespace() {
    let p = Platform::start();
    p.micro(["events", "publish", "news", "in micro"]).ok();
    let run = p.micro(["events", "read", "news", "--namespace", "tenant", "-o", "json"]).ok();
    assert_eq!(run.json(), json!([]));
    p.micro(["events", "publish", "news", "in tenant", "--namespace", "tenant"]).ok();
    let run = p.micro(["events", "read", "news", "--namespace", "tenant", "-o", "json"]).ok();
    assert_eq!(payloads(run.json().as_array().unwrap()), ["in tenant"]);

    p.micro(["auth", "create", "account", "tuser", "--secret", "t-pw", "--namespace", "tenant"]).ok();
    let tenant = Dirs::new();
    p.cli_in(&tenant, ["login", "--username", "tuser", "--password-stdin", "--namespace", "tenant"])
        .stdin("t-pw\n")
        .run()
        .ok();
    p.cli_in(&tenant, ["user", "namespace", "set", "tenant"]).run().ok();
    let run = p.cli_in(&tenant, ["events", "read", "news", "--namespace", "tenant", "-o", "json"]).run().ok();
    assert_eq!(payloads(run.json().as_array().unwrap()), ["in tenant"]);
    let run = p.cli_in(&tenant, ["events", "read", "news", "--namespace", "micro"]).run().code(2);
    assert!(run.stderr.contains("namespace micro"), "{}", run.snapshot());
    p.cli_in(&tenant, ["events", "publish", "news", "x", "--namespace", "micro"]).run().code(2);
    p.cli_in(&tenant, ["events", "consume", "news", "--namespace", "micro"]).run().code(2);
    p.cli_in(&Dirs::new(), ["events", "read", "news"]).run().code(2);
}

#[test]
fn bad_input_is_reported() {
    let p = Platform::start();
    for cmd in ["publish", "consume", "read"] {
        let run = p.micro(["events", cmd]).code(128);
        assert_eq!(run.stderr, "Missing topic\n", "{}", run.snapshot());
    }
    let run = p.micro(["events", "consume", "t", "--offset", "yesterday"]).code(128);
    assert!(run.stderr.contains("10m") && run.stderr.contains("RFC 3339"), "{}", run.snapshot());
    let run = p.micro(["events", "read", "t", "--limit", "5000"]).code(128);
    assert!(run.stderr.contains("1 to 1000"), "{}", run.snapshot());
    let big = "x".repeat((1 << 20) + 1);
    let run = p.cli(["events", "publish", "t", "-"]).stdin(&big).run().code(128);
    assert!(run.stderr.contains("at most 1048576 bytes"), "{}", run.snapshot());
    p.micro(["events", "consume", "t", "--offset", "1h", "--sequence", "3"]).code(128);

    block_on(async {
        let events = events(&p);
        let e = events.publish("", "x", Default::default()).await.unwrap_err();
        assert_eq!(e.to_string(), "events: Missing topic");
        let e = events.publish("t", vec![0u8; (1 << 20) + 1], Default::default()).await.unwrap_err();
        assert!(e.to_string().contains("at most 1048576 bytes"), "{e}");
        let e = events.consume("", ConsumeOptions::default()).await.err().expect("an error");
        assert_eq!(e.to_string(), "events: Missing topic");
        let e = events.read("t", 5000, 0).await.unwrap_err();
        assert!(e.to_string().contains("at most 1000"), "{e}");
    });
}

#[test]
fn consumers_end_when_the_server_stops() {
    let mut p = Platform::start();
    let c = consumer(&p, &["t", "--group", "g"]);
    let started = Instant::now();
    p.restart_server(false);
    let (code, rest) = c.wait();
    assert_eq!((code, rest), (0, Vec::<String>::new()));
    assert!(started.elapsed() < Duration::from_secs(20), "the server drained slowly: {:?}", started.elapsed());
}
