//! A store client for services: typed records over serde.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use micro::{client::Client, store::{Store, WriteOptions}};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! let store = Store::from_client(&Client::from_env()?).table("users");
//! store.write_json("u-1", &User { name: "Jane".into() }).await?;
//! let jane: Option<User> = store.read_json("u-1").await?;
//! store.write_with("session", b"token".to_vec(), WriteOptions::default().ttl(Duration::from_secs(60))).await?;
//! # Ok(()) }
//! ```
//!
//! The database is the client's namespace unless [`Store::database`] names another the service's account may
//! use; the table is `micro` unless [`Store::table`] names another. A write returns once it is durable.

use crate::client::{Client, Route};
use micro_core::proto::store::{
    DeleteOptions, DeleteRequest, Field, ListOptions, ListRequest, ReadOptions, ReadRequest, Record as RecordMsg,
    WriteOptions as WriteOptionsMsg, WriteRequest, store_client::StoreClient,
};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What can go wrong using the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store answered with an error (or could not be reached).
    #[error("store: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// A value could not be encoded or decoded as JSON.
    #[error("store: the value of {key:?} is not the JSON expected: {source}")]
    Json {
        /// The key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// A record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Metadata, by name (values as text).
    pub metadata: BTreeMap<String, String>,
    /// When the record expires, if it does.
    pub expires_at: Option<SystemTime>,
}

impl Record {
    /// The value decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        serde_json::from_slice(&self.value).map_err(|source| StoreError::Json { key: self.key.clone(), source })
    }
}

fn to_record(r: RecordMsg) -> Record {
    Record {
        key: r.key,
        value: r.value,
        metadata: r.metadata.into_iter().map(|(k, f)| (k, f.value)).collect(),
        expires_at: (r.expires_at > 0).then(|| UNIX_EPOCH + Duration::from_millis(r.expires_at as u64)),
    }
}

/// Options of a write.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    ttl: Option<Duration>,
    metadata: BTreeMap<String, String>,
}

impl WriteOptions {
    /// The record expires after `ttl` (rounded up to whole seconds).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds a metadata field.
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }
}

/// Which records a read or a listing selects.
#[derive(Clone, Debug, Default)]
pub struct Query {
    prefix: String,
    suffix: String,
    limit: u32,
    offset: u32,
    descending: bool,
}

impl Query {
    /// Every record.
    pub fn all() -> Self {
        Self::default()
    }

    /// Records whose keys start with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Default::default() }
    }

    /// Records whose keys end with `suffix`.
    pub fn suffix(suffix: impl Into<String>) -> Self {
        Self { suffix: suffix.into(), ..Default::default() }
    }

    /// At most `limit` records.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Skips the first `offset` matching records.
    pub fn offset(mut self, offset: u32) -> Self {
        self.offset = offset;
        self
    }

    /// In descending key order.
    pub fn descending(mut self) -> Self {
        self.descending = true;
        self
    }

    fn order(&self) -> String {
        if self.descending { "desc" } else { "asc" }.to_string()
    }
}

/// A client of the store service.
#[derive(Clone, Debug)]
pub struct Store {
    client: StoreClient<InterceptedService<Channel, Route>>,
    database: String,
    table: String,
}

impl Store {
    /// A store client through `client`'s proxy connection, as its account.
    pub fn from_client(client: &Client) -> Self {
        let max = micro_core::metadata::STORE_MAX_MESSAGE_BYTES;
        Self {
            client: StoreClient::new(client.service("store"))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            database: String::new(),
            table: String::new(),
        }
    }

    /// The same client, in another database (one the account may use).
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// The same client, in another table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Writes `value` at `key`.
    pub async fn write(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), StoreError> {
        self.write_with(key, value, WriteOptions::default()).await
    }

    /// Writes `value` at `key` with options (expiry, metadata).
    pub async fn write_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        options: WriteOptions,
    ) -> Result<(), StoreError> {
        let record = RecordMsg {
            key: key.to_string(),
            value: value.into(),
            expiry: options.ttl.map_or(0, |d| d.as_millis().div_ceil(1000) as i64),
            metadata: options
                .metadata
                .into_iter()
                .map(|(k, v)| (k, Field { r#type: "string".into(), value: v }))
                .collect(),
            expires_at: 0,
        };
        let req = WriteRequest {
            record: Some(record),
            options: Some(WriteOptionsMsg {
                database: self.database.clone(),
                table: self.table.clone(),
                ..Default::default()
            }),
        };
        self.client.clone().write(req).await?;
        Ok(())
    }

    /// Writes `value` as JSON at `key`.
    pub async fn write_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.write_json_with(key, value, WriteOptions::default()).await
    }

    /// Writes `value` as JSON at `key`, with options.
    pub async fn write_json_with<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        options: WriteOptions,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Json { key: key.to_string(), source })?;
        self.write_with(key, bytes, options).await
    }

    /// The record at `key`, or `None`.
    pub async fn read(&self, key: &str) -> Result<Option<Record>, StoreError> {
        let req = ReadRequest { key: key.to_string(), options: Some(self.read_options(false, false, 0, 0, "asc")) };
        match self.client.clone().read(req).await {
            Ok(r) => Ok(r.into_inner().records.into_iter().next().map(to_record)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// The value at `key` decoded from JSON, or `None`.
    pub async fn read_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.read(key).await?.map(|r| r.json()).transpose()
    }

    /// The records `query` selects, in key order. (A read matches a prefix or a suffix: the prefix when both are
    /// set; [`Store::list`] matches both.)
    pub async fn read_many(&self, query: Query) -> Result<Vec<Record>, StoreError> {
        let (key, prefix, suffix) = match (query.prefix.is_empty(), query.suffix.is_empty()) {
            (false, _) => (query.prefix.clone(), true, false),
            (true, false) => (query.suffix.clone(), false, true),
            (true, true) => (String::new(), true, false),
        };
        let options = self.read_options(prefix, suffix, query.limit, query.offset, &query.order());
        let req = ReadRequest { key, options: Some(options) };
        Ok(self.client.clone().read(req).await?.into_inner().records.into_iter().map(to_record).collect())
    }

    fn read_options(&self, prefix: bool, suffix: bool, limit: u32, offset: u32, order: &str) -> ReadOptions {
        ReadOptions {
            database: self.database.clone(),
            table: self.table.clone(),
            prefix,
            suffix,
            limit,
            offset,
            order: order.to_string(),
        }
    }

    /// Deletes the record at `key` (a missing key is not an error).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let req = DeleteRequest {
            key: key.to_string(),
            options: Some(DeleteOptions { database: self.database.clone(), table: self.table.clone() }),
        };
        self.client.clone().delete(req).await?;
        Ok(())
    }

    /// The keys `query` selects, in order.
    pub async fn list(&self, query: Query) -> Result<Vec<String>, StoreError> {
        let order = query.order();
        let req = ListRequest {
            options: Some(ListOptions {
                database: self.database.clone(),
                table: self.table.clone(),
                prefix: query.prefix,
                suffix: query.suffix,
                limit: query.limit,
                offset: query.offset,
                order,
            }),
        };
        let mut stream = self.client.clone().list(req).await?.into_inner();
        let mut keys = Vec::new();
        while let Some(batch) = stream.message().await? {
            keys.extend(batch.keys);
        }
        Ok(keys)
    }
}
