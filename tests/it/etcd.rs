//! The registry shared through etcd (cargo feature `etcd`): with `micro server --registry etcd://…`, a service
//! registered with one server is listed and callable through another, and leaves both when it stops.
//! `MICRO_TEST_ETCD_URL` must name an etcd (`.ci/run` starts one with `.ci/etcd`); these tests fail when it is
//! unset.

use crate::support::Platform;

#[test]
fn a_service_of_one_server_is_callable_through_another() {
    let Some(url) = micro_core::testing::backend_url("MICRO_TEST_ETCD_URL", "etcd") else { return };
    let mut a = Platform::start_env(&[("MICRO_REGISTRY", &url)]);
    let b = Platform::start_env(&[("MICRO_REGISTRY", &url)]);
    a.start_service("helloworld");
    b.wait_until("b lists helloworld", |b| b.micro(["services"]).ok().stdout.lines().any(|l| l == "helloworld"));
    // The schema came along: b builds the dynamic command and routes the call to a's node.
    let run = b.micro(["helloworld", "call", "--name=Jane"]).ok();
    assert_eq!(run.json(), serde_json::json!({"msg": "Hello Jane"}));
    // The node says where it is registered.
    let service = b.micro(["get", "service", "helloworld", "-o", "json"]).ok().stdout;
    assert!(service.contains("registry.origin"), "{service}");

    // A server that keeps its registry to itself sees none of it.
    let alone = Platform::start();
    assert!(!alone.micro(["services"]).ok().stdout.lines().any(|l| l == "helloworld"));

    // When a stops, its services leave b too (a revokes its lease on the way out).
    drop(a);
    b.wait_until("helloworld left b", |b| !b.micro(["services"]).ok().stdout.lines().any(|l| l == "helloworld"));
}
