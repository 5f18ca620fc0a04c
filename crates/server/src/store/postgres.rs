//! [`PostgresStore`]: the store's records in PostgreSQL, for servers that share one database or outgrow one disk.
//!
//! Built with the `postgres` cargo feature and chosen with `micro server --store postgres://…` (or `MICRO_STORE`).
//! Every record of every database and table lives in one SQL table, `micro_store`, created on first use:
//!
//! ```sql
//! CREATE TABLE micro_store (
//!     db text NOT NULL, tbl text NOT NULL, key text COLLATE "C" NOT NULL,
//!     value bytea NOT NULL, metadata bytea NOT NULL, expires_at bigint,
//!     PRIMARY KEY (db, tbl, key));
//! ```
//!
//! Keys compare byte-wise (`COLLATE "C"`), as in the embedded store. `metadata` holds the record's metadata
//! encoded as protobuf; `expires_at` is Unix milliseconds, indexed for the sweep. A write of many records is one
//! SQL statement, so it is atomic, and PostgreSQL acknowledges it only once it is durable (its default
//! `synchronous_commit`). Differences from the embedded store: PostgreSQL text cannot hold a NUL character, so
//! such keys and names are refused; and a table exists only while it holds a record, so a table whose records are
//! all deleted leaves `micro store tables`.
//!
//! The store keeps [`POOL`] connections, taken in turn, so that concurrent writes commit in parallel and share
//! PostgreSQL's WAL flushes. They are opened at start (an unreachable database stops the server from starting),
//! and each is reopened on the next request after it drops; a request that finds the database down fails with a
//! storage error rather than waiting.

use super::backend::{Location, MAX_READ_BYTES, Order, Query, Record, Store, StoreError, now_ms};
use crate::state::pg::{big, pg_message};
use micro_core::proto::store::Field;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_postgres::{Client, NoTls};

/// The most expired records one sweep deletes (the next sweep deletes the rest).
const MAX_SWEEP: i64 = 10_000;

/// The schema, created when missing. Under a transaction-scoped advisory lock, because two servers (or tests)
/// creating it at once would otherwise race in PostgreSQL's catalog and one would fail.
const SCHEMA: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(7283041958);
CREATE TABLE IF NOT EXISTS micro_store (
    db text NOT NULL,
    tbl text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    metadata bytea NOT NULL,
    expires_at bigint,
    PRIMARY KEY (db, tbl, key)
);
CREATE INDEX IF NOT EXISTS micro_store_expiry ON micro_store (expires_at) WHERE expires_at IS NOT NULL;
COMMIT;
"#;

/// The columns a record is read from, in this order.
const COLUMNS: &str = "key, value, metadata, expires_at";

/// A record's metadata as stored in the `metadata` column.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredMetadata {
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, Field>,
}

/// The store in PostgreSQL.
pub struct PostgresStore {
    /// The connection string (`postgres://user:password@host:port/db`).
    url: String,
    /// The open connections, each replaced when it has dropped. Requests take them in turn: PostgreSQL runs one
    /// transaction at a time per connection, so concurrent writes need several to share its WAL flushes.
    pool: Vec<tokio::sync::Mutex<Arc<Client>>>,
    /// The connection the next request takes.
    next: std::sync::atomic::AtomicUsize,
}

/// How many connections the store keeps open.
const POOL: usize = 4;

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let user = url[scheme + 3..at].split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn storage(e: tokio_postgres::Error) -> StoreError {
    StoreError::Storage(pg_message(&e))
}

/// Refuses text that PostgreSQL cannot store.
fn check_text(what: &str, text: &str) -> Result<(), StoreError> {
    crate::state::pg::check_text(what, text).map_err(StoreError::Invalid)
}

fn check_location(location: &Location) -> Result<(), StoreError> {
    check_text("database name", &location.database)?;
    check_text("table name", &location.table)
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| StoreError::Storage(format!("cannot connect to PostgreSQL at {}: {e}", redact(url))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the PostgreSQL connection of the store ended");
        }
    });
    Ok(client)
}

