//! Compiles the inventory proto with protox (no `protoc`) and writes its descriptor set for registration.

use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["inventory.proto"])?
        .file_descriptor_set();
    fs::write(PathBuf::from(env::var("OUT_DIR")?).join("inventory_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
