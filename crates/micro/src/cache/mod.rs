//! A cache with TTLs for what is slow to compute: SpaceONE's `@cacheable(key, expire)`.
//!
//! A [`Cache`] keeps bytes by key, each for a TTL. [`MemoryCache`] keeps them in this process (bounded, cheap to
//! clone); [`StoreCache`] keeps them in the platform's store, so every instance of a service shares them. The
//! [`CacheExt`] methods, available on every cache, add serde values and [`CacheExt::get_or_compute`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tonic::Status> {
//! use micro::cache::{CacheExt, MemoryCache};
//! use std::time::Duration;
//!
//! let cache = MemoryCache::new(10_000);
//! // Concurrent callers of one key while it is computed wait for that computation instead of running their own.
//! let regions: Vec<String> = cache
//!     .get_or_compute("regions", Duration::from_secs(60), || async {
//!         Ok::<_, tonic::Status>(vec!["eu-1".to_string(), "us-2".to_string()]) // a slow call, in real life
//!     })
//!     .await?;
//! # let _ = regions; Ok(()) }
//! ```
//!
//! A cache is an optimisation: [`CacheExt::get_or_compute`] treats a cache that fails (the store is unreachable)
//! or holds a value it cannot decode as a miss, logs it, and computes.

mod memory;
mod store;

pub use memory::MemoryCache;
pub use store::{STORE_TABLE, StoreCache};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What can go wrong using a cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The backend failed (the store answered with an error or could not be reached).
    #[error("cache: {0}")]
    Backend(String),
    /// A value could not be encoded or decoded as JSON.
    #[error("cache: the value of {key:?} is not the JSON expected: {source}")]
    Json {
        /// The key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// A cache of bytes by key, each kept for a TTL. Implementations are shared between tasks (`Send + Sync`) and may
/// be used as `Arc<dyn Cache>`.
pub trait Cache: Send + Sync {
    /// The value at `key`, unless it is missing or expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, CacheError>>;

    /// Keeps `value` at `key` for `ttl` (a zero TTL keeps nothing). A backend may round the TTL (the store keeps
    /// whole seconds, rounded up).
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), CacheError>>;

    /// Forgets `key` (a missing key is not an error).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>>;

    /// The computations of [`CacheExt::get_or_compute`] in progress on this cache: an implementation holds one
    /// [`Flights`] (clones of the cache share it) and returns it here.
    fn flights(&self) -> &Flights;
}

/// The computations in progress on a cache, by key, so that concurrent callers of
/// [`CacheExt::get_or_compute`] share one. Single flight is per process: two processes sharing a [`StoreCache`]
/// may each compute a key once.
#[derive(Clone, Default)]
pub struct Flights {
    inner: Arc<Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("Flights").field("in_progress", &n).finish()
    }
}

/// What a computation ended with: the encoded value, or the error (of the computing caller's type).
type Outcome = Result<Bytes, Arc<dyn Any + Send + Sync>>;

/// The computing caller's hold on its key: when dropped (done, or the caller was cancelled), the key is free
/// again; waiters that got no outcome then try again.
struct Leader {
    flights: Flights,
    key: String,
    tx: watch::Sender<Option<Outcome>>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut map = self.flights.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|rx| rx.same_channel(&self.tx.subscribe())) {
            map.remove(&self.key);
        }
    }
}

enum Role {
    Leader(Leader),
    Waiter(watch::Receiver<Option<Outcome>>),
}

impl Flights {
    fn join(&self, key: &str) -> Role {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Role::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_string(), rx);
        Role::Leader(Leader { flights: self.clone(), key: key.to_string(), tx })
    }
}

