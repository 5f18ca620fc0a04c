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
//! When the server's store is in PostgreSQL, so are the events (see [`postgres`]): every server that shares the
//! database sees every topic, and a durable group is served by one server at a time. A group's [`Ownership`]
//! says whether this server serves it; its members elsewhere wait on standby and take over where it left off.
//!
//! Access: an account of the namespace (the caller's `micro-namespace`), or an administrator of `micro`. Micro
//! required a `micro` administrator for everything; micro lets each namespace use its own streams, isolated from
//! the others.

pub mod group;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod service;
pub mod store;

use super::{CoreContext, ServerError};
use group::GroupState;
use micro_core::proto::events::Event;
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

/// How often a server on standby tries to take a durable group, and checks that it still holds the ones it serves.
#[cfg(feature = "postgres")]
const OWNERSHIP_POLL: Duration = Duration::from_secs(1);

/// Starts the events service and adds its gRPC services to `routes`.
pub async fn start(
    ctx: &CoreContext,
    location: &super::state::Location,
    routes: &mut tonic::service::RoutesBuilder,
) -> Result<(), ServerError> {
    let start_error = |message: String| ServerError::Start { service: "events", message };
    let store = match location {
        super::state::Location::DataDir => {
            let path = ctx.data_dir.join(DB_FILE);
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| start_error(e.to_string()))?
                .map_err(|e| start_error(e.to_string()))?
        }
        #[cfg(feature = "postgres")]
        super::state::Location::Postgres(url) => {
            let url = url.clone();
            tokio::task::spawn_blocking(move || Store::open_shared(&url))
                .await
                .map_err(|e| start_error(e.to_string()))?
                .map_err(|e| start_error(e.to_string()))?
        }
    };
    let events = Events::start(Arc::new(store), ctx.cancel.clone(), &ctx.tasks);
    #[cfg(feature = "postgres")]
    if let super::state::Location::Postgres(url) = location {
        let owners = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || postgres::Owners::open(&url))
                .await
                .map_err(|e| start_error(e.to_string()))?
                .map_err(|e| start_error(e.to_string()))?
        };
        events.share(owners, url.clone());
    }
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

/// Whether this server serves a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Another server serves it; this one waits to take over.
    Standby,
    /// This server serves it.
    Owned,
    /// This server served it but lost its hold (its database session dropped): its members must end.
    Lost,
}

