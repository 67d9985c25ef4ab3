//! Compiles the Open Inference Protocol's gRPC definitions.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])?;
    Ok(())
}
