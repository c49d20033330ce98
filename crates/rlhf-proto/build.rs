//! Compiles `proto/rlhf/v1` with protox, a pure-Rust protobuf compiler, so that
//! no `protoc` has to be installed on a developer machine, in CI or in an image.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["common", "generation", "scoring", "preferences", "learner"]
        .map(|name| root.join(format!("rlhf/v1/{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    // The encoded descriptors also serve gRPC reflection, so grpcurl needs no .proto files.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("rlhf_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
