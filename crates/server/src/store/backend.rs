//! Where records live: the [`Store`] trait, and [`RedbStore`], its durable embedded implementation.
//!
//! [`RedbStore`] keeps one redb file (`store.redb` in the data dir). Each (database, table) pair is one redb table
//! named `data/<database>/<table>`, mapping a key to an encoded record (see [`encode`]); a second table, `expiry`,
//! indexes the records that expire by time, so that expired records are purged without a scan.
//!
//! Writes are **group-committed**: one writer thread owns every write transaction. Requests queue on a channel;
//! the writer takes everything queued (up to [`MAX_BATCH_OPS`] operations or [`MAX_BATCH_BYTES`]), applies it in
//! one transaction, commits once with immediate durability (one round of fsyncs for the whole batch), and only
//! then answers each request. A write is acknowledged only after its commit returned, so every acknowledged write
//! survives a crash; many concurrent writers share each commit. Reads run concurrently on read transactions
//! (snapshots), off the async workers.
//!
//! Expired records are never returned, and a background sweep ([`Store::sweep`]) deletes them.

use micro_core::proto::store::Field;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// The longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value, in bytes (4 MiB).
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// The largest metadata of one record (names, types and values together), in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// The longest database or table name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The most bytes (keys and values) one read may return; read fewer records with a limit and an offset.
pub const MAX_READ_BYTES: usize = 24 * 1024 * 1024;
/// The most operations the writer applies in one transaction.
pub const MAX_BATCH_OPS: usize = 4096;
/// The most value bytes the writer applies in one transaction (a single larger write still goes alone).
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// How many write requests may wait for the writer before callers wait to enqueue.
const QUEUE: usize = 8192;
/// The most expired records one sweep deletes (the next sweep deletes the rest).
const MAX_SWEEP: usize = 10_000;

/// The expiry index: `expires_at (u64 BE, unix ms) ‖ table name length (u16 BE) ‖ table name ‖ key` → nothing.
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
/// The prefix of data tables' names.
const DATA_PREFIX: &str = "data/";
/// The version byte every encoded record starts with.
const RECORD_VERSION: u8 = 1;

/// The default table.
pub const DEFAULT_TABLE: &str = "micro";

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request is invalid (a name, a key, a size).
    #[error("{0}")]
    Invalid(String),
    /// No record has this key.
    #[error("not found")]
    NotFound,
    /// The answer would be too large.
    #[error("{0}")]
    TooLarge(String),
    /// The disk is full: nothing was written.
    #[error("the store's disk is full; free some space (nothing was written): {0}")]
    DiskFull(String),
    /// The database file is corrupt.
    #[error("the store's database file is corrupt ({0}); restore it from a snapshot")]
    Corrupt(String),
    /// Another storage failure.
    #[error("store storage error: {0}")]
    Storage(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Corrupted(m) => StoreError::Corrupt(m),
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::DiskFull(io.to_string()),
            redb::Error::PreviousIo => {
                StoreError::Storage("an earlier I/O error left the database unusable; restart the server".into())
            }
            other => StoreError::Storage(other.to_string()),
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    // ENOSPC (28) and EDQUOT (122 on Linux) are "no space left" and "quota exceeded".
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28) | Some(122))
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
storage_from!(redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError, redb::DatabaseError);

/// Where a record lives: a database (a namespace by default) and a table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
}

impl Location {
    /// A location, with its names checked (see [`validate_name`]).
    pub fn new(database: &str, table: &str) -> Result<Self, StoreError> {
        validate_name("database", database)?;
        validate_name("table", table)?;
        Ok(Self { database: database.to_string(), table: table.to_string() })
    }

    fn redb_name(&self) -> String {
        format!("{DATA_PREFIX}{}/{}", self.database, self.table)
    }

    fn from_redb_name(name: &str) -> Option<Self> {
        let (database, table) = name.strip_prefix(DATA_PREFIX)?.split_once('/')?;
        Some(Self { database: database.to_string(), table: table.to_string() })
    }
}

