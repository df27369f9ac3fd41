//! Quiver's gRPC API, generated from `proto/quiver/v1/` at build time.
//!
//! - [`v1`]: the `quiver.v1` package — `Mutations` client and server, and their messages.
//! - [`FILE_DESCRIPTOR_SET`]: the compiled descriptors, for gRPC server reflection.

/// The `quiver.v1` package.
#[allow(
    clippy::all,
    clippy::clone_on_ref_ptr,
    clippy::unwrap_used,
    missing_docs,
    unreachable_pub,
    rust_2018_idioms
)]
pub mod v1 {
    tonic::include_proto!("quiver.v1");
}

/// The encoded `FileDescriptorSet` of every Quiver proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/quiver_descriptor.bin"));
