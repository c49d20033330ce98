//! The gRPC contract between the rlhf services, generated from `proto/rlhf/v1`.
//!
//! # Layout
//! - `v1`: messages and the client and server stubs of the four services
//!   (`PolicyGenerator`, `RewardScorer`, `PreferenceStore`, `PpoLearner`).
//! - `convert`: the only place that maps `rlhf-types` to and from the wire messages (rollouts,
//!   rankings, generation requests).
//! - [`weights`]: a model's tensors as a versioned, chunked, checksummed stream of
//!   `WeightChunk`s and back, the way the learner hands models to the other services;
//!   [`judges`]: the reward model and reference policy as one such stream, for the scorers.
//! - [`FILE_DESCRIPTOR_SET`]: the contract itself, for server reflection.
//!
//! The code is generated at build time by `build.rs` with protox; nothing here is written by hand
//! except this file and the contract tests.

/// The encoded `FileDescriptorSet` of `proto/rlhf/v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rlhf_descriptor.bin"));

mod convert;
pub mod judges;
pub mod weights;

pub use convert::{InvalidMessage, pair_to_proto, ranking_from_proto, ranking_to_proto, request_to_proto};

/// Version 1 of the rlhf protocol (protobuf package `rlhf.v1`).
#[allow(missing_docs, missing_debug_implementations, clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("rlhf.v1");
}

#[cfg(test)]
mod tests;
