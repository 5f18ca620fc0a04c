//! Generated code for micro's own protos, and the descriptor set that describes them.

/// The serialized `FileDescriptorSet` of every core proto (with source info, so comments are kept).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/micro_descriptor.bin"));

/// The registry service (`package registry`).
#[allow(missing_docs, clippy::all)]
pub mod registry {
    tonic::include_proto!("registry");
}

/// The auth service (`package auth`): accounts, tokens and rules.
#[allow(missing_docs, clippy::all)]
pub mod auth {
    tonic::include_proto!("auth");
}

/// The store service (`package store`): durable key-value records.
#[allow(missing_docs, clippy::all)]
pub mod store {
    tonic::include_proto!("store");
}

/// The config service (`package config`): per-namespace JSON documents with secrets.
#[allow(missing_docs, clippy::all)]
pub mod config {
    tonic::include_proto!("config");
}

/// The broker service (`package broker`): at-most-once publish and subscribe.
#[allow(missing_docs, clippy::all)]
pub mod broker {
    tonic::include_proto!("broker");
}

/// The events service (`package events`): durable streams with consumer groups.
#[allow(missing_docs, clippy::all)]
pub mod events {
    tonic::include_proto!("events");
}

/// The runtime service (`package runtime`): a process manager.
#[allow(missing_docs, clippy::all)]
pub mod runtime {
    tonic::include_proto!("runtime");
}

/// The debug service (`package debug`): a process's statistics.
#[allow(missing_docs, clippy::all)]
pub mod debug {
    tonic::include_proto!("debug");
}

/// The tasks service (`package tasks`): schedules and a durable task queue.
#[allow(missing_docs, clippy::all)]
pub mod tasks {
    tonic::include_proto!("tasks");
}
