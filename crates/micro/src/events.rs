//! An events client for services: publish, and consume with acknowledgements.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use micro::{client::Client, events::{ConsumeOptions, Events}};
//! let client = Client::from_env()?;
//! let events = Events::from_client(&client);
//! events.publish("orders", br#"{"id":1}"#.to_vec(), Default::default()).await?;
//! let mut consumer = events.consume("orders", ConsumeOptions::group("billing").from_sequence(1)).await?;
//! while let Some(event) = consumer.next().await {
//!     let event = event?;
//!     println!("{} #{}", event.topic, event.sequence);
//!     event.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! Events are durable and per namespace (the client's). A consumer group hands each event to one of its members and
//! delivers it again when it is not acknowledged within the ack wait (30 s by default), until the retry limit.

use super::client::{Client, Route};
use futures::StreamExt;
use micro_core::proto::events::{
    ConsumeRequest, PublishRequest, ReadRequest, Subscribe, consume_request::Request as ConsumeOp,
    store_client::StoreClient, stream_client::StreamClient,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What can go wrong talking to the events service.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The service answered with an error (bad topic, event too large, not authorized…).
    #[error("events: {}", .0.message())]
    Status(#[from] tonic::Status),
    /// The consume stream is closed, so the ack or nack cannot be sent.
    #[error("events: the consume stream is closed")]
    Closed,
    /// The payload is not the JSON that was expected.
    #[error("events: cannot decode the payload: {0}")]
    Decode(#[from] serde_json::Error),
}

/// A published event's id and sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: String,
    /// Its position in the topic, from 1.
    pub sequence: u64,
}

/// How to consume.
#[derive(Clone, Debug, Default)]
pub struct ConsumeOptions {
    /// The consumer group; empty for a private group that lives as long as the consumer.
    pub group: String,
    /// Where a new group starts: at the first event published at or after this time.
    pub offset: Option<SystemTime>,
    /// Where a new group starts: at this sequence (wins over `offset`).
    pub start_sequence: Option<u64>,
    /// Have the service acknowledge each event as it sends it.
    pub auto_ack: bool,
    /// How long before an unacknowledged event is delivered again (default 30 s).
    pub ack_wait: Option<Duration>,
    /// Give up on an event after this many redeliveries (default: never).
    pub retry_limit: Option<u32>,
}

impl ConsumeOptions {
    /// Options for consumer group `name`.
    pub fn group(name: &str) -> Self {
        Self { group: name.to_string(), ..Default::default() }
    }

    /// A new group starts at sequence `seq`.
    pub fn from_sequence(mut self, seq: u64) -> Self {
        self.start_sequence = Some(seq);
        self
    }

    /// A new group starts at the first event published at or after `time`.
    pub fn from_time(mut self, time: SystemTime) -> Self {
        self.offset = Some(time);
        self
    }

    /// Acknowledge events as they are sent.
    pub fn auto_ack(mut self) -> Self {
        self.auto_ack = true;
        self
    }

    /// Deliver an unacknowledged event again after `wait`.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// Stop redelivering an event after `retries` redeliveries.
    pub fn retry_limit(mut self, retries: u32) -> Self {
        self.retry_limit = Some(retries);
        self
    }

    fn request(&self, topic: &str) -> Subscribe {
        Subscribe {
            topic: topic.to_string(),
            group: self.group.clone(),
            offset: self
                .offset
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs().max(1) as i64),
            start_sequence: self.start_sequence.unwrap_or(0),
            auto_ack: self.auto_ack,
            ack_wait: self.ack_wait.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64),
            retry_limit: self.retry_limit.map_or(0, |r| r.min(i32::MAX as u32) as i32),
        }
    }
}

/// An event as consumed: the stored event plus a way to ack or nack it.
#[derive(Debug)]
pub struct Event {
    /// Its id.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its metadata.
    pub metadata: HashMap<String, String>,
    /// Its payload.
    pub payload: Vec<u8>,
    /// When it was published, Unix nanoseconds.
    pub timestamp: i64,
    /// Its position in the topic, from 1.
    pub sequence: u64,
    /// How many times it was delivered to this group before.
    pub redelivered: u32,
    acks: Option<mpsc::Sender<ConsumeRequest>>,
}

