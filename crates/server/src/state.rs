//! The durable state of the core services that keep small values under string keys: auth's accounts, rules and
//! refresh tokens, and config's documents.
//!
//! A [`Table`] is an embedded redb database in the data dir by default. When the server's store is in PostgreSQL
//! (`--store postgres://…`, cargo feature `postgres`) every table is instead an *area* of one SQL table,
//! `micro_state`, in that database, so servers that share the database share accounts, rules, tokens and config:
//!
//! ```sql
//! CREATE TABLE micro_state (area text NOT NULL, key text COLLATE "C" NOT NULL, value bytea NOT NULL,
//!                           PRIMARY KEY (area, key));
//! ```
//!
//! A change to an area is announced with `NOTIFY micro_state, '<area>'` in the transaction that makes it, and
//! `listen` (PostgreSQL only) hands the announcements to the service that caches the area in memory (auth).
//!
//! Every method blocks: callers run them off the async workers (`spawn_blocking`). The PostgreSQL table drives its
//! queries on the server's runtime with `Handle::block_on`, so it must be opened inside one.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// A storage failure, with a message that names the cause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateError(pub String);

/// Where the core services keep their state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Location {
    /// redb files in the data dir.
    #[default]
    DataDir,
    /// The `micro_state` table of a PostgreSQL database, by connection URL.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl Location {
    /// Where the state goes for a server whose store is `store`: beside the store's records.
    pub fn of(store: &super::store::StoreBackend) -> Self {
        match store {
            super::store::StoreBackend::Redb => Location::DataDir,
            #[cfg(feature = "postgres")]
            super::store::StoreBackend::Postgres(url) => Location::Postgres(url.clone()),
            // The store refuses to start without the feature, with the message that says how to rebuild.
            #[cfg(not(feature = "postgres"))]
            super::store::StoreBackend::Postgres(_) => Location::DataDir,
        }
    }

    /// Whether several servers may share this state.
    pub fn is_shared(&self) -> bool {
        !matches!(self, Location::DataDir)
    }
}

/// One table of string keys and byte values.
#[derive(Clone)]
pub struct Table {
    inner: Arc<Inner>,
    /// Whether writes are announced to listeners (see [`Table::quiet`]); only shared tables announce.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    announce: bool,
}

enum Inner {
    Redb {
        db: Database,
        name: &'static str,
    },
    #[cfg(feature = "postgres")]
    Postgres(Box<pg::PgTable>),
}

fn redb_error(e: impl Into<redb::Error>) -> StateError {
    match e.into() {
        redb::Error::Corrupted(m) => StateError(format!("the database file is corrupt: {m}")),
        redb::Error::Io(io) if matches!(io.raw_os_error(), Some(28) | Some(122)) => {
            StateError(format!("the disk is full; nothing was written: {io}"))
        }
        other => StateError(other.to_string()),
    }
}

impl Table {
    /// Opens table `name`: in the redb file `file` of `data_dir`, or in area `name` of PostgreSQL's `micro_state`.
    pub fn open(location: &Location, data_dir: &Path, file: &str, name: &'static str) -> Result<Self, StateError> {
        let inner = match location {
            Location::DataDir => {
                let path = data_dir.join(file);
                let db = Database::create(&path)
                    .map_err(|e| StateError(format!("cannot open {}: {}", path.display(), redb_error(e))))?;
                let tx = db.begin_write().map_err(redb_error)?;
                tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                tx.commit().map_err(redb_error)?;
                Inner::Redb { db, name }
            }
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Inner::Postgres(Box::new(pg::PgTable::open(url, name)?)),
        };
        Ok(Self { inner: Arc::new(inner), announce: true })
    }

