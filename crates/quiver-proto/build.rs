//! Compiles `proto/quiver/v1/*.proto` with protox (pure Rust, no `protoc`) and
//! generates prost messages and tonic clients/servers into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "quiver/v1/mutations.proto",
        "quiver/v1/subscriptions.proto",
        "quiver/v1/admin.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("quiver_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
