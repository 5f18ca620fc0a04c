//! `micro new`: scaffold a new Rust service.

use crate::settings::Settings;

/// Flags of `micro new`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro new`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro new is not built yet").into())
}