/// Checks a database or table name: 1 to [`MAX_NAME_BYTES`] bytes, no `/` and no control characters.
pub fn validate_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::Invalid(format!("the {what} name is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(StoreError::Invalid(format!("the {what} name is longer than {MAX_NAME_BYTES} bytes")));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(format!(
            "invalid {what} name {name:?}: it may not contain `/` or control characters"
        )));
    }
    Ok(())
}

/// A record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Metadata, by name.
    pub metadata: BTreeMap<String, Field>,
    /// When the record expires (Unix time in milliseconds), if ever.
    pub expires_at: Option<u64>,
}

impl Record {
    /// Checks the sizes of the key, the value and the metadata.
    pub fn validate(&self) -> Result<(), StoreError> {
        validate_key(&self.key)?;
        if self.value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::Invalid(format!(
                "the value of {:?} is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (4 MiB)",
                self.key,
                self.value.len()
            )));
        }
        let metadata: usize = self.metadata.iter().map(|(k, f)| k.len() + f.r#type.len() + f.value.len()).sum();
        if metadata > MAX_METADATA_BYTES {
            return Err(StoreError::Invalid(format!(
                "the metadata of {:?} is {metadata} bytes; the limit is {MAX_METADATA_BYTES} bytes (64 KiB)",
                self.key
            )));
        }
        Ok(())
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Checks a key: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::Invalid(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES} bytes (1 KiB)",
            key.len()
        )));
    }
    Ok(())
}

/// The order of keys in an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Ascending (byte order of the keys).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

impl Order {
    /// Parses `asc` or `desc` (empty is `asc`).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text.to_ascii_lowercase().as_str() {
            "" | "asc" => Ok(Order::Asc),
            "desc" => Ok(Order::Desc),
            other => Err(StoreError::Invalid(format!("invalid order {other:?}: use asc or desc"))),
        }
    }
}

/// Which records a read or a listing selects, and which page of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Exactly this key (when set, `prefix` and `suffix` still apply but are normally empty).
    pub key: Option<String>,
    /// Keys that start with this.
    pub prefix: String,
    /// Keys that end with this.
    pub suffix: String,
    /// Matching records to skip first.
    pub offset: usize,
    /// The most records to return after the offset; `None` for all.
    pub limit: Option<usize>,
    /// The order, by key.
    pub order: Order,
}

impl Query {
    /// One key.
    pub fn key(key: impl Into<String>) -> Self {
        Self { key: Some(key.into()), ..Default::default() }
    }

    /// Every key with a prefix.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Default::default() }
    }

    fn matches(&self, key: &str) -> bool {
        self.key.as_deref().is_none_or(|k| k == key) && key.starts_with(&self.prefix) && key.ends_with(&self.suffix)
    }
}

/// A store of records.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live records `query` selects; [`StoreError::NotFound`] when it names one key and that key has none.
    async fn read(&self, location: &Location, query: Query) -> Result<Vec<Record>, StoreError>;
    /// The live keys `query` selects.
    async fn keys(&self, location: &Location, query: Query) -> Result<Vec<String>, StoreError>;
    /// Writes records (replacing those with the same keys) atomically and durably. A record that has already
    /// expired deletes its key.
    async fn write(&self, location: &Location, records: Vec<Record>) -> Result<(), StoreError>;
    /// Deletes a record; deleting a missing key is not an error.
    async fn delete(&self, location: &Location, key: &str) -> Result<(), StoreError>;
    /// Every database that has a table.
    async fn databases(&self) -> Result<Vec<String>, StoreError>;
    /// The tables of a database.
    async fn tables(&self, database: &str) -> Result<Vec<String>, StoreError>;
    /// A page of live records in key order, after `after` (from the start when `None`): at most `max` records,
    /// stopping once `max_bytes` is reached (at least one record when any is left). Empty at the end.
    async fn export(
        &self,
        location: &Location,
        after: Option<String>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// Deletes expired records; returns how many.
    async fn sweep(&self) -> Result<usize, StoreError>;
}

