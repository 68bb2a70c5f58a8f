//! Compiles the .proto files with protox (pure Rust, no `protoc`) and
//! generates the tonic client and server code, plus the encoded descriptor
//! set that the server hands to gRPC reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/vmail/auth/v1/auth.proto",
        "proto/vmail/node/v1/control.proto",
        "proto/vmail/auth/cluster/v1/cluster.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("vmail_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
