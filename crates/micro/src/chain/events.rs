//! Call events: `started`, then `succeeded` or `failed`, published on the broker by a background task so that a
//! call never waits for them.

use super::{Call, Outcome};
use crate::broker::Broker;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// How many events may wait to be published; more are dropped.
const QUEUE: usize = 1024;
/// How long one publish may take before it is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The call passed authentication and authorization; the hooks and the handler run next.
    Started,
    /// The call ended with OK.
    Succeeded,
    /// The call ended with an error (or was refused).
    Failed,
}

/// A call event, published as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEvent {
    /// What happened.
    pub kind: EventKind,
    /// The call's id: a call's events share it.
    pub call_id: String,
    /// The gRPC service: `inventory.Inventory`.
    pub service: String,
    /// The endpoint: `Inventory.Collect`.
    pub endpoint: String,
    /// The caller's account id, if authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The namespace that issued the caller's account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// How long the call took, for `succeeded` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The gRPC code (0 is OK), for `succeeded` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The error message, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CallEvent {
    pub(crate) fn new(kind: EventKind, call: &Call, elapsed: Option<Duration>, outcome: Option<&Outcome>) -> Self {
        Self {
            kind,
            call_id: call.id.clone(),
            service: call.service.clone(),
            endpoint: call.endpoint.clone(),
            account: call.account.as_ref().map(|a| a.id.clone()),
            issuer: call.account.as_ref().map(|a| a.issuer.clone()),
            duration_ms: elapsed.map(|d| d.as_millis() as u64),
            code: outcome.map(|o| o.code as i32),
            error: outcome.filter(|o| !o.is_ok()).map(|o| o.message.clone()),
        }
    }
}

/// Publishes call events: a [`Broker`] publishes them as JSON with a header `kind`. A test can record them.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event` on `topic`.
    fn publish<'a>(&'a self, topic: &'a str, event: &'a CallEvent) -> BoxFuture<'a, Result<(), String>>;
}

impl Publisher for Broker {
    fn publish<'a>(&'a self, topic: &'a str, event: &'a CallEvent) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
            let kind = serde_json::to_value(event.kind).ok().and_then(|v| v.as_str().map(str::to_string));
            let header = HashMap::from([("kind".to_string(), kind.unwrap_or_default())]);
            self.publish_with(topic, header, body).await.map_err(|e| e.to_string())
        })
    }
}

/// The events stage: a bounded queue to one publishing task, started with the first event.
#[derive(Clone)]
pub(crate) struct Emitter {
    publisher: Arc<dyn Publisher>,
    queue: Arc<OnceLock<mpsc::Sender<(String, CallEvent)>>>,
    dropping: Arc<AtomicBool>,
}

impl Emitter {
    pub(crate) fn new(publisher: Arc<dyn Publisher>) -> Self {
        Self { publisher, queue: Default::default(), dropping: Default::default() }
    }

    /// Queues `event` for publishing on `topic`; drops it (and warns, once until the queue drains) when the queue
    /// is full.
    pub(crate) fn emit(&self, topic: String, event: CallEvent) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(publish(self.publisher.clone(), rx));
            tx
        });
        match queue.try_send((topic, event)) {
            Ok(()) => {
                self.dropping.store(false, Ordering::Relaxed);
            }
            Err(_) => {
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "call events are published slower than they happen: dropping events until the queue drains"
                    );
                }
            }
        }
    }
}

/// Publishes the queued events in order, until every sender is gone.
async fn publish(publisher: Arc<dyn Publisher>, mut rx: mpsc::Receiver<(String, CallEvent)>) {
    let mut failing = false;
    while let Some((topic, event)) = rx.recv().await {
        let result = match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&topic, &event)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {PUBLISH_TIMEOUT:?}")),
        };
        match result {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(topic, error = %e, "cannot publish call events (warning once until it works again)");
            }
            Err(_) => {}
        }
    }
}
