//! The store service: durable key-value records in redb, per database (namespace) and table, with group commit.
//!
//! [`backend`] holds the [`backend::Store`] trait and its redb implementation (group-committed writes, an expiry
//! index); [`service`] is the gRPC face with its access checks. The records live in `store.redb` in the server's
//! data dir. A background task deletes expired records every [`SWEEP_INTERVAL`] (reads never return them
//! anyway). Snapshots are taken by the CLI over the `Export` and `Import` RPCs (see `micro::cli::store`).

pub mod backend;
pub mod service;

use super::{CoreContext, DRAIN_TIMEOUT, ServerError};
use backend::{RedbStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// The store's database file, in the data dir.
pub const FILE: &str = "store.redb";
/// How often expired records are deleted.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the store service and adds its gRPC services to `routes`.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let path = ctx.data_dir.join(FILE);
    let (store, closed) = tokio::task::spawn_blocking(move || RedbStore::open(&path))
        .await
        .map_err(|e| ServerError::Start { service: "store", message: e.to_string() })?
        .map_err(|e| ServerError::Start { service: "store", message: e.to_string() })?;
    let store = Arc::new(store);

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
        if tokio::time::timeout(DRAIN_TIMEOUT * 2, closed).await.is_err() {
            tracing::warn!("the store did not close within {:?} of shutdown", DRAIN_TIMEOUT * 2);
        }
    });

    routes.add_service(service::StoreService::new(store as Arc<dyn Store>, ctx.cancel.clone()).server());
    Ok(())
}
