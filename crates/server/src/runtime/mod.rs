//! The runtime service: a process manager that builds, runs, supervises and logs services.
//!
//! `micro run` uploads a source (or names a git repository); the runtime unpacks it into its own tree in the data
//! dir, builds a Rust package with cargo (or runs the given command), and starts the service's processes with the
//! environment a micro service needs (proxy, name, namespace, a service account). It restarts crashed processes
//! with backoff, keeps their output in rotated log files, registers foreign gRPC services from their reflection,
//! and records every service durably (`runtime.redb`) so that they come back when the server restarts. When the
//! server stops, every process it started is stopped, and everything those processes started in turn: each process
//! is contained (a cgroup v2 when the server can create one, else process groups and environment markers; see
//! [`contain`]), and what a killed server left is stopped by the next one.
//!
//! Every path the runtime builds from a request stays inside its directory: namespaces are validated with
//! [`micro_core::namespace::validate`], service names and versions with [`manager::valid_name`], joined paths are checked
//! with [`manager::inside`], and uploads are unpacked without setuid bits, escaping symlinks or `..` entries
//! ([`source::unpack`]).
//!
//! - [`manager`]: services, deployments (create, blue-green update, restore) and records;
//! - [`process`]: processes, readiness, restarts with backoff, stopping; [`contain`]: cgroups, markers, subreaper;
//! - [`builder`]: `cargo build` with progress; [`source`]: uploads, git, packages; [`deploy`]: a deployment's output;
//! - [`logs`]: log files, tails that seek from the end, followers; [`records`]: the redb store;
//! - [`foreign`]: gRPC reflection → registry; [`service`]: the gRPC face.

pub mod builder;
pub mod contain;
pub mod deploy;
pub mod foreign;
pub mod logs;
pub mod manager;
pub mod mirror;
pub mod process;
pub mod records;
pub mod service;
pub mod source;

use super::{CoreContext, ServerError};
use micro_core::env::{MICRO_RUNTIME_CGROUPS, MICRO_RUNTIME_KILL_GRACE, MICRO_RUNTIME_TARGET_DIR};
use micro_core::proto::runtime::{runtime_server::RuntimeServer, source_server::SourceServer};
use std::path::PathBuf;
use std::time::Duration;

/// The default cargo profile of runtime builds.
pub const DEFAULT_PROFILE: &str = "release";
/// The default time between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

fn start_error(message: impl Into<String>) -> ServerError {
    ServerError::Start { service: "runtime", message: message.into() }
}

/// The runtime's settings from the environment, with the data dir's defaults.
pub fn settings(data_dir: &std::path::Path) -> Result<manager::Settings, ServerError> {
    let root = data_dir.join("runtime");
    let root = std::path::absolute(&root).map_err(|e| start_error(format!("{}: {e}", root.display())))?;
    let target_dir =
        micro_core::env::var(MICRO_RUNTIME_TARGET_DIR).map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target_dir = std::path::absolute(&target_dir)
        .map_err(|e| start_error(format!("{MICRO_RUNTIME_TARGET_DIR}={}: {e}", target_dir.display())))?;
    let build = builder::BuildSettings::from_env(target_dir).map_err(start_error)?;
    let grace = micro_core::env::duration(MICRO_RUNTIME_KILL_GRACE, DEFAULT_GRACE).map_err(start_error)?;
    let cgroups = match micro_core::env::var(MICRO_RUNTIME_CGROUPS).as_deref() {
        None | Some("auto") => true,
        Some("off") => false,
        Some(other) => return Err(start_error(format!("{MICRO_RUNTIME_CGROUPS}={other:?}: use auto or off"))),
    };
    Ok(manager::Settings { records: data_dir.join("runtime.redb"), root, build, grace, cgroups })
}

/// Starts the runtime service and adds its gRPC services to `routes`. The recorded services start in the
/// background.
pub async fn start(ctx: &CoreContext, routes: &mut tonic::service::RoutesBuilder) -> Result<(), ServerError> {
    let settings = settings(&ctx.data_dir)?;
    std::fs::create_dir_all(&settings.root)
        .map_err(|e| start_error(format!("cannot create {}: {e}", settings.root.display())))?;
    let rt = manager::Runtime::open(ctx.clone(), settings).await.map_err(start_error)?;
    rt.restore().await.map_err(start_error)?;
    let service = service::RuntimeService::new(rt);
    routes.add_service(RuntimeServer::new(service.clone())).add_service(SourceServer::new(service));
    Ok(())
}
