//! `micro events`: publish, consume and read durable events.

use crate::settings::Settings;

/// Flags of `micro events`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro events`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro events is not built yet").into())
}
