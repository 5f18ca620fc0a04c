//! [`StoreCache`]: a cache in the platform's store, shared by every process that uses the same table.

use super::{Cache, CacheError, Flights};
use crate::store::{Store, WriteOptions};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::time::{Duration, SystemTime};

/// The table a [`StoreCache`] uses unless told otherwise.
pub const STORE_TABLE: &str = "cache";

/// A cache in the platform's store: values are records of the table `cache` (or the store client's table, see
/// [`StoreCache::table`]) that the store expires by their TTL (whole seconds, rounded up). Every instance of a
/// service (and every service of the namespace given access) shares them; a read is a call to the store, so keep
/// a [`super::MemoryCache`] for what is read on every request.
#[derive(Clone, Debug)]
pub struct StoreCache {
    store: Store,
    prefix: String,
    flights: Flights,
}

impl StoreCache {
    /// A cache in the table `cache` of `store`'s database.
    pub fn new(store: Store) -> Self {
        Self { store: store.table(STORE_TABLE), prefix: String::new(), flights: Flights::default() }
    }

    /// The same cache in another table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.store = self.store.table(table);
        self
    }

    /// Prefixes every key with `prefix` (e.g. the service's name), so that caches can share a table.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn backend(e: crate::store::StoreError) -> CacheError {
    CacheError::Backend(e.to_string())
}

impl Cache for StoreCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, CacheError>> {
        Box::pin(async move {
            let record = self.store.read(&self.key(key)).await.map_err(backend)?;
            // The store hides expired records; a clock that runs ahead of the store's does not make us serve stale
            // values either.
            Ok(record.filter(|r| r.expires_at.is_none_or(|at| at > SystemTime::now())).map(|r| r.value.into()))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            if ttl.is_zero() {
                return self.delete(key).await;
            }
            let options = WriteOptions::default().ttl(ttl);
            self.store.write_with(&self.key(key), value.to_vec(), options).await.map_err(backend)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move { self.store.delete(&self.key(key)).await.map_err(backend) })
    }

    fn flights(&self) -> &Flights {
        &self.flights
    }
}
