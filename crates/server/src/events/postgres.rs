//! Events in PostgreSQL, for servers that share one database (`micro server --store postgres://…`, cargo feature
//! `postgres`): publish on one server, consume on any.
//!
//! ```sql
//! CREATE TABLE micro_events (ns text, topic text, seq bigint, ts bigint, event bytea, PRIMARY KEY (ns, topic, seq));
//! CREATE TABLE micro_event_heads (ns text, topic text, head bigint, PRIMARY KEY (ns, topic));
//! CREATE TABLE micro_event_groups (ns text, topic text, grp text, position bytea, PRIMARY KEY (ns, topic, grp));
//! ```
//!
//! A commit raises each topic's head row and inserts its events in one transaction. The head row stays locked
//! until the commit, so sequences of a topic become visible in order, with no gap that a reader could pass. The
//! transaction ends with `NOTIFY micro_events` naming each topic and its new head, so that every server wakes
//! its consumers. A durable consumer group is served by one server at a time: [`Owners`] holds a PostgreSQL
//! advisory lock per group, and a server whose consumers join a group that another server serves waits until
//! that server lets go (its last member left, or it died and its session ended); then it carries on from the
//! group's saved position.

use super::store::{Append, GroupKey, GroupPosition, StoreError};
use crate::state::pg::{Conn, big, check_text, pg_message};
use micro_core::proto::events::Event;
use prost::Message as _;
use std::collections::BTreeMap;

/// The schema, created when missing, under a transaction-scoped advisory lock (see the store's).
const SCHEMA: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(7283041961);
CREATE TABLE IF NOT EXISTS micro_events (
    ns text NOT NULL, topic text NOT NULL, seq bigint NOT NULL, ts bigint NOT NULL, event bytea NOT NULL,
    PRIMARY KEY (ns, topic, seq)
);
CREATE TABLE IF NOT EXISTS micro_event_heads (
    ns text NOT NULL, topic text NOT NULL, head bigint NOT NULL, PRIMARY KEY (ns, topic)
);
CREATE TABLE IF NOT EXISTS micro_event_groups (
    ns text NOT NULL, topic text NOT NULL, grp text NOT NULL, position bytea NOT NULL, PRIMARY KEY (ns, topic, grp)
);
COMMIT;
"#;

/// The channel that announces new events; the payload is JSON `[namespace, topic, head]`.
pub const CHANNEL: &str = "micro_events";

/// The first key of the advisory locks of consumer groups.
const GROUP_LOCK: i32 = 728304197;

fn failed(e: tokio_postgres::Error) -> StoreError {
    StoreError::new(pg_message(&e))
}

fn state(e: crate::state::StateError) -> StoreError {
    StoreError::new(e.0)
}

fn check(what: &str, text: &str) -> Result<(), StoreError> {
    check_text(what, text).map_err(StoreError::new)
}

/// Parses a notification's payload.
pub fn parse_notice(payload: &str) -> Option<(String, String, u64)> {
    serde_json::from_str(payload).ok()
}

/// The events tables, over one connection.
pub struct PgEvents {
    conn: Conn,
}

