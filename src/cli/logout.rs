//! `micro logout`: forget the token saved for the current env and namespace. It prints nothing, logged in or not.

use crate::settings::{Settings, store_error};

/// Flags of `micro logout`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `micro logout`.
pub fn exec(settings: &Settings, _args: Args) -> anyhow::Result<()> {
    settings.tokens().remove(&settings.env, &settings.namespace).map_err(store_error)?;
    Ok(())
}
