//! The FLOPs of the bench's training work, counted as rlhf runs it, so that GFLOP/s and shares of
//! the peak measure the kernels' speed rather than credit skipped work.
//!
//! Forward + backward is 6 FLOPs per matmul weight per token (2 forward, 2 for the input's
//! gradient, 2 for the weight's), plus attention's scores and weighted sums, `12 · heads ·
//! head_dim · seq_len` per token and layer. Element-wise work (norms, softmax, AdamW) is left out:
//! it is memory-bound and small beside the products.

use rlhf_model::Config;
use serde::Serialize;

/// The yardsticks the training figures are shares of.
#[derive(Debug, Clone, Copy)]
pub struct Peaks {
    /// The fp32 1024³ product's best GFLOP/s.
    pub fp32: f64,
    /// The mixed-precision product's, under `--bf16` on a CPU.
    pub mixed: Option<f64>,
    /// The vector units' own f32 multiply-add rate, on a CPU.
    pub ceiling: Option<f64>,
}

/// What a piece of training work reached: its GFLOP/s and their shares of the peaks, in a
/// `--json` record's own fields.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct FlopRate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_fraction: Option<f64>,
    /// Under `--bf16` on a CPU: the share of the mixed-precision product's own peak, where
    /// `peak_fraction` (against fp32's) runs past 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed_peak_fraction: Option<f64>,
    /// On a CPU: the share of the f32 multiply-add ceiling, the rate no kernel can pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_fraction: Option<f64>,
}

impl FlopRate {
    /// `flops` done in `seconds`, against `peaks`; printed on the bench's next line, after
    /// `what` (empty, or a name for the part of the work it covers).
    pub fn reported(flops: f64, seconds: f64, peaks: Option<Peaks>, what: &str) -> Self {
        let gflops = flops / seconds / 1e9;
        let rate = FlopRate {
            gflops_per_s: Some(gflops),
            peak_fraction: peaks.map(|p| gflops / p.fp32),
            mixed_peak_fraction: peaks.and_then(|p| p.mixed).map(|p| gflops / p),
            ceiling_fraction: peaks.and_then(|p| p.ceiling).map(|c| gflops / c),
        };
        let mut share = rate.peak_fraction.map_or(String::new(), |f| format!(", {:.0}% of the fp32 peak", f * 100.0));
        if let Some(f) = rate.mixed_peak_fraction {
            share += &format!(", {:.0}% of the bf16 one", f * 100.0);
        }
        if let Some(f) = rate.ceiling_fraction {
            share += &format!(", {:.0}% of the ceiling", f * 100.0);
        }
        println!("         {gflops:>9.1} GFLOP/s{what}{share}");
        rate
    }
}

/// Forward + backward per token of a causal LM over `seq_len` tokens: every layer at every
/// token, then the vocabulary head (`lm_head`) or a scalar one.
pub fn training_per_token(cfg: &Config, seq_len: usize, lm_head: bool) -> f64 {
    let h = cfg.hidden_size as f64;
    let head = if lm_head { cfg.vocab_size as f64 * h } else { h };
    let layers = cfg.num_hidden_layers as f64;
    layers * LayerFlops::of(cfg, seq_len).per_token() + 6.0 * head
}

/// Forward + backward of a reward-model sequence of `seq_len` tokens as
/// `Llama::last_hidden_states` runs it: read at the scored token alone, under a scalar head.
pub fn reward_per_sequence(cfg: &Config, seq_len: usize) -> f64 {
    read_in_band(cfg, seq_len, 1, 6.0 * cfg.hidden_size as f64)
}

/// The PPO learner's update as `ppo_learner` runs it on `batch` rollouts of `prompt_len` +
/// `new_tokens` tokens: every epoch one forward + backward of the policy, read at the
/// `new_tokens` response columns (`Llama::hidden_states_in`) under the vocabulary head, and of the
/// critic. A separate critic is a second backbone read the same way under a scalar head; the
/// head critic is that head alone on the policy's detached features (no input gradient, so 4
/// FLOPs per weight). The first epoch's forward pass is the one the old values come from, so
/// there is no other.
pub fn ppo_update(
    cfg: &Config,
    (batch, prompt_len, new_tokens): (usize, usize, usize),
    epochs: usize,
    critic: ppo_learner::Critic,
) -> f64 {
    let (seq_len, h) = (prompt_len + new_tokens, cfg.hidden_size as f64);
    let read = new_tokens as f64;
    let policy = read_in_band(cfg, seq_len, new_tokens, 6.0 * cfg.vocab_size as f64 * h * read);
    let critic = match critic {
        ppo_learner::Critic::Separate => read_in_band(cfg, seq_len, new_tokens, 6.0 * h * read),
        ppo_learner::Critic::Head => 4.0 * h * read,
    };
    (epochs * batch) as f64 * (policy + critic)
}