impl PgEvents {
    /// Connects and creates the schema when missing (from a blocking thread inside the runtime).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let conn = Conn::open(url, "events").map_err(state)?;
        {
            let guard = conn.lock().map_err(|e| StoreError::new(e.0))?;
            let c = guard.as_ref().expect("lock connects");
            conn.runtime.block_on(c.batch_execute(SCHEMA)).map_err(failed)?;
        }
        Ok(Self { conn })
    }

    fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, StoreError> {
        self.conn.lock().map_err(state)
    }

    /// See [`super::store::Store::commit`].
    pub fn commit(&self, appends: &[Append], groups: &[(GroupKey, GroupPosition)]) -> Result<Vec<u64>, StoreError> {
        // Per topic, in order of first appearance: how many events, and where each append goes.
        let mut topics: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for (i, a) in appends.iter().enumerate() {
            check("namespace", &a.namespace)?;
            check("topic", &a.topic)?;
            topics.entry((a.namespace.as_str(), a.topic.as_str())).or_default().push(i);
        }
        let mut positions = Vec::with_capacity(groups.len());
        for ((ns, topic, group), position) in groups {
            check("group", group)?;
            let bytes = serde_json::to_vec(position).map_err(|e| StoreError::new(e.to_string()))?;
            positions.push((ns.as_str(), topic.as_str(), group.as_str(), bytes));
        }
        let mut guard = self.client()?;
        let c = guard.as_mut().expect("lock connects");
        self.conn
            .runtime
            .block_on(async {
                let tx = c.transaction().await?;
                let mut sequences = vec![0u64; appends.len()];
                let mut notices = Vec::new();
                // Topics in key order, so that two servers committing to the same topics lock them in one order.
                for ((ns, topic), indexes) in &topics {
                    let n = indexes.len() as i64;
                    let row = tx
                        .query_one(
                            "INSERT INTO micro_event_heads (ns, topic, head) VALUES ($1, $2, $3) \
                             ON CONFLICT (ns, topic) DO UPDATE SET head = micro_event_heads.head + excluded.head \
                             RETURNING head",
                            &[ns, topic, &n],
                        )
                        .await?;
                    let last: i64 = row.get(0);
                    let first = last - n + 1;
                    let mut seqs = Vec::with_capacity(indexes.len());
                    let mut stamps = Vec::with_capacity(indexes.len());
                    let mut bodies = Vec::with_capacity(indexes.len());
                    for (k, &i) in indexes.iter().enumerate() {
                        let seq = first + k as i64;
                        sequences[i] = seq as u64;
                        seqs.push(seq);
                        stamps.push(appends[i].event.timestamp);
                        bodies.push(appends[i].event.encode_to_vec());
                    }
                    tx.execute(
                        "INSERT INTO micro_events (ns, topic, seq, ts, event) \
                         SELECT $1, $2, s, t, e FROM unnest($3::bigint[], $4::bigint[], $5::bytea[]) AS u(s, t, e)",
                        &[ns, topic, &seqs, &stamps, &bodies],
                    )
                    .await?;
                    notices.push(serde_json::json!([ns, topic, last]).to_string());
                }
                for (ns, topic, group, bytes) in &positions {
                    tx.execute(
                        "INSERT INTO micro_event_groups (ns, topic, grp, position) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (ns, topic, grp) DO UPDATE SET position = excluded.position",
                        &[ns, topic, group, bytes],
                    )
                    .await?;
                }
                for notice in &notices {
                    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, notice]).await?;
                }
                tx.commit().await?;
                Ok(sequences)
            })
            .map_err(failed)
    }

    /// See [`super::store::Store::head`].
    pub fn head(&self, namespace: &str, topic: &str) -> Result<u64, StoreError> {
        let row = self
            .conn
            .query_opt("SELECT head FROM micro_event_heads WHERE ns = $1 AND topic = $2", &[&namespace, &topic])
            .map_err(state)?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    fn events(rows: Vec<tokio_postgres::Row>, max_bytes: usize) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in rows {
            let body: Vec<u8> = row.get(1);
            bytes += body.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            let mut event = Event::decode(body.as_slice()).map_err(|e| StoreError::new(e.to_string()))?;
            event.sequence = row.get::<_, i64>(0).max(0) as u64;
            out.push(event);
        }
        Ok(out)
    }

    /// See [`super::store::Store::read`].
    pub fn read(
        &self,
        namespace: &str,
        topic: &str,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = self
            .conn
            .query(
                "SELECT seq, event FROM micro_events WHERE ns = $1 AND topic = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
                &[&namespace, &topic, &big(from.max(1)), &big(limit as u64)],
            )
            .map_err(state)?;
        Self::events(rows, max_bytes)
    }

    /// See [`super::store::Store::get`].
    pub fn get(&self, namespace: &str, topic: &str, sequences: &[u64]) -> Result<Vec<Event>, StoreError> {
        let seqs: Vec<i64> = sequences.iter().map(|&s| big(s)).collect();
        let rows = self
            .conn
            .query(
                "SELECT seq, event FROM micro_events WHERE ns = $1 AND topic = $2 AND seq = ANY($3) ORDER BY seq",
                &[&namespace, &topic, &seqs],
            )
            .map_err(state)?;
        // In the order asked, as the embedded store answers.
        let mut found = Self::events(rows, usize::MAX)?;
        found.sort_by_key(|e| sequences.iter().position(|&s| s == e.sequence));
        Ok(found)
    }

    /// See [`super::store::Store::first_at`].
    pub fn first_at(&self, namespace: &str, topic: &str, timestamp: i64) -> Result<u64, StoreError> {
        let found = self
            .conn
            .query_opt(
                "SELECT min(seq) FROM micro_events WHERE ns = $1 AND topic = $2 AND ts >= $3",
                &[&namespace, &topic, &timestamp],
            )
            .map_err(state)?
            .and_then(|r| r.get::<_, Option<i64>>(0));
        match found {
            Some(seq) => Ok(seq.max(1) as u64),
            None => Ok(self.head(namespace, topic)? + 1),
        }
    }

    /// See [`super::store::Store::group`].
    pub fn group(&self, namespace: &str, topic: &str, group: &str) -> Result<Option<GroupPosition>, StoreError> {
        let row = self
            .conn
            .query_opt(
                "SELECT position FROM micro_event_groups WHERE ns = $1 AND topic = $2 AND grp = $3",
                &[&namespace, &topic, &group],
            )
            .map_err(state)?;
        match row {
            Some(r) => {
                let bytes: Vec<u8> = r.get(0);
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| StoreError::new(e.to_string()))?))
            }
            None => Ok(None),
        }
    }
}

/// The advisory locks that make this server the one that serves a durable group, on a session of their own.
pub struct Owners {
    conn: Conn,
}

impl Owners {
    /// Connects (from a blocking thread inside the runtime).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self { conn: Conn::open(url, "event groups").map_err(state)? })
    }

    fn lock_key(key: &GroupKey) -> String {
        serde_json::json!([key.0, key.1, key.2]).to_string()
    }

    /// Tries to take the group for this server: the session that holds it when it is ours (the locks count, so a
    /// group may be taken again by the same session).
    pub fn try_take(&self, key: &GroupKey) -> Result<Option<u64>, StoreError> {
        let (rows, session) = self
            .conn
            .query_in_session("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&GROUP_LOCK, &Self::lock_key(key)])
            .map_err(state)?;
        Ok(rows.first().is_some_and(|r| r.get::<_, bool>(0)).then_some(session))
    }

    /// Whether the group taken in `session` is still held: when the session drops, PostgreSQL lets every group go.
    pub fn holding(&self, session: u64) -> bool {
        self.conn.is_open() && self.conn.session() == session
    }

    /// Lets the group go.
    pub fn release(&self, key: &GroupKey) -> Result<(), StoreError> {
        self.conn
            .query("SELECT pg_advisory_unlock($1, hashtext($2))", &[&GROUP_LOCK, &Self::lock_key(key)])
            .map_err(state)?;
        Ok(())
    }
}
