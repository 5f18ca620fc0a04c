//! Compiles the core services' protos with protox (no `protoc` needed) and writes the
//! descriptor set to `OUT_DIR` so the binary can embed it for reflection.
//!
//! The code is generated in two passes into one file per package. The first generates the messages and the clients,
//! with tonic's prost codec: a response that is not valid protobuf is the server's fault, `INTERNAL`. The second
//! generates the servers alone (the messages are the first pass's) with `crate::codec::RequestCodec`, so that a
//! request that is not valid protobuf is answered `INVALID_ARGUMENT`, the caller's fault.

use prost::Message;
use std::collections::BTreeSet;
use std::{env, fs, path::PathBuf};

/// Where the protos are: the workspace's `proto/` (the same place in the library source `micro new` lays out).
const PROTO_DIR: &str = "../../proto";

const PROTOS: &[&str] = &[
    "micro/registry/registry.proto",
    "micro/auth/auth.proto",
    "micro/store/store.proto",
    "micro/config/config.proto",
    "micro/broker/broker.proto",
    "micro/events/events.proto",
    "micro/runtime/runtime.proto",
    "micro/debug/debug.proto",
    "micro/tasks/tasks.proto",
];

/// The codec of the generated servers (`src/codec.rs`).
const SERVER_CODEC: &str = "crate::codec::RequestCodec";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");
    let fds = protox::Compiler::new([PROTO_DIR])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("micro_descriptor.bin"), fds.encode_to_vec())?;
    // The packages with services; `src/proto.rs` includes each as `crate::proto::<package>`.
    let packages: BTreeSet<String> =
        fds.file.iter().filter(|f| !f.service.is_empty()).map(|f| f.package().to_string()).collect();

    // Messages and clients.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".registry.Schema.descriptor_set")
        .compile_fds(fds.clone())?;

    // Servers, over the first pass's messages (extern, so not generated again), into a directory of their own.
    let servers = out.join("servers");
    fs::create_dir_all(&servers)?;
    let mut builder = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .codec_path(SERVER_CODEC)
        .out_dir(&servers);
    for package in &packages {
        builder = builder.extern_path(format!(".{package}"), format!("crate::proto::{package}"));
    }
    builder.compile_fds(fds)?;

    // One file per package, as `tonic::include_proto!` expects: the messages and clients, then the servers.
    for package in &packages {
        let file = format!("{package}.rs");
        let mut code = fs::read_to_string(out.join(&file))?;
        let server = fs::read_to_string(servers.join(&file))?;
        if !server.contains(SERVER_CODEC) {
            return Err(format!("the server code of package {package} does not use {SERVER_CODEC}").into());
        }
        code.push('\n');
        code.push_str(&server);
        fs::write(out.join(&file), code)?;
    }
    Ok(())
}
