//! Compiles the trimmed copy of etcd's v3 API protos (`proto/etcd`) with protox, so that the `etcd` feature builds
//! with no `protoc`.
//!
//! Only the clients and the messages are generated, into `OUT_DIR/etcd` (one file per package: `etcdserverpb.rs`
//! and `mvccpb.rs`), and only when the `etcd` feature is on; `src/registry/etcd/client.rs` includes them.

use std::{env, fs, path::PathBuf};

/// Where the protos are; the imports are relative to it.
const PROTO_DIR: &str = "proto";

const PROTOS: &[&str] = &["etcd/kv.proto", "etcd/rpc.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}/etcd");
    if env::var_os("CARGO_FEATURE_ETCD").is_none() {
        return Ok(());
    }
    // With source info, the generated types carry the protos' comments as their docs.
    let fds = protox::Compiler::new([PROTO_DIR])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?).join("etcd");
    fs::create_dir_all(&out)?;
    tonic_prost_build::configure().build_client(true).build_server(false).out_dir(&out).compile_fds(fds)?;
    Ok(())
}
