//! The broker's topic table: who subscribes to what, and at-most-once delivery to them.
//!
//! The table maps namespace → topic → an immutable snapshot of the topic's subscribers (`Arc<Subscribers>`),
//! behind one `RwLock`. Publishing takes the read lock only long enough to clone that `Arc` (or skips it entirely
//! when a [`TopicCache`] is still current), then hands the message to each subscriber's bounded queue with
//! `try_send`: no lock is held while delivering, and a full queue drops the message for that subscriber (counted)
//! instead of waiting. Subscribing and unsubscribing build a new snapshot (copy on write) and bump a version, so
//! caches know to look again.

use micro_core::proto::broker::Message;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// How many messages may wait for one subscriber before further ones are dropped for it.
pub const QUEUE_MESSAGES: usize = 8192;
/// How many bytes of message bodies may wait for one subscriber before further messages are dropped for it.
pub const QUEUE_BYTES: usize = 16 << 20;

/// One subscription's queue and counters.
#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Message>,
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
}

impl Subscriber {
    /// Queues `message`, or gives it back when the queue is full (or the subscription is ending).
    fn offer(&self, message: Message) -> Result<(), Message> {
        let size = message.body.len();
        if self.queued_bytes.load(Ordering::Relaxed) + size > QUEUE_BYTES {
            return Err(message);
        }
        self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        self.tx.try_send(message).map_err(|e| {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            e.into_inner()
        })
    }

    fn dropped_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// A queue group: each message goes to one of its members, round robin, skipping members whose queue is full.
#[derive(Debug)]
struct QueueGroup {
    name: String,
    members: Vec<Arc<Subscriber>>,
    next: Arc<AtomicUsize>,
}

/// An immutable snapshot of one topic's subscribers.
#[derive(Debug, Default)]
pub struct Subscribers {
    all: Vec<Arc<Subscriber>>,
    groups: Vec<QueueGroup>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.groups.is_empty()
    }

    fn with(&self, queue: &str, sub: Arc<Subscriber>) -> Subscribers {
        let mut all = self.all.clone();
        let mut groups: Vec<QueueGroup> = self
            .groups
            .iter()
            .map(|g| QueueGroup { name: g.name.clone(), members: g.members.clone(), next: g.next.clone() })
            .collect();
        if queue.is_empty() {
            all.push(sub);
        } else if let Some(g) = groups.iter_mut().find(|g| g.name == queue) {
            g.members.push(sub);
        } else {
            groups.push(QueueGroup { name: queue.to_string(), members: vec![sub], next: Default::default() });
        }
        Subscribers { all, groups }
    }

    fn without(&self, id: u64) -> Subscribers {
        Subscribers {
            all: self.all.iter().filter(|s| s.id != id).cloned().collect(),
            groups: self
                .groups
                .iter()
                .map(|g| QueueGroup {
                    name: g.name.clone(),
                    members: g.members.iter().filter(|s| s.id != id).cloned().collect(),
                    next: g.next.clone(),
                })
                .filter(|g| !g.members.is_empty())
                .collect(),
        }
    }

    /// Delivers `message` to every plain subscriber and one member of each queue group; returns how many queued
    /// it. The message is moved to the last target and cloned for the others.
    pub fn deliver(&self, message: Message) -> usize {
        let targets = self.all.len() + self.groups.len();
        let mut delivered = 0;
        let mut message = Some(message);
        let mut take = |i: usize| {
            if i + 1 == targets { message.take().unwrap_or_default() } else { message.clone().unwrap_or_default() }
        };
        let mut i = 0;
        for sub in &self.all {
            match sub.offer(take(i)) {
                Ok(()) => delivered += 1,
                Err(_) => sub.dropped_one(),
            }
            i += 1;
        }
        for group in &self.groups {
            let n = group.members.len();
            let start = group.next.fetch_add(1, Ordering::Relaxed);
            let mut pending = Some(take(i));
            i += 1;
            for k in 0..n {
                let Some(message) = pending.take() else { break };
                match group.members[(start + k) % n].offer(message) {
                    Ok(()) => delivered += 1,
                    Err(back) => pending = Some(back),
                }
            }
            // Every member was full: the message is lost for the group, counted against the one whose turn it was.
            if pending.is_some() {
                group.members[start % n].dropped_one();
            }
        }
        delivered
    }
}

type Table = HashMap<String, HashMap<String, Arc<Subscribers>>>;

/// The topic table of every namespace.
#[derive(Debug, Default)]
pub struct Hub {
    topics: RwLock<Table>,
    version: AtomicU64,
    next_id: AtomicU64,
}

