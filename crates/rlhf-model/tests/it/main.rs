//! The model core's test suite, one binary: numeric checks of every RLHF function against
//! hand-computed values, gradients against finite differences, and the model's training,
//! padding, sampling and serialisation behaviour.

mod candle_patches;
mod fused;
mod gradients;
mod helpers;
mod last_token;
mod losses;
mod model;
mod sampling;