impl Event {
    fn new(e: micro_core::proto::events::Event, acks: Option<mpsc::Sender<ConsumeRequest>>) -> Self {
        Self {
            id: e.id,
            topic: e.topic,
            metadata: e.metadata,
            payload: e.payload,
            timestamp: e.timestamp,
            sequence: e.sequence,
            redelivered: e.redelivered,
            acks,
        }
    }

    /// Acknowledges the event: it is not delivered to this group again.
    pub async fn ack(&self) -> Result<(), EventsError> {
        self.answer(ConsumeOp::Ack(self.id.clone())).await
    }

    /// Rejects the event: it is delivered again right away.
    pub async fn nack(&self) -> Result<(), EventsError> {
        self.answer(ConsumeOp::Nack(self.id.clone())).await
    }

    async fn answer(&self, op: ConsumeOp) -> Result<(), EventsError> {
        match &self.acks {
            Some(tx) => tx.send(ConsumeRequest { request: Some(op) }).await.map_err(|_| EventsError::Closed),
            None => Ok(()),
        }
    }

    /// The payload decoded from JSON.
    pub fn unmarshal<T: serde::de::DeserializeOwned>(&self) -> Result<T, EventsError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// A live consumer: events as they come. Dropping it ends the consumption (unacknowledged events are delivered
/// again, to this group's other members or to whoever joins next).
pub struct Consumer {
    stream: tonic::Streaming<micro_core::proto::events::Event>,
    acks: mpsc::Sender<ConsumeRequest>,
}

impl Consumer {
    /// The next event; `None` when the service ended the stream (it shuts down).
    pub async fn next(&mut self) -> Option<Result<Event, EventsError>> {
        match self.stream.next().await? {
            Ok(e) => Some(Ok(Event::new(e, Some(self.acks.clone())))),
            Err(status) => Some(Err(status.into())),
        }
    }

    /// Ends the consumption gracefully: the acks and nacks sent before are applied first (waits at most 5 s for
    /// the service to confirm). Events not acknowledged are delivered again later.
    pub async fn close(mut self) {
        // An empty request ends the request stream (see `Events::consume`), after whatever was queued before it.
        if self.acks.send(ConsumeRequest { request: None }).await.is_ok() {
            let drain = async { while let Some(Ok(_)) = self.stream.next().await {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
        }
    }
}

/// An events client.
#[derive(Clone, Debug)]
pub struct Events {
    stream: StreamClient<InterceptedService<Channel, Route>>,
    store: StoreClient<InterceptedService<Channel, Route>>,
}

impl Events {
    /// An events client over `client`'s connection, in its namespace and with its credentials.
    pub fn from_client(client: &Client) -> Self {
        let channel = client.service("events");
        Self { stream: StreamClient::new(channel.clone()), store: StoreClient::new(channel) }
    }

    /// Publishes an event; it is durable when this returns.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        metadata: HashMap<String, String>,
    ) -> Result<Published, EventsError> {
        let req = PublishRequest { topic: topic.to_string(), metadata, payload: payload.into(), timestamp: 0 };
        let rsp = self.stream.clone().publish(req).await?.into_inner();
        Ok(Published { id: rsp.id, sequence: rsp.sequence })
    }

    /// Publishes `value` as JSON.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        topic: &str,
        value: &T,
        metadata: HashMap<String, String>,
    ) -> Result<Published, EventsError> {
        self.publish(topic, serde_json::to_vec(value)?, metadata).await
    }

    /// Starts consuming `topic`. Returns once the service accepted the subscription.
    pub async fn consume(&self, topic: &str, options: ConsumeOptions) -> Result<Consumer, EventsError> {
        let (tx, rx) = mpsc::channel(256);
        let first = ConsumeRequest { request: Some(ConsumeOp::Subscribe(options.request(topic))) };
        tx.send(first).await.map_err(|_| EventsError::Closed)?;
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx)
            .take_while(|r: &ConsumeRequest| std::future::ready(r.request.is_some()));
        let stream = self.stream.clone().consume(requests).await?.into_inner();
        Ok(Consumer { stream, acks: tx })
    }

    /// Past events of `topic`, oldest first: `limit` of them (default 25, at most 1000) after skipping `offset`.
    pub async fn read(&self, topic: &str, limit: u64, offset: u64) -> Result<Vec<Event>, EventsError> {
        let req = ReadRequest { topic: topic.to_string(), limit, offset };
        let events = self.store.clone().read(req).await?.into_inner().events;
        Ok(events.into_iter().map(|e| Event::new(e, None)).collect())
    }
}
