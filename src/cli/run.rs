//! `micro run` and `micro update`: build and start a service from a source, or rebuild and restart it.

use crate::settings::Settings;

/// Flags of `micro run`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro run`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro run is not built yet").into())
}

/// Flags of `micro update`.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {}

/// Runs `micro update`.
pub async fn exec_update(settings: &Settings, args: UpdateArgs) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro update is not built yet").into())
}