/// The current time, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The encoded form of the parts of a record other than its key (after the version byte and the expiry).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredBody {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
    #[prost(btree_map = "string, message", tag = "2")]
    metadata: BTreeMap<String, Field>,
}

/// Encodes a record's value: a version byte ([`RECORD_VERSION`]), the expiry as a big-endian u64 of Unix
/// milliseconds (0 = never), then a protobuf message with the value (field 1) and the metadata (field 2).
/// The expiry comes first so that reads check it without decoding the rest.
fn encode(record: &Record) -> Vec<u8> {
    let body = StoredBody { value: record.value.clone(), metadata: record.metadata.clone() };
    let mut out = Vec::with_capacity(9 + body.encoded_len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&record.expires_at.unwrap_or(0).to_be_bytes());
    body.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The expiry of an encoded record (`None` = never), without decoding the rest.
fn encoded_expiry(bytes: &[u8]) -> Result<Option<u64>, StoreError> {
    match bytes {
        [RECORD_VERSION, rest @ ..] if rest.len() >= 8 => {
            let at = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            Ok((at != 0).then_some(at))
        }
        [v, ..] => Err(StoreError::Corrupt(format!("a record has unknown format version {v}"))),
        [] => Err(StoreError::Corrupt("a record is empty".into())),
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    let expires_at = encoded_expiry(bytes)?;
    let body = StoredBody::decode(&bytes[9..])
        .map_err(|e| StoreError::Corrupt(format!("the record {key:?} cannot be decoded: {e}")))?;
    Ok(Record { key: key.to_string(), value: body.value, metadata: body.metadata, expires_at })
}

fn index_key(expires_at: u64, table: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + table.len() + key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(&(table.len() as u16).to_be_bytes());
    out.extend_from_slice(table.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn parse_index_key(bytes: &[u8]) -> Option<(u64, String, String)> {
    let at = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let len = u16::from_be_bytes(bytes.get(8..10)?.try_into().ok()?) as usize;
    let table = std::str::from_utf8(bytes.get(10..10 + len)?).ok()?;
    let key = std::str::from_utf8(bytes.get(10 + len..)?).ok()?;
    Some((at, table.to_string(), key.to_string()))
}

/// The smallest string greater than every string that starts with `prefix`, if there is one.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// One write the writer applies.
enum Op {
    Put { table: String, records: Vec<Record> },
    Delete { table: String, key: String },
    Sweep,
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put { records, .. } => records.iter().map(|r| r.key.len() + r.value.len()).sum(),
            Op::Delete { key, .. } => key.len(),
            Op::Sweep => 0,
        }
    }
}

struct Job {
    op: Op,
    done: oneshot::Sender<Result<usize, StoreError>>,
}

/// The store in a redb file, with group commit. See the [module docs](self).
pub struct RedbStore {
    db: Arc<Database>,
    writer: mpsc::Sender<Job>,
    commits: Arc<AtomicU64>,
}

impl RedbStore {
    /// Opens (or creates) the store at `path` and starts its writer thread. Returns the store and a receiver
    /// that completes when the writer thread has stopped (after the store and all its clones are dropped) and
    /// the database is closed.
    pub fn open(path: &Path) -> Result<(Self, oneshot::Receiver<()>), StoreError> {
        let db = Database::create(path).map_err(|e| match StoreError::from(e) {
            StoreError::Storage(m) => StoreError::Storage(format!("cannot open {}: {m}", path.display())),
            other => other,
        })?;
        let tx = db.begin_write()?;
        tx.open_table(EXPIRY)?;
        let known: HashSet<String> = tx.list_tables()?.map(|t| t.name().to_string()).collect();
        tx.commit()?;
        let db = Arc::new(db);
        let (writer, queue) = mpsc::channel(QUEUE);
        let (closed_tx, closed) = oneshot::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let mut state = Writer { db: db.clone(), known, commits: commits.clone() };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                state.run(queue);
                drop(state);
                let _ = closed_tx.send(());
            })
            .map_err(|e| StoreError::Storage(format!("cannot start the store's writer thread: {e}")))?;
        Ok((Self { db, writer, commits }, closed))
    }

    /// How many write transactions the writer has committed (each one answers a whole batch of writes).
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn submit(&self, op: Op) -> Result<usize, StoreError> {
        let (done, answer) = oneshot::channel();
        self.writer.send(Job { op, done }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Storage(format!("a read task failed: {e}")))?
    }

    /// Whether any record has expired by `now` (a cheap read, so idle sweeps write nothing).
    fn any_expired(db: &Database, now: u64) -> Result<bool, StoreError> {
        let tx = db.begin_read()?;
        let index = tx.open_table(EXPIRY)?;
        let upper = (now + 1).to_be_bytes();
        Ok(index.range::<&[u8]>(..upper.as_slice())?.next().is_some())
    }
}

