//! Durable events in an embedded redb database (`events.redb` in the data dir), or in PostgreSQL shared with other
//! servers (see `postgres.rs`).
//!
//! Three tables: `events` maps `(namespace, topic, sequence)` to the prost-encoded [`Event`]; `heads` maps
//! `(namespace, topic)` to the topic's last sequence; `groups` maps `(namespace, topic, group)` to a consumer
//! group's position as JSON ([`GroupPosition`]). Every method blocks: callers run them on `spawn_blocking`.

use micro_core::proto::events::Event;
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const EVENTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("events");
const HEADS: TableDefinition<(&str, &str), u64> = TableDefinition::new("heads");
const GROUPS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("groups");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("events store: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Where a consumer group is: every event up to `floor` is done (acknowledged or given up on), and so are the
/// sequences in `done`, which are all above `floor`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPosition {
    /// Every sequence up to this one is done.
    pub floor: u64,
    /// Done sequences above the floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<u64>,
}

/// One event to append: the topic it goes to and the event (its sequence is assigned on append).
#[derive(Clone, Debug)]
pub struct Append {
    /// The namespace.
    pub namespace: String,
    /// The topic.
    pub topic: String,
    /// The event.
    pub event: Event,
}

/// A consumer group's key: namespace, topic, group.
pub type GroupKey = (String, String, String);

/// The events database.
pub struct Store {
    /// The embedded database (`None` when the events are in PostgreSQL).
    db: Option<Database>,
    #[cfg(feature = "postgres")]
    shared: Option<super::postgres::PgEvents>,
}