/// A publisher's memo of one topic's subscribers, valid until the table changes.
#[derive(Debug, Default)]
pub struct TopicCache {
    namespace: String,
    topic: String,
    version: u64,
    subscribers: Option<Arc<Subscribers>>,
}

impl Hub {
    /// An empty table.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub { version: AtomicU64::new(1), ..Default::default() })
    }

    fn lookup(&self, namespace: &str, topic: &str) -> Option<Arc<Subscribers>> {
        let table = self.topics.read().unwrap_or_else(|e| e.into_inner());
        table.get(namespace).and_then(|t| t.get(topic)).cloned()
    }

    /// Publishes `message` on `namespace`/`topic`; returns how many subscribers queued it.
    pub fn publish(&self, namespace: &str, topic: &str, message: Message) -> usize {
        match self.lookup(namespace, topic) {
            Some(subs) => subs.deliver(message),
            None => 0,
        }
    }

    /// [`Hub::publish`] through `cache`, which saves the table lookup while the topic and the table are unchanged.
    pub fn publish_cached(&self, cache: &mut TopicCache, namespace: &str, topic: &str, message: Message) -> usize {
        let version = self.version.load(Ordering::Acquire);
        if cache.version != version || cache.topic != topic || cache.namespace != namespace {
            cache.subscribers = self.lookup(namespace, topic);
            cache.version = version;
            if cache.topic != topic {
                topic.clone_into(&mut cache.topic);
            }
            if cache.namespace != namespace {
                namespace.clone_into(&mut cache.namespace);
            }
        }
        match &cache.subscribers {
            Some(subs) => subs.deliver(message),
            None => 0,
        }
    }

    /// Subscribes to `namespace`/`topic`, in queue group `queue` unless it is empty. The subscription ends when
    /// the returned stream is dropped.
    pub fn subscribe(self: &Arc<Self>, namespace: &str, topic: &str, queue: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE_MESSAGES);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscriber { id, tx, queued_bytes: AtomicUsize::new(0), dropped: AtomicU64::new(0) });
        {
            let mut table = self.topics.write().unwrap_or_else(|e| e.into_inner());
            let topics = table.entry(namespace.to_string()).or_default();
            let current = topics.get(topic).cloned().unwrap_or_default();
            topics.insert(topic.to_string(), Arc::new(current.with(queue, sub.clone())));
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        Subscription {
            hub: self.clone(),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            sub,
            rx,
            delivered: 0,
        }
    }

    fn unsubscribe(&self, namespace: &str, topic: &str, id: u64) {
        let mut table = self.topics.write().unwrap_or_else(|e| e.into_inner());
        let Some(topics) = table.get_mut(namespace) else { return };
        if let Some(current) = topics.get(topic) {
            let next = current.without(id);
            if next.is_empty() {
                topics.remove(topic);
            } else {
                topics.insert(topic.to_string(), Arc::new(next));
            }
        }
        if topics.is_empty() {
            table.remove(namespace);
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// How many topics have subscribers, in every namespace.
    pub fn topics(&self) -> usize {
        self.topics.read().unwrap_or_else(|e| e.into_inner()).values().map(HashMap::len).sum()
    }
}

/// A live subscription: a stream of the messages queued for it. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    namespace: String,
    topic: String,
    sub: Arc<Subscriber>,
    rx: mpsc::Receiver<Message>,
    delivered: u64,
}

impl Subscription {
    /// How many messages were dropped for this subscriber because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.sub.dropped.load(Ordering::Relaxed)
    }
}

