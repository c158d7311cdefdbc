//! Generates the CRI messages (`runtime.v1.rs` in OUT_DIR) from proto/cri.proto. protox
//! parses the file in Rust, so no protoc is needed; tonic-prost-build writes prost structs only
//! (no client or server stubs: src/cri/client.rs calls by path, so that one client speaks CRI v1
//! and v1alpha2).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/cri.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
