//! The notes example service: every building block (store, config, broker, events) used from a service, as its
//! own service account, end to end through the real server and CLI.

use crate::support::Platform;
use serde_json::Value;

/// Starts a platform with notes running as a service account (as the runtime would start it).
fn platform() -> (Platform, crate::support::Proc) {
    let p = Platform::start();
    p.micro([
        "auth",
        "create",
        "account",
        "notes-svc",
        "--secret",
        "notes-pw",
        "--scopes",
        "service",
        "--type",
        "service",
    ])
    .ok();
    let notes = p.spawn_service("notes", &[("MICRO_AUTH_ID", "notes-svc"), ("MICRO_AUTH_SECRET", "notes-pw")]);
    (p, notes)
}

/// `micro notes stats` as numbers (64-bit integers are JSON strings in the proto3 JSON mapping).
fn stats(p: &Platform) -> [u64; 4] {
    let s: Value = p.micro(["notes", "stats"]).ok().json();
    let num = |k: &str| match &s[k] {
        Value::String(t) => t.parse().unwrap_or_else(|_| panic!("{k} is not a number: {s}")),
        v => v.as_u64().unwrap_or_else(|| panic!("{k} is not a number: {s}")),
    };
    [num("notes"), num("announced"), num("recorded"), num("max_length")]
}

#[test]
fn notes_uses_every_building_block() {
    let (p, _notes) = platform();
    // The broker is at most once: wait until the service's subscriber runs before announcing anything.
    p.wait_until("the notes workers run", |p| p.micro(["notes", "stats"]).ok().json()["ready"] == true);

    // store: create, get, list (newest first).
    let first = p.micro(["notes", "create", "--title=first", "--text=hello"]).ok().json();
    let id = first["note"]["id"].as_str().expect("an id").to_string();
    assert_eq!(first["note"]["text"], "hello");
    let got = p.micro(["notes", "get", &format!("--id={id}")]).ok().json();
    assert_eq!(got["note"]["title"], "first");
    p.micro(["notes", "create", "--title=second", "--text=world"]).ok();
    let list = p.micro(["notes", "list"]).ok().json();
    let titles: Vec<&str> =
        list["notes"].as_array().expect("notes").iter().filter_map(|n| n["title"].as_str()).collect();
    assert_eq!(titles, ["second", "first"]);
    // The record is in the store of namespace micro, where the CLI sees it too.
    let stored = p.micro(["store", "read", &format!("note/{id}")]).ok();
    assert!(stored.stdout.contains("\"hello\""), "{}", stored.snapshot());

    // broker and events: the service's own subscriber and consumer saw both notes.
    p.wait_until("the broker subscriber and the events consumer saw both notes", |p| {
        let [_, announced, recorded, _] = stats(p);
        announced == 2 && recorded == 2
    });
    assert_eq!(stats(&p), [2, 2, 2, 1000], "notes, announced, recorded, max_length");
    // The events are durable and readable from the CLI.
    let read = p.micro(["events", "read", "notes"]).ok();
    assert!(read.stdout.contains("second"), "{}", read.snapshot());

    // config: a limit set from the CLI applies at once.
    p.micro(["config", "set", "notes.max_length", "5"]).ok();
    assert_eq!(stats(&p)[3], 5, "the limit from config");
    let run = p.micro(["notes", "create", "--title=long", "--text=too long"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("at most 5"), "{}", run.snapshot());
    p.micro(["notes", "create", "--title=short", "--text=ok"]).ok();

    // delete.
    p.micro(["notes", "delete", &format!("--id={id}")]).ok();
    let run = p.micro(["notes", "get", &format!("--id={id}")]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("not found"), "{}", run.snapshot());
}

#[test]
fn notes_without_an_account_is_refused_by_the_building_blocks() {
    let p = Platform::start();
    let _notes = p.spawn_service("notes", &[]);
    // Anonymous loopback services may register, but the store needs an account.
    let run = p.micro(["notes", "create", "--title=x", "--text=y"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("Unauthorized call made to store:Store.Write"), "{}", run.snapshot());
}
