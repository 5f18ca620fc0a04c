//! `micro services`: the list of registered services.

use crate::support::Platform;

/// The lines of `micro services`, checked to be sorted and deduplicated.
fn sorted_names(p: &Platform) -> Vec<String> {
    let run = p.micro(["services"]).ok();
    assert_eq!(run.stderr, "", "data goes to stdout, nothing to stderr");
    assert!(run.stdout.ends_with('\n'), "one name per line: {:?}", run.stdout);
    let names: Vec<String> = run.stdout.lines().map(str::to_string).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "sorted and deduplicated");
    assert!(names.iter().all(|n| !n.is_empty() && !n.contains(char::is_whitespace)), "{names:?}");
    names
}

#[test]
fn a_fresh_server_lists_its_core_services() {
    let p = Platform::start();
    let names = sorted_names(&p);
    assert!(names.contains(&"registry".to_string()), "{names:?}");
    assert!(!names.contains(&"helloworld".to_string()), "{names:?}");
}

#[test]
fn lists_core_and_user_services_sorted_one_per_line() {
    let mut p = Platform::start();
    let core = sorted_names(&p);
    p.start_service("helloworld");
    let mut expected = core.clone();
    expected.push("helloworld".into());
    expected.sort();
    assert_eq!(sorted_names(&p), expected);
    p.start_service("echo");
    expected.push("echo".into());
    expected.sort();
    assert_eq!(sorted_names(&p), expected);
}

#[test]
fn two_nodes_of_one_service_are_listed_once() {
    let mut p = Platform::with(&["helloworld"]);
    let once = sorted_names(&p);
    p.start_service("helloworld");
    p.wait_until("the second node registers", |p| {
        let run = p.micro(["get", "service", "helloworld"]);
        run.stdout.matches("helloworld-").count() >= 2
    });
    assert_eq!(sorted_names(&p), once);
}

#[test]
fn json_output_is_an_array_of_records() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["services", "-o", "json"]).ok();
    let records = run.json();
    let records = records.as_array().unwrap_or_else(|| panic!("not an array:\n{}", run.stdout));
    let names: Vec<&str> = records.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"helloworld") && names.contains(&"registry"), "{names:?}");
    let hello = records.iter().find(|r| r["name"] == "helloworld").expect("a helloworld record");
    assert_eq!(hello["version"], "latest");
    let nodes = hello["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{hello:#}");
    let address = nodes[0]["address"].as_str().expect("a node address");
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    let endpoints: Vec<&str> =
        hello["endpoints"].as_array().expect("endpoints").iter().filter_map(|e| e["name"].as_str()).collect();
    for e in ["Helloworld.Call", "Helloworld.Stream", "Helloworld.PingPong"] {
        assert!(endpoints.contains(&e), "{e} missing from {endpoints:?}");
    }
}

#[test]
fn get_service_shows_nodes_and_endpoints() {
    let p = Platform::with(&["helloworld"]);
    let run = p.micro(["get", "service", "helloworld"]).ok();
    assert!(run.stdout.contains("Helloworld.Call"), "{}", run.stdout);
    assert!(run.stdout.contains("helloworld-"), "a node id: {}", run.stdout);
}
