//! The events service: durable streams with consumer groups, acknowledgements and redelivery.
//!
//! Events are stored per namespace and topic in `events.redb` in the data dir (see [`store`]), each with a
//! sequence from 1. One writer task owns every write: it takes whatever publishes and group positions are queued,
//! writes them in one durable transaction on a blocking thread (group commit), then answers the publishers and
//! wakes the consumers of the topics that grew.
//!
//! A consumer joins a group (a named one is durable; an unnamed one is private to the consumer and forgotten when
//! it leaves). The group hands each event to one of its members and waits for an ack; an event that is not
//! acked within the member's ack wait, or that is nacked, or whose member leaves, is delivered again, until the
//! member's retry limit says to give up. Each group's position (every event up to a floor is done, plus the done
//! ones above it) is saved, so a group that reconnects, even after a restart, resumes after its last acked event.
//! A new group starts at the head of the topic (only events published from then on, as in Micro), or at a time or
//! a sequence the consumer gives.
//!
//! Access: an account of the namespace (the caller's `micro-namespace`), or an administrator of `micro`. Micro
//! required a `micro` administrator for everything; micro lets each namespace use its own streams, isolated from
//! the others.

pub mod group;
pub mod service;
pub mod store;

use super::{CoreContext, ServerError};
use crate::proto::events::Event;
use group::GroupState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{Append, GroupKey, GroupPosition, Store};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The database file in the data dir.
pub const DB_FILE: &str = "events.redb";
/// How many operations the writer takes into one transaction at most.
const MAX_BATCH: usize = 1024;
/// After shutdown begins, the writer stops once no operation arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// Starts the events service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let path = ctx.data_dir.join(DB_FILE);
    let store = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(|e| ServerError::Start { service: "events", message: e.to_string() })?
        .map_err(|e| ServerError::Start { service: "events", message: e.to_string() })?;
    let events = Events::start(Arc::new(store), ctx.cancel.clone(), &ctx.tasks);
    let (stream, store) = service::EventsService::new(events).servers();
    routes.add_service(stream).add_service(store);
    Ok(())
}

/// What went wrong with an events operation.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// The server is shutting down.
    #[error("the events service is shutting down")]
    Closed,
}

/// A consumer group, shared by its members.
#[derive(Debug)]
pub struct Group {
    key: GroupKey,
    durable: bool,
    /// Its bookkeeping.
    pub state: Mutex<GroupState>,
    /// Woken when events become ready for redelivery (a member left or nacked).
    pub changed: Notify,
}

impl Group {
    /// Locks the state (a poisoned lock is still usable: the state is plain data).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group's namespace, topic and name.
    pub fn key(&self) -> &GroupKey {
        &self.key
    }
}

enum Op {
    Publish(Append, oneshot::Sender<Result<u64, String>>),
    Save(Arc<Group>),
}

/// Where a new group starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// At the head: only events published from now on.
    Head,
    /// At this sequence.
    Sequence(u64),
    /// At the first event published at or after this time (Unix nanoseconds).
    Time(i64),
}

/// The events core: storage, the writer, topic heads and consumer groups.
pub struct Events {
    store: Arc<Store>,
    writer: mpsc::Sender<Op>,
    heads: Mutex<HashMap<(String, String), watch::Sender<u64>>>,
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    next_member: AtomicU64,
    /// Cancelled at shutdown: consumers stop.
    pub cancel: CancellationToken,
    /// Consumers are tracked here, so shutdown waits for them to save their groups.
    pub tasks: TaskTracker,
}

impl Events {
    /// Starts the writer on `tasks` and returns the core.
    pub fn start(store: Arc<Store>, cancel: CancellationToken, tasks: &TaskTracker) -> Arc<Events> {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let events = Arc::new(Events {
            store,
            writer: tx,
            heads: Default::default(),
            groups: Default::default(),
            next_member: AtomicU64::new(1),
            cancel,
            tasks: tasks.clone(),
        });
        tasks.spawn(writer(Arc::downgrade(&events), events.store.clone(), events.cancel.clone(), rx));
        events
    }

