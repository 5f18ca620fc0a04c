//! `micro tasks` and the server's tasks service: schedules that fire and stop, retries then dead, a task whose
//! worker (and server) died leased again after a restart, once-only firing with two servers on one PostgreSQL, and
//! bad input (exit 128).

use crate::support::{Platform, block_on, channel};
use micro_core::proto::tasks::{
    AckRequest, EnqueueRequest, GetRequest, LeaseRequest, State, tasks_client::TasksClient,
};
use serde_json::Value;
use std::time::Duration;

/// The tasks of `name`, as `micro tasks list --name NAME -o json` prints them.
fn tasks(p: &Platform, name: &str) -> Vec<Value> {
    let run = p.micro(["tasks", "list", "--name", name, "--limit", "1000", "-o", "json"]).ok();
    run.json().as_array().cloned().unwrap_or_default()
}

fn in_state<'a>(tasks: &'a [Value], state: &str) -> Vec<&'a Value> {
    tasks.iter().filter(|t| t["state"] == state).collect()
}

#[test]
fn a_schedule_fires_its_stages_until_it_is_unscheduled() {
    let p = Platform::with(&["helloworld"]);
    let scheduled = p.micro([
        "tasks",
        "schedule",
        "greet",
        "--every",
        "1s",
        "--call",
        "helloworld",
        "Helloworld.Call",
        r#"{"name": "Jane"}"#,
    ]);
    assert!(scheduled.ok().stderr.starts_with("Scheduled greet (every 1s); next at "));
    let listed = p.micro(["tasks", "schedules"]).ok().stdout;
    let row = listed.lines().nth(1).unwrap_or_default();
    assert!(
        row.starts_with("greet") && row.contains("every 1s") && row.contains("helloworld Helloworld.Call"),
        "{listed}"
    );
    assert!(row.ends_with("admin"), "the owner is the account that scheduled it: {listed}");

    p.wait_until("the schedule fired twice", |p| in_state(&tasks(p, "greet"), "succeeded").len() >= 2);
    let all = tasks(&p, "greet");
    let done = in_state(&all, "succeeded")[0];
    assert_eq!((done["attempts"].as_u64(), done["schedule"].as_str()), (Some(1), Some("greet")), "{done}");
    let result = &done["results"][0];
    assert_eq!(
        (result["service"].as_str(), result["endpoint"].as_str()),
        (Some("helloworld"), Some("Helloworld.Call"))
    );
    assert_eq!(
        (result["ok"].as_bool(), result["response"]["msg"].as_str()),
        (Some(true), Some("Hello Jane")),
        "{done}"
    );
    assert!(result["duration_ms"].is_i64(), "{done}");
    // A task starts soon after its schedule is due (the benchmark measures this; here, loosely).
    let at = |field: &str| humantime::parse_rfc3339(done[field].as_str().unwrap()).unwrap();
    let delay = at("started").duration_since(at("due")).unwrap_or_default();
    assert!(delay < Duration::from_secs(1), "started {delay:?} after it was due: {done}");
    // `get` shows the same task, with its stage and result.
    let id = done["id"].as_str().unwrap();
    let got = p.micro(["tasks", "get", id]).ok().stdout;
    assert!(got.contains("state:     succeeded") && got.contains("ok: {\"msg\":\"Hello Jane\"}"), "{got}");
    assert_eq!(p.micro(["tasks", "get", id, "-o", "json"]).ok().json()["id"], id);

    // `run` queues one more at once.
    let before = tasks(&p, "greet").len();
    let queued = p.micro(["tasks", "run", "greet"]).ok().stdout.trim().to_string();
    p.wait_until("the task run by hand succeeded", |p| {
        p.micro(["tasks", "get", &queued, "-o", "json"]).ok().json()["state"] == "succeeded"
    });
    assert!(tasks(&p, "greet").len() > before);

    // Unscheduled: no more firings (its queued tasks may still finish).
    p.micro(["tasks", "unschedule", "greet"]).ok();
    assert_eq!(p.micro(["tasks", "schedules"]).ok().stdout.lines().count(), 1, "only the header is left");
    std::thread::sleep(Duration::from_millis(300));
    let count = tasks(&p, "greet").len();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(tasks(&p, "greet").len(), count, "the schedule fired after it was deleted");
    let missing = p.micro(["tasks", "unschedule", "greet"]).code(6);
    assert_eq!(missing.stderr, "schedule \"greet\" not found\n");
    p.micro(["tasks", "run", "greet"]).code(6);
    p.micro(["tasks", "get", "no-such-task"]).code(6);
}