fn record(row: &tokio_postgres::Row) -> Result<Record, StoreError> {
    let metadata: Vec<u8> = row.get(2);
    let metadata = StoredMetadata::decode(metadata.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("the metadata of a record does not decode: {e}")))?;
    Ok(Record {
        key: row.get(0),
        value: row.get(1),
        metadata: metadata.fields,
        expires_at: row.get::<_, Option<i64>>(3).map(|at| at.max(0) as u64),
    })
}

impl PostgresStore {
    /// Connects to `url` and creates the schema when missing.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let first = connect(url).await?;
        first.batch_execute(SCHEMA).await.map_err(storage)?;
        let mut pool = vec![tokio::sync::Mutex::new(Arc::new(first))];
        for _ in 1..POOL {
            pool.push(tokio::sync::Mutex::new(Arc::new(connect(url).await?)));
        }
        Ok(Self { url: url.to_string(), pool, next: Default::default() })
    }

    /// A connection, in turn, reopened if it has dropped.
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.pool.len();
        let mut client = self.pool[i].lock().await;
        if client.is_closed() {
            *client = Arc::new(connect(&self.url).await?);
        }
        Ok(client.clone())
    }

    /// The rows of the live records `query` selects in `location`.
    async fn select(
        &self,
        location: &Location,
        query: &Query,
        columns: &str,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        check_location(location)?;
        let order = match query.order {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        };
        let sql = format!(
            "SELECT {columns} FROM micro_store WHERE db = $1 AND tbl = $2 AND ($3::text IS NULL OR key = $3) \
             AND starts_with(key, $4) AND right(key, char_length($5)) = $5 \
             AND (expires_at IS NULL OR expires_at > $6) \
             ORDER BY key {order} OFFSET $7 LIMIT $8"
        );
        let limit = query.limit.map(|l| big(l as u64));
        let client = self.client().await?;
        client
            .query(
                &sql,
                &[
                    &location.database,
                    &location.table,
                    &query.key,
                    &query.prefix,
                    &query.suffix,
                    &big(now_ms()),
                    &big(query.offset as u64),
                    &limit,
                ],
            )
            .await
            .map_err(storage)
    }
}

#[tonic::async_trait]
impl Store for PostgresStore {
    async fn read(&self, location: &Location, query: Query) -> Result<Vec<Record>, StoreError> {
        let one = query.key.is_some();
        let rows = self.select(location, &query, COLUMNS).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in &rows {
            let record = record(row)?;
            bytes += record.key.len() + record.value.len();
            if bytes > MAX_READ_BYTES {
                return Err(StoreError::TooLarge(format!(
                    "the records read exceed {} MiB; read fewer at a time with a limit and an offset",
                    MAX_READ_BYTES / (1024 * 1024)
                )));
            }
            out.push(record);
        }
        if one && out.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(out)
    }

    async fn keys(&self, location: &Location, query: Query) -> Result<Vec<String>, StoreError> {
        Ok(self.select(location, &query, "key").await?.iter().map(|r| r.get(0)).collect())
    }