impl futures::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                self.sub.queued_bytes.fetch_sub(message.body.len(), Ordering::Relaxed);
                self.delivered += 1;
                Poll::Ready(Some(message))
            }
            other => other,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.namespace, &self.topic, self.sub.id);
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(
                namespace = %self.namespace, topic = %self.topic, delivered = self.delivered, dropped,
                "a subscriber could not keep up: messages were dropped for it"
            );
        } else {
            tracing::debug!(namespace = %self.namespace, topic = %self.topic, delivered = self.delivered, "unsubscribed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn msg(body: &str) -> Message {
        Message { header: Default::default(), body: body.as_bytes().to_vec() }
    }

    fn drain(sub: &mut Subscription) -> Vec<String> {
        let mut out = Vec::new();
        // Unconstrained: tokio's cooperative budget would otherwise stop a long drain early.
        while let Some(Some(m)) = tokio::task::unconstrained(sub.next()).now_or_never() {
            out.push(String::from_utf8(m.body).unwrap());
        }
        out
    }

    use futures::FutureExt;

    #[tokio::test]
    async fn fans_out_to_every_subscriber() {
        let hub = Hub::new();
        let mut a = hub.subscribe("micro", "t", "");
        let mut b = hub.subscribe("micro", "t", "");
        assert_eq!(hub.publish("micro", "t", msg("1")), 2);
        assert_eq!(hub.publish("micro", "other", msg("x")), 0);
        assert_eq!(drain(&mut a), ["1"]);
        assert_eq!(drain(&mut b), ["1"]);
    }

    #[tokio::test]
    async fn namespaces_are_separate() {
        let hub = Hub::new();
        let mut a = hub.subscribe("foo", "t", "");
        assert_eq!(hub.publish("bar", "t", msg("nope")), 0);
        assert_eq!(hub.publish("foo", "t", msg("yes")), 1);
        assert_eq!(drain(&mut a), ["yes"]);
    }

    #[tokio::test]
    async fn a_queue_group_gets_each_message_once() {
        let hub = Hub::new();
        let mut q1 = hub.subscribe("micro", "t", "q");
        let mut q2 = hub.subscribe("micro", "t", "q");
        let mut all = hub.subscribe("micro", "t", "");
        for i in 0..10 {
            assert_eq!(hub.publish("micro", "t", msg(&i.to_string())), 2);
        }
        let (g1, g2) = (drain(&mut q1), drain(&mut q2));
        assert_eq!(g1.len() + g2.len(), 10);
        assert!(!g1.is_empty() && !g2.is_empty(), "round robin: {g1:?} {g2:?}");
        assert_eq!(drain(&mut all).len(), 10);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new();
        let a = hub.subscribe("micro", "t", "q");
        let b = hub.subscribe("micro", "t", "");
        assert_eq!(hub.topics(), 1);
        drop(a);
        assert_eq!(hub.publish("micro", "t", msg("1")), 1);
        drop(b);
        assert_eq!(hub.topics(), 0);
        assert_eq!(hub.publish("micro", "t", msg("1")), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        let hub = Hub::new();
        let mut slow = hub.subscribe("micro", "t", "");
        for _ in 0..QUEUE_MESSAGES + 5 {
            hub.publish("micro", "t", msg("x"));
        }
        assert_eq!(slow.dropped(), 5);
        assert_eq!(drain(&mut slow).len(), QUEUE_MESSAGES);
        // Once drained it receives again.
        assert_eq!(hub.publish("micro", "t", msg("y")), 1);
        // Bodies count too.
        let big = Message { header: Default::default(), body: vec![0; QUEUE_BYTES / 2 + 1] };
        assert_eq!(hub.publish("micro", "t", big.clone()), 1);
        assert_eq!(hub.publish("micro", "t", big), 0);
        assert_eq!(slow.dropped(), 6);
    }

    #[tokio::test]
    async fn a_queue_group_skips_a_full_member() {
        let hub = Hub::new();
        let mut full = hub.subscribe("micro", "t", "q");
        for _ in 0..QUEUE_MESSAGES {
            hub.publish("micro", "t", msg("x"));
        }
        let mut free = hub.subscribe("micro", "t", "q");
        for _ in 0..4 {
            assert_eq!(hub.publish("micro", "t", msg("y")), 1);
        }
        assert_eq!(drain(&mut free), ["y"; 4]);
        assert_eq!(full.dropped(), 0);
        assert_eq!(drain(&mut full).len(), QUEUE_MESSAGES);
    }

    #[tokio::test]
    async fn the_cache_follows_table_changes() {
        let hub = Hub::new();
        let mut cache = TopicCache::default();
        assert_eq!(hub.publish_cached(&mut cache, "micro", "t", msg("0")), 0);
        let mut a = hub.subscribe("micro", "t", "");
        assert_eq!(hub.publish_cached(&mut cache, "micro", "t", msg("1")), 1);
        assert_eq!(hub.publish_cached(&mut cache, "foo", "t", msg("2")), 0);
        assert_eq!(hub.publish_cached(&mut cache, "micro", "t", msg("3")), 1);
        drop(a.next().now_or_never());
        let mut b = hub.subscribe("micro", "t", "");
        assert_eq!(hub.publish_cached(&mut cache, "micro", "t", msg("4")), 2);
        assert_eq!(drain(&mut b), ["4"]);
        assert_eq!(drain(&mut a), ["3", "4"]);
    }
}
