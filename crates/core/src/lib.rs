//! micro's shared floor: what the service library, the client, the server and the CLI all speak.
//!
//! The core services' protos ([`proto`], compiled with protox, so no `protoc`), the gRPC metadata keys
//! ([`metadata`]), the codec of the core servers ([`codec`]), schemas and their endpoints ([`schema`]), the
//! namespace rule ([`namespace`]), the environment variables ([`env`]), the local credential
//! ([`local_credential`]) and private files ([`fs`]). Nothing here depends on another micro crate.

pub mod codec;
pub mod env;
pub mod fs;
pub mod local_credential;
pub mod metadata;
pub mod namespace;
pub mod proto;
pub mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The version of micro, as printed by `micro --version` and answered by the API gateway.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default namespace (registry domain).
pub const DEFAULT_NAMESPACE: &str = "micro";
