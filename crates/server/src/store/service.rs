//! The store's gRPC face: checks who may touch which database, validates requests and translates them for a
//! [`Store`] backend.
//!
//! Access: the database defaults to the caller's namespace (the `micro-namespace` header, else the account's
//! issuer), the table to `micro`. The caller must belong to the database's namespace: an account issued by it, or
//! an administrator of `micro`; anonymous callers are refused. `Databases` lists every database for an
//! administrator of `micro`, and only the caller's own for anyone else.

use super::backend::{self, Location, Order, Query, Store, StoreError};
use crate::auth::Caller;
use micro_core::proto::store::{
    DatabasesRequest, DatabasesResponse, DeleteRequest, DeleteResponse, ExportRequest, ExportResponse, ImportRequest,
    ImportResponse, ListRequest, ListResponse, ReadRequest, ReadResponse, Record as RecordMsg, TablesRequest,
    TablesResponse, WriteOptions, WriteRequest, WriteResponse, store_server,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Keys per `ListResponse` message.
const KEYS_PER_MESSAGE: usize = 1000;
/// Records per `ExportResponse` message, at most.
const EXPORT_RECORDS: usize = 1000;
/// Bytes per `ExportResponse` message, about (a larger record goes alone).
const EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// The largest gRPC message the store accepts or sends (a 4 MiB value plus its key and metadata fit; reads are
/// bounded by [`backend::MAX_READ_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = micro_core::metadata::STORE_MAX_MESSAGE_BYTES;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Invalid(_) => Status::invalid_argument(e.to_string()),
            StoreError::NotFound => Status::not_found(e.to_string()),
            StoreError::TooLarge(_) | StoreError::DiskFull(_) => Status::resource_exhausted(e.to_string()),
            StoreError::Corrupt(_) => Status::data_loss(e.to_string()),
            StoreError::Storage(_) | StoreError::Closed => Status::internal(e.to_string()),
        }
    }
}

/// The gRPC store service over a backend.
#[derive(Clone)]
pub struct StoreService {
    store: Arc<dyn Store>,
    closing: tokio_util::sync::CancellationToken,
}

impl StoreService {
    /// Serves `store`; streams end when `closing` is cancelled.
    pub fn new(store: Arc<dyn Store>, closing: tokio_util::sync::CancellationToken) -> Self {
        Self { store, closing }
    }

