//! Service-account credentials: a service started by the runtime gets `MICRO_AUTH_ID` and `MICRO_AUTH_SECRET`,
//! logs in with them, and keeps its access token fresh (refreshing before expiry, logging in again if the
//! refresh token is refused). Registration and calls through [`super::client::Client`] carry the token.

use micro_client::Connection;
use micro_core::env;
use micro_core::proto::auth::{Options, TokenRequest};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A service account's current access token, kept fresh by a background task.
#[derive(Clone, Debug)]
pub struct Credentials {
    token: watch::Receiver<Option<String>>,
}

impl Credentials {
    /// The id and secret from `MICRO_AUTH_ID` / `MICRO_AUTH_SECRET`, if both are set.
    pub fn from_env() -> Option<(String, String)> {
        Some((env::var(env::MICRO_AUTH_ID)?, env::var(env::MICRO_AUTH_SECRET)?))
    }

    /// Logs in as `id` through `conn` and refreshes the token until every clone of the returned value is dropped.
    /// Must be called within a tokio runtime.
    pub fn spawn(conn: Connection, id: String, secret: String) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let mut refresh_token: Option<String> = None;
            loop {
                let request = match refresh_token.take() {
                    Some(refresh) => TokenRequest { refresh_token: refresh, ..Default::default() },
                    None => TokenRequest {
                        id: id.clone(),
                        secret: secret.clone(),
                        options: Some(Options { namespace: conn.namespace().to_string() }),
                        ..Default::default()
                    },
                };
                let wait = match conn.auth().token(conn.request(request)).await {
                    Ok(rsp) => {
                        let token = rsp.into_inner().token.unwrap_or_default();
                        refresh_token = Some(token.refresh_token);
                        if tx.send(Some(token.access_token)).is_err() {
                            return; // Nobody holds the credentials any more.
                        }
                        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
                        let lifetime = (token.expiry - now).max(2) as u64;
                        Duration::from_secs(lifetime * 4 / 5)
                    }
                    Err(status) => {
                        tracing::warn!(account = %id, error = %status.message(), "service account login failed; retrying");
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Self { token: rx }
    }

    /// The current access token, if logged in.
    pub fn current(&self) -> Option<String> {
        self.token.borrow().clone()
    }

    /// Waits up to `timeout` for the first token.
    pub async fn ready(&mut self, timeout: Duration) -> bool {
        let wait = self.token.wait_for(|t| t.is_some());
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }
}
