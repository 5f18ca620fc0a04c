//! `micro logs`: print or follow a service's logs.

use crate::settings::Settings;

/// Flags of `micro logs`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro logs`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro logs is not built yet").into())
}
