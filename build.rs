//! Compiles `proto/privacy/v1/*.proto` without `protoc`: protox parses the
//! files in pure Rust, tonic-prost-build generates the code from the parsed
//! descriptors (with `src/limits.rs`'s codec, which enforces the input
//! limits), the limits are generated from the descriptors' comments
//! (`build/limits.rs`), and the descriptor set is written out for server
//! reflection.
use std::path::PathBuf;

#[path = "build/limits.rs"]
mod limits;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_dir.join("privacy/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build/limits.rs");

    // With source info (the comments carry the limits) and the imports.
    let fds = protox::compile(&files, [&proto_dir])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("privacy_v1_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    let limits = limits::generate(&fds)?;
    std::fs::write(out_dir.join("privacy_v1_limits.rs"), limits)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::limits::LimitsCodec")
        .compile_fds(fds)?;
    Ok(())
}
