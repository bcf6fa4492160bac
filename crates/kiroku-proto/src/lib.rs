//! Kiroku's protobuf contracts, generated at build time from `proto/`.
#![allow(missing_debug_implementations, clippy::all)]

pub mod transcribe {
    pub mod v1 {
        tonic::include_proto!("kiroku.transcribe.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("kiroku.events.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Kiroku proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiroku_descriptor");
