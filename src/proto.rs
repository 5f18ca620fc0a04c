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
