//! The notes service: micro's example of every building block from a service.
//!
//! - **store**: each note is a JSON record `note/<id>` (ids sort by creation time, so a descending listing is
//!   newest first);
//! - **config**: `notes.max_length` (default 1000) limits a note's text, read on every create so a change applies
//!   at once (`micro config set notes.max_length 20`);
//! - **broker**: every new note is announced on topic `notes`; the service's own subscriber counts announcements;
//! - **events**: every new note is recorded on the durable topic `notes`; the consumer group `notes-stats` counts
//!   and acknowledges them, and resumes where it left off after a restart.
//!
//! The handler is a library so tests can serve it in-process; `main.rs` runs it as a micro service.

use micro::broker::Broker;
use micro::client::Client;
use micro::config::Config;
use micro::events::{ConsumeOptions, Events};
use micro::store::{Query, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Generated code and descriptors of `notes.proto`.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("notes");

    /// The descriptor set of `notes.proto`, registered with the service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/notes_descriptor.bin"));
}

use pb::notes_server::{Notes, NotesServer};
use pb::{
    CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse, ListRequest, ListResponse,
    Note, StatsRequest, StatsResponse,
};

/// The broker topic and the events topic of new notes.
pub const TOPIC: &str = "notes";
/// The consumer group that counts recorded notes.
pub const GROUP: &str = "notes-stats";
/// The config path of the longest allowed text.
pub const MAX_LENGTH_KEY: &str = "notes.max_length";
/// The longest allowed text when config does not say.
pub const DEFAULT_MAX_LENGTH: i64 = 1000;

/// A note as stored: the JSON value of record `note/<id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    id: String,
    title: String,
    text: String,
    created: i64,
}

impl From<Stored> for Note {
    fn from(s: Stored) -> Self {
        Note { id: s.id, title: s.title, text: s.text, created: s.created }
    }
}

/// What the background workers counted.
#[derive(Debug, Default)]
pub struct Counters {
    announced: AtomicU64,
    recorded: AtomicU64,
    subscribed: AtomicBool,
    consuming: AtomicBool,
}

/// The handler, over the platform's building blocks.
#[derive(Clone)]
pub struct Handler {
    store: Store,
    config: Config,
    broker: Broker,
    events: Events,
    counters: Arc<Counters>,
}

/// A building block failed: an internal error of notes, whose message says which block and why. (Passing the
/// block's own code on would tell the caller, say, that *they* are unauthorized.)
fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Handler {
    /// A handler that uses the platform through `client`.
    pub fn new(client: &Client) -> Self {
        Self {
            store: Store::from_client(client),
            config: Config::from_client(client),
            broker: Broker::from_client(client),
            events: Events::from_client(client),
            counters: Arc::default(),
        }
    }

    async fn max_length(&self) -> i64 {
        self.config.get_or(MAX_LENGTH_KEY, DEFAULT_MAX_LENGTH).await.unwrap_or(DEFAULT_MAX_LENGTH)
    }

    /// Runs the broker subscriber and the events consumer until the process ends, resubscribing after errors
    /// (the server restarting, say).
    pub fn spawn_workers(&self) {
        let (broker, counters) = (self.broker.clone(), self.counters.clone());
        tokio::spawn(async move {
            loop {
                let subscribed_flag = &counters.subscribed;
                let counters = counters.clone();
                let subscribed = broker
                    .subscribe(TOPIC, None, move |_message| {
                        counters.announced.fetch_add(1, Ordering::Relaxed);
                        async {}
                    })
                    .await;
                match subscribed {
                    Ok(task) => {
                        subscribed_flag.store(true, Ordering::Relaxed);
                        match task.await {
                            Ok(Err(e)) => tracing::warn!(error = %e, "the broker subscription ended"),
                            _ => tracing::info!("the broker subscription ended"),
                        }
                        subscribed_flag.store(false, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot subscribe to the broker yet"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (events, counters) = (self.events.clone(), self.counters.clone());
        tokio::spawn(async move {
            loop {
                match events.consume(TOPIC, ConsumeOptions::group(GROUP).from_sequence(1)).await {
                    Ok(mut consumer) => {
                        counters.consuming.store(true, Ordering::Relaxed);
                        while let Some(event) = consumer.next().await {
                            match event {
                                Ok(event) => {
                                    if event.ack().await.is_ok() {
                                        counters.recorded.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "the events consumer failed");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot consume events yet"),
                }
                counters.consuming.store(false, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

#[tonic::async_trait]
impl Notes for Handler {
    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let r = req.into_inner();
        if r.title.trim().is_empty() {
            return Err(Status::invalid_argument("a note needs a title"));
        }
        let max = self.max_length().await;
        let length = r.text.chars().count() as i64;
        if length > max {
            return Err(Status::invalid_argument(format!(
                "the text has {length} characters; at most {max} are allowed (config {MAX_LENGTH_KEY})"
            )));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let stored = Stored {
            id: format!("{:020}", now.as_nanos()),
            title: r.title,
            text: r.text,
            created: now.as_secs() as i64,
        };
        self.store.write_json(&format!("note/{}", stored.id), &stored).await.map_err(internal)?;
        self.broker.publish(TOPIC, stored.id.clone().into_bytes()).await.map_err(internal)?;
        let metadata = HashMap::from([("type".to_string(), "note.created".to_string())]);
        self.events.publish_json(TOPIC, &stored, metadata).await.map_err(internal)?;
        Ok(Response::new(CreateResponse { note: Some(stored.into()) }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let id = req.into_inner().id;
        let stored: Option<Stored> = self.store.read_json(&format!("note/{id}")).await.map_err(internal)?;
        let stored = stored.ok_or_else(|| Status::not_found(format!("note {id:?} not found")))?;
        Ok(Response::new(GetResponse { note: Some(stored.into()) }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => 20,
            n => n,
        };
        let records = self.store.read_many(Query::prefix("note/").descending().limit(limit)).await.map_err(internal)?;
        let notes = records.iter().filter_map(|r| r.json::<Stored>().ok()).map(Note::from).collect();
        Ok(Response::new(ListResponse { notes }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = req.into_inner().id;
        self.store.delete(&format!("note/{id}")).await.map_err(internal)?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        let notes = self.store.list(Query::prefix("note/")).await.map_err(internal)?.len() as u64;
        Ok(Response::new(StatsResponse {
            notes,
            announced: self.counters.announced.load(Ordering::Relaxed),
            recorded: self.counters.recorded.load(Ordering::Relaxed),
            max_length: self.max_length().await,
            ready: self.counters.subscribed.load(Ordering::Relaxed) && self.counters.consuming.load(Ordering::Relaxed),
        }))
    }
}

/// The micro service: name, schema and handler, using the platform through `client`.
pub fn service(handler: Handler) -> micro::Service {
    micro::Service::new("notes")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        .add_service(NotesServer::new(handler).max_decoding_message_size(micro::MAX_MESSAGE_SIZE))
}
