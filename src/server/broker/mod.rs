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

pub mod hub;

use super::{CoreContext, ServerError};
use crate::proto::broker::{
    Empty, Message, PublishRequest, PublishStreamResponse, SubscribeRequest,
    broker_server::{Broker, BrokerServer},
};
use crate::server::auth::Caller;
use futures::StreamExt;
use hub::{Hub, TopicCache};
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The largest message body the broker takes.
pub const MAX_BODY: usize = 1 << 20;
/// The longest topic name, in bytes.
pub const MAX_TOPIC: usize = 256;

/// Starts the broker service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    routes.add_service(BrokerServer::new(BrokerService::new(Hub::new(), ctx.cancel.clone())));
    Ok(())
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
    hub: Arc<Hub>,
    closing: CancellationToken,
}

impl BrokerService {
    /// A broker over `hub` whose subscriptions end when `closing` is cancelled.
    pub fn new(hub: Arc<Hub>, closing: CancellationToken) -> Self {
        Self { hub, closing }
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
        self.hub.publish(&ns, &req.topic, message);
        Ok(Response::new(Empty {}))
    }

    async fn publish_stream(
        &self,
        req: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<PublishStreamResponse>, Status> {
        let ns = namespace(&req)?;
        // At shutdown the stream ends where it is: what was published so far stays published.
        let stream = req.into_inner().take_until(self.closing.clone().cancelled_owned());
        let mut stream = std::pin::pin!(stream);
        let mut cache = TopicCache::default();
        let mut count = 0u64;
        while let Some(item) = stream.next().await {
            let req = item?;
            let invalid = |s: Status| Status::invalid_argument(format!("message {}: {}", count + 1, s.message()));
            check_topic(&req.topic).map_err(invalid)?;
            let message = req.message.unwrap_or_default();
            check_body(message.body.len()).map_err(invalid)?;
            self.hub.publish_cached(&mut cache, &ns, &req.topic, message);
            count += 1;
        }
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
        let subscription = self.hub.subscribe(&ns, &req.topic, &req.queue);
        let stream = subscription.map(Ok).take_until(self.closing.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