#[test]
fn a_failing_task_is_retried_with_backoff_then_dead_and_retry_queues_it_again() {
    let mut p = Platform::start();
    let mut hello = p.spawn_service("helloworld", &[]);
    p.micro([
        "tasks",
        "schedule",
        "flaky",
        "--every",
        "1h",
        "--call",
        "helloworld",
        "Helloworld.Call",
        r#"{"name": "Jane"}"#,
        "--retries",
        "2",
        "--backoff",
        "200ms",
    ])
    .ok();
    // The service goes away: every attempt fails.
    hello.kill();
    let id = p.micro(["tasks", "run", "flaky"]).ok().stdout.trim().to_string();
    let get = |p: &Platform| p.micro(["tasks", "get", &id, "-o", "json"]).ok().json();
    let mut seen = Vec::new();
    p.wait_until("the task is dead", |p| {
        let t = get(p);
        let state = t["state"].as_str().unwrap_or_default().to_string();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        state == "dead"
    });
    let dead = get(&p);
    assert_eq!(dead["attempts"].as_u64(), Some(3), "one attempt and two retries: {dead}");
    let error = dead["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("stage 1 (helloworld Helloworld.Call): "), "the last error is kept: {dead}");
    assert_eq!(dead["results"][0]["ok"].as_bool(), Some(false), "{dead}");
    assert!(seen.contains(&"failed".to_string()) || seen.contains(&"pending".to_string()), "{seen:?}");
    let listed = p.micro(["tasks", "list", "--state", "dead"]).ok().stdout;
    assert!(listed.contains(&id) && listed.contains("dead") && listed.contains("3/3"), "{listed}");

    // Back with the service, `retry` queues it again and it succeeds.
    p.start_service("helloworld");
    assert_eq!(p.micro(["tasks", "retry", &id]).ok().stdout.trim(), id);
    p.wait_until("the retried task succeeded", |p| get(p)["state"] == "succeeded");
    let done = get(&p);
    assert_eq!((done["attempts"].as_u64(), done["error"].as_str()), (Some(1), Some("")), "{done}");
    let refused = p.micro(["tasks", "retry", &id]).code(1);
    assert!(refused.stderr.contains("is succeeded: only a dead or failed task can be retried"), "{}", refused.stderr);
}

#[test]
fn a_task_leased_when_the_server_died_is_leased_again_after_a_restart() {
    let mut p = Platform::start();
    p.micro(["tasks", "schedule", "later", "--every", "1h", "--call", "registry", "Registry.ListServices"]).ok();
    let id = block_on(async {
        let mut tasks = TasksClient::with_interceptor(channel(&p).await, p.bearer());
        let queued = tasks
            .enqueue(EnqueueRequest { name: "job".into(), payload: r#"{"n": 1}"#.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        let lease = LeaseRequest { names: vec!["job".into()], worker: "w1".into(), lease_ms: 1500, wait_ms: 0 };
        let leased = tasks.lease(lease.clone()).await.unwrap().into_inner();
        let task = leased.task.unwrap();
        assert_eq!((task.id.as_str(), task.attempts, task.state), (queued.id.as_str(), 1, State::Running as i32));
        assert!(tasks.lease(lease).await.unwrap().into_inner().task.is_none(), "leased once");
        queued.id
    });
    // The worker never acks: the server is killed (SIGKILL) and comes back on the same data dir.
    p.restart_server(true);
    let listed = p.micro(["tasks", "schedules"]).ok().stdout;
    assert!(listed.contains("later"), "schedules survive a restart: {listed}");
    let running = p.micro(["tasks", "get", &id, "-o", "json"]).ok().json();
    assert_eq!(running["state"], "running", "{running}");
    block_on(async {
        let mut tasks = TasksClient::with_interceptor(channel(&p).await, p.bearer());
        let lease = LeaseRequest { names: vec!["job".into()], worker: "w2".into(), lease_ms: 30_000, wait_ms: 10_000 };
        let leased = tasks.lease(lease).await.unwrap().into_inner();
        let task = leased.task.expect("the task comes back once its lease expires");
        assert_eq!((task.id.as_str(), task.attempts, task.worker.as_str()), (id.as_str(), 2, "w2"));
        assert_eq!(task.error, "lease expired (worker w1)");
        assert_eq!(task.payload, r#"{"n": 1}"#);
        let ack = AckRequest { id: id.clone(), lease: leased.lease, result: r#"{"ok": true}"#.into() };
        tasks.ack(ack).await.unwrap();
        let done = tasks.get(GetRequest { id: id.clone() }).await.unwrap().into_inner().task.unwrap();
        assert_eq!(done.state, State::Succeeded as i32);
    });
    let json = p.micro(["tasks", "get", &id, "-o", "json"]).ok().json();
    assert_eq!((json["state"].as_str(), json["result"]["ok"].as_bool()), (Some("succeeded"), Some(true)), "{json}");
}

#[test]
fn bad_schedules_exit_128_with_a_clear_message() {
    let p = Platform::with(&["helloworld"]);
    let schedule = |when: &[&str], call: &[&str]| {
        let mut args = vec!["tasks", "schedule", "bad"];
        args.extend_from_slice(when);
        args.push("--call");
        args.extend_from_slice(call);
        p.micro(args).code(128)
    };
    let hello = ["helloworld", "Helloworld.Call"];
    insta::assert_snapshot!("bad_duration", schedule(&["--every", "10x"], &hello).snapshot());
    insta::assert_snapshot!("too_short", schedule(&["--every", "10ms"], &hello).snapshot());
    insta::assert_snapshot!("five_field_cron", schedule(&["--cron", "*/5 * * * *"], &hello).snapshot());
    insta::assert_snapshot!("bad_cron", schedule(&["--cron", "0 61 * * * *"], &hello).snapshot());
    insta::assert_snapshot!("bad_minute", schedule(&["--hourly-at", "75"], &hello).snapshot());
    insta::assert_snapshot!("unknown_service", schedule(&["--every", "1s"], &["nosuch", "Foo.Bar"]).snapshot());
    insta::assert_snapshot!(
        "unknown_endpoint",
        schedule(&["--every", "1s"], &["helloworld", "Helloworld.Nope"]).snapshot()
    );
    insta::assert_snapshot!(
        "bad_json",
        schedule(&["--every", "1s"], &["helloworld", "Helloworld.Call", "{x"]).snapshot()
    );
    insta::assert_snapshot!(
        "bad_field",
        schedule(&["--every", "1s"], &["helloworld", "Helloworld.Call", r#"{"name": []}"#]).snapshot()
    );
    p.micro(["tasks", "list", "--state", "asleep"]).code(128);
    // Nothing was scheduled.
    assert_eq!(p.micro(["tasks", "schedules"]).ok().stdout.lines().count(), 1);
}

#[cfg(feature = "postgres")]
#[test]
fn two_servers_on_one_postgres_fire_each_due_schedule_once() {
    use std::collections::BTreeSet;
    let Some(url) = micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres") else { return };
    let a = Platform::start_env(&[("MICRO_STORE", &url)]);
    let b = Platform::start_env(&[("MICRO_STORE", &url)]);
    let name = format!("once-{}-{}", std::process::id(), std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos());
    // A core service as the stage: both servers can run it.
    a.micro(["tasks", "schedule", &name, "--every", "1s", "--call", "registry", "Registry.ListServices"]).ok();
    b.wait_until("B sees the schedule", |b| b.micro(["tasks", "schedules"]).ok().stdout.contains(&name));
    std::thread::sleep(Duration::from_secs(5));
    a.micro(["tasks", "unschedule", &name]).ok();
    std::thread::sleep(Duration::from_millis(500));
    let all = tasks(&b, &name);
    let dues: BTreeSet<&str> = all.iter().filter_map(|t| t["due"].as_str()).collect();
    assert_eq!(dues.len(), all.len(), "a due time fired more than once: {all:#?}");
    assert!((4..=7).contains(&all.len()), "about one firing a second for 5 s: {} tasks", all.len());
    b.wait_until("every task ran", |b| in_state(&tasks(b, &name), "succeeded").len() == all.len());
    // Each ran once, whichever server leased it: one attempt each.
    assert!(tasks(&a, &name).iter().all(|t| t["attempts"] == 1), "{:#?}", tasks(&a, &name));
}

#[test]
fn a_stage_task_running_when_the_server_died_runs_again_at_restart() {
    let mut p = Platform::start();
    // A stage that takes 3 s: a lease of tasks that never come (the tasks service itself, waiting).
    let slow = r#"{"names": ["nothing"], "wait_ms": 3000}"#;
    p.micro(["tasks", "schedule", "slow", "--every", "1h", "--call", "tasks", "Tasks.Lease", slow]).ok();
    let id = p.micro(["tasks", "run", "slow"]).ok().stdout.trim().to_string();
    let get = |p: &Platform| p.micro(["tasks", "get", &id, "-o", "json"]).ok().json();
    p.wait_until("the stage task runs", |p| get(p)["state"] == "running");
    p.restart_server(true);
    // The runner's lease (30 s) has not expired, but this server was its only runner: it runs again at once.
    let restarted = std::time::Instant::now();
    p.wait_until("the task ran again and succeeded", |p| get(p)["state"] == "succeeded");
    assert!(restarted.elapsed() < Duration::from_secs(20), "it waited for its lease: {:?}", restarted.elapsed());
    let done = get(&p);
    assert_eq!(done["attempts"].as_u64(), Some(2), "{done}");
    assert_eq!(done["results"][0]["response"], serde_json::json!({"lease": ""}), "{done}");
}
