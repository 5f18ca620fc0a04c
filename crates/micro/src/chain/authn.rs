//! Authentication: the caller's account, from its bearer token (verified by a [`Verifier`], the platform's auth
//! by default) or from the identity headers the proxy sets.

use crate::cache::{CacheExt, MemoryCache};
use crate::client::Client;
use futures::future::BoxFuture;
use micro_client::Connection;
use micro_core::proto::auth::InspectRequest;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

pub use micro_core::metadata::{ACCOUNT_ID_HEADER, ACCOUNT_ISSUER_HEADER};

/// How many verified tokens the chain remembers.
const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// Who called: put into the request's extensions by the chain's authentication (read it with [`account`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id.
    pub id: String,
    /// The namespace that issued it.
    pub issuer: String,
    /// `user` or `service` (empty when only the proxy's headers named the account).
    #[serde(default)]
    pub kind: String,
    /// The display name (empty when only the proxy's headers named the account).
    #[serde(default)]
    pub name: String,
    /// The account's scopes (none when only the proxy's headers named the account).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether a token proved the account (it was verified), rather than the proxy's headers naming it.
    #[serde(default)]
    pub verified: bool,
}

impl From<micro_core::proto::auth::Account> for Account {
    fn from(a: micro_core::proto::auth::Account) -> Self {
        Self { id: a.id, issuer: a.issuer, kind: a.r#type, name: a.name, scopes: a.scopes, verified: true }
    }
}

/// The caller's account in a handler, when the chain authenticated the call.
///
/// ```
/// async fn call(request: tonic::Request<()>) -> Result<tonic::Response<()>, tonic::Status> {
///     let who = micro::chain::account(&request).map_or("nobody", |a| a.id.as_str());
///     tracing::info!(who, "called");
///     Ok(tonic::Response::new(()))
/// }
/// ```
pub fn account<T>(request: &tonic::Request<T>) -> Option<&Account> {
    request.extensions().get::<Account>()
}

/// Verifies a bearer token: the account it proves, or the status to refuse the call with (`UNAUTHENTICATED` for a
/// bad token). A closure `Fn(String) -> impl Future<Output = Result<Account, Status>>` is a verifier.
pub trait Verifier: Send + Sync + 'static {
    /// The account `token` proves.
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Account, Status>>;
}

impl<F, Fut> Verifier for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Account, Status>> + Send + 'static,
{
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Account, Status>> {
        Box::pin(self(token.to_string()))
    }
}

/// The platform's verifier: `Auth.Inspect` through the proxy, called with the token itself (an account may inspect
/// its own tokens), so the service needs no privilege.
#[derive(Clone, Debug)]
pub struct Inspect {
    conn: Connection,
}

impl Inspect {
    /// Verifies tokens through `client`'s proxy connection.
    pub fn new(client: &Client) -> Self {
        Self { conn: client.connection().clone() }
    }
}

impl Verifier for Inspect {
    fn verify<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Account, Status>> {
        Box::pin(async move {
            let conn = self.conn.clone().with_token(Some(token));
            let req = conn.request(InspectRequest { token: token.to_string(), options: None });
            match conn.auth().inspect(req).await {
                Ok(rsp) => rsp
                    .into_inner()
                    .account
                    .map(Account::from)
                    .ok_or_else(|| Status::unauthenticated("the token names no account")),
                Err(s) => Err(match s.code() {
                    tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::NotFound => Status::unauthenticated(format!("invalid token: {}", s.message())),
                    _ => Status::unavailable(format!("cannot verify the caller's token: {}", s.message())),
                }),
            }
        })
    }
}

/// The authentication stage: the verifier (if tokens are verified) and the verified tokens' accounts.
#[derive(Clone)]
pub(crate) struct Authenticator {
    verifier: Option<Arc<dyn Verifier>>,
    tokens: MemoryCache,
}

impl Authenticator {
    pub(crate) fn new(verifier: Option<Arc<dyn Verifier>>) -> Self {
        Self { verifier, tokens: MemoryCache::new(TOKEN_CACHE_CAPACITY) }
    }

    /// The caller's account: its token's, verified (and cached for `ttl`); else the proxy's headers'.
    pub(crate) async fn authenticate(&self, headers: &http::HeaderMap, ttl: Duration) -> Result<Account, Status> {
        if let (Some(verifier), Some(token)) = (&self.verifier, bearer(headers)) {
            if ttl.is_zero() {
                return verifier.verify(token).await;
            }
            return self.tokens.get_or_compute(token, ttl, || verifier.verify(token)).await;
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        match (header(ACCOUNT_ID_HEADER), header(ACCOUNT_ISSUER_HEADER)) {
            (Some(id), Some(issuer)) => {
                Ok(Account { id: id.to_string(), issuer: issuer.to_string(), ..Default::default() })
            }
            _ => Err(Status::unauthenticated(
                "this endpoint needs an account: call it through the proxy with a token (log in with `micro login`)",
            )),
        }
    }
}

/// The bearer token of the `authorization` header.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def"));
        headers.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
