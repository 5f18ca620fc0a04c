//! micro's command line: the `micro` binary's commands ([`cli`]), its settings ([`settings`]: flag > env > file >
//! default) and its exit codes ([`exit`]).
//!
//! The crates under it are the architecture, each reaching only down: `micro-core` (protos, metadata keys, codec),
//! then `micro-client` (the connection), `micro` (the service library a user's service links alone) and
//! `micro-server` (`micro server`), then this binary on top. See `docs/architecture.md`.

pub mod cli;
pub mod exit;
pub mod settings;
