//! The gRPC face of the events service: `events.Stream` (Publish, Consume) and `events.Store` (Read).

use super::group::ClaimOptions;
use super::{Events, EventsError, Group, Ownership, Start};
use crate::auth::Caller;
use futures::StreamExt;
use micro_core::proto::events::{
    ConsumeRequest, Event, PublishRequest, PublishResponse, ReadRequest, ReadResponse, Subscribe,
    consume_request::Request as ConsumeOp,
    store_server::{Store, StoreServer},
    stream_server::{Stream, StreamServer},
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

/// The largest event the service takes: payload plus metadata.
pub const MAX_EVENT: usize = 1 << 20;
/// The longest topic or group name, in bytes.
pub const MAX_NAME: usize = 256;
/// How long a consumer has to ack an event unless it says otherwise.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// The longest ack wait a consumer may ask for.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How many events one consumer may hold unacknowledged.
pub const MAX_INFLIGHT: usize = 1024;
/// How many events a consumer claims at a time.
const CLAIM_BATCH: usize = 64;
/// Events a Read returns unless it asks for a number.
pub const DEFAULT_READ_LIMIT: u64 = 25;
/// The most events one Read returns.
pub const MAX_READ_LIMIT: u64 = 1000;
/// A Read stops adding events past this many bytes (a client takes 4 MiB messages by default).
const MAX_READ_BYTES: usize = 3 << 20;

/// Both gRPC services over one [`Events`] core.
#[derive(Clone)]
pub struct EventsService {
    events: Arc<Events>,
}

impl EventsService {
    /// The services over `events`.
    pub fn new(events: Arc<Events>) -> Self {
        Self { events }
    }

    /// The tonic servers: `events.Stream` and `events.Store`.
    pub fn servers(self) -> (StreamServer<EventsService>, StoreServer<EventsService>) {
        (StreamServer::new(self.clone()), StoreServer::new(self))
    }
}

fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    let caller = Caller::of(req);
    caller.require_member(&caller.namespace)?;
    Ok(caller.namespace)
}

/// Checks a topic name: present, not too long, no control characters.
pub fn check_topic(topic: &str) -> Result<(), Status> {
    if topic.is_empty() {
        return Err(Status::invalid_argument("Missing topic"));
    }
    check_name("topic", topic)
}

fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.len() > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes long; at most {MAX_NAME} bytes are allowed",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!("{what} {name:?} contains control characters")));
    }
    Ok(())
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl From<EventsError> for Status {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::Closed => Status::unavailable(e.to_string()),
            EventsError::Store(e) => Status::internal(e.to_string()),
        }
    }
}

