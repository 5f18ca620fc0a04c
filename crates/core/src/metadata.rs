//! The gRPC metadata keys and node metadata keys that every side of micro agrees on: the CLI and the service
//! library set them, the proxy and the registry read them. One definition each, here on the shared floor.

/// The metadata key that names the target service explicitly.
pub const SERVICE_HEADER: &str = "micro-service";
/// The metadata key that pins a call to one node id of the target service.
pub const NODE_HEADER: &str = "micro-node";
/// The metadata key that carries the caller's namespace.
pub const NAMESPACE_HEADER: &str = "micro-namespace";
/// The metadata key in which the proxy names the caller's account id. Set by the proxy only: it removes any the
/// caller sent, so a service reached through the proxy can trust it.
pub const ACCOUNT_ID_HEADER: &str = "micro-account-id";
/// The metadata key in which the proxy names the namespace that issued the caller's account (see
/// [`ACCOUNT_ID_HEADER`]).
pub const ACCOUNT_ISSUER_HEADER: &str = "micro-account-issuer";
/// The metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Node metadata saying that the node serves TLS (`true`; the service library sets it when the service is given
/// `MICRO_TLS_CERT` and `MICRO_TLS_KEY`). The proxy dials such a node over TLS only (`https`, ALPN `h2`, verified
/// against `--tls-upstream-ca` and the Mozilla roots for the node's host), never in plaintext; any value but `false`,
/// `0`, `no`, `off` or empty counts as `true`.
pub const TLS_KEY: &str = "tls";
/// The largest gRPC message the store accepts or sends (a 4 MiB value plus its key and metadata fit).
pub const STORE_MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