/// Runs the PostgreSQL side of a method when the store has one.
macro_rules! shared {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        #[cfg(feature = "postgres")]
        if let Some(pg) = &$self.shared {
            return pg.$method($($arg),*);
        }
    };
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(EVENTS).map_err(err)?;
        tx.open_table(HEADS).map_err(err)?;
        tx.open_table(GROUPS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self {
            db: Some(db),
            #[cfg(feature = "postgres")]
            shared: None,
        })
    }

    /// The events in PostgreSQL at `url` (from a blocking thread inside the runtime).
    #[cfg(feature = "postgres")]
    pub fn open_shared(url: &str) -> Result<Self, StoreError> {
        Ok(Self { db: None, shared: Some(super::postgres::PgEvents::open(url)?) })
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::new("the events are not in an embedded database"))
    }

    /// Whether other servers share these events.
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "postgres")]
        {
            self.shared.is_some()
        }
        #[cfg(not(feature = "postgres"))]
        false
    }

    /// Appends events and saves group positions in one durable transaction; returns each event's sequence, in
    /// order.
    pub fn commit(&self, appends: &[Append], groups: &[(GroupKey, GroupPosition)]) -> Result<Vec<u64>, StoreError> {
        shared!(self.commit(appends, groups));
        let tx = self.db()?.begin_write().map_err(err)?;
        let mut sequences = Vec::with_capacity(appends.len());
        {
            let mut events = tx.open_table(EVENTS).map_err(err)?;
            let mut heads = tx.open_table(HEADS).map_err(err)?;
            let mut new_heads: HashMap<(&str, &str), u64> = HashMap::new();
            let mut buf = Vec::new();
            for a in appends {
                let key = (a.namespace.as_str(), a.topic.as_str());
                let head = match new_heads.get(&key) {
                    Some(h) => *h,
                    None => heads.get(key).map_err(err)?.map(|v| v.value()).unwrap_or(0),
                };
                let seq = head + 1;
                new_heads.insert(key, seq);
                buf.clear();
                a.event.encode(&mut buf).map_err(err)?;
                events.insert((key.0, key.1, seq), buf.as_slice()).map_err(err)?;
                sequences.push(seq);
            }
            for (key, head) in new_heads {
                heads.insert(key, head).map_err(err)?;
            }
            let mut table = tx.open_table(GROUPS).map_err(err)?;
            for ((ns, topic, group), position) in groups {
                let value = serde_json::to_vec(position).map_err(err)?;
                table.insert((ns.as_str(), topic.as_str(), group.as_str()), value.as_slice()).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(sequences)
    }

    /// The last sequence of a topic (0 when it has none).
    pub fn head(&self, namespace: &str, topic: &str) -> Result<u64, StoreError> {
        shared!(self.head(namespace, topic));
        let tx = self.db()?.begin_read().map_err(err)?;
        let heads = tx.open_table(HEADS).map_err(err)?;
        Ok(heads.get((namespace, topic)).map_err(err)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Up to `limit` events of a topic from sequence `from` on, oldest first, stopping early once `max_bytes` of
    /// payload and metadata are collected (always at least one event).
    pub fn read(
        &self,
        namespace: &str,
        topic: &str,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        shared!(self.read(namespace, topic, from, limit, max_bytes));
        let tx = self.db()?.begin_read().map_err(err)?;
        let events = tx.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in events.range((namespace, topic, from.max(1))..=(namespace, topic, u64::MAX)).map_err(err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(err)?;
            let mut event = Event::decode(v.value()).map_err(err)?;
            event.sequence = k.value().2;
            bytes += v.value().len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(event);
        }
        Ok(out)
    }

    /// Specific events of a topic, by sequence (missing ones are skipped).
    pub fn get(&self, namespace: &str, topic: &str, sequences: &[u64]) -> Result<Vec<Event>, StoreError> {
        shared!(self.get(namespace, topic, sequences));
        let tx = self.db()?.begin_read().map_err(err)?;
        let events = tx.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::with_capacity(sequences.len());
        for &seq in sequences {
            if let Some(v) = events.get((namespace, topic, seq)).map_err(err)? {
                let mut event = Event::decode(v.value()).map_err(err)?;
                event.sequence = seq;
                out.push(event);
            }
        }
        Ok(out)
    }

    /// The sequence of the first event of a topic published at or after `timestamp` (Unix nanoseconds); the
    /// head + 1 when there is none.
    pub fn first_at(&self, namespace: &str, topic: &str, timestamp: i64) -> Result<u64, StoreError> {
        shared!(self.first_at(namespace, topic, timestamp));
        let tx = self.db()?.begin_read().map_err(err)?;
        let events = tx.open_table(EVENTS).map_err(err)?;
        let mut last = 0;
        for entry in events.range((namespace, topic, 1)..=(namespace, topic, u64::MAX)).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let seq = k.value().2;
            // Only the timestamp is needed; decoding the whole event is cheap enough for a one-off scan.
            if Event::decode(v.value()).map_err(err)?.timestamp >= timestamp {
                return Ok(seq);
            }
            last = seq;
        }
        Ok(last + 1)
    }

    /// A consumer group's saved position.
    pub fn group(&self, namespace: &str, topic: &str, group: &str) -> Result<Option<GroupPosition>, StoreError> {
        shared!(self.group(namespace, topic, group));
        let tx = self.db()?.begin_read().map_err(err)?;
        let table = tx.open_table(GROUPS).map_err(err)?;
        match table.get((namespace, topic, group)).map_err(err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(err)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(ns: &str, topic: &str, payload: &str, ts: i64) -> Append {
        Append {
            namespace: ns.into(),
            topic: topic.into(),
            event: Event { payload: payload.into(), timestamp: ts, topic: topic.into(), ..Default::default() },
        }
    }

    /// The same checks for every kind of store: `ns` prefixes the namespaces (a shared database keeps other runs'
    /// events), and `reopen` opens the store again.
    fn appends_read_back(store: Store, ns: &str, reopen: impl Fn() -> Store) {
        let (a, b) = (format!("{ns}a"), format!("{ns}b"));
        let (a, b) = (a.as_str(), b.as_str());
        let seqs = store
            .commit(
                &[append(a, "t", "1", 10), append(a, "t", "2", 20), append(b, "t", "x", 5), append(a, "u", "y", 1)],
                &[],
            )
            .unwrap();
        assert_eq!(seqs, [1, 2, 1, 1]);
        assert_eq!(store.commit(&[append(a, "t", "3", 30)], &[]).unwrap(), [3]);
        assert_eq!(store.head(a, "t").unwrap(), 3);
        assert_eq!(store.head(a, "nope").unwrap(), 0);
        let payloads = |events: Vec<Event>| -> Vec<(u64, String)> {
            events.into_iter().map(|e| (e.sequence, String::from_utf8(e.payload).unwrap())).collect()
        };
        assert_eq!(
            payloads(store.read(a, "t", 1, 10, 1 << 20).unwrap()),
            [(1, "1".into()), (2, "2".into()), (3, "3".into())]
        );
        assert_eq!(payloads(store.read(a, "t", 2, 1, 1 << 20).unwrap()), [(2, "2".into())]);
        assert_eq!(payloads(store.read(b, "t", 1, 10, 1 << 20).unwrap()), [(1, "x".into())]);
        // A byte budget stops early but returns at least one event.
        assert_eq!(store.read(a, "t", 1, 10, 1).unwrap().len(), 1);
        assert_eq!(payloads(store.get(a, "t", &[3, 1, 9]).unwrap()), [(3, "3".into()), (1, "1".into())]);
        assert_eq!(store.first_at(a, "t", 15).unwrap(), 2);
        assert_eq!(store.first_at(a, "t", 99).unwrap(), 4);
        assert_eq!(store.first_at(a, "none", 0).unwrap(), 1);

        // Group positions survive reopening, with the events.
        let key = (a.to_string(), "t".to_string(), "g".to_string());
        let position = GroupPosition { floor: 1, done: vec![3] };
        store.commit(&[], &[(key, position.clone())]).unwrap();
        drop(store);
        let store = reopen();
        assert_eq!(store.group(a, "t", "g").unwrap(), Some(position));
        assert_eq!(store.group(a, "t", "other").unwrap(), None);
        assert_eq!(store.head(a, "t").unwrap(), 3);
    }

    #[test]
    fn appends_read_back_in_order_per_topic_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.redb");
        appends_read_back(Store::open(&path).unwrap(), "", || Store::open(&path).unwrap());
    }

    /// Against a real PostgreSQL (`MICRO_TEST_POSTGRES_URL`, as the store's tests).
    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread")]
    async fn appends_read_back_from_postgres() {
        let Some(url) = micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres") else { return };
        tokio::task::spawn_blocking(move || {
            let ns = format!("{}-", uuid::Uuid::new_v4());
            appends_read_back(Store::open_shared(&url).unwrap(), &ns, || Store::open_shared(&url).unwrap());
        })
        .await
        .unwrap();
    }
}
