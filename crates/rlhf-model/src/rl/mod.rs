//! The RLHF math as small pure functions over tensors.
//!
//! Conventions shared by every function here:
//! - `[B, T]` tensors are per-token quantities of a batch of `B` sequences, `T` positions long;
//! - `mask: [B, T]` is 1.0 where a position counts (a response token) and 0.0 elsewhere, in the
//!   dtype of the values;
//! - losses are token means over the mask (`loss_agg_mode = token-mean` in verl's terms).

pub mod gae;
pub mod kl;
pub mod kl_controller;
pub mod logprobs;
pub mod masked;
pub mod ppo;
pub mod preference;
pub mod rewards;
