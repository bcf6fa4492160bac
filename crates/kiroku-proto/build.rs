//! Compiles `proto/` with the vendored protoc; nothing generated is committed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Pass protoc explicitly instead of mutating PROTOC in the environment.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("kiroku/transcribe/v1/transcribe.proto"),
        root.join("kiroku/events/v1/events.proto"),
        root.join("kiroku/account/v1/account.proto"),
        root.join("kiroku/audit/v1/audit.proto"),
        root.join("kiroku/storage/v1/storage.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("kiroku_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
