//! The broker service: at-most-once publish and subscribe, with fan-out and queue groups.
//!
//! Topics live in memory, per namespace (the caller's `micro-namespace`): an account of the namespace (or an
//! administrator of `micro`) may publish and subscribe; accounts of other namespaces never see them. Micro
//! prefixed topics with the issuer (`<ns>.<topic>`); keeping a table per namespace gives the same isolation.
//!
//! Delivery is at most once: a message goes to every subscriber of its topic that is connected when it is
//! published, and to one member of each queue group. Each subscriber has a bounded queue ([`hub::QUEUE_MESSAGES`]
//! messages, [`hub::QUEUE_BYTES`] bytes); a subscriber that cannot keep up loses messages (they are counted and
//! logged when it unsubscribes) and never slows the publisher down. `PublishStream` publishes many messages on one
//! stream, for throughput. Subscriptions end when the server shuts down.
//!
//! Where messages travel is a [`Backend`]: the in-memory [`Hub`] by default, or NATS (`nats`, cargo feature
//! `nats`, `micro server --broker nats://…`), which lets several servers share topics; the semantics are the same.

pub mod hub;
#[cfg(feature = "nats")]
pub mod nats;

use super::{CoreContext, ServerError};
use crate::auth::Caller;
use futures::StreamExt;
use hub::{Hub, TopicCache};
use micro_core::proto::broker::{
    Empty, Message, PublishRequest, PublishStreamResponse, SubscribeRequest,
    broker_server::{Broker, BrokerServer},
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The largest message body the broker takes.
pub const MAX_BODY: usize = 1 << 20;
/// The longest topic name, in bytes.
pub const MAX_TOPIC: usize = 256;

/// Where the broker's messages travel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BrokerBackend {
    /// In this server's memory.
    #[default]
    Memory,
    /// Through a NATS server, by URL (needs the `nats` cargo feature).
    Nats(String),
}

impl BrokerBackend {
    /// Parses `memory` (or empty) or a `nats://` URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = super::engine_url("broker", text, "memory", &["nats://"], "a nats://host:port URL")?;
        Ok(url.map_or(BrokerBackend::Memory, BrokerBackend::Nats))
    }
}

/// Starts the broker service and adds its gRPC services to `routes`.
pub async fn start(
    ctx: &CoreContext,
    backend: &BrokerBackend,
    routes: &mut tonic::service::RoutesBuilder,
) -> Result<(), ServerError> {
    let backend: Arc<dyn Backend> = match backend {
        BrokerBackend::Memory => Arc::new(Memory(Hub::new())),
        #[cfg(feature = "nats")]
        BrokerBackend::Nats(url) => {
            let broker = nats::NatsBroker::connect(url)
                .await
                .map_err(|message| ServerError::Start { service: "broker", message })?;
            tracing::info!(%url, "the broker sends its messages through NATS");
            Arc::new(broker)
        }
        #[cfg(not(feature = "nats"))]
        BrokerBackend::Nats(_) => {
            return Err(ServerError::Start {
                service: "broker",
                message: "this micro was built without NATS support; rebuild it with \
                          `cargo build --release --features nats`, or use the in-memory broker (--broker memory)"
                    .into(),
            });
        }
    };
    routes.add_service(BrokerServer::new(BrokerService::new(backend, ctx.cancel.clone())));
    Ok(())
}

/// Checked messages to publish, as a stream: the topic and the message, or why the stream stopped.
pub type Publications<'a> = Pin<Box<dyn futures::Stream<Item = Result<(String, Message), Status>> + Send + 'a>>;

/// Where messages travel: publish at most once to the subscribers connected at the time, one member of each
/// queue group each.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Publishes `message` on `namespace`/`topic`, as one of many (it may still be on its way).
    async fn publish(&self, namespace: &str, topic: &str, message: Message) -> Result<(), Status>;
    /// Publishes one message on its own: [`Backend::publish`], then [`Backend::flush`].
    async fn publish_one(&self, namespace: &str, topic: &str, message: Message) -> Result<(), Status> {
        self.publish(namespace, topic, message).await?;
        self.flush().await
    }
    /// Publishes every message of `messages` on `namespace`, in order, until the stream ends or fails; returns
    /// how many were published, once they have left this server ([`Backend::flush`]).
    async fn publish_all(&self, namespace: &str, mut messages: Publications<'_>) -> Result<u64, Status> {
        let mut count = 0;
        while let Some(item) = messages.next().await {
            let (topic, message) = item?;
            self.publish(namespace, &topic, message).await?;
            count += 1;
        }
        self.flush().await?;
        Ok(count)
    }
    /// Waits until what was published has left this server; nothing to wait for by default.
    async fn flush(&self) -> Result<(), Status> {
        Ok(())
    }
    /// Subscribes to `namespace`/`topic`, in queue group `queue` unless it is empty, until the stream is dropped.
    async fn subscribe(&self, namespace: &str, topic: &str, queue: &str) -> Result<SubscribeStream, Status>;
}

