//! How much of a training batch goes through the network at once.
//!
//! The activations a backward pass keeps grow with tokens × layers × width: for SmolLM2-135M
//! (30 layers) a reward-model batch of 8 rankings of 4 answers, about 3,000 tokens, took the
//! process to 11.8 GB (measured). Splitting such a batch into micro-batches whose gradients are summed
//! gives the same update for a fraction of the memory; a small model's batch stays whole.

use rlhf_model::Config;

/// Saved activations one micro-batch may hold.
pub const ACTIVATION_BUDGET_BYTES: usize = 1 << 30;

/// An estimate of the f32 memory one token of a sequence `width` tokens wide costs a forward
/// and backward pass through candle's composite kernels: per layer, about sixteen hidden-sized
/// tensors (norms, projections, rotary copies, residuals), seven intermediate-sized ones (gate,
/// up, the activation's parts, their product) and ten rows of attention weights per head, all
/// kept for the backward pass, which about doubles them while it runs. Calibrated on SmolLM2's
/// reward model: 800 tokens (two rankings of four answers) grew the process by about 5.5 GB.
pub fn activation_bytes_per_token(config: &Config, width: usize) -> usize {
    let per_layer = 16 * config.hidden_size + 7 * config.intermediate_size + 10 * config.num_attention_heads * width;
    2 * 4 * config.num_hidden_layers * per_layer
}

/// Items per micro-batch when `items` items of `tokens_per_item` tokens (padded) each are
/// split evenly to fit [`ACTIVATION_BUDGET_BYTES`]; at least one.
pub fn items_per_micro_batch(config: &Config, items: usize, tokens_per_item: usize, width: usize) -> usize {
    let bytes = items * tokens_per_item * activation_bytes_per_token(config, width);
    let parts = bytes.div_ceil(ACTIVATION_BUDGET_BYTES).max(1);
    items.div_ceil(parts).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_model_keeps_its_batch_whole_and_a_large_one_splits_it() {
        // The bundled model: 16 rankings of 4 answers of 24 tokens stay one batch.
        let small = Config::tiny(300, 128, 3, 4, 2);
        assert_eq!(items_per_micro_batch(&small, 16, 4 * 24, 24), 16);
        // SmolLM2-135M's shape: 8 rankings of 4 answers of 100 tokens go one at a time.
        let mut smol = Config::tiny(49152, 576, 30, 9, 3);
        smol.intermediate_size = 1536;
        assert_eq!(activation_bytes_per_token(&smol, 100), 8 * 30 * (9216 + 10752 + 9000));
        assert_eq!(items_per_micro_batch(&smol, 8, 4 * 100, 100), 1);
        // PPO's minibatch of 16 rollouts of 80 tokens: two at a time.
        assert_eq!(items_per_micro_batch(&smol, 16, 80, 80), 2);
        assert_eq!(items_per_micro_batch(&smol, 1, 4 * 2000, 2000), 1);
    }
}
