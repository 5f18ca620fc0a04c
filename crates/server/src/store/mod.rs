//! The store service: durable key-value records per database (namespace) and table.
//!
//! [`backend`] holds the [`backend::Store`] trait and its embedded redb implementation (group-committed writes, an
//! expiry index), the default, whose records live in `store.redb` in the server's data dir; `postgres` (cargo
//! feature `postgres`) keeps them in PostgreSQL instead, chosen by [`StoreBackend`]. [`service`] is the gRPC face
//! with its access checks. A background task deletes expired records every [`SWEEP_INTERVAL`] (reads never return them
//! anyway). Snapshots are taken by the CLI over the `Export` and `Import` RPCs (see `micro_cli::cli::store`).

pub mod backend;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod service;

use super::{CoreContext, DRAIN_TIMEOUT, ServerError};
use backend::{RedbStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// The store's database file, in the data dir.
pub const FILE: &str = "store.redb";
/// How often expired records are deleted.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Where the store keeps its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreBackend {
    /// The embedded store, `store.redb` in the data dir.
    #[default]
    Redb,
    /// A PostgreSQL database, by connection URL (needs the `postgres` cargo feature).
    Postgres(String),
}

impl StoreBackend {
    /// Parses `redb` (or empty) or a `postgres://`/`postgresql://` URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = super::engine_url(
            "store",
            text,
            "redb",
            &["postgres://", "postgresql://"],
            "a postgres://user:password@host/db URL",
        )?;
        Ok(url.map_or(StoreBackend::Redb, StoreBackend::Postgres))
    }
}

/// Starts the store service and adds its gRPC services to `routes`.
pub async fn start(
    ctx: &CoreContext,
    backend: &StoreBackend,
    routes: &mut tonic::service::RoutesBuilder,
) -> Result<(), ServerError> {
    let (store, closed): (Arc<dyn Store>, _) = match backend {
        StoreBackend::Redb => {
            let path = ctx.data_dir.join(FILE);
            let (store, closed) = tokio::task::spawn_blocking(move || RedbStore::open(&path))
                .await
                .map_err(|e| ServerError::Start { service: "store", message: e.to_string() })?
                .map_err(|e| ServerError::Start { service: "store", message: e.to_string() })?;
            (Arc::new(store), Some(closed))
        }
        #[cfg(feature = "postgres")]
        StoreBackend::Postgres(url) => {
            let store = postgres::PostgresStore::open(url).await.map_err(|e| {
                let message = match e {
                    backend::StoreError::Storage(m) => m,
                    other => other.to_string(),
                };
                ServerError::Start { service: "store", message }
            })?;
            tracing::info!(url = %postgres::redact(url), "the store keeps its records in PostgreSQL");
            (Arc::new(store), None)
        }
        #[cfg(not(feature = "postgres"))]
        StoreBackend::Postgres(_) => {
            return Err(ServerError::Start {
                service: "store",
                message: "this micro was built without PostgreSQL support; rebuild it with \
                          `cargo build --release --features postgres`, or use the embedded store (--store redb)"
                    .into(),
            });
        }
    };

    // The sweeper holds the store weakly, so that the store closes once the service is dropped at shutdown; then
    // it waits (bounded) for the writer to finish and the database file to close cleanly.
    let weak = Arc::downgrade(&store);
    let cancel = ctx.cancel.clone();
    ctx.tasks.spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let Some(store) = weak.upgrade() else { break };
                    match store.sweep().await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(records = n, "deleted expired store records"),
                        Err(e) => tracing::warn!(error = %e, "cannot delete expired store records"),
                    }
                }
            }
        }
        drop(weak);
        if let Some(closed) = closed
            && tokio::time::timeout(DRAIN_TIMEOUT * 2, closed).await.is_err()
        {
            tracing::warn!("the store did not close within {:?} of shutdown", DRAIN_TIMEOUT * 2);
        }
    });

    routes.add_service(service::StoreService::new(store, ctx.cancel.clone()).server());
    Ok(())
}
