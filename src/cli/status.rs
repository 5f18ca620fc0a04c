//! `micro status`: a table of the services the runtime manages.

use crate::settings::Settings;

/// Flags of `micro status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro status`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro status is not built yet").into())
}
