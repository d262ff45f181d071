//! Compiles `proto/` with protox (pure Rust, no system `protoc`) into Rust
//! types and a descriptor set that server reflection serves to grpcurl.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["pytest_mcp/v1/recorder.proto"];
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    // Source info carries the proto comments, so `grpcurl describe` shows them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(protos)?;
    let fds = compiler.file_descriptor_set();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("pytest_mcp_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