    async fn write(&self, location: &Location, records: Vec<Record>) -> Result<(), StoreError> {
        check_location(location)?;
        // The last record of a key wins, as when the records are applied in order.
        let mut last: BTreeMap<String, Record> = BTreeMap::new();
        for r in records {
            r.validate()?;
            check_text("key", &r.key)?;
            last.insert(r.key.clone(), r);
        }
        if last.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let (mut gone, mut keys, mut values, mut metadata, mut expiry) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, r) in last {
            if r.expires_at.is_some_and(|at| at <= now) {
                gone.push(key);
                continue;
            }
            keys.push(key);
            values.push(r.value);
            metadata.push(StoredMetadata { fields: r.metadata }.encode_to_vec());
            expiry.push(r.expires_at.map(big));
        }
        // One statement, so the whole write is atomic: expired records delete their keys, the rest are upserted.
        const SQL: &str = "WITH gone AS (DELETE FROM micro_store WHERE db = $1 AND tbl = $2 AND key = ANY($3::text[])) \
             INSERT INTO micro_store (db, tbl, key, value, metadata, expires_at) \
             SELECT $1, $2, k, v, m, e FROM unnest($4::text[], $5::bytea[], $6::bytea[], $7::int8[]) AS t(k, v, m, e) \
             ON CONFLICT (db, tbl, key) DO UPDATE \
             SET value = EXCLUDED.value, metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at";
        let client = self.client().await?;
        client
            .execute(SQL, &[&location.database, &location.table, &gone, &keys, &values, &metadata, &expiry])
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn delete(&self, location: &Location, key: &str) -> Result<(), StoreError> {
        super::backend::validate_key(key)?;
        check_location(location)?;
        check_text("key", key)?;
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM micro_store WHERE db = $1 AND tbl = $2 AND key = $3",
                &[&location.database, &location.table, &key],
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn databases(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let rows = client.query("SELECT DISTINCT db FROM micro_store ORDER BY db", &[]).await.map_err(storage)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, StoreError> {
        check_text("database name", database)?;
        let client = self.client().await?;
        let rows = client
            .query("SELECT DISTINCT tbl FROM micro_store WHERE db = $1 ORDER BY tbl", &[&database])
            .await
            .map_err(storage)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn export(
        &self,
        location: &Location,
        after: Option<String>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StoreError> {
        check_location(location)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM micro_store WHERE db = $1 AND tbl = $2 AND ($3::text IS NULL OR key > $3) \
             AND (expires_at IS NULL OR expires_at > $4) ORDER BY key LIMIT $5"
        );
        let client = self.client().await?;
        let rows = client
            .query(&sql, &[&location.database, &location.table, &after, &big(now_ms()), &big(max.max(1) as u64)])
            .await
            .map_err(storage)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0;
        for row in &rows {
            let record = record(row)?;
            bytes += record.key.len() + record.value.len();
            out.push(record);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM micro_store WHERE ctid IN \
                 (SELECT ctid FROM micro_store WHERE expires_at <= $1 LIMIT $2)",
                &[&big(now_ms()), &MAX_SWEEP],
            )
            .await
            .map_err(storage)?;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    //! These run against a real PostgreSQL: `MICRO_TEST_POSTGRES_URL` must name an empty database that the tests
    //! may fill (`.ci/run` starts one). With the `postgres` feature on and the variable unset, they fail.

    use super::*;
    use crate::store::backend::Query;

    const URL_VAR: &str = "MICRO_TEST_POSTGRES_URL";

    /// The store, in a database of its own for each test: a fresh schema-qualified search path would be cleaner,
    /// but one table per server is the design, so each test uses its own `db` value instead.
    async fn open() -> Option<PostgresStore> {
        let url = micro_core::testing::backend_url(URL_VAR, "postgres")?;
        Some(PostgresStore::open(&url).await.expect("PostgreSQL answers"))
    }

    fn loc(test: &str) -> Location {
        // A database name of its own for each test run, so reruns and parallel tests do not meet.
        let run = format!("{test}-{}-{}", std::process::id(), now_ms());
        Location::new(&run, "micro").unwrap()
    }

    fn rec(key: &str, value: &str) -> Record {
        Record { key: key.into(), value: value.as_bytes().to_vec(), ..Default::default() }
    }

    #[tokio::test]
    async fn write_read_delete_and_metadata() {
        let Some(store) = open().await else { return };
        let loc = loc("basic");
        let mut r = rec("a", "1");
        r.metadata.insert("k".into(), Field { r#type: "string".into(), value: "v".into() });
        store.write(&loc, vec![r.clone()]).await.unwrap();
        assert_eq!(store.read(&loc, Query::key("a")).await.unwrap(), vec![r]);
        assert!(matches!(store.read(&loc, Query::key("b")).await, Err(StoreError::NotFound)));
        store.delete(&loc, "a").await.unwrap();
        assert!(matches!(store.read(&loc, Query::key("a")).await, Err(StoreError::NotFound)));
        store.delete(&loc, "missing").await.unwrap();
        // NUL cannot be stored, and says so.
        let err = store.write(&loc, vec![rec("a\0b", "x")]).await.unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[tokio::test]
    async fn queries_order_offset_limit_prefix_suffix() {
        let Some(store) = open().await else { return };
        let loc = loc("query");
        let keys = ["a/1", "a/2", "a/3", "b/1", "B/1", "a/10"];
        store.write(&loc, keys.iter().map(|k| rec(k, k)).collect()).await.unwrap();
        // Byte order: uppercase before lowercase, "a/10" between "a/1" and "a/2".
        assert_eq!(store.keys(&loc, Query::default()).await.unwrap(), ["B/1", "a/1", "a/10", "a/2", "a/3", "b/1"]);
        let q = Query { prefix: "a/".into(), offset: 1, limit: Some(2), ..Default::default() };
        assert_eq!(store.keys(&loc, q).await.unwrap(), ["a/10", "a/2"]);
        let q = Query { prefix: "a/".into(), order: Order::Desc, limit: Some(2), ..Default::default() };
        assert_eq!(store.keys(&loc, q).await.unwrap(), ["a/3", "a/2"]);
        let q = Query { suffix: "/1".into(), ..Default::default() };
        assert_eq!(store.keys(&loc, q).await.unwrap(), ["B/1", "a/1", "b/1"]);
        // Prefixes with LIKE's special characters are plain text.
        store.write(&loc, vec![rec("%x", "1"), rec("_y", "2")]).await.unwrap();
        assert_eq!(store.keys(&loc, Query::prefix("%")).await.unwrap(), ["%x"]);
        // Databases and tables.
        assert!(store.databases().await.unwrap().contains(&loc.database));
        assert_eq!(store.tables(&loc.database).await.unwrap(), ["micro"]);
    }

    #[tokio::test]
    async fn writes_are_atomic_last_wins_and_expired_records_delete() {
        let Some(store) = open().await else { return };
        let loc = loc("write");
        store.write(&loc, vec![rec("k", "1"), rec("k", "2"), rec("old", "x")]).await.unwrap();
        assert_eq!(store.read(&loc, Query::key("k")).await.unwrap()[0].value, b"2");
        // An expired record deletes its key; a record that expires soon is gone once it has.
        let now = now_ms();
        let gone = Record { expires_at: Some(now - 1), ..rec("old", "y") };
        let soon = Record { expires_at: Some(now + 300), ..rec("soon", "z") };
        store.write(&loc, vec![gone, soon]).await.unwrap();
        assert!(matches!(store.read(&loc, Query::key("old")).await, Err(StoreError::NotFound)));
        assert_eq!(store.keys(&loc, Query::default()).await.unwrap(), ["k", "soon"]);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(store.keys(&loc, Query::default()).await.unwrap(), ["k"]);
        assert!(store.sweep().await.unwrap() >= 1);
        // A bad record fails the whole write: nothing of it lands.
        let huge = Record { value: vec![0; super::super::backend::MAX_VALUE_BYTES + 1], ..rec("z", "") };
        assert!(store.write(&loc, vec![rec("y", "1"), huge]).await.is_err());
        assert!(matches!(store.read(&loc, Query::key("y")).await, Err(StoreError::NotFound)));
    }

    #[tokio::test]
    async fn export_pages_in_key_order() {
        let Some(store) = open().await else { return };
        let loc = loc("export");
        store.write(&loc, (0..25).map(|i| rec(&format!("k{i:02}"), "v")).collect()).await.unwrap();
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let page = store.export(&loc, after.clone(), 10, usize::MAX).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().map(|r| r.key.clone());
            seen.extend(page.into_iter().map(|r| r.key));
        }
        assert_eq!(seen, (0..25).map(|i| format!("k{i:02}")).collect::<Vec<_>>());
        // The byte bound stops a page early, with at least one record.
        assert_eq!(store.export(&loc, None, 10, 1).await.unwrap().len(), 1);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://me:secret@db:5432/micro"), "postgres://me:***@db:5432/micro");
        assert_eq!(redact("postgres://db/micro"), "postgres://db/micro");
        assert_eq!(redact("postgres://me@db/micro"), "postgres://me@db/micro");
    }
}
