//! TLS: `micro server` serving the proxy and the gateway over TLS to real peers.

mod client;
mod server;
mod services;