/// Typed values and get-or-compute, on every [`Cache`] (values are kept as JSON).
pub trait CacheExt: Cache {
    /// The value at `key` decoded from JSON, unless it is missing or expired.
    fn get_json<T: DeserializeOwned>(&self, key: &str) -> impl Future<Output = Result<Option<T>, CacheError>> + Send {
        async move {
            match self.get(key).await? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| CacheError::Json { key: key.to_string(), source }),
                None => Ok(None),
            }
        }
    }

    /// Keeps `value` as JSON at `key` for `ttl`.
    fn set_json<T: Serialize + Sync>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), CacheError>> + Send {
        async move {
            let bytes =
                serde_json::to_vec(value).map_err(|source| CacheError::Json { key: key.to_string(), source })?;
            self.set(key, bytes.into(), ttl).await
        }
    }

    /// The value at `key`; on a miss, runs `compute`, keeps its value for `ttl` and returns it.
    ///
    /// **One computation per key at a time.** Callers that ask for a key while it is being computed wait for that
    /// computation and get its value (or its error) instead of computing again. **Errors are not cached**: the
    /// computing caller gets its error, the callers waiting at that moment get a clone of it, and the next caller
    /// computes again. If the computing caller is cancelled (its future dropped), one waiter takes over and
    /// computes. Single flight is per process and per cache (clones of a cache share it).
    ///
    /// A cache that fails (its backend is unreachable) or holds a value that does not decode as `T` counts as a
    /// miss and is logged at `warn`; a value that cannot be kept is still returned.
    ///
    /// ```no_run
    /// # async fn demo(store: micro::store::Store) -> Result<(), tonic::Status> {
    /// use micro::cache::{CacheExt, StoreCache};
    /// use std::time::Duration;
    ///
    /// let cache = StoreCache::new(store.clone()); // shared by every instance of the service
    /// let count: u64 = cache
    ///     .get_or_compute("inventory:count", Duration::from_secs(30), || async {
    ///         // The error type must be `Clone` (waiters get a clone): map others to a `Status`, or an `Arc`.
    ///         let keys = store.list(micro::store::Query::prefix("item/")).await;
    ///         keys.map(|k| k.len() as u64).map_err(|e| tonic::Status::unavailable(e.to_string()))
    ///     })
    ///     .await?;
    /// # let _ = count; Ok(()) }
    /// ```
    fn get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        compute: F,
    ) -> impl Future<Output = Result<T, E>> + Send
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        E: Clone + Send + Sync + 'static,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        async move {
            let mut compute = Some(compute);
            // The fast path: a hit takes no lock.
            if let Some(value) = cached(self, key).await {
                return Ok(value);
            }
            loop {
                match self.flights().join(key) {
                    Role::Waiter(mut rx) => {
                        let outcome = match rx.wait_for(Option::is_some).await {
                            Ok(outcome) => outcome.clone(),
                            Err(_) => None, // The computing caller was cancelled: try again.
                        };
                        match outcome {
                            Some(Ok(bytes)) => {
                                if let Ok(value) = serde_json::from_slice(&bytes) {
                                    return Ok(value);
                                }
                                // Computed as another type under the same key: compute ours.
                            }
                            Some(Err(error)) => {
                                if let Some(e) = error.downcast_ref::<E>() {
                                    return Err(e.clone());
                                }
                            }
                            None => {}
                        }
                        // Yield so that a cancelled leader's entry is gone before we join again.
                        tokio::task::yield_now().await;
                    }
                    Role::Leader(leader) => {
                        // A computation may have ended (its value kept, its entry removed) between our miss and
                        // our joining: look again before computing.
                        if let Some(value) = cached(self, key).await {
                            return Ok(value);
                        }
                        let Some(compute) = compute.take() else {
                            unreachable!("a caller leads at most once: it returns after computing")
                        };
                        return match compute().await {
                            Ok(value) => {
                                match serde_json::to_vec(&value) {
                                    Ok(bytes) => {
                                        let bytes = Bytes::from(bytes);
                                        // Kept before the entry goes, so later callers find the value.
                                        if let Err(e) = self.set(key, bytes.clone(), ttl).await {
                                            tracing::warn!(key, error = %e, "cache: cannot keep a computed value");
                                        }
                                        leader.tx.send_replace(Some(Ok(bytes)));
                                    }
                                    Err(e) => tracing::warn!(key, error = %e, "cache: cannot encode a computed value"),
                                }
                                drop(leader);
                                Ok(value)
                            }
                            Err(e) => {
                                leader.tx.send_replace(Some(Err(Arc::new(e.clone()))));
                                drop(leader);
                                Err(e)
                            }
                        };
                    }
                }
            }
        }
    }
}

