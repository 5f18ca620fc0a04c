//! A broker client for services: publish, and subscribe with a handler.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use micro::{broker::Broker, client::Client};
//! let client = Client::from_env()?;
//! let broker = Broker::from_client(&client);
//! let handle = broker
//!     .subscribe("orders", None, |message| async move {
//!         println!("got {} bytes", message.body.len());
//!     })
//!     .await?;
//! broker.publish("orders", "hello").await?;
//! handle.abort(); // unsubscribes
//! # Ok(()) }
//! ```
//!
//! Delivery is at most once (see the server's `broker` module): a subscriber only gets what is published while it
//! is subscribed, and a subscriber that falls far behind loses messages. Topics are per namespace: the client's.

use super::client::{Client, Route};
use futures::StreamExt;
use micro_core::proto::broker::{Message, PublishRequest, SubscribeRequest, broker_client::BrokerClient};
use std::collections::HashMap;
use std::future::Future;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use micro_core::proto::broker::Message as BrokerMessage;

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker answered with an error (bad topic, message too large, not authorized…).
    #[error("broker: {}", .0.message())]
    Status(#[from] tonic::Status),
    /// A streaming publish ended before every message was sent.
    #[error("broker: the publish stream ended early")]
    Closed,
}

/// A broker client.
#[derive(Clone, Debug)]
pub struct Broker {
    client: BrokerClient<InterceptedService<Channel, Route>>,
}

impl Broker {
    /// A broker client over `client`'s connection, in its namespace and with its credentials.
    pub fn from_client(client: &Client) -> Self {
        Self { client: BrokerClient::new(client.service("broker")) }
    }

    /// Publishes `body` on `topic`.
    pub async fn publish(&self, topic: &str, body: impl Into<Vec<u8>>) -> Result<(), BrokerError> {
        self.publish_with(topic, HashMap::new(), body).await
    }

    /// Publishes `body` with headers on `topic`.
    pub async fn publish_with(
        &self,
        topic: &str,
        header: HashMap<String, String>,
        body: impl Into<Vec<u8>>,
    ) -> Result<(), BrokerError> {
        let req = PublishRequest { topic: topic.to_string(), message: Some(Message { header, body: body.into() }) };
        self.client.clone().publish(req).await?;
        Ok(())
    }

    /// Publishes every message of `messages` as `(topic, message)` on one stream (the fast path for many
    /// messages); returns how many the broker took.
    pub async fn publish_all(
        &self,
        messages: impl futures::Stream<Item = (String, Message)> + Send + 'static,
    ) -> Result<u64, BrokerError> {
        let requests = messages.map(|(topic, message)| PublishRequest { topic, message: Some(message) });
        Ok(self.client.clone().publish_stream(requests).await?.into_inner().count)
    }

    /// Subscribes to `topic` (in queue group `queue`, if given: each message then goes to one member of the
    /// group) and returns the stream of messages once the subscription is in place. Dropping the stream
    /// unsubscribes.
    pub async fn subscribe_stream(
        &self,
        topic: &str,
        queue: Option<&str>,
    ) -> Result<impl futures::Stream<Item = Result<Message, BrokerError>> + Send + 'static, BrokerError> {
        let req = SubscribeRequest { topic: topic.to_string(), queue: queue.unwrap_or_default().to_string() };
        let stream = self.client.clone().subscribe(req).await?.into_inner();
        Ok(stream.map(|m| m.map_err(BrokerError::from)))
    }

    /// Subscribes to `topic` and calls `handler` with each message, one at a time, on a task of its own. Returns
    /// once the subscription is in place; the task ends when the subscription does (the server stops, or an
    /// error, which the task returns). Abort the task to unsubscribe.
    pub async fn subscribe<F, Fut>(
        &self,
        topic: &str,
        queue: Option<&str>,
        mut handler: F,
    ) -> Result<tokio::task::JoinHandle<Result<(), BrokerError>>, BrokerError>
    where
        F: FnMut(Message) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stream = self.subscribe_stream(topic, queue).await?;
        Ok(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(message) = stream.next().await {
                handler(message?).await;
            }
            Ok(())
        }))
    }
}