    /// Stores an event; returns its sequence once it is durable.
    pub async fn publish(&self, namespace: &str, topic: &str, event: Event) -> Result<u64, EventsError> {
        let (tx, rx) = oneshot::channel();
        let append = Append { namespace: namespace.to_string(), topic: topic.to_string(), event };
        self.writer.send(Op::Publish(append, tx)).await.map_err(|_| EventsError::Closed)?;
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(EventsError::Store(store::StoreError::new(e))),
            Err(_) => Err(EventsError::Closed),
        }
    }

    /// Runs a blocking storage call off the async workers.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, store::StoreError> + Send + 'static,
    ) -> Result<T, EventsError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(|_| EventsError::Closed)?.map_err(Into::into)
    }

    /// A watch of a topic's last sequence.
    pub async fn head(&self, namespace: &str, topic: &str) -> Result<watch::Receiver<u64>, EventsError> {
        let key = (namespace.to_string(), topic.to_string());
        if let Some(h) = self.heads.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(h.subscribe());
        }
        let (ns, t) = key.clone();
        let stored = self.blocking(move |s| s.head(&ns, &t)).await?;
        Ok(self.raise_head(key, stored).subscribe())
    }

    /// Raises a topic's head to `seq` (never lowers it), creating its watch if needed.
    fn raise_head(&self, key: (String, String), seq: u64) -> watch::Sender<u64> {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let head = heads.entry(key).or_insert_with(|| watch::channel(seq).0);
        head.send_if_modified(|h| {
            let raise = seq > *h;
            if raise {
                *h = seq;
            }
            raise
        });
        head.clone()
    }

    /// Joins consumer group `name` of a topic (a private group when `name` is empty), creating it at `start` if it
    /// is new.
    pub async fn join(
        &self,
        namespace: &str,
        topic: &str,
        name: &str,
        start: Start,
    ) -> Result<Arc<Group>, EventsError> {
        let durable = !name.is_empty();
        let key: GroupKey = (
            namespace.to_string(),
            topic.to_string(),
            if durable { name.to_string() } else { uuid::Uuid::new_v4().to_string() },
        );
        if durable && let Some(g) = self.groups.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            g.lock().members += 1;
            return Ok(g.clone());
        }
        let (ns, t, g) = key.clone();
        let (position, fresh) = self
            .blocking(move |s| {
                if durable && let Some(p) = s.group(&ns, &t, &g)? {
                    return Ok((p, false));
                }
                let first = match start {
                    Start::Head => s.head(&ns, &t)? + 1,
                    Start::Sequence(seq) => seq.max(1),
                    Start::Time(ts) => s.first_at(&ns, &t, ts)?,
                };
                Ok((GroupPosition { floor: first - 1, done: Vec::new() }, true))
            })
            .await?;
        let group = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let group = groups.entry(key.clone()).or_insert_with(|| {
                let mut state = GroupState::at(position);
                state.dirty = durable && fresh;
                Arc::new(Group { key, durable, state: Mutex::new(state), changed: Notify::new() })
            });
            group.lock().members += 1;
            group.clone()
        };
        if group.lock().dirty {
            self.save(&group).await;
        }
        Ok(group)
    }

    /// A member leaves a group: its unacknowledged events go back for redelivery, and a private group is
    /// forgotten once its last member leaves.
    pub async fn leave(&self, group: &Arc<Group>, member: u64) {
        let (handed_back, empty) = {
            let mut state = group.lock();
            let n = state.detach(member);
            (n, state.members == 0)
        };
        if handed_back > 0 {
            group.changed.notify_waiters();
        }
        if empty && !group.durable {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            if groups.get(&group.key).is_some_and(|g| Arc::ptr_eq(g, group) && g.lock().members == 0) {
                groups.remove(&group.key);
            }
        }
        self.save(group).await;
    }

    /// Queues a durable group's position for saving, if it changed and no save is queued yet.
    pub async fn save(&self, group: &Arc<Group>) {
        if !group.durable {
            return;
        }
        {
            let mut state = group.lock();
            if !state.dirty || state.save_queued {
                return;
            }
            state.save_queued = true;
        }
        if self.writer.send(Op::Save(group.clone())).await.is_err() {
            group.lock().save_queued = false;
        }
    }

    /// A fresh member id.
    pub fn member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    fn durable_groups(&self) -> Vec<Arc<Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|g| g.durable).cloned().collect()
    }
}

/// The writer: group-commits queued operations until shutdown, then drains what is still queued and saves every
/// group that changed.
async fn writer(
    events: std::sync::Weak<Events>,
    store: Arc<Store>,
    cancel: CancellationToken,
    mut rx: mpsc::Receiver<Op>,
) {
    loop {
        let first = tokio::select! {
            op = rx.recv() => op,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { break };
        let batch = gather(first, &mut rx);
        commit(&events, &store, batch).await;
    }
    // Shutting down: consumers are ending and save their groups; take what arrives until it is quiet.
    while let Ok(Some(first)) = tokio::time::timeout(DRAIN_IDLE, rx.recv()).await {
        let batch = gather(first, &mut rx);
        commit(&events, &store, batch).await;
    }
    if let Some(events) = events.upgrade() {
        let batch = events.durable_groups().into_iter().map(Op::Save).collect();
        commit(&std::sync::Weak::new(), &store, batch).await;
    }
}

fn gather(first: Op, rx: &mut mpsc::Receiver<Op>) -> Vec<Op> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    batch
}

async fn commit(events: &std::sync::Weak<Events>, store: &Arc<Store>, batch: Vec<Op>) {
    let mut appends = Vec::new();
    let mut replies = Vec::new();
    let mut groups: Vec<Arc<Group>> = Vec::new();
    for op in batch {
        match op {
            Op::Publish(append, reply) => {
                appends.push(append);
                replies.push(reply);
            }
            Op::Save(group) => {
                if !groups.iter().any(|g| Arc::ptr_eq(g, &group)) {
                    groups.push(group);
                }
            }
        }
    }
    let positions: Vec<(GroupKey, GroupPosition)> = groups
        .iter()
        .filter_map(|g| {
            let mut state = g.lock();
            state.save_queued = false;
            let dirty = std::mem::replace(&mut state.dirty, false);
            dirty.then(|| (g.key.clone(), state.position()))
        })
        .collect();
    if appends.is_empty() && positions.is_empty() {
        return;
    }
    let store = store.clone();
    let job = tokio::task::spawn_blocking(move || {
        let result = store.commit(&appends, &positions);
        (appends, result)
    });
    let (appends, result) = match job.await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "the events writer failed");
            return;
        }
    };
    match result {
        Ok(sequences) => {
            let events = events.upgrade();
            for ((append, reply), seq) in appends.into_iter().zip(replies).zip(sequences) {
                if let Some(events) = &events {
                    events.raise_head((append.namespace, append.topic), seq);
                }
                let _ = reply.send(Ok(seq));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write events");
            for g in &groups {
                g.lock().dirty = true;
            }
            for reply in replies {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
}