    /// The tonic server, with message limits that fit the largest record.
    pub fn server(self) -> store_server::StoreServer<Self> {
        store_server::StoreServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The location a request names, with defaults, after checking that the caller may use it.
fn location(caller: &Caller, database: &str, table: &str) -> Result<Location, Status> {
    let database = match database {
        "" if caller.namespace.is_empty() => micro_core::DEFAULT_NAMESPACE,
        "" => caller.namespace.as_str(),
        db => db,
    };
    let table = if table.is_empty() { backend::DEFAULT_TABLE } else { table };
    let location = Location::new(database, table)?;
    caller.require_member(&location.database)?;
    Ok(location)
}

/// The expiry of a record being written, in Unix milliseconds: its `expires_at`, else its `expiry` (seconds from
/// now), else the options' `ttl` (seconds from now), else the options' `expiry` (Unix seconds).
fn expiry(record: &RecordMsg, options: Option<&WriteOptions>, now: u64) -> Result<Option<u64>, Status> {
    let negative = |what: &str, v: i64| Status::invalid_argument(format!("{what} must not be negative, got {v}"));
    let too_far = || Status::invalid_argument("the expiry is too far in the future");
    let from_now =
        |secs: i64| now.checked_add((secs as u64).checked_mul(1000).ok_or_else(too_far)?).ok_or_else(too_far);
    let (ttl, at) = options.map_or((0, 0), |o| (o.ttl, o.expiry));
    for (what, v) in [("expires_at", record.expires_at), ("expiry", record.expiry), ("ttl", ttl), ("expiry", at)] {
        if v < 0 {
            return Err(negative(what, v));
        }
    }
    Ok(if record.expires_at > 0 {
        Some(record.expires_at as u64)
    } else if record.expiry > 0 {
        Some(from_now(record.expiry)?)
    } else if ttl > 0 {
        Some(from_now(ttl)?)
    } else if at > 0 {
        Some((at as u64).checked_mul(1000).ok_or_else(too_far)?)
    } else {
        None
    })
}

fn to_backend(record: RecordMsg, options: Option<&WriteOptions>, now: u64) -> Result<backend::Record, Status> {
    let expires_at = expiry(&record, options, now)?;
    Ok(backend::Record {
        key: record.key,
        value: record.value,
        metadata: record.metadata.into_iter().collect(),
        expires_at,
    })
}

/// A record as answered: `expiry` is the whole seconds left (rounded up), `expires_at` the exact time.
pub fn to_message(record: backend::Record, now: u64) -> RecordMsg {
    let (expiry, expires_at) = match record.expires_at {
        Some(at) => (at.saturating_sub(now).div_ceil(1000).max(1) as i64, at as i64),
        None => (0, 0),
    };
    RecordMsg {
        key: record.key,
        value: record.value,
        expiry,
        metadata: record.metadata.into_iter().collect(),
        expires_at,
    }
}

fn limit(limit: u32) -> Option<usize> {
    (limit > 0).then_some(limit as usize)
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListResponse, Status>> + Send>>;
type ExportStream = Pin<Box<dyn Stream<Item = Result<ExportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl store_server::Store for StoreService {
    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let o = r.options.unwrap_or_default();
        let location = location(&caller, &o.database, &o.table)?;
        let mut query = Query {
            offset: o.offset as usize,
            limit: limit(o.limit),
            order: Order::parse(&o.order)?,
            ..Default::default()
        };
        match (o.prefix, o.suffix) {
            (false, false) => {
                backend::validate_key(&r.key)?;
                query.key = Some(r.key);
            }
            (prefix, suffix) => {
                if prefix {
                    query.prefix = r.key.clone();
                }
                if suffix {
                    query.suffix = r.key;
                }
            }
        }
        let records = self.store.read(&location, query).await?;
        let now = backend::now_ms();
        Ok(Response::new(ReadResponse { records: records.into_iter().map(|r| to_message(r, now)).collect() }))
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let options = r.options.unwrap_or_default();
        let location = location(&caller, &options.database, &options.table)?;
        let record = r.record.ok_or_else(|| Status::invalid_argument("a record is required"))?;
        let record = to_backend(record, Some(&options), backend::now_ms())?;
        self.store.write(&location, vec![record]).await?;
        Ok(Response::new(WriteResponse {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let o = r.options.unwrap_or_default();
        let location = location(&caller, &o.database, &o.table)?;
        self.store.delete(&location, &r.key).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    type ListStream = ListStream;

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        let caller = Caller::of(&req);
        let o = req.into_inner().options.unwrap_or_default();
        let location = location(&caller, &o.database, &o.table)?;
        let query = Query {
            prefix: o.prefix,
            suffix: o.suffix,
            offset: o.offset as usize,
            limit: limit(o.limit),
            order: Order::parse(&o.order)?,
            key: None,
        };
        let keys = self.store.keys(&location, query).await?;
        let mut batches: Vec<Result<ListResponse, Status>> =
            keys.chunks(KEYS_PER_MESSAGE).map(|c| Ok(ListResponse { keys: c.to_vec() })).collect();
        if batches.is_empty() {
            // One (empty) message, as Micro answers.
            batches.push(Ok(ListResponse { keys: Vec::new() }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn databases(&self, req: Request<DatabasesRequest>) -> Result<Response<DatabasesResponse>, Status> {
        let caller = Caller::of(&req);
        let account = caller.account.as_ref().ok_or_else(|| Status::unauthenticated("an account is required"))?;
        let mut databases = self.store.databases().await?;
        if !account.administers(micro_core::DEFAULT_NAMESPACE) {
            databases.retain(|db| account.belongs_to(db));
        }
        Ok(Response::new(DatabasesResponse { databases }))
    }

    async fn tables(&self, req: Request<TablesRequest>) -> Result<Response<TablesResponse>, Status> {
        let caller = Caller::of(&req);
        let location = location(&caller, &req.get_ref().database, "")?;
        let tables = self.store.tables(&location.database).await?;
        Ok(Response::new(TablesResponse { tables }))
    }

    type ExportStream = ExportStream;

    async fn export(&self, req: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let location = location(&caller, &r.database, &r.table)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let store = self.store.clone();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let mut after = None;
            loop {
                let page = tokio::select! {
                    _ = closing.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the server is shutting down"))).await;
                        return;
                    }
                    page = store.export(&location, after.take(), EXPORT_RECORDS, EXPORT_BYTES) => page,
                };
                match page {
                    Ok(page) if page.is_empty() => return,
                    Ok(page) => {
                        after = page.last().map(|r| r.key.clone());
                        let now = backend::now_ms();
                        let records = page.into_iter().map(|r| to_message(r, now)).collect();
                        if tx.send(Ok(ExportResponse { records })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn import(&self, req: Request<Streaming<ImportRequest>>) -> Result<Response<ImportResponse>, Status> {
        let caller = Caller::of(&req);
        let mut stream = req.into_inner();
        let mut target: Option<Location> = None;
        let (mut count, mut expired) = (0u64, 0u64);
        while let Some(message) = stream.next().await {
            let message = message?;
            let location = match &target {
                Some(l) => l.clone(),
                None => {
                    let l = location(&caller, &message.database, &message.table)?;
                    target = Some(l.clone());
                    l
                }
            };
            let now = backend::now_ms();
            let mut records = Vec::with_capacity(message.records.len());
            for r in message.records {
                let record = to_backend(r, None, now)?;
                if record.expires_at.is_some_and(|at| at <= now) {
                    expired += 1;
                } else {
                    records.push(record);
                }
            }
            count += records.len() as u64;
            self.store.write(&location, records).await?;
        }
        Ok(Response::new(ImportResponse { count, expired }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_precedence() {
        let now = 1_000_000;
        let rec = |expiry, expires_at| RecordMsg { expiry, expires_at, ..Default::default() };
        let opts = |ttl, expiry| WriteOptions { ttl, expiry, ..Default::default() };
        assert_eq!(expiry(&rec(0, 0), None, now).unwrap(), None);
        assert_eq!(expiry(&rec(5, 0), Some(&opts(9, 9)), now).unwrap(), Some(now + 5000));
        assert_eq!(expiry(&rec(5, 42), None, now).unwrap(), Some(42));
        assert_eq!(expiry(&rec(0, 0), Some(&opts(9, 0)), now).unwrap(), Some(now + 9000));
        assert_eq!(expiry(&rec(0, 0), Some(&opts(0, 2000)), now).unwrap(), Some(2_000_000));
        assert!(expiry(&rec(-1, 0), None, now).is_err());
        assert!(expiry(&rec(i64::MAX, 0), None, now).is_err());
    }

    #[test]
    fn answers_round_expiry_up() {
        let now = 10_000;
        let r = backend::Record { key: "k".into(), expires_at: Some(now + 1500), ..Default::default() };
        let m = to_message(r, now);
        assert_eq!((m.expiry, m.expires_at), (2, 11_500));
        let r = backend::Record { key: "k".into(), ..Default::default() };
        assert_eq!(to_message(r, now).expiry, 0);
    }

    #[test]
    fn callers_are_confined_to_their_namespace() {
        let account = |issuer: &str, scopes: &[&str]| crate::auth::Account {
            id: "a".into(),
            name: "a".into(),
            kind: "user".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            issuer: issuer.into(),
        };
        let caller = |account, namespace: &str| Caller {
            account,
            namespace: namespace.into(),
            loopback: true,
            ..Default::default()
        };
        let anonymous = caller(None, "micro");
        assert_eq!(location(&anonymous, "", "").unwrap_err().code(), tonic::Code::Unauthenticated);
        let tenant = caller(Some(account("tenant", &[])), "tenant");
        assert_eq!(location(&tenant, "", "").unwrap(), Location::new("tenant", "micro").unwrap());
        assert_eq!(location(&tenant, "micro", "").unwrap_err().code(), tonic::Code::PermissionDenied);
        let admin = caller(Some(account("micro", &["admin"])), "micro");
        assert_eq!(location(&admin, "tenant", "t").unwrap(), Location::new("tenant", "t").unwrap());
        assert_eq!(location(&admin, "a/b", "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