/// The in-memory backend: this server's [`Hub`].
pub struct Memory(pub Arc<Hub>);

#[tonic::async_trait]
impl Backend for Memory {
    async fn publish(&self, namespace: &str, topic: &str, message: Message) -> Result<(), Status> {
        self.0.publish(namespace, topic, message);
        Ok(())
    }

    async fn publish_all(&self, namespace: &str, mut messages: Publications<'_>) -> Result<u64, Status> {
        // The topic's subscribers are looked up once while the topic and the table stay the same.
        let mut cache = TopicCache::default();
        let mut count = 0;
        while let Some(item) = messages.next().await {
            let (topic, message) = item?;
            self.0.publish_cached(&mut cache, namespace, &topic, message);
            count += 1;
        }
        Ok(count)
    }

    async fn subscribe(&self, namespace: &str, topic: &str, queue: &str) -> Result<SubscribeStream, Status> {
        Ok(Box::pin(self.0.subscribe(namespace, topic, queue).map(Ok)))
    }
}

/// Checks a topic name: present, not too long, no control characters.
pub fn check_topic(topic: &str) -> Result<(), Status> {
    if topic.is_empty() {
        return Err(Status::invalid_argument("Missing topic"));
    }
    if topic.len() > MAX_TOPIC {
        return Err(Status::invalid_argument(format!(
            "topic is {} bytes long; topics are at most {MAX_TOPIC} bytes",
            topic.len()
        )));
    }
    if topic.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!("topic {topic:?} contains control characters")));
    }
    Ok(())
}

/// Checks a message body's size.
pub fn check_body(len: usize) -> Result<(), Status> {
    if len > MAX_BODY {
        return Err(Status::invalid_argument(format!(
            "message body is {len} bytes; the broker takes at most {MAX_BODY} bytes (1 MiB)"
        )));
    }
    Ok(())
}

/// The gRPC face of the broker.
#[derive(Clone)]
pub struct BrokerService {
    backend: Arc<dyn Backend>,
    closing: CancellationToken,
}

impl BrokerService {
    /// A broker over `backend` whose subscriptions end when `closing` is cancelled.
    pub fn new(backend: Arc<dyn Backend>, closing: CancellationToken) -> Self {
        Self { backend, closing }
    }
}

/// The namespace of a request, after checking that the caller belongs to it.
fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let caller = Caller::of(req);
    caller.require_member(&caller.namespace)?;
    Ok(caller.namespace)
}

type SubscribeStream = Pin<Box<dyn futures::Stream<Item = Result<Message, Status>> + Send>>;

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<Empty>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        let message = req.message.unwrap_or_default();
        check_body(message.body.len())?;
        self.backend.publish_one(&ns, &req.topic, message).await?;
        Ok(Response::new(Empty {}))
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishStreamResponse>, Status> {
        let ns = namespace(&req)?;
        // At shutdown the stream ends where it is: what was published so far stays published.
        let stream = req.into_inner().take_until(self.closing.clone().cancelled_owned());
        let mut index = 0u64;
        let checked = stream.map(move |item| {
            let req = item?;
            index += 1;
            let invalid = |s: Status| Status::invalid_argument(format!("message {index}: {}", s.message()));
            check_topic(&req.topic).map_err(invalid)?;
            let message = req.message.unwrap_or_default();
            check_body(message.body.len()).map_err(invalid)?;
            Ok((req.topic, message))
        });
        let count = self.backend.publish_all(&ns, Box::pin(checked)).await?;
        Ok(Response::new(PublishStreamResponse { count }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        if req.queue.len() > MAX_TOPIC || req.queue.chars().any(char::is_control) {
            return Err(Status::invalid_argument("the queue name is too long or contains control characters"));
        }
        let subscription = self.backend.subscribe(&ns, &req.topic, &req.queue).await?;
        let stream = subscription.take_until(self.closing.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
