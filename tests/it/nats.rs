//! The broker on NATS (cargo feature `nats`): `micro server --broker nats://…` sends messages through NATS, so a
//! subscriber on one server gets what is published on another. `MICRO_TEST_NATS_URL` must name a NATS server
//! (`.ci/run` starts one with `.ci/nats`); these tests fail when it is unset.

use crate::broker::Background;
use crate::support::Platform;
use serde_json::json;

#[test]
fn two_servers_share_topics_through_nats() {
    let Some(url) = micro_core::testing::backend_url("MICRO_TEST_NATS_URL", "nats") else { return };
    // A topic of this run only: the NATS server may carry other runs' messages.
    let topic = format!("orders-{}", std::process::id());
    let a = Platform::start_env(&[("MICRO_BROKER", &url)]);
    let b = Platform::start_env(&[("MICRO_BROKER", &url)]);
    let mut on_a = Background::spawn(&a, &a.path(""), &["broker", "subscribe", &topic, "--count", "2"]);
    on_a.wait_stderr("Subscribed to");
    let mut on_b = Background::spawn(&b, &b.path(""), &["broker", "subscribe", &topic, "--count", "2"]);
    on_b.wait_stderr("Subscribed to");
    b.micro(["broker", "publish", &topic, "from b", "--header", "k=v"]).ok();
    a.micro(["broker", "publish", &topic, "from a"]).ok();
    for sub in [&on_a, &on_b] {
        let docs = sub.docs(2);
        assert_eq!(docs[0], json!({"topic": topic, "header": {"k": "v"}, "body": "from b"}));
        assert_eq!(docs[1]["body"], "from a");
    }
    assert_eq!(on_a.wait(), (0, vec![]));
    assert_eq!(on_b.wait(), (0, vec![]));

    // A server on the in-memory broker is not part of it.
    let alone = Platform::start();
    let mut on_alone = Background::spawn(&alone, &alone.path(""), &["broker", "subscribe", &topic]);
    on_alone.wait_stderr("Subscribed to");
    a.micro(["broker", "publish", &topic, "not for alone"]).ok();
    assert_eq!(on_alone.next_line(std::time::Duration::from_millis(500)), None);
}
