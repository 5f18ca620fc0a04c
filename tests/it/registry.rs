//! The registry: TTL expiry of a node that stops heart-beating, and the watch event it emits.

use crate::support::{Platform, SHORT_TTL, channel, runtime};
use micro_core::proto::registry::{Result as WatchResult, WatchRequest, registry_client::RegistryClient};
use std::time::Duration;
use tonic::Streaming;

/// Waits for the next watch result with `action` for `service`, returning it and what was skipped.
async fn next_event(watch: &mut Streaming<WatchResult>, action: &str, service: &str) -> (WatchResult, Vec<String>) {
    let mut seen = Vec::new();
    let wait = async {
        loop {
            let result = watch.message().await.expect("the watch stream failed").expect("the watch stream ended");
            let name = result.service.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if result.action == action && name == service {
                return result;
            }
            seen.push(format!("{} {name}", result.action));
        }
    };
    match tokio::time::timeout(Duration::from_secs(15), wait).await {
        Ok(result) => (result, seen),
        Err(_) => panic!("no {action} event for {service} within 15s; saw {seen:?}"),
    }
}

#[test]
fn an_expired_node_is_pruned_and_emits_a_delete_event() {
    let p = Platform::start();
    let core = p.micro(["services"]).ok().stdout;
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let mut client = RegistryClient::new(channel(&p).await);
        let req = WatchRequest { service: String::new(), options: None };
        client.watch(req).await.expect("Registry.Watch through the proxy").into_inner()
    });

    let mut service = p.spawn_service("helloworld", SHORT_TTL);
    let (created, _) = rt.block_on(next_event(&mut watch, "create", "helloworld"));
    let record = created.service.expect("a service record");
    assert_eq!(record.nodes.len(), 1, "{record:?}");
    let node_id = record.nodes[0].id.clone();

    // Heartbeats keep it alive well past its 1 s TTL.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(p.service_names().contains(&"helloworld".to_string()), "the heartbeat keeps the node registered");

    // SIGKILL: no deregistration, so only expiry removes it.
    service.kill();
    let (deleted, seen) = rt.block_on(next_event(&mut watch, "delete", "helloworld"));
    assert!(!seen.iter().any(|e| e.starts_with("delete")), "one delete only: {seen:?}");
    let record = deleted.service.expect("the record before deletion");
    assert_eq!(record.name, "helloworld");
    assert!(record.nodes.iter().any(|n| n.id == node_id), "the delete names the expired node: {record:?}");
    assert!(deleted.timestamp > 0);

    assert_eq!(p.micro(["services"]).ok().stdout, core, "helloworld is gone from the list");
    // The proxy no longer routes to it.
    let run = p.micro(["call", "helloworld", "Helloworld.Call", "{}"]).code(4);
    assert!(run.stderr.contains("Service \"helloworld\" not found"), "{}", run.stderr);
    assert!(p.server_log().contains("registration expired"), "{}", p.server_log());
}

#[test]
fn a_stopped_service_deregisters_at_once() {
    let p = Platform::start();
    let core = p.micro(["services"]).ok().stdout;
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let mut client = RegistryClient::new(channel(&p).await);
        let req = WatchRequest { service: "helloworld".into(), options: None };
        client.watch(req).await.expect("Registry.Watch through the proxy").into_inner()
    });
    // The default TTL (90 s) is far longer than the test: only deregistration can remove it.
    let service = p.spawn_service("helloworld", &[]);
    rt.block_on(next_event(&mut watch, "create", "helloworld"));
    let pid = service.id();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success());
    rt.block_on(next_event(&mut watch, "delete", "helloworld"));
    assert_eq!(p.micro(["services"]).ok().stdout, core, "helloworld is gone from the list");
}
