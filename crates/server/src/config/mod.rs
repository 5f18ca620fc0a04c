//! The config service: one JSON document per namespace, addressed by dot paths, with secrets encrypted at rest.
//!
//! [`document`] holds the tree and its merge semantics (an object merges leaf by leaf, anything else replaces the
//! subtree), [`secrets`] the AES-256-GCM sealing of secret leaves under `config.key` in the data dir, and
//! [`service`] the storage (`config.redb`, or PostgreSQL beside the store's records) and the gRPC face with its access rules: members of a namespace read
//! its config, administrators change it and read secrets.

pub mod document;
pub mod secrets;
pub mod service;

use super::{CoreContext, ServerError, state};
use std::sync::Arc;

/// The config's database file, in the data dir.
pub const FILE: &str = "config.redb";

/// Starts the config service and adds its gRPC services to `routes`.
pub async fn start(
    ctx: &CoreContext,
    location: &state::Location,
    routes: &mut tonic::service::RoutesBuilder,
) -> Result<(), ServerError> {
    let dir = ctx.data_dir.clone();
    let location = location.clone();
    let start_error = |message: String| ServerError::Start { service: "config", message };
    let store = tokio::task::spawn_blocking(move || {
        let cipher = secrets::Cipher::load_or_create(&dir.join(secrets::KEY_FILE)).map_err(|e| e.to_string())?;
        let table = state::Table::open(&location, &dir, FILE, "config").map_err(|e| e.to_string())?;
        state::check_key(&table, &dir, secrets::KEY_FILE, cipher.fingerprint()).map_err(|e| e.to_string())?;
        Ok::<_, String>(service::ConfigStore::new(table, cipher))
    })
    .await
    .map_err(|e| start_error(e.to_string()))?
    .map_err(start_error)?;
    routes.add_service(micro_core::proto::config::config_server::ConfigServer::new(service::ConfigService::new(
        Arc::new(store),
    )));
    Ok(())
}
