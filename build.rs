//! Compiles the core services' protos with protox (no `protoc` needed) and writes the
//! descriptor set to `OUT_DIR` so the binary can embed it for reflection.

use prost::Message;
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/micro/registry/registry.proto",
    "proto/micro/auth/auth.proto",
    "proto/micro/store/store.proto",
    "proto/micro/config/config.proto",
    "proto/micro/broker/broker.proto",
    "proto/micro/events/events.proto",
    "proto/micro/runtime/runtime.proto",
    "proto/micro/debug/debug.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS.iter().map(|p| p.trim_start_matches("proto/")))?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("micro_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".registry.Schema.descriptor_set")
        .compile_fds(fds)?;
    Ok(())
}
