//! The inventory example: a scheduler and a worker of the service library on the `tasks` queue of `micro server`,
//! end to end through the real CLI (`micro tasks`, the dynamic `micro inventory` commands, `micro services`,
//! `micro stats`).

use crate::support::{Dirs, Platform, Proc};
use serde_json::Value;

/// Starts a platform with inventory running as a service account (as the runtime would start it).
fn platform() -> (Platform, Proc) {
    let p = Platform::start();
    p.micro([
        "auth",
        "create",
        "account",
        "inventory-svc",
        "--secret",
        "inventory-pw",
        "--scopes",
        "service",
        "--type",
        "service",
    ])
    .ok();
    let service =
        p.spawn_service("inventory", &[("MICRO_AUTH_ID", "inventory-svc"), ("MICRO_AUTH_SECRET", "inventory-pw")]);
    (p, service)
}

/// The tasks of a `micro tasks list -o json` (an array, or an object with `tasks`).
fn tasks(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o.get("tasks").and_then(Value::as_array).cloned().unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The task of a `micro tasks get ID -o json` (the task, or an object with `task`).
fn task(v: &Value) -> Value {
    v.get("task").cloned().unwrap_or_else(|| v.clone())
}

fn state(task: &Value) -> String {
    task["state"].as_str().unwrap_or_default().to_ascii_lowercase()
}

fn number(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_default(),
        v => v.as_u64().unwrap_or_default(),
    }
}

#[test]
fn inventory_collects_on_its_schedule_and_answers_through_the_cli() {
    let (p, service) = platform();
    assert!(p.service_names().iter().any(|s| s == "inventory"), "micro services lists inventory");

    // The scheduler queues `collect` every 2 s and the worker runs it, at the first attempt.
    let succeeded = || p.micro(["tasks", "list", "--name", "collect", "--state", "succeeded", "-o", "json"]);
    p.wait_until("a collect task succeeded", |_| {
        let run = succeeded();
        run.code == 0 && tasks(&run.json()).iter().any(|t| t["name"] == "collect" && number(&t["attempts"]) == 1)
    });
    let done = tasks(&succeeded().ok().json());
    let first = done.iter().find(|t| number(&t["attempts"]) == 1).expect("a task at its first attempt");
    assert_eq!(state(first), "succeeded", "{first}");
    // Wait for both regions of a tick (the tasks are listed newest first, so look at all of them).
    p.wait_until("both regions collected", |p| {
        let list = p.micro(["inventory", "list"]).ok().json();
        list["hosts"].as_array().map(Vec::len) == Some(5)
    });

    // What the worker wrote to the store, through the service's gRPC interface and the dynamic CLI.
    let list = p.micro(["inventory", "list"]).ok().json();
    let hosts = list["hosts"].as_array().expect("hosts");
    let names: Vec<&str> = hosts.iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["eu-1", "eu-2", "eu-3", "us-1", "us-2"], "{list}");
    for h in hosts {
        assert!(number(&h["collections"]) >= 1, "{h}");
        assert!(number(&h["collected_ms"]) > 0, "{h}");
        assert!(!h["task"].as_str().unwrap_or_default().is_empty(), "the collecting task's id: {h}");
    }
    let eu = p.micro(["inventory", "list", "--region=eu"]).ok().json();
    assert_eq!(eu["hosts"].as_array().map(Vec::len), Some(3), "{eu}");
    let got = p.micro(["inventory", "get", "--name=us-2"]).ok().json();
    assert_eq!((got["host"]["region"].as_str(), number(&got["host"]["memory_mb"])), (Some("us"), 8192), "{got}");
    let missing = p.micro(["inventory", "get", "--name=nowhere-1"]);
    assert_ne!(missing.code, 0, "{}", missing.snapshot());
    assert!(missing.stderr.contains("not collected"), "{}", missing.snapshot());

    // The task that collected a host is the queue's, and its result is the worker's.
    let id = hosts[0]["task"].as_str().unwrap().to_string();
    let got = task(&p.micro(["tasks", "get", &id, "-o", "json"]).ok().json());
    assert_eq!((got["name"].as_str(), state(&got).as_str()), (Some("collect"), "succeeded"), "{got}");
    let text = got.to_string().replace(r#"\""#, r#"""#);
    assert!(text.contains(r#""region":"eu""#), "the worker's result: {got}");

    // The counters keep going up with the schedule.
    let before = number(&hosts[0]["collections"]);
    p.wait_until("another collection", |p| {
        let host = p.micro(["inventory", "get", "--name=eu-1"]).ok().json();
        number(&host["host"]["collections"]) > before
    });

    // The worker's tasks are the service's requests in `micro stats`.
    let stats = p.micro(["stats", "inventory", "-o", "json"]).ok().json();
    assert!(number(&stats[0]["requests"]) >= 2, "{stats}");
    assert_eq!(number(&stats[0]["errors"]), 0, "{stats}");
    assert!(!service.log().contains("panicked"), "{}", service.log());
}

#[test]
fn a_collection_that_keeps_failing_is_retried_then_dead() {
    let (p, _service) = platform();
    let queued = p.micro(["inventory", "collect", "--region=mars"]).ok().json();
    let id = queued["id"].as_str().expect("the queued task's id").to_string();
    // The default retries (3, from 1 s, doubling) take about 7 s.
    p.wait_until("the task is dead", |p| {
        state(&task(&p.micro(["tasks", "get", &id, "-o", "json"]).ok().json())) == "dead"
    });
    let dead = task(&p.micro(["tasks", "get", &id, "-o", "json"]).ok().json());
    assert_eq!(number(&dead["attempts"]), 4, "the first attempt and 3 retries: {dead}");
    assert!(dead["error"].as_str().unwrap_or_default().contains(r#"unknown region "mars""#), "{dead}");
    let listed = tasks(&p.micro(["tasks", "list", "--name", "collect", "--state", "dead", "-o", "json"]).ok().json());
    assert!(listed.iter().any(|t| t["id"] == id.as_str()), "{listed:?}");
    let stats = p.micro(["stats", "inventory", "-o", "json"]).ok().json();
    assert!(number(&stats[0]["errors"]) >= 4, "{stats}");
}

#[test]
fn the_handler_chain_guards_collect_with_a_permission() {
    let (p, _service) = platform();
    // An account without `inventory:write` may list, but not collect: the chain's authorization refuses by name.
    p.micro(["auth", "create", "account", "viewer", "--secret", "viewer-pw"]).ok();
    let viewer = Dirs::new();
    p.cli_in(&viewer, ["login", "--username", "viewer", "--password-stdin"]).stdin("viewer-pw\n").run().ok();
    p.cli_in(&viewer, ["inventory", "list"]).run().ok();
    let denied = p.cli_in(&viewer, ["inventory", "collect", "--region=eu"]).run().code(2);
    assert!(denied.stderr.contains("inventory:write"), "{}", denied.snapshot());
    // With the permission, the same account collects.
    p.micro(["auth", "create", "account", "writer", "--secret", "writer-pw", "--scopes", "inventory:write"]).ok();
    let writer = Dirs::new();
    p.cli_in(&writer, ["login", "--username", "writer", "--password-stdin"]).stdin("writer-pw\n").run().ok();
    let queued = p.cli_in(&writer, ["inventory", "collect", "--region=eu"]).run().ok().json();
    assert!(queued["id"].as_str().is_some_and(|id| !id.is_empty()), "{queued}");
}
