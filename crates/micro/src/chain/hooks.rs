//! Mutation hooks: user code before the handler (which may change the request's metadata or refuse the call) and
//! after it, in reverse order (which sees the outcome).

use super::Call;
use futures::future::BoxFuture;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// How a call ended, as far as the chain can tell (see the [module docs](super)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The gRPC code.
    pub code: Code,
    /// The status message (empty when OK).
    pub message: String,
}

impl Outcome {
    /// Whether the call succeeded.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    pub(crate) fn of_status(status: &Status) -> Self {
        Self { code: status.code(), message: status.message().to_string() }
    }

    /// The status a response starts with: a trailers-only error, else OK.
    pub(crate) fn of_response(response: &http::Response<tonic::body::Body>) -> Self {
        match Status::from_header_map(response.headers()) {
            Some(status) => Self::of_status(&status),
            None => Self { code: Code::Ok, message: String::new() },
        }
    }
}

/// A mutation hook. Both methods do nothing unless implemented.
///
/// ```
/// use futures::future::BoxFuture;
/// use micro::chain::{Call, Hook, Outcome};
///
/// /// Refuses calls without a tenant, and tags the others.
/// struct Tenant;
///
/// impl Hook for Tenant {
///     fn before<'a>(
///         &'a self,
///         _call: &'a Call,
///         metadata: &'a mut tonic::metadata::MetadataMap,
///     ) -> BoxFuture<'a, Result<(), tonic::Status>> {
///         Box::pin(async move {
///             if metadata.get("x-tenant").is_none() {
///                 return Err(tonic::Status::invalid_argument("x-tenant is required"));
///             }
///             metadata.insert("x-checked", "1".parse().expect("ascii"));
///             Ok(())
///         })
///     }
///
///     fn after<'a>(&'a self, call: &'a Call, outcome: &'a Outcome) -> BoxFuture<'a, ()> {
///         Box::pin(async move { tracing::debug!(endpoint = %call.endpoint, code = ?outcome.code, "done") })
///     }
/// }
/// ```
pub trait Hook: Send + Sync + 'static {
    /// Runs before the handler, after the hooks added earlier: may read and change the request's metadata (the
    /// handler sees the change), or refuse the call with a status (the handler and later hooks do not run).
    fn before<'a>(&'a self, call: &'a Call, metadata: &'a mut MetadataMap) -> BoxFuture<'a, Result<(), Status>> {
        let _ = (call, metadata);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Runs after the handler (or the refusal of a later hook), before the hooks added earlier; only for a hook
    /// whose `before` let the call through, and not when the caller goes away before the call ends.
    fn after<'a>(&'a self, call: &'a Call, outcome: &'a Outcome) -> BoxFuture<'a, ()> {
        let _ = (call, outcome);
        Box::pin(std::future::ready(()))
    }
}