/// Runs `query` over one table of a read transaction, calling `visit` with each selected live entry in order
/// until it returns `false`.
fn select(
    db: &Database,
    location: &Location,
    query: &Query,
    mut visit: impl FnMut(&str, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let tx = db.begin_read()?;
    let name = location.redb_name();
    let table = match tx.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let now = now_ms();
    let mut skipped = 0;
    let mut taken = 0;
    let mut step = |key: &str, bytes: &[u8]| -> Result<bool, StoreError> {
        if !query.matches(key) || encoded_expiry(bytes)?.is_some_and(|at| at <= now) {
            return Ok(true);
        }
        if skipped < query.offset {
            skipped += 1;
            return Ok(true);
        }
        if query.limit.is_some_and(|l| taken >= l) {
            return Ok(false);
        }
        taken += 1;
        visit(key, bytes)
    };
    if let Some(key) = &query.key {
        if let Some(v) = table.get(key.as_str())? {
            step(key, v.value())?;
        }
        return Ok(());
    }
    let start = query.prefix.as_str();
    let end = prefix_end(start);
    let range = match &end {
        Some(end) if !start.is_empty() => table.range::<&str>(start..end.as_str())?,
        _ => table.range::<&str>(start..)?,
    };
    match query.order {
        Order::Asc => {
            for entry in range {
                let (k, v) = entry?;
                if !step(k.value(), v.value())? {
                    break;
                }
            }
        }
        Order::Desc => {
            for entry in range.rev() {
                let (k, v) = entry?;
                if !step(k.value(), v.value())? {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Store for RedbStore {
    async fn read(&self, location: &Location, query: Query) -> Result<Vec<Record>, StoreError> {
        let location = location.clone();
        let one = query.key.is_some();
        let records = self
            .reading(move |db| {
                let mut out = Vec::new();
                let mut bytes = 0;
                select(db, &location, &query, |key, value| {
                    bytes += key.len() + value.len();
                    if bytes > MAX_READ_BYTES {
                        return Err(StoreError::TooLarge(format!(
                            "the records read exceed {} MiB; read fewer at a time with a limit and an offset",
                            MAX_READ_BYTES / (1024 * 1024)
                        )));
                    }
                    out.push(decode(key, value)?);
                    Ok(true)
                })?;
                Ok(out)
            })
            .await?;
        if one && records.is_empty() {
            return Err(StoreError::NotFound);
        }
        Ok(records)
    }

    async fn keys(&self, location: &Location, query: Query) -> Result<Vec<String>, StoreError> {
        let location = location.clone();
        self.reading(move |db| {
            let mut out = Vec::new();
            select(db, &location, &query, |key, _| {
                out.push(key.to_string());
                Ok(true)
            })?;
            Ok(out)
        })
        .await
    }

    async fn write(&self, location: &Location, records: Vec<Record>) -> Result<(), StoreError> {
        for r in &records {
            r.validate()?;
        }
        if records.is_empty() {
            return Ok(());
        }
        self.submit(Op::Put { table: location.redb_name(), records }).await.map(|_| ())
    }

    async fn delete(&self, location: &Location, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.submit(Op::Delete { table: location.redb_name(), key: key.to_string() }).await.map(|_| ())
    }

    async fn databases(&self) -> Result<Vec<String>, StoreError> {
        self.reading(|db| {
            let tx = db.begin_read()?;
            let mut out: Vec<String> =
                tx.list_tables()?.filter_map(|t| Location::from_redb_name(t.name())).map(|l| l.database).collect();
            out.sort();
            out.dedup();
            Ok(out)
        })
        .await
    }

    async fn tables(&self, database: &str) -> Result<Vec<String>, StoreError> {
        let database = database.to_string();
        self.reading(move |db| {
            let tx = db.begin_read()?;
            let mut out: Vec<String> = tx
                .list_tables()?
                .filter_map(|t| Location::from_redb_name(t.name()))
                .filter(|l| l.database == database)
                .map(|l| l.table)
                .collect();
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn export(
        &self,
        location: &Location,
        after: Option<String>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let location = location.clone();
        self.reading(move |db| {
            let tx = db.begin_read()?;
            let name = location.redb_name();
            let table = match tx.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let now = now_ms();
            let range = match &after {
                Some(a) => table.range::<&str>((std::ops::Bound::Excluded(a.as_str()), std::ops::Bound::Unbounded))?,
                None => table.range::<&str>(..)?,
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for entry in range {
                let (k, v) = entry?;
                let record = decode(k.value(), v.value())?;
                if record.expired(now) {
                    continue;
                }
                bytes += record.key.len() + record.value.len();
                out.push(record);
                if out.len() >= max || bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn sweep(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        if !self.reading(move |db| RedbStore::any_expired(db, now)).await? {
            return Ok(0);
        }
        self.submit(Op::Sweep).await
    }
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    /// The data tables that exist (committed).
    known: HashSet<String>,
    /// Transactions committed.
    commits: Arc<AtomicU64>,
}

impl Writer {
    fn run(&mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut bytes = first.op.bytes();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(job) => {
                        bytes += job.op.bytes();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    /// Applies a batch in one transaction and answers each job. If the batch fails as a whole, each job is
    /// retried in its own transaction, so that one failing write cannot fail the others.
    fn commit_batch(&mut self, batch: Vec<Job>) {
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        match self.commit(&ops) {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.done.send(Ok(result));
                }
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                tracing::warn!(error = %e, "a store write failed");
                let _ = job.done.send(Err(e));
            }
            Err(e) => {
                tracing::debug!(error = %e, jobs = batch.len(), "a group commit failed; retrying each write alone");
                for job in batch {
                    let result = self.commit(&[&job.op]).map(|mut r| r.pop().unwrap_or(0));
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "a store write failed");
                    }
                    let _ = job.done.send(result);
                }
            }
        }
    }

    /// Applies `ops` in one durable transaction; returns a count per op (records deleted by a sweep).
    fn commit(&mut self, ops: &[&Op]) -> Result<Vec<usize>, StoreError> {
        let tx = self.db.begin_write()?;
        let mut created = HashSet::new();
        let mut results = Vec::with_capacity(ops.len());
        {
            let mut index = tx.open_table(EXPIRY)?;
            let now = now_ms();
            for op in ops {
                let n = match op {
                    Op::Put { table, records } => {
                        let mut t = tx.open_table(TableDefinition::<&str, &[u8]>::new(table))?;
                        if !self.known.contains(table) {
                            created.insert(table.clone());
                        }
                        for r in records {
                            let old = if r.expired(now) {
                                t.remove(r.key.as_str())?.map(|v| encoded_expiry(v.value())).transpose()?
                            } else {
                                t.insert(r.key.as_str(), encode(r).as_slice())?
                                    .map(|v| encoded_expiry(v.value()))
                                    .transpose()?
                            };
                            if let Some(Some(at)) = old {
                                index.remove(index_key(at, table, &r.key).as_slice())?;
                            }
                            if let Some(at) = r.expires_at.filter(|_| !r.expired(now)) {
                                index.insert(index_key(at, table, &r.key).as_slice(), ())?;
                            }
                        }
                        0
                    }
                    Op::Delete { table, key } => {
                        if self.known.contains(table) || created.contains(table) {
                            let mut t = tx.open_table(TableDefinition::<&str, &[u8]>::new(table))?;
                            let old = t.remove(key.as_str())?.map(|v| encoded_expiry(v.value())).transpose()?;
                            if let Some(Some(at)) = old {
                                index.remove(index_key(at, table, key).as_slice())?;
                            }
                        }
                        0
                    }
                    Op::Sweep => sweep(&tx, &mut index, now)?,
                };
                results.push(n);
            }
        }
        tx.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.known.extend(created);
        Ok(results)
    }
}

/// Deletes up to [`MAX_SWEEP`] records that expired by `now`, with their index entries.
fn sweep(tx: &redb::WriteTransaction, index: &mut redb::Table<&[u8], ()>, now: u64) -> Result<usize, StoreError> {
    let upper = (now + 1).to_be_bytes();
    let mut due: Vec<Vec<u8>> = Vec::new();
    for entry in index.range::<&[u8]>(..upper.as_slice())? {
        due.push(entry?.0.value().to_vec());
        if due.len() >= MAX_SWEEP {
            break;
        }
    }
    let mut by_table: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    for raw in &due {
        index.remove(raw.as_slice())?;
        match parse_index_key(raw) {
            Some((at, table, key)) => by_table.entry(table).or_default().push((at, key)),
            None => tracing::warn!("dropping an unreadable expiry index entry"),
        }
    }
    let mut deleted = 0;
    for (table, entries) in by_table {
        let mut t = tx.open_table(TableDefinition::<&str, &[u8]>::new(&table))?;
        for (at, key) in entries {
            // Only if the record still has this expiry (the index and the data change together, but be sure).
            let current = t.get(key.as_str())?.map(|v| encoded_expiry(v.value())).transpose()?;
            if current == Some(Some(at)) {
                t.remove(key.as_str())?;
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _closed) = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        (dir, store)
    }

    fn loc() -> Location {
        Location::new("micro", "micro").unwrap()
    }

    fn rec(key: &str, value: &str) -> Record {
        Record { key: key.into(), value: value.as_bytes().to_vec(), ..Default::default() }
    }

    fn keys(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.key.as_str()).collect()
    }

    #[tokio::test]
    async fn write_read_delete() {
        let (_dir, store) = open();
        let mut r = rec("a", "1");
        r.metadata.insert("k".into(), Field { r#type: "string".into(), value: "v".into() });
        store.write(&loc(), vec![r.clone()]).await.unwrap();
        assert_eq!(store.read(&loc(), Query::key("a")).await.unwrap(), vec![r]);
        assert!(matches!(store.read(&loc(), Query::key("b")).await, Err(StoreError::NotFound)));
        store.delete(&loc(), "a").await.unwrap();
        assert!(matches!(store.read(&loc(), Query::key("a")).await, Err(StoreError::NotFound)));
        // Deleting a missing key, or in a table that does not exist, is fine and creates nothing.
        store.delete(&Location::new("micro", "ghost").unwrap(), "a").await.unwrap();
        assert_eq!(store.tables("micro").await.unwrap(), ["micro"]);
    }

    #[tokio::test]
    async fn prefix_suffix_offset_limit_order() {
        let (_dir, store) = open();
        let records = ["a1", "a2", "a3", "b1", "ab", "a\u{10FFFF}"].map(|k| rec(k, k)).to_vec();
        store.write(&loc(), records).await.unwrap();
        let read = |q: Query| {
            let store = &store;
            async move { store.read(&loc(), q).await.unwrap() }
        };
        assert_eq!(keys(&read(Query::prefix("a")).await), ["a1", "a2", "a3", "ab", "a\u{10FFFF}"]);
        let q = Query { prefix: "a".into(), order: Order::Desc, ..Default::default() };
        assert_eq!(keys(&read(q).await), ["a\u{10FFFF}", "ab", "a3", "a2", "a1"]);
        let q = Query { suffix: "1".into(), ..Default::default() };
        assert_eq!(keys(&read(q).await), ["a1", "b1"]);
        // The offset skips, the limit bounds what is left (Micro used the offset as a limit).
        let q = Query { prefix: "a".into(), offset: 1, limit: Some(2), ..Default::default() };
        assert_eq!(keys(&read(q).await), ["a2", "a3"]);
        let q = Query { prefix: "a".into(), offset: 1, limit: Some(2), order: Order::Desc, ..Default::default() };
        assert_eq!(keys(&read(q).await), ["ab", "a3"]);
        let q = Query { offset: 10, ..Default::default() };
        assert!(read(q).await.is_empty());
        let q = Query { prefix: "a".into(), suffix: "3".into(), ..Default::default() };
        assert_eq!(store.keys(&loc(), q).await.unwrap(), ["a3"]);
        assert_eq!(store.keys(&loc(), Query::default()).await.unwrap().len(), 6);
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[tokio::test]
    async fn expired_records_are_hidden_then_swept() {
        let (_dir, store) = open();
        let mut short = rec("short", "x");
        short.expires_at = Some(now_ms() + 150);
        let mut long = rec("long", "y");
        long.expires_at = Some(now_ms() + 60_000);
        store.write(&loc(), vec![short, long.clone(), rec("forever", "z")]).await.unwrap();
        assert_eq!(store.keys(&loc(), Query::default()).await.unwrap(), ["forever", "long", "short"]);
        assert_eq!(store.sweep().await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Hidden before any sweep.
        assert!(matches!(store.read(&loc(), Query::key("short")).await, Err(StoreError::NotFound)));
        assert_eq!(store.keys(&loc(), Query::default()).await.unwrap(), ["forever", "long"]);
        assert_eq!(store.sweep().await.unwrap(), 1);
        assert_eq!(store.sweep().await.unwrap(), 0);
        assert_eq!(store.read(&loc(), Query::key("long")).await.unwrap(), vec![long]);

        // Overwriting a record moves its index entry: the old expiry does not delete the new record.
        let mut r = rec("k", "old");
        r.expires_at = Some(now_ms() + 100);
        store.write(&loc(), vec![r]).await.unwrap();
        store.write(&loc(), vec![rec("k", "new")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(store.sweep().await.unwrap(), 0);
        assert_eq!(store.read(&loc(), Query::key("k")).await.unwrap()[0].value, b"new");

        // Writing an already expired record deletes the key.
        let mut gone = rec("forever", "z");
        gone.expires_at = Some(now_ms() - 1);
        store.write(&loc(), vec![gone]).await.unwrap();
        assert!(matches!(store.read(&loc(), Query::key("forever")).await, Err(StoreError::NotFound)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_share_commits_and_all_land() {
        let (dir, store) = open();
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for t in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    store.write(&loc(), vec![rec(&format!("t{t:02}-{i:02}"), "v")]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.keys(&loc(), Query::default()).await.unwrap().len(), 640);
        assert!(store.commits() < 640, "{} commits for 640 concurrent writes", store.commits());
        // Every acknowledged write is durable: reopen the file and count again.
        drop(store);
        let (store, _) = loop {
            // The writer thread releases the file when it sees the queue closed.
            match RedbStore::open(&dir.path().join("store.redb")) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(store.keys(&loc(), Query::default()).await.unwrap().len(), 640);
    }

    #[test]
    fn queued_writes_share_one_commit() {
        // Queue many writes before the writer runs: it applies them all in one transaction.
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("s.redb")).unwrap());
        let tx = db.begin_write().unwrap();
        tx.open_table(EXPIRY).unwrap();
        tx.commit().unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let mut writer = Writer { db: db.clone(), known: HashSet::new(), commits: commits.clone() };
        let (queue_tx, queue) = mpsc::channel(100);
        let mut answers = Vec::new();
        for i in 0..50 {
            let (done, answer) = oneshot::channel();
            let op = Op::Put { table: loc().redb_name(), records: vec![rec(&format!("k{i}"), "v")] };
            queue_tx.try_send(Job { op, done }).unwrap();
            answers.push(answer);
        }
        // A delete in the same batch sees the table the batch created.
        let (done, answer) = oneshot::channel();
        queue_tx.try_send(Job { op: Op::Delete { table: loc().redb_name(), key: "k0".into() }, done }).unwrap();
        answers.push(answer);
        drop(queue_tx);
        writer.run(queue);
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        for mut a in answers {
            assert_eq!(a.try_recv().unwrap().unwrap(), 0);
        }
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(TableDefinition::<&str, &[u8]>::new(&loc().redb_name())).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&t).unwrap(), 49);
    }

    #[tokio::test]
    async fn databases_tables_and_export() {
        let (_dir, store) = open();
        store.write(&Location::new("a", "t1").unwrap(), vec![rec("x", "1")]).await.unwrap();
        store.write(&Location::new("a", "t2").unwrap(), vec![rec("x", "1")]).await.unwrap();
        store.write(&Location::new("b", "micro").unwrap(), vec![rec("x", "1")]).await.unwrap();
        assert_eq!(store.databases().await.unwrap(), ["a", "b"]);
        assert_eq!(store.tables("a").await.unwrap(), ["t1", "t2"]);
        assert!(store.tables("c").await.unwrap().is_empty());

        let records: Vec<Record> = (0..25).map(|i| rec(&format!("k{i:02}"), "v")).collect();
        store.write(&loc(), records.clone()).await.unwrap();
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = store.export(&loc(), after.clone(), 10, usize::MAX).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| r.key.clone());
            all.extend(page);
        }
        assert_eq!(all, records);
        // A byte budget still returns at least one record per page.
        assert_eq!(store.export(&loc(), None, 10, 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let (_dir, store) = open();
        assert!(matches!(Location::new("", "t"), Err(StoreError::Invalid(_))));
        assert!(matches!(Location::new("a/b", "t"), Err(StoreError::Invalid(_))));
        assert!(matches!(Location::new("a", &"t".repeat(200)), Err(StoreError::Invalid(_))));
        let e = store.write(&loc(), vec![rec("", "v")]).await.unwrap_err();
        assert_eq!(e.to_string(), "the key is empty");
        let e = store.write(&loc(), vec![rec(&"k".repeat(MAX_KEY_BYTES + 1), "v")]).await.unwrap_err();
        assert!(e.to_string().contains("limit is 1024 bytes"), "{e}");
        let mut big = rec("big", "");
        big.value = vec![0; MAX_VALUE_BYTES + 1];
        let e = store.write(&loc(), vec![big]).await.unwrap_err();
        assert!(e.to_string().contains("4 MiB"), "{e}");
        assert!(Order::parse("sideways").is_err());
        assert_eq!(Order::parse("DESC").unwrap(), Order::Desc);
    }

    #[test]
    fn a_corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = RedbStore::open(&path).err().expect("a corrupt file does not open");
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn encoding_round_trips() {
        let mut r = rec("k", "value");
        r.expires_at = Some(123);
        r.metadata.insert("m".into(), Field { r#type: "int64".into(), value: "7".into() });
        let bytes = encode(&r);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode("k", &bytes).unwrap(), r);
        assert!(matches!(decode("k", &[9, 0]), Err(StoreError::Corrupt(_))));
        let ik = index_key(5, "data/a/b", "key");
        assert_eq!(parse_index_key(&ik), Some((5, "data/a/b".into(), "key".into())));
    }
}
