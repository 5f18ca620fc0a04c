//! `micro kill`: stop a service and remove it from the runtime.
//!
//! Its processes get SIGTERM, then SIGKILL after the server's grace period; its registrations, record, service
//! account and builds go too (its log stays). As in Micro, success prints nothing.

use super::run::{client, runtime_error, split_version};
use crate::exit::CliError;
use crate::settings::Settings;
use micro_core::proto::runtime::{DeleteOptions, DeleteRequest, Service};

/// Flags of `micro kill`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro kill greeter\n  \
    micro kill greeter@v2\n  \
    micro kill .")]
pub struct Args {
    /// The service: NAME or NAME@VERSION, or `.` for the one named like the current directory.
    #[arg(value_name = "NAME")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub name: Option<String>,
}

/// The name `.` stands for: the current directory's.
pub fn dot_name() -> Result<String, CliError> {
    let cwd =
        std::env::current_dir().map_err(|e| CliError::failure(format!("cannot read the current directory: {e}")))?;
    cwd.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| CliError::input("the current directory has no name: give the service's name"))
}

/// Runs `micro kill`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let Some(given) = args.name.filter(|n| !n.is_empty()) else {
        return Err(CliError::input("Missing NAME: micro kill NAME[@VERSION] (see `micro status`)").into());
    };
    let (name, version) = split_version(&given);
    let name = if name == "." { dot_name()? } else { name };
    let (mut client, conn) = client(settings).await?;
    let req = DeleteRequest {
        service: Some(Service { name, version, ..Default::default() }),
        options: Some(DeleteOptions { namespace: settings.namespace.clone() }),
    };
    client.delete(conn.request(req)).await.map_err(|s| runtime_error(settings, &s, "Runtime.Delete"))?;
    Ok(())
}
