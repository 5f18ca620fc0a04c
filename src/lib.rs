//! micro: a developer platform for services.
//!
//! One crate serves three faces: the `micro` command line (in [`cli`]), the local server `micro server`
//! (in [`server`]) and the service library (in [`service`]), which lets you write a service in a few lines:
//!
//! ```no_run
//! # mod pb { pub const FILE_DESCRIPTOR_SET: &[u8] = &[]; }
//! # async fn demo() -> Result<(), micro::service::ServiceError> {
//! micro::Service::new("helloworld")
//!     .version("latest")
//!     .descriptors(pb::FILE_DESCRIPTOR_SET)
//!     // .add_service(HelloworldServer::new(Handler))
//!     .run()
//!     .await
//! # }
//! ```
//!
//! Clients reach every service through the server's gRPC proxy, which routes by the registry; see
//! `docs/architecture.md` for how a call flows through the layers.

pub mod cli;
pub mod client;
pub mod codec;
pub mod env;
pub mod exit;
pub mod local_credential;
pub mod namespace;
pub mod proto;
pub mod schema;
pub mod server;
pub mod service;
pub mod settings;

pub use service::Service;

/// The version of micro, as printed by `micro --version` and answered by the API gateway.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default namespace (registry domain).
pub const DEFAULT_NAMESPACE: &str = "micro";