/// Forward + backward of one sequence of `seq_len` tokens whose final hidden states are read at
/// `read` positions only: every layer but the last at every token, the last one's keys and
/// values at every token (the read positions attend to them) and the rest of it at the read
/// ones, plus `head` FLOPs for whatever reads them.
fn read_in_band(cfg: &Config, seq_len: usize, read: usize, head: f64) -> f64 {
    let layer = LayerFlops::of(cfg, seq_len);
    let (t, below) = (seq_len as f64, cfg.num_hidden_layers.saturating_sub(1) as f64);
    below * t * layer.per_token() + t * layer.keys_values + read as f64 * layer.rest + head
}

/// One decoder layer's forward + backward FLOPs for one token: 6 per weight of its
/// projections (`keys_values` the k and v ones), plus attention's scores and weighted sums over
/// `seq_len` keys.
struct LayerFlops {
    keys_values: f64,
    rest: f64,
}

impl LayerFlops {
    fn of(cfg: &Config, seq_len: usize) -> Self {
        let (h, i) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let q = (cfg.num_attention_heads * cfg.head_dim()) as f64;
        let kv = (cfg.num_kv_heads() * cfg.head_dim()) as f64;
        let rest = 6.0 * (h * q + q * h + 3.0 * h * i) + 12.0 * q * seq_len as f64;
        LayerFlops { keys_values: 6.0 * 2.0 * h * kv, rest }
    }

    fn per_token(&self) -> f64 {
        self.keys_values + self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 layers, hidden 4, 2 query heads and 1 key/value head of 2 values, intermediate 8,
    /// vocabulary 10. Per layer and token: k and v 6·2·(4·2) = 96; q, o and the MLP
    /// 6·(4·4 + 4·4 + 3·4·8) = 768, plus attention 12·4·seq_len (240 at 5 tokens): 1104 in all.
    fn tiny() -> Config {
        let mut cfg = Config::tiny(10, 4, 2, 2, 1);
        cfg.intermediate_size = 8;
        cfg
    }

    #[test]
    fn a_causal_lm_token_is_every_layer_and_the_vocabulary_head() {
        // 2 · 1104 + 6 · 10 · 4.
        assert_eq!(training_per_token(&tiny(), 5, true), 2448.0);
        // The scalar head instead: 2 · 1104 + 6 · 4.
        assert_eq!(training_per_token(&tiny(), 5, false), 2232.0);
    }

    #[test]
    fn a_reward_sequence_runs_its_last_layer_past_keys_and_values_at_one_token() {
        // Layer 1 at 5 tokens, layer 2's keys and values at 5 and the rest (1008) at 1, the head.
        assert_eq!(reward_per_sequence(&tiny(), 5), 5.0 * 1104.0 + 5.0 * 96.0 + 1008.0 + 24.0);
    }

    #[test]
    fn a_ppo_update_counts_both_models_every_epoch_at_the_response_columns() {
        // 2 prompt + 3 new tokens: below the last layer 5 · 1104, its keys and values 5 · 96,
        // the rest at the 3 response columns 3 · 1008.
        let body = 5.0 * 1104.0 + 5.0 * 96.0 + 3.0 * 1008.0;
        let policy = body + 6.0 * 10.0 * 4.0 * 3.0;
        let separate = ppo_update(&tiny(), (3, 2, 3), 4, ppo_learner::Critic::Separate);
        assert_eq!(separate, 4.0 * 3.0 * (policy + body + 6.0 * 4.0 * 3.0));
        let head = ppo_update(&tiny(), (3, 2, 3), 4, ppo_learner::Critic::Head);
        assert_eq!(head, 4.0 * 3.0 * (policy + 4.0 * 4.0 * 3.0));
    }
}
