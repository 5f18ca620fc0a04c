//! Integration tests: a real `micro server` on a port of 127.0.0.1, the real `helloworld` and `echo` services, and
//! the real `micro` binary, each in its own process with temporary directories (see [`support`]).
//!
//! Snapshots of CLI output live in `tests/it/snapshots/`; review changes with `INSTA_UPDATE=always cargo test` and a
//! look at the `.snap` files (or `cargo insta review`).

mod support;
mod tmux;

mod auth;
mod broker;
mod chain;
mod completion;
mod config;
mod contract;
mod describe;
mod direct;
mod dynamic;
mod errors;
#[cfg(feature = "etcd")]
mod etcd;
mod events;
mod gateway;
mod interactive;
mod inventory;
mod mcp;
#[cfg(feature = "nats")]
mod nats;
mod new;
mod notes;
#[cfg(feature = "postgres")]
mod postgres;
mod proxy;
mod reflection;
mod registry;
mod requests;
mod runtime;
mod security;
mod services;
mod stats;
mod store;
mod streaming;
mod tasks;
mod tls;
mod walls;
mod web;
