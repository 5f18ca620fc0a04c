//! `micro logout`: forget the token saved for the current env and namespace, and revoke its refresh token on the
//! server (`Auth.Revoke`), so a copy of the token store cannot be used to log in again. It prints nothing, logged in
//! or not; when the server cannot be reached, the token is still forgotten and a warning says it was not revoked.

use super::output::Printer;
use crate::settings::Output;
use crate::settings::{Settings, store_error};
use micro_core::proto::auth::RevokeRequest;
use std::time::Duration;

/// How long logout waits for the server to revoke the refresh token.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `micro logout`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro logout\n  \
    micro -e prod logout")]
pub struct Args {}

/// Runs `micro logout`.
pub async fn exec(settings: &Settings, _args: Args) -> anyhow::Result<()> {
    let tokens = settings.tokens();
    let saved = tokens.get(&settings.env, &settings.namespace).map_err(store_error)?;
    tokens.remove(&settings.env, &settings.namespace).map_err(store_error)?;
    let Some(saved) = saved.filter(|t| !t.refresh_token.is_empty()) else { return Ok(()) };
    let revoked = async {
        let conn = settings.connect()?;
        let req = conn.request(RevokeRequest { refresh_token: saved.refresh_token.clone() });
        conn.auth().revoke(req).await.map_err(|s| crate::exit::CliError::failure(s.message().to_string()))?;
        Ok::<_, crate::exit::CliError>(())
    };
    let printer = Printer::new(settings.output, Output::Table);
    match tokio::time::timeout(REVOKE_TIMEOUT, revoked).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => printer
            .message(format!("warning: logged out locally, but the server did not revoke the refresh token: {e}")),
        Err(_) => printer
            .message("warning: logged out locally, but the server did not answer in time to revoke the refresh token"),
    }
    Ok(())
}
