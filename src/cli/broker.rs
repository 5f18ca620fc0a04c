//! `micro broker`: publish messages and subscribe to topics.

use crate::settings::Settings;

/// Flags of `micro broker`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro broker`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let _ = (settings, args);
    Err(crate::exit::CliError::failure("micro broker is not built yet").into())
}
