//! [`MemoryCache`]: a bounded cache in this process's memory, with a TTL per value.

use super::{Cache, CacheError, Flights};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A cache in memory: at most `capacity` values, each kept for its TTL. When full, a new value evicts the value
/// that would expire first (expired values go first). Clones share the values (and the computations of
/// [`super::CacheExt::get_or_compute`]). Time is tokio's clock.
#[derive(Clone, Debug)]
pub struct MemoryCache {
    inner: Arc<Mutex<Entries>>,
    flights: Flights,
}

#[derive(Debug, Default)]
struct Entries {
    capacity: usize,
    seq: u64,
    values: HashMap<String, Entry>,
    /// The keys by expiry (and insertion, to break ties): eviction and purging take from the front.
    by_expiry: BTreeMap<(Instant, u64), String>,
}

#[derive(Debug)]
struct Entry {
    value: Bytes,
    expires: Instant,
    seq: u64,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.values.remove(key) {
            self.by_expiry.remove(&(e.expires, e.seq));
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.values.remove(&key);
        }
    }
}

impl MemoryCache {
    /// A cache of at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        let entries = Entries { capacity: capacity.max(1), ..Default::default() };
        Self { inner: Arc::new(Mutex::new(entries)), flights: Flights::default() }
    }

    /// How many values it holds (expired values not yet purged included).
    pub fn len(&self) -> usize {
        self.lock().values.len()
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value at `key`, if present and not expired (without a future: memory never waits).
    pub fn get_now(&self, key: &str) -> Option<Bytes> {
        let mut entries = self.lock();
        let entry = entries.values.get(key)?;
        if entry.expires <= Instant::now() {
            entries.remove(key);
            return None;
        }
        Some(entry.value.clone())
    }

    /// Keeps `value` at `key` for `ttl` (without a future).
    pub fn set_now(&self, key: &str, value: Bytes, ttl: Duration) {
        let mut entries = self.lock();
        entries.remove(key);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        entries.purge_expired(now);
        while entries.values.len() >= entries.capacity {
            let Some(((_, _), evicted)) = entries.by_expiry.pop_first() else { break };
            entries.values.remove(&evicted);
        }
        entries.seq += 1;
        let seq = entries.seq;
        let expires = now.checked_add(ttl).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        entries.by_expiry.insert((expires, seq), key.to_string());
        entries.values.insert(key.to_string(), Entry { value, expires, seq });
    }

    /// Forgets `key` (without a future).
    pub fn delete_now(&self, key: &str) {
        self.lock().remove(key);
    }
}

impl Cache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, CacheError>> {
        Box::pin(std::future::ready(Ok(self.get_now(key))))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), CacheError>> {
        self.set_now(key, value, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        self.delete_now(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn flights(&self) -> &Flights {
        &self.flights
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheExt;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn values_expire_after_their_ttl() {
        let cache = MemoryCache::new(10);
        cache.set_json("a", &1u32, 200 * MS).await.unwrap();
        cache.set_json("b", &2u32, 5_000 * MS).await.unwrap();
        assert_eq!(cache.get_json::<u32>("a").await.unwrap(), Some(1));
        tokio::time::sleep(300 * MS).await;
        assert_eq!(cache.get_json::<u32>("a").await.unwrap(), None, "expired after its TTL");
        assert_eq!(cache.get_json::<u32>("b").await.unwrap(), Some(2));
        // Setting again replaces the value and its TTL; a zero TTL keeps nothing.
        cache.set_json("b", &3u32, 200 * MS).await.unwrap();
        assert_eq!(cache.get_json::<u32>("b").await.unwrap(), Some(3));
        tokio::time::sleep(300 * MS).await;
        assert_eq!(cache.get_json::<u32>("b").await.unwrap(), None);
        cache.set_json("c", &4u32, Duration::ZERO).await.unwrap();
        assert_eq!(cache.get("c").await.unwrap(), None);
        cache.set_json("d", &5u32, 5_000 * MS).await.unwrap();
        cache.delete("d").await.unwrap();
        assert_eq!(cache.get("d").await.unwrap(), None);
        assert!(cache.is_empty(), "expired and deleted values are gone");
    }

    #[tokio::test]
    async fn get_or_compute_computes_again_after_expiry() {
        let cache = MemoryCache::new(10);
        let ttl = 200 * MS;
        assert_eq!(cache.get_or_compute("k", ttl, || async { Ok::<_, String>(1u32) }).await, Ok(1));
        assert_eq!(cache.get_or_compute("k", ttl, || async { Ok::<_, String>(2u32) }).await, Ok(1));
        tokio::time::sleep(300 * MS).await;
        assert_eq!(cache.get_or_compute("k", ttl, || async { Ok::<_, String>(3u32) }).await, Ok(3));
    }

    #[tokio::test]
    async fn a_full_cache_evicts_what_expires_first() {
        let cache = MemoryCache::new(3);
        cache.set_now("long", Bytes::from_static(b"1"), 100_000 * MS);
        cache.set_now("short", Bytes::from_static(b"2"), 10_000 * MS);
        cache.set_now("mid", Bytes::from_static(b"3"), 50_000 * MS);
        cache.set_now("new", Bytes::from_static(b"4"), 60_000 * MS);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_now("short"), None, "the value expiring first was evicted");
        for key in ["long", "mid", "new"] {
            assert!(cache.get_now(key).is_some(), "{key} is kept");
        }
        // Expired values make room before live ones are evicted.
        cache.set_now("brief", Bytes::from_static(b"5"), 50 * MS);
        assert_eq!(cache.get_now("mid"), None, "evicted: it expired first");
        tokio::time::sleep(100 * MS).await;
        cache.set_now("later", Bytes::from_static(b"6"), 10_000 * MS);
        for key in ["long", "new", "later"] {
            assert!(cache.get_now(key).is_some(), "{key} is kept");
        }
        // Replacing a key does not grow the cache.
        cache.set_now("later", Bytes::from_static(b"7"), 10_000 * MS);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_now("later"), Some(Bytes::from_static(b"7")));
    }
}
