//! Everything that talks to a micro server: the connection to its proxy, the registry, dynamic calls (with JSON
//! requests checked against their schema, [`json`]), the on-disk schema cache and the CLI's token store; and, for
//! any gRPC server, a reflection client and a printer of schemas in proto syntax. The CLI and the service library
//! both sit on this layer.

pub mod connection;
pub mod describe;
pub mod diagnose;
pub mod dynamic;
pub mod json;
pub mod json_schema;
pub mod reflection;
pub mod schema_cache;
pub mod tls;
pub mod tokens;

pub use connection::{ConnectError, Connection};