    /// The same table, but its writes are not announced: for data that no one caches (refresh tokens).
    pub fn quiet(&self) -> Self {
        Self { inner: self.inner.clone(), announce: false }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match &*self.inner {
            Inner::Redb { db, name } => {
                let tx = db.begin_read().map_err(redb_error)?;
                let table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                Ok(table.get(key).map_err(redb_error)?.map(|v| v.value().to_vec()))
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(t) => t.get(key),
        }
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        match &*self.inner {
            Inner::Redb { db, name } => {
                let tx = db.begin_read().map_err(redb_error)?;
                let table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                let mut out = Vec::new();
                for entry in table.range(prefix..).map_err(redb_error)? {
                    let (k, v) = entry.map_err(redb_error)?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.push((k.value().to_string(), v.value().to_vec()));
                }
                Ok(out)
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(t) => t.scan(prefix),
        }
    }

    /// Writes `puts` (the last of equal keys wins) and deletes `deletes`, all or nothing, durably.
    pub fn apply(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> Result<(), StateError> {
        match &*self.inner {
            Inner::Redb { db, name } => {
                let tx = db.begin_write().map_err(redb_error)?;
                {
                    let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                    for (k, v) in puts {
                        table.insert(k.as_str(), v.as_slice()).map_err(redb_error)?;
                    }
                    for k in deletes {
                        table.remove(k.as_str()).map_err(redb_error)?;
                    }
                }
                tx.commit().map_err(redb_error)
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(t) => t.apply(puts, deletes, self.announce),
        }
    }

    /// Deletes `key` and returns what it held: of two servers taking the same key, exactly one gets it.
    pub fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match &*self.inner {
            Inner::Redb { db, name } => {
                let tx = db.begin_write().map_err(redb_error)?;
                let old = {
                    let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                    table.remove(key).map_err(redb_error)?.map(|v| v.value().to_vec())
                };
                tx.commit().map_err(redb_error)?;
                Ok(old)
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(t) => t.take(key, self.announce),
        }
    }

    /// Reads, changes and writes `key` atomically: `change` gets the current value and returns the new one, or
    /// `None` to leave it as it is. Concurrent updates of one key (from any server) run one after the other.
    pub fn update<E: From<StateError>>(
        &self,
        key: &str,
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<(), E> {
        match &*self.inner {
            Inner::Redb { db, name } => {
                let tx = db.begin_write().map_err(redb_error)?;
                {
                    let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(name)).map_err(redb_error)?;
                    let old = table.get(key).map_err(redb_error)?.map(|v| v.value().to_vec());
                    let Some(new) = change(old.as_deref())? else { return Ok(()) };
                    table.insert(key, new.as_slice()).map_err(redb_error)?;
                }
                tx.commit().map_err(redb_error)?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Inner::Postgres(t) => t.update(key, change, self.announce),
        }
    }

    /// The value of `key`, after writing `value` there if it held none: the first writer's value wins.
    pub fn get_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StateError> {
        let mut current = None;
        self.update::<StateError>(key, |old| {
            current = Some(old.unwrap_or(value).to_vec());
            Ok(old.is_none().then(|| value.to_vec()))
        })?;
        Ok(current.unwrap_or_else(|| value.to_vec()))
    }
}

/// Checks that this server's key file `file` (by its `fingerprint`) is the one of the other servers that share
/// `table`'s state: the first server records its fingerprint (in the area `keys`, over `table`'s connection), and a
/// server with another key is refused, since tokens it signed or secrets it sealed would not open elsewhere.
/// Nothing to check for a table in the data dir.
pub fn check_key(table: &Table, data_dir: &Path, file: &str, fingerprint: &str) -> Result<(), StateError> {
    #[cfg(feature = "postgres")]
    if let Inner::Postgres(t) = &*table.inner {
        let keys = Table { inner: Arc::new(Inner::Postgres(Box::new(t.in_area("keys")))), announce: false };
        let recorded = keys.get_or_insert(file, fingerprint.as_bytes())?;
        if recorded != fingerprint.as_bytes() {
            return Err(StateError(format!(
                "{} is not the key of the other servers that share this database; copy {file} from one of them \
                 into this server's data dir (or start this server with a database of its own)",
                data_dir.join(file).display()
            )));
        }
    }
    #[cfg(not(feature = "postgres"))]
    let _ = (table, data_dir, file, fingerprint);
    Ok(())
}

/// Calls `changed` (off the async workers) whenever another writer may have changed `area`, until `cancel` fires:
/// once at start, on every announcement, and after every reconnect (announcements may have been missed).
/// Nothing is called for state in the data dir, which only this server writes.
pub async fn listen(
    location: Location,
    area: &'static str,
    changed: Arc<dyn Fn() + Send + Sync>,
    cancel: tokio_util::sync::CancellationToken,
) {
    match location {
        Location::DataDir => {
            let _ = (area, changed, cancel);
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(url) => pg::listen(&url, area, changed, cancel).await,
    }
}

#[cfg(feature = "postgres")]
pub(crate) mod pg {
    //! The PostgreSQL side of [`super::Table`], and the connection and notification helpers that events share.

    use super::StateError;
    use crate::store::postgres::redact;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::runtime::Handle;
    use tokio_postgres::{AsyncMessage, Client, NoTls};

    /// The schema, created when missing, under a transaction-scoped advisory lock (see the store's).
    const SCHEMA: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(7283041959);
CREATE TABLE IF NOT EXISTS micro_state (
    area text NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (area, key)
);
COMMIT;
"#;

    /// The channel that announces changes; the payload is the area.
    const CHANNEL: &str = "micro_state";

    /// A PostgreSQL error's message, the server's own where there is one: what every PostgreSQL backend reports.
    pub fn pg_message(e: &tokio_postgres::Error) -> String {
        format!("PostgreSQL: {}", e.as_db_error().map_or_else(|| e.to_string(), |d| d.to_string()))
    }

    /// A PostgreSQL error as a [`StateError`].
    pub fn pg_error(e: tokio_postgres::Error) -> StateError {
        StateError(pg_message(&e))
    }

    /// A time or count as a PostgreSQL `bigint` (saturating).
    pub fn big(n: u64) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// Refuses text that PostgreSQL cannot store (a NUL character), naming `what` it is.
    pub fn check_text(what: &str, text: &str) -> Result<(), String> {
        if text.contains('\0') {
            return Err(format!("the {what} contains a NUL character, which PostgreSQL cannot store"));
        }
        Ok(())
    }

    fn check_key(key: &str) -> Result<(), StateError> {
        check_text("key", key).map_err(StateError)
    }

    /// Opens a connection (its driver is the caller's to spawn).
    pub async fn connect(
        url: &str,
    ) -> Result<
        (Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
        StateError,
    > {
        tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| StateError(format!("cannot connect to PostgreSQL at {}: {e}", redact(url))))
    }

    /// One PostgreSQL connection for blocking callers (reopened on the next call after it drops), driven on the
    /// runtime it was opened in.
    pub struct Conn {
        url: String,
        label: &'static str,
        client: tokio::sync::Mutex<Option<Client>>,
        /// How many times the connection was opened: a new session has none of the old one's locks.
        opened: std::sync::atomic::AtomicU64,
        /// The runtime that runs the queries (`block_on`).
        pub runtime: Handle,
    }

    impl Conn {
        /// Connects. Must be called from inside a tokio runtime (a `spawn_blocking` thread included), but not from
        /// async code; `label` names the connection in warnings.
        pub fn open(url: &str, label: &'static str) -> Result<Self, StateError> {
            let runtime = Handle::try_current()
                .map_err(|_| StateError("PostgreSQL must be opened inside a tokio runtime".into()))?;
            let conn = Self {
                url: url.to_string(),
                label,
                client: tokio::sync::Mutex::new(None),
                opened: std::sync::atomic::AtomicU64::new(0),
                runtime,
            };
            drop(conn.lock()?);
            Ok(conn)
        }

        /// Whether the connection is open now (a busy one counts as open; a dropped one reopens on next use).
        pub fn is_open(&self) -> bool {
            match self.client.try_lock() {
                Ok(guard) => guard.as_ref().is_some_and(|c| !c.is_closed()),
                Err(_) => true,
            }
        }

        /// The connection, held for the caller's whole exchange; reopened when it has dropped.
        pub fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StateError> {
            let mut guard = self.client.blocking_lock();
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                let (client, connection) = self.runtime.block_on(connect(&self.url))?;
                let label = self.label;
                self.runtime.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(connection = label, error = %e, "a PostgreSQL connection ended");
                    }
                });
                *guard = Some(client);
                self.opened.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            Ok(guard)
        }

        /// Runs one query and returns its rows.
        pub fn query(
            &self,
            sql: &str,
            params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        ) -> Result<Vec<tokio_postgres::Row>, StateError> {
            self.query_in_session(sql, params).map(|(rows, _)| rows)
        }

        /// Runs one query and returns its rows and the session that ran it (see [`Conn::session`]).
        pub fn query_in_session(
            &self,
            sql: &str,
            params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        ) -> Result<(Vec<tokio_postgres::Row>, u64), StateError> {
            let guard = self.lock()?;
            let session = self.session();
            let c = guard.as_ref().expect("lock connects");
            Ok((self.runtime.block_on(c.query(sql, params)).map_err(pg_error)?, session))
        }

        /// Runs one query and returns its first row, if any.
        pub fn query_opt(
            &self,
            sql: &str,
            params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        ) -> Result<Option<tokio_postgres::Row>, StateError> {
            Ok(self.query(sql, params)?.into_iter().next())
        }

        /// Which opening of the connection is the current one (see [`Conn::lock`]).
        pub fn session(&self) -> u64 {
            self.opened.load(std::sync::atomic::Ordering::Acquire)
        }
    }

    /// One area of `micro_state`, over one connection.
    pub struct PgTable {
        conn: Arc<Conn>,
        area: &'static str,
    }

    impl PgTable {
        /// Connects and creates the schema when missing (see [`Conn::open`] for where it may be called).
        pub fn open(url: &str, area: &'static str) -> Result<Self, StateError> {
            let table = Self { conn: Arc::new(Conn::open(url, area)?), area };
            {
                let mut guard = table.conn.lock()?;
                let c = guard.as_mut().expect("lock connects");
                table.conn.runtime.block_on(c.batch_execute(SCHEMA)).map_err(pg_error)?;
            }
            Ok(table)
        }

        /// Another area of the same table, over the same connection.
        pub fn in_area(&self, area: &'static str) -> Self {
            Self { conn: self.conn.clone(), area }
        }

        pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
            check_key(key)?;
            let row = self
                .conn
                .query_opt("SELECT value FROM micro_state WHERE area = $1 AND key = $2", &[&self.area, &key])?;
            Ok(row.map(|r| r.get(0)))
        }

        pub fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
            check_key(prefix)?;
            let rows = self.conn.query(
                "SELECT key, value FROM micro_state WHERE area = $1 AND starts_with(key, $2) ORDER BY key",
                &[&self.area, &prefix],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        }

        pub fn apply(&self, puts: &[(String, Vec<u8>)], deletes: &[String], announce: bool) -> Result<(), StateError> {
            // One statement may not change a row twice: the last of equal keys wins.
            let mut last = std::collections::BTreeMap::new();
            for (k, v) in puts {
                check_key(k)?;
                last.insert(k.as_str(), v.as_slice());
            }
            for k in deletes {
                check_key(k)?;
            }
            let keys: Vec<&str> = last.keys().copied().collect();
            let values: Vec<&[u8]> = last.values().copied().collect();
            let mut guard = self.conn.lock()?;
            let c = guard.as_mut().expect("lock connects");
            self.conn
                .runtime
                .block_on(async {
                    let tx = c.transaction().await?;
                    if !keys.is_empty() {
                        tx.execute(
                            "INSERT INTO micro_state (area, key, value) \
                             SELECT $1, k, v FROM unnest($2::text[], $3::bytea[]) AS u(k, v) \
                             ON CONFLICT (area, key) DO UPDATE SET value = excluded.value",
                            &[&self.area, &keys, &values],
                        )
                        .await?;
                    }
                    if !deletes.is_empty() {
                        tx.execute(
                            "DELETE FROM micro_state WHERE area = $1 AND key = ANY($2)",
                            &[&self.area, &deletes],
                        )
                        .await?;
                    }
                    if announce {
                        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.area]).await?;
                    }
                    tx.commit().await
                })
                .map_err(pg_error)
        }

        pub fn take(&self, key: &str, announce: bool) -> Result<Option<Vec<u8>>, StateError> {
            check_key(key)?;
            let mut guard = self.conn.lock()?;
            let c = guard.as_mut().expect("lock connects");
            let row = self
                .conn
                .runtime
                .block_on(async {
                    let tx = c.transaction().await?;
                    let row = tx
                        .query_opt(
                            "DELETE FROM micro_state WHERE area = $1 AND key = $2 RETURNING value",
                            &[&self.area, &key],
                        )
                        .await?;
                    if announce && row.is_some() {
                        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.area]).await?;
                    }
                    tx.commit().await?;
                    Ok(row)
                })
                .map_err(pg_error)?;
            Ok(row.map(|r| r.get(0)))
        }

        pub fn update<E: From<StateError>>(
            &self,
            key: &str,
            change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
            announce: bool,
        ) -> Result<(), E> {
            check_key(key)?;
            // The connection is held throughout; the transaction locks the key (a row lock cannot lock a key that
            // has no row yet), reads, lets `change` decide, and writes.
            let guard = self.conn.lock()?;
            let c = guard.as_ref().expect("lock connects");
            let rollback = || {
                let _ = self.conn.runtime.block_on(c.batch_execute("ROLLBACK"));
            };
            let read = self.conn.runtime.block_on(async {
                c.batch_execute("BEGIN").await?;
                c.execute("SELECT pg_advisory_xact_lock(728304196, hashtext($1 || '/' || $2))", &[&self.area, &key])
                    .await?;
                c.query_opt("SELECT value FROM micro_state WHERE area = $1 AND key = $2", &[&self.area, &key]).await
            });
            let old: Option<Vec<u8>> = match read {
                Ok(row) => row.map(|r| r.get(0)),
                Err(e) => {
                    rollback();
                    return Err(pg_error(e).into());
                }
            };
            let new = match change(old.as_deref()) {
                Ok(Some(new)) => new,
                Ok(None) => {
                    rollback();
                    return Ok(());
                }
                Err(e) => {
                    rollback();
                    return Err(e);
                }
            };
            let written = self.conn.runtime.block_on(async {
                c.execute(
                    "INSERT INTO micro_state (area, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (area, key) DO UPDATE SET value = excluded.value",
                    &[&self.area, &key, &new],
                )
                .await?;
                if announce {
                    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.area]).await?;
                }
                c.batch_execute("COMMIT").await
            });
            if let Err(e) = written {
                rollback();
                return Err(pg_error(e).into());
            }
            Ok(())
        }
    }

    /// Calls `on` (off the async workers) with every burst of notifications on `channel`, and with `None` after
    /// every (re)connect, when notifications may have been missed; until `cancel` fires. Reconnects every second
    /// after a failure.
    pub async fn notifications(
        url: &str,
        channel: &'static str,
        on: Arc<dyn Fn(Option<Vec<String>>) + Send + Sync>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let call = |on: Arc<dyn Fn(Option<Vec<String>>) + Send + Sync>, batch: Option<Vec<String>>| async move {
            if let Err(e) = tokio::task::spawn_blocking(move || on(batch)).await {
                tracing::warn!(channel, error = %e, "handling a PostgreSQL notification failed");
            }
        };
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            first = false;
            let (client, mut connection) = match connect(url).await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "cannot listen for PostgreSQL notifications; retrying");
                    continue;
                }
            };
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let driver = tokio::spawn(async move {
                while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n.payload().to_string()).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "the PostgreSQL connection that listens for notifications ended");
                            return;
                        }
                    }
                }
            });
            if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
                tracing::warn!(channel, error = %pg_error(e), "cannot listen for PostgreSQL notifications; retrying");
                driver.abort();
                continue;
            }
            // Whatever happened while no one listened.
            call(on.clone(), None).await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        driver.abort();
                        return;
                    }
                    payload = rx.recv() => {
                        let Some(payload) = payload else { break };
                        let mut batch = vec![payload];
                        while let Ok(more) = rx.try_recv() {
                            batch.push(more);
                        }
                        call(on.clone(), Some(batch)).await;
                    }
                }
            }
            drop(client);
        }
    }

    /// See [`super::listen`].
    pub async fn listen(
        url: &str,
        area: &'static str,
        changed: Arc<dyn Fn() + Send + Sync>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let on: Arc<dyn Fn(Option<Vec<String>>) + Send + Sync> = Arc::new(move |batch| {
            // A burst of changes is one reload; a reconnect is one too.
            if batch.is_none_or(|b| b.iter().any(|p| p == area)) {
                changed();
            }
        });
        notifications(url, CHANNEL, on, cancel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(dir: &Path) -> Vec<Table> {
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut out = vec![Table::open(&Location::DataDir, dir, "state.redb", "test").unwrap()];
        #[cfg(feature = "postgres")]
        {
            // As the store's tests: PostgreSQL too when there is one to write to (`.ci/run` starts one).
            if let Some(url) = micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres") {
                let area: &'static str = Box::leak(format!("test-{}", uuid::Uuid::new_v4()).into_boxed_str());
                out.push(Table::open(&Location::Postgres(url), dir, "", area).unwrap());
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn put_scan_take_update_in_every_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // Opened off the async workers, as the server does.
        for table in tokio::task::spawn_blocking(move || tables(&path)).await.unwrap() {
            tokio::task::spawn_blocking(move || {
                let puts = vec![
                    ("a/1".to_string(), b"one".to_vec()),
                    ("a/2".to_string(), b"two".to_vec()),
                    ("b/1".to_string(), b"x".to_vec()),
                    ("a/1".to_string(), b"uno".to_vec()),
                ];
                table.apply(&puts, &[]).unwrap();
                let a = table.scan("a/").unwrap();
                assert_eq!(a, vec![("a/1".into(), b"uno".to_vec()), ("a/2".into(), b"two".to_vec())]);
                assert_eq!(table.get("b/1").unwrap(), Some(b"x".to_vec()));
                assert_eq!(table.take("b/1").unwrap(), Some(b"x".to_vec()));
                assert_eq!(table.take("b/1").unwrap(), None, "a key is taken once");
                table.apply(&[], &["a/2".into()]).unwrap();
                assert_eq!(table.scan("a/").unwrap().len(), 1);
                table
                    .update::<StateError>("n", |old| {
                        assert_eq!(old, None);
                        Ok(Some(b"1".to_vec()))
                    })
                    .unwrap();
                let refused = table.update::<StateError>("n", |_| Err(StateError("no".into())));
                assert!(refused.is_err());
                table.update::<StateError>("n", |old| Ok(old.map(|v| [v, b"2"].concat()))).unwrap();
                assert_eq!(table.get("n").unwrap(), Some(b"12".to_vec()), "a refused change leaves the value");
                assert_eq!(table.get_or_insert("k", b"first").unwrap(), b"first");
                assert_eq!(table.get_or_insert("k", b"second").unwrap(), b"first");
            })
            .await
            .unwrap();
        }
    }
}
