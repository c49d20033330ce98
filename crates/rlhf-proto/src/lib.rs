//! The gRPC contract between the rlhf services, generated from `proto/rlhf/v1`.
//!
//! # Layout
//! - `v1`: messages and the client and server stubs of the four services
//!   (`PolicyGenerator`, `RewardScorer`, `PreferenceStore`, `PpoLearner`).
//!
//! The code is generated at build time by `build.rs` with protox; nothing here is written by hand
//! except this file and the contract tests.

/// Version 1 of the rlhf protocol (protobuf package `rlhf.v1`).
#[allow(missing_docs, missing_debug_implementations, clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("rlhf.v1");
}

#[cfg(test)]
mod tests;
