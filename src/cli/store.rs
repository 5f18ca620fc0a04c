//! `micro store`: read, write, list and delete records; databases, tables, snapshots and restores.

use crate::settings::Settings;

/// Flags of `micro store`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro store`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro store is not built yet").into())
}
