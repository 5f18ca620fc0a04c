//! `micro config`: get, set and delete config values by dot path.

use crate::settings::Settings;

/// Flags of `micro config`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro config`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro config is not built yet").into())
}
