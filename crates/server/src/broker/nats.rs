//! [`NatsBroker`]: the broker's messages through a NATS server, so that several micro servers share topics.
//!
//! Built with the `nats` cargo feature and chosen with `micro server --broker nats://host:4222` (or
//! `MICRO_BROKER`). Core NATS has the broker's semantics already: at most once, fan-out to every subscriber, and
//! queue groups that give each message to one member. A topic of a namespace is the subject
//! `micro.<namespace>.<topic>`, each part escaped into a single subject token ([`subject`]), so that no topic can
//! reach into another namespace or act as a wildcard. A message travels as the broker's protobuf `Message` (header
//! and body).
//!
//! A subscription is confirmed with the NATS server (a round trip through it) before `Subscribe` answers, so a
//! message published after `micro broker subscribe` says "Subscribed to" reaches it, on any server. A single
//! `Publish` answers once its message has left for the NATS server. The client reconnects by
//! itself; what is published while it is disconnected is buffered by the client or lost (at most once).

use super::{Backend, SubscribeStream};
use futures::StreamExt;
use micro_core::proto::broker::Message;
use prost::Message as _;
use tonic::Status;

/// The broker on NATS.
#[derive(Clone, Debug)]
pub struct NatsBroker {
    client: async_nats::Client,
}

/// `text` as one NATS subject token: ASCII letters, digits, `-` and `_` stay; every other byte is `%XX`.
fn escape(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The NATS subject of `topic` in `namespace`.
pub fn subject(namespace: &str, topic: &str) -> String {
    let mut out = String::with_capacity(6 + namespace.len() + topic.len() + 8);
    out.push_str("micro.");
    escape(namespace, &mut out);
    out.push('.');
    escape(topic, &mut out);
    out
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the broker cannot {what} through NATS: {e}"))
}

impl NatsBroker {
    /// Connects to the NATS server at `url`; an error says which server and why.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let options = async_nats::ConnectOptions::new()
            .name("micro server")
            .connection_timeout(std::time::Duration::from_secs(5));
        let client = options.connect(url).await.map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
        Ok(Self { client })
    }
}

impl NatsBroker {
    /// Returns once the NATS server has processed everything this client sent before, such as a subscription:
    /// the server handles a connection's commands in order, so a message sent to a fresh inbox and received back
    /// comes after them. (A flush only writes to the socket.)
    async fn round_trip(&self) -> Result<(), Status> {
        let inbox = self.client.new_inbox();
        let mut echo = self.client.subscribe(inbox.clone()).await.map_err(|e| unavailable("subscribe", e))?;
        self.client.publish(inbox, Default::default()).await.map_err(|e| unavailable("subscribe", e))?;
        match tokio::time::timeout(std::time::Duration::from_secs(10), echo.next()).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(unavailable("subscribe", "the NATS server did not confirm the subscription within 10 s")),
        }
    }
}

#[tonic::async_trait]
impl Backend for NatsBroker {
    async fn publish(&self, namespace: &str, topic: &str, message: Message) -> Result<(), Status> {
        let payload = message.encode_to_vec();
        self.client.publish(subject(namespace, topic), payload.into()).await.map_err(|e| unavailable("publish", e))
    }

    async fn flush(&self) -> Result<(), Status> {
        self.client.flush().await.map_err(|e| unavailable("publish", e))
    }

    async fn subscribe(&self, namespace: &str, topic: &str, queue: &str) -> Result<SubscribeStream, Status> {
        let subject = subject(namespace, topic);
        let subscriber = if queue.is_empty() {
            self.client.subscribe(subject).await
        } else {
            let mut group = String::new();
            escape(queue, &mut group);
            self.client.queue_subscribe(subject, group).await
        }
        .map_err(|e| unavailable("subscribe", e))?;
        self.round_trip().await?;
        let topic = topic.to_string();
        Ok(Box::pin(subscriber.filter_map(move |m| {
            let decoded = Message::decode(m.payload);
            if let Err(e) = &decoded {
                tracing::warn!(topic = %topic, error = %e, "dropped a NATS message that is not a micro broker message");
            }
            std::future::ready(decoded.ok().map(Ok))
        })))
    }
}

#[cfg(test)]
mod tests {
    //! The round trips run against a real NATS server: `MICRO_TEST_NATS_URL` must name one (`.ci/run` starts
    //! one). With the `nats` feature on and the variable unset, they fail.

    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    #[test]
    fn subjects_are_one_token_per_part() {
        assert_eq!(subject("micro", "orders"), "micro.micro.orders");
        assert_eq!(subject("team-a", "user.created"), "micro.team-a.user%2Ecreated");
        // Wildcards and spaces cannot leak into the subject, nor can one namespace reach another's topics.
        assert_eq!(subject("a", "> *"), "micro.a.%3E%20%2A");
        assert_ne!(subject("a.b", "c"), subject("a", "b.c"));
        assert_eq!(subject("micro", "é"), "micro.micro.%C3%A9");
    }

    async fn broker() -> Option<NatsBroker> {
        let url = micro_core::testing::backend_url("MICRO_TEST_NATS_URL", "nats")?;
        Some(NatsBroker::connect(&url).await.expect("NATS answers"))
    }

    fn message(body: &str) -> Message {
        Message { header: HashMap::from([("k".to_string(), "v".to_string())]), body: body.as_bytes().to_vec() }
    }

    #[tokio::test]
    async fn fan_out_queue_groups_and_namespaces() {
        let (Some(a), Some(b)) = (broker().await, broker().await) else { return };
        let topic = format!("t-{}", std::process::id());
        let mut all1 = a.subscribe("micro", &topic, "").await.unwrap();
        let mut all2 = b.subscribe("micro", &topic, "").await.unwrap();
        let mut q1 = a.subscribe("micro", &topic, "workers").await.unwrap();
        let mut q2 = b.subscribe("micro", &topic, "workers").await.unwrap();
        let mut other_ns = b.subscribe("tenant", &topic, "").await.unwrap();
        // Published through one connection, received through both.
        a.publish("micro", &topic, message("one")).await.unwrap();
        let stream = futures::stream::iter(vec![Ok((topic.clone(), message("two")))]);
        assert_eq!(b.publish_all("micro", Box::pin(stream)).await.unwrap(), 1);
        // Each publisher's messages keep their order; across two publishers NATS promises none.
        for (i, s) in [&mut all1, &mut all2].into_iter().enumerate() {
            let mut bodies = Vec::new();
            while bodies.len() < 2 {
                match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                    Ok(Some(Ok(m))) => bodies.push(String::from_utf8(m.body).unwrap()),
                    other => panic!("subscriber {i} got {bodies:?} and then {other:?}"),
                }
            }
            bodies.sort();
            assert_eq!(bodies, ["one", "two"], "subscriber {i}");
        }
        // The queue group got each message once between its two members.
        let mut got = 0;
        for s in [&mut q1, &mut q2] {
            while tokio::time::timeout(Duration::from_millis(300), s.next()).await.is_ok() {
                got += 1;
            }
        }
        assert_eq!(got, 2);
        // Another namespace's topic of the same name got nothing.
        assert!(tokio::time::timeout(Duration::from_millis(300), other_ns.next()).await.is_err());
    }
}