/// A consumer group, shared by its members.
#[derive(Debug)]
pub struct Group {
    key: GroupKey,
    durable: bool,
    /// Whether this server serves the group (always [`Ownership::Owned`] unless the events are shared).
    pub ownership: watch::Sender<Ownership>,
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
    /// The locks that make this server serve durable groups, when the events are shared.
    #[cfg(feature = "postgres")]
    owners: std::sync::OnceLock<Arc<postgres::Owners>>,
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
            #[cfg(feature = "postgres")]
            owners: std::sync::OnceLock::new(),
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
    /// is new. When the events are shared, a durable group may be on [`Ownership::Standby`] until this server
    /// takes it over.
    pub async fn join(
        self: &Arc<Self>,
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
        let position = self.position(&key, durable, start).await?;
        #[cfg(feature = "postgres")]
        if durable && let Some(owners) = self.owners.get() {
            // Where a new group starts is fixed now, when the consumer subscribes, even if this server serves it
            // only later.
            return Ok(self.join_shared(key, position.0, owners.clone()));
        }
        let group = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            let group = groups.entry(key.clone()).or_insert_with(|| {
                let (position, fresh) = position;
                let mut state = GroupState::at(position);
                state.dirty = durable && fresh;
                Arc::new(Group {
                    key,
                    durable,
                    ownership: watch::channel(Ownership::Owned).0,
                    state: Mutex::new(state),
                    changed: Notify::new(),
                })
            });
            group.lock().members += 1;
            group.clone()
        };
        if group.lock().dirty {
            self.save(&group).await;
        }
        Ok(group)
    }

    /// A group's saved position, or a new one at `start` (then `true`).
    async fn position(
        &self,
        key: &GroupKey,
        durable: bool,
        start: Start,
    ) -> Result<(GroupPosition, bool), EventsError> {
        let (ns, t, g) = key.clone();
        self.blocking(move |s| {
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
        .await
    }

    #[cfg(feature = "postgres")]
    fn join_shared(self: &Arc<Self>, key: GroupKey, start: GroupPosition, owners: Arc<postgres::Owners>) -> Arc<Group> {
        let group = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(g) = groups.get(&key) {
                g.lock().members += 1;
                return g.clone();
            }
            let group = Arc::new(Group {
                key: key.clone(),
                durable: true,
                ownership: watch::channel(Ownership::Standby).0,
                state: Mutex::new(GroupState::default()),
                changed: Notify::new(),
            });
            group.lock().members = 1;
            groups.insert(key, group.clone());
            group
        };
        self.tasks.spawn(serve_group(self.clone(), group.clone(), start, owners));
        group
    }

    /// Shares the events with the other servers on the PostgreSQL database at `url`: their publishes wake the
    /// consumers here, and a durable group is served by one server at a time (`owners` holds the groups this
    /// server serves).
    #[cfg(feature = "postgres")]
    fn share(self: &Arc<Self>, owners: postgres::Owners, url: String) {
        let _ = self.owners.set(Arc::new(owners));
        let weak = Arc::downgrade(self);
        let on: Arc<dyn Fn(Option<Vec<String>>) + Send + Sync> = Arc::new(move |batch| {
            let Some(events) = weak.upgrade() else { return };
            match batch {
                Some(batch) => {
                    for notice in batch.iter().filter_map(|p| postgres::parse_notice(p)) {
                        let (ns, topic, head) = notice;
                        events.raise_head((ns, topic), head);
                    }
                }
                // Notices may have been missed: read the heads of the topics that have watchers.
                None => {
                    let keys: Vec<(String, String)> =
                        events.heads.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                    for (ns, topic) in keys {
                        match events.store.head(&ns, &topic) {
                            Ok(head) => {
                                events.raise_head((ns, topic), head);
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read a topic's head"),
                        }
                    }
                }
            }
        });
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            crate::state::pg::notifications(&url, postgres::CHANNEL, on, cancel).await;
        });
    }

    /// Removes `group` from the groups of this server if no member is left; `true` if it did.
    #[cfg(feature = "postgres")]
    fn forget_if_empty(&self, group: &Arc<Group>) -> bool {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let empty = group.lock().members == 0;
        if empty && groups.get(&group.key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            groups.remove(&group.key);
        }
        empty
    }

    /// Saves a group's position now, bypassing the writer's queue.
    #[cfg(feature = "postgres")]
    async fn save_now(&self, group: &Arc<Group>) -> Result<(), EventsError> {
        let position = {
            let mut state = group.lock();
            state.dirty = false;
            state.position()
        };
        let key = group.key.clone();
        self.blocking(move |s| s.commit(&[], &[(key, position)]).map(|_| ())).await
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

    /// Queues a durable group's position for saving, if it changed and no save is queued yet (and this server
    /// serves the group).
    pub async fn save(&self, group: &Arc<Group>) {
        if !group.durable || *group.ownership.borrow() != Ownership::Owned {
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

    /// Removes `group` from the groups of this server whatever its members (they end on their own).
    #[cfg(feature = "postgres")]
    fn forget_members(&self, group: &Arc<Group>) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if groups.get(&group.key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            groups.remove(&group.key);
        }
    }

    /// A fresh member id.
    pub fn member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    fn durable_groups(&self) -> Vec<Arc<Group>> {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.values().filter(|g| g.durable && *g.ownership.borrow() == Ownership::Owned).cloned().collect()
    }
}

/// Serves a durable group of shared events on this server: waits on standby until this server takes the group
/// (or its members here are gone), loads the position the previous server saved (or starts the group at `start`),
/// serves until the members here are gone, then saves and lets the group go. If the session that holds the group
/// drops, its members here end.
#[cfg(feature = "postgres")]
async fn serve_group(events: Arc<Events>, group: Arc<Group>, start: GroupPosition, owners: Arc<postgres::Owners>) {
    let key = group.key.clone();
    let release = |owners: Arc<postgres::Owners>, key: GroupKey| async move {
        let released = tokio::task::spawn_blocking(move || owners.release(&key)).await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!("cannot let a consumer group go; it is freed when this server's session ends");
        }
    };
    let session = loop {
        if events.forget_if_empty(&group) {
            return;
        }
        let (o, k) = (owners.clone(), key.clone());
        match tokio::task::spawn_blocking(move || o.try_take(&k)).await {
            Ok(Ok(Some(session))) => break session,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot take a consumer group; retrying"),
            Err(e) => tracing::warn!(error = %e, "cannot take a consumer group; retrying"),
        }
        tokio::select! {
            _ = events.cancel.cancelled() => return,
            _ = tokio::time::sleep(OWNERSHIP_POLL) => {}
        }
    };
    let (ns, t, g) = key.clone();
    match events.blocking(move |s| s.group(&ns, &t, &g)).await.map(|saved| match saved {
        Some(saved) => (saved, false),
        None => (start, true),
    }) {
        Ok((position, fresh)) => {
            {
                let mut state = group.lock();
                let members = state.members;
                *state = GroupState::at(position);
                state.members = members;
                state.dirty = fresh;
            }
            group.ownership.send_replace(Ownership::Owned);
            if fresh {
                events.save(&group).await;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a consumer group's position");
            group.ownership.send_replace(Ownership::Lost);
            group.changed.notify_waiters();
            events.forget_members(&group);
            release(owners, key).await;
            return;
        }
    }
    group.changed.notify_waiters();
    loop {
        tokio::select! {
            // At shutdown the writer saves the group, and the session ends with the server.
            _ = events.cancel.cancelled() => return,
            _ = tokio::time::sleep(OWNERSHIP_POLL) => {}
        }
        if !owners.holding(session) {
            tracing::warn!(namespace = %key.0, topic = %key.1, group = %key.2, "lost a consumer group's lock; its consumers here end");
            group.ownership.send_replace(Ownership::Lost);
            group.changed.notify_waiters();
            events.forget_members(&group);
            return;
        }
        if group.lock().members == 0 {
            // No member here changes the position any more: save it, then let the group go.
            if let Err(e) = events.save_now(&group).await {
                tracing::warn!(error = %e, "cannot save a consumer group's position");
                continue;
            }
            if events.forget_if_empty(&group) {
                release(owners, key).await;
                return;
            }
        }
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