type ConsumeStream = Pin<Box<dyn futures::Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Stream for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        let size = req.payload.len() + req.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if size > MAX_EVENT {
            return Err(Status::invalid_argument(format!(
                "event is {size} bytes (payload and metadata); events are at most {MAX_EVENT} bytes (1 MiB)"
            )));
        }
        if req.timestamp < 0 {
            return Err(Status::invalid_argument("timestamp must not be negative (Unix nanoseconds)"));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let event = Event {
            id: id.clone(),
            topic: req.topic.clone(),
            metadata: req.metadata,
            payload: req.payload,
            timestamp: if req.timestamp == 0 { now_nanos() } else { req.timestamp },
            sequence: 0,
            redelivered: 0,
        };
        let sequence = self.events.publish(&ns, &req.topic, event).await?;
        Ok(Response::new(PublishResponse { id, sequence }))
    }

    type ConsumeStream = ConsumeStream;

    async fn consume(&self, req: Request<Streaming<ConsumeRequest>>) -> Result<Response<ConsumeStream>, Status> {
        let ns = namespace(&req)?;
        let mut inbound = req.into_inner();
        let first = tokio::select! {
            first = inbound.message() => first?,
            _ = self.events.cancel.cancelled() => return Err(EventsError::Closed.into()),
        };
        let subscribe = match first {
            Some(ConsumeRequest { request: Some(ConsumeOp::Subscribe(s)) }) => s,
            _ => return Err(Status::invalid_argument("the first message of Consume must be a subscribe request")),
        };
        let options = ConsumeOptions::of(&subscribe)?;
        let start = if subscribe.start_sequence > 0 {
            Start::Sequence(subscribe.start_sequence)
        } else if subscribe.offset > 0 {
            Start::Time(subscribe.offset.saturating_mul(1_000_000_000))
        } else {
            Start::Head
        };
        let head = self.events.head(&ns, &subscribe.topic).await?;
        let group = self.events.join(&ns, &subscribe.topic, &subscribe.group, start).await?;
        let (tx, rx) = mpsc::channel(CLAIM_BATCH);
        let events = self.events.clone();
        self.events.tasks.spawn(async move {
            let member = events.member_id();
            consume(&events, &group, member, options, inbound, head, tx).await;
            events.leave(&group, member).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// A consumer's settings.
#[derive(Clone, Copy, Debug)]
struct ConsumeOptions {
    auto_ack: bool,
    ack_wait: Duration,
    retry_limit: u32,
}

impl ConsumeOptions {
    fn of(s: &Subscribe) -> Result<Self, Status> {
        check_topic(&s.topic)?;
        check_name("group", &s.group)?;
        if s.offset < 0 {
            return Err(Status::invalid_argument("offset must not be negative (Unix seconds)"));
        }
        if s.ack_wait < 0 || s.ack_wait as u128 > MAX_ACK_WAIT.as_nanos() {
            return Err(Status::invalid_argument(format!(
                "ack_wait must be between 0 (the default, {DEFAULT_ACK_WAIT:?}) and {MAX_ACK_WAIT:?} in nanoseconds, got {}",
                s.ack_wait
            )));
        }
        if s.retry_limit < 0 {
            return Err(Status::invalid_argument("retry_limit must not be negative (0 means no limit)"));
        }
        Ok(Self {
            auto_ack: s.auto_ack,
            ack_wait: if s.ack_wait == 0 { DEFAULT_ACK_WAIT } else { Duration::from_nanos(s.ack_wait as u64) },
            retry_limit: s.retry_limit as u32,
        })
    }
}

/// The status of a consumer whose server lost its hold on the group to another server.
fn lost() -> Status {
    Status::unavailable("this server no longer serves the consumer group (another server took it over); consume again")
}

/// Applies one ack or nack from the consumer.
async fn answer(events: &Events, group: &Arc<Group>, request: ConsumeRequest) {
    match request.request {
        Some(ConsumeOp::Ack(id)) => {
            if !group.lock().ack(&id) {
                tracing::debug!(%id, "ack of an event the group does not hold");
            }
            events.save(group).await;
        }
        Some(ConsumeOp::Nack(id)) => {
            if group.lock().nack(&id) {
                group.changed.notify_waiters();
            }
        }
        Some(ConsumeOp::Subscribe(_)) | None => {
            tracing::debug!("ignoring a second subscribe request on a Consume stream");
        }
    }
}

/// One member's loop: claim events from the group, send them, take acks and nacks, redeliver what expires; until
/// the consumer closes its side of the stream (after its last acks) or goes away, or the server shuts down.
async fn consume(
    events: &Events,
    group: &Arc<Group>,
    member: u64,
    options: ConsumeOptions,
    mut inbound: Streaming<ConsumeRequest>,
    mut head: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<Event, Status>>,
) {
    let (ns, topic, _) = group.key().clone();
    // Shared events: another server may serve the group; wait on standby until this one takes it over.
    let mut ownership = group.ownership.subscribe();
    loop {
        let now = *ownership.borrow_and_update();
        match now {
            Ownership::Owned => break,
            Ownership::Lost => {
                let _ = tx.send(Err(lost())).await;
                return;
            }
            Ownership::Standby => {}
        }
        tokio::select! {
            _ = events.cancel.cancelled() => return,
            _ = tx.closed() => return,
            changed = ownership.changed() => if changed.is_err() { return },
            msg = inbound.next() => match msg {
                // Nothing was delivered yet, so there is nothing to ack.
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
    loop {
        let now = *ownership.borrow_and_update();
        if now == Ownership::Lost {
            let _ = tx.send(Err(lost())).await;
            return;
        }
        // Register for wake-ups before looking, so none is missed in between.
        let changed = group.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let head_now = *head.borrow_and_update();
        let now = Instant::now();
        let (claims, gave_up) = {
            let mut state = group.lock();
            state.expire(member, now);
            let before = state.given_up;
            let room = MAX_INFLIGHT.saturating_sub(state.inflight_of(member)).min(CLAIM_BATCH);
            let claims = state.claim(
                member,
                now,
                ClaimOptions {
                    head: head_now,
                    max: room,
                    ack_wait: options.ack_wait,
                    retry_limit: options.retry_limit,
                },
            );
            (claims, state.given_up > before)
        };
        if gave_up {
            tracing::info!(namespace = %ns, topic = %topic, group = %group.key().2, "gave up on events past their retry limit");
            events.save(group).await;
        }
        if !claims.is_empty() {
            let sequences: Vec<u64> = claims.iter().map(|c| c.seq).collect();
            let (n, t) = (ns.clone(), topic.clone());
            let found = match events.blocking(move |s| s.get(&n, &t, &sequences)).await {
                Ok(found) => found,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let mut batch = Vec::with_capacity(found.len());
            {
                let mut state = group.lock();
                for claim in &claims {
                    match found.iter().find(|e| e.sequence == claim.seq) {
                        Some(event) => {
                            state.track(claim.seq, &event.id);
                            let mut event = event.clone();
                            event.redelivered = claim.redelivered;
                            batch.push(event);
                        }
                        None => state.skip(claim.seq),
                    }
                }
            }
            for event in batch {
                let seq = event.sequence;
                // Take acks while waiting for room to send, so a slow reader does not stall its own acks.
                let permit = loop {
                    tokio::select! {
                        permit = tx.reserve() => match permit {
                            Ok(p) => break p,
                            Err(_) => return,
                        },
                        _ = events.cancel.cancelled() => return,
                        msg = inbound.next() => match msg {
                            Some(Ok(r)) => answer(events, group, r).await,
                            _ => return,
                        },
                    }
                };
                permit.send(Ok(event));
                if options.auto_ack {
                    group.lock().ack_seq(seq);
                }
            }
            if options.auto_ack {
                events.save(group).await;
            }
            continue;
        }
        let deadline = group.lock().next_deadline(member);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = events.cancel.cancelled() => return,
            _ = tx.closed() => return,
            _ = head.changed() => {}
            _ = ownership.changed() => {}
            _ = &mut changed => {}
            _ = sleep => {}
            msg = inbound.next() => match msg {
                Some(Ok(r)) => answer(events, group, r).await,
                // The consumer closed its side (or went away): it is done, once its acks are applied.
                _ => return,
            },
        }
    }
}

#[tonic::async_trait]
impl Store for EventsService {
    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let ns = namespace(&req)?;
        let req = req.into_inner();
        check_topic(&req.topic)?;
        let limit = if req.limit == 0 { DEFAULT_READ_LIMIT } else { req.limit };
        if limit > MAX_READ_LIMIT {
            return Err(Status::invalid_argument(format!(
                "limit {limit} is too large: read at most {MAX_READ_LIMIT} events at a time (page with offset)"
            )));
        }
        let from = req.offset.saturating_add(1);
        let topic = req.topic;
        let events = self.events.blocking(move |s| s.read(&ns, &topic, from, limit as usize, MAX_READ_BYTES)).await?;
        Ok(Response::new(ReadResponse { events }))
    }
}
