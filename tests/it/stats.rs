//! Per-node calls: `micro stats` (each node's process statistics, from the service library and from `micro server`
//! itself) and `micro health` (each node's gRPC health).

use crate::support::Platform;

#[test]
fn stats_of_a_service_and_of_the_core() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["stats", "helloworld", "-o", "json"]).ok();
    let nodes = run.json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{}", run.snapshot());
    let node = &nodes[0];
    assert_eq!(node["service"], "helloworld");
    assert!(node["memory"].as_u64().unwrap() > 0 && node["threads"].as_u64().unwrap() > 0, "{node}");
    assert!(node["started"].as_u64().unwrap() <= std::time::UNIX_EPOCH.elapsed().unwrap().as_secs());

    // The table has one row per node.
    let table = p.micro(["stats", "helloworld"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVICE") && lines[0].contains("MEMORY"), "{table}");
    assert!(lines[1].starts_with("helloworld") && lines[1].contains("mb"), "{table}");

    // The core services answer for the server; `--all custom` is every other service.
    let builtin = p.micro(["stats", "--all", "builtin", "-o", "json"]).ok().json();
    let names: Vec<&str> = builtin.as_array().unwrap().iter().map(|n| n["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["auth", "broker", "config", "events", "registry", "runtime", "store", "tasks"]);
    let custom = p.micro(["stats", "--all", "custom", "-o", "json"]).ok().json();
    assert_eq!(custom.as_array().unwrap().len(), 1);

    // Errors: an unknown service, no name at all, and no stats without an account.
    assert_eq!(p.micro(["stats", "nope"]).code(4).stderr, "Service \"nope\" not found\n");
    assert!(p.micro(["stats"]).code(128).stderr.contains("required"));
    let anonymous = crate::support::Cli::new(&p.addr, &crate::support::Dirs::new(), ["stats", "helloworld"]).run();
    assert_eq!(anonymous.code, 2, "{}", anonymous.snapshot());
}

#[test]
fn health_checks_each_node() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["health", "helloworld"]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "service  helloworld", "{}", run.snapshot());
    assert!(lines.iter().any(|l| l.starts_with("latest") && l.ends_with(" ok")), "{}", run.snapshot());
    let json = p.micro(["health", "helloworld", "-o", "json"]).ok().json();
    assert_eq!(json[0]["status"], "ok");
    // Health checks are public; an unknown service is not found.
    let anonymous = crate::support::Cli::new(&p.addr, &crate::support::Dirs::new(), ["health", "helloworld"]).run();
    assert_eq!(anonymous.code, 0, "{}", anonymous.snapshot());
    assert_eq!(p.micro(["health", "nope"]).code(4).stderr, "Service \"nope\" not found\n");
}