impl<C: Cache + ?Sized> CacheExt for C {}

/// The value at `key` decoded as `T`, or `None` on a miss, a failing cache or a value that does not decode.
async fn cached<C: Cache + ?Sized, T: DeserializeOwned>(cache: &C, key: &str) -> Option<T> {
    match cache.get(key).await {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!(key, error = %e, "cache: a kept value does not decode; computing it again");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(key, error = %e, "cache: cannot read; computing the value");
            None
        }
    }
}

impl<C: Cache + ?Sized> Cache for Arc<C> {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, CacheError>> {
        (**self).get(key)
    }
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> BoxFuture<'a, Result<(), CacheError>> {
        (**self).set(key, value, ttl)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        (**self).delete(key)
    }
    fn flights(&self) -> &Flights {
        (**self).flights()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn fifty_concurrent_callers_share_one_computation() {
        let cache = MemoryCache::new(100);
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, runs) = (cache.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_compute("k", Duration::from_secs(60), || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(vec![1u32, 2, 3])
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(vec![1, 2, 3]));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one computation for 50 callers");
        assert_eq!(cache.get_json::<Vec<u32>>("k").await.unwrap(), Some(vec![1, 2, 3]), "the value is kept");
        assert!(cache.flights().inner.lock().unwrap().is_empty(), "no computation left in progress");
    }

    #[tokio::test]
    async fn an_error_reaches_the_waiters_and_is_not_cached() {
        let cache = MemoryCache::new(100);
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, runs) = (cache.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_compute("k", Duration::from_secs(60), || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<u32, _>(tonic::Status::unavailable("backend down"))
                    })
                    .await
            }));
        }
        for task in tasks {
            let e = task.await.unwrap().unwrap_err();
            assert_eq!((e.code(), e.message()), (tonic::Code::Unavailable, "backend down"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the waiters got the computing caller's error");
        assert_eq!(cache.get("k").await.unwrap(), None, "errors are not cached");
        // The next caller computes again.
        let v = cache.get_or_compute("k", Duration::from_secs(60), || async { Ok::<_, String>(7u32) }).await;
        assert_eq!(v, Ok(7));
        assert_eq!(cache.get_or_compute("k", Duration::from_secs(60), || async { Ok::<_, String>(8u32) }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_cancelled_computation_hands_over_to_a_waiter() {
        let cache = MemoryCache::new(100);
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_compute("k", Duration::from_secs(60), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, String>(1u32)
                    })
                    .await
            })
        };
        while cache.flights().inner.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await; // until the first caller computes
        }
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache.get_or_compute("k", Duration::from_secs(60), || async { Ok::<_, String>(2u32) }).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second caller waits for the first");
        slow.abort();
        let v = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter took over").unwrap();
        assert_eq!(v, Ok(2));
    }

    #[tokio::test]
    async fn a_failing_cache_counts_as_a_miss() {
        struct Broken(Flights);
        impl Cache for Broken {
            fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, CacheError>> {
                Box::pin(async { Err(CacheError::Backend("down".into())) })
            }
            fn set<'a>(&'a self, _: &'a str, _: Bytes, _: Duration) -> BoxFuture<'a, Result<(), CacheError>> {
                Box::pin(async { Err(CacheError::Backend("down".into())) })
            }
            fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
                Box::pin(async { Err(CacheError::Backend("down".into())) })
            }
            fn flights(&self) -> &Flights {
                &self.0
            }
        }
        let cache: Arc<dyn Cache> = Arc::new(Broken(Flights::default()));
        let v = cache.get_or_compute("k", Duration::from_secs(1), || async { Ok::<_, String>("fresh".to_string()) });
        assert_eq!(v.await, Ok("fresh".to_string()));
    }
}
