//! The numeric heart of rlhf: a trainable Llama-family language model on candle, its value and
//! reward heads, a batched KV-cache sampler, and the RLHF losses as pure tensor functions.
//!
//! # Layout
//! - [`adamw`]: `AdamW`, candle's AdamW update fused into one in-place pass per parameter.
//! - [`batch`]: `SequenceBatch`, prompt + response rows and the next-token grid RL math uses.
//! - [`compute_pool`]: `on_compute_pool`, compute on rayon's threads instead of handing each product to them.
//! - [`config`]: `Config`, the model architecture as Hugging Face's `config.json` spells it.
//! - [`device`]: `DeviceChoice`, `--device cpu|cuda[:N]` opened with an error that says what is missing.
//! - [`llama`]: the decoder (`Llama`), differentiable for training and fused for inference.
//! - [`heads`]: `ValueHead` (PPO critic) and `RewardHead` (reward model score).
//! - [`multiply_add_peak`]: the vector units' own f32 rate, the ceiling the bench's figures sit under.
//! - [`init`]: `seeded_var_builder`, reproducible fresh weights (candle's CPU RNG has no seed).
//! - [`padding`]: padding masks → positions and attention bias, shared by all forward passes.
//! - [`sampling`]: `generate`, batched sampling that also returns behaviour log-probs.
//! - [`rl`]: log-probs, entropy, KL estimators, masked statistics, GAE, PPO policy and value
//!   losses, KL-penalised rewards, Bradley–Terry and K-way ranking losses, KL controllers.
//!
//! **Architecture invariant:** this crate does no IO and knows nothing of files, tonic, Redis
//! or tokio. Weights come in and go out through `candle_nn::VarBuilder` / `VarMap`; whoever owns
//! the files decides where they live.

pub mod adamw;
pub mod amx;
pub mod batch;
pub mod compute_pool;
pub mod config;
pub mod decode_matmul;
pub mod device;
mod embedding;
pub mod fused;
pub mod fused_attention;
pub mod fused_logprobs;
pub mod fused_swiglu;
pub mod heads;
pub mod init;
pub mod llama;
pub mod multiply_add_peak;
pub mod padding;
pub mod rl;
pub mod sampling;
mod simd_math;

pub use adamw::AdamW;
pub use batch::SequenceBatch;
pub use compute_pool::on_compute_pool;
pub use config::Config;
pub use device::{DeviceChoice, compute_dtype};
pub use heads::{RewardHead, ValueHead};
pub use init::seeded_var_builder;
pub use llama::{Kernels, KvCache, Llama};
pub use rl::gae::{Gae, gae};
pub use rl::kl::{KlEstimator, kl_estimate};
pub use rl::kl_controller::KlController;
pub use rl::logprobs::{composite_token_logprobs, entropy, next_token_logprobs, token_logprobs};
pub use rl::masked::{masked_mean, masked_mean_rows, masked_var, whiten};
pub use rl::ppo::{PolicyClip, PolicyLoss, ValueLoss, policy_loss, value_loss};
pub use rl::preference::{
    RankingError, bradley_terry_loss, log_sigmoid, pairwise_accuracy, ranking_loss, ranking_pairs, validate_ranking,
};
pub use rl::rewards::{RewardShaping, ShapedRewards, kl_penalized_rewards};
pub use sampling::{Generation, SamplingParams, generate, generate_until, tempered_logprobs};
