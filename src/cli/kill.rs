//! `micro kill`: stop a service and remove it from the runtime.

use crate::settings::Settings;

/// Flags of `micro kill`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro kill`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro kill is not built yet").into())
}
