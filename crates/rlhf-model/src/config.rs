//! The model configuration, read from and written to a Hugging Face `config.json`.
//!
//! Field names are exactly those of `transformers`' `LlamaConfig`, so the `config.json` of
//! SmolLM2, Llama or a checkpoint we wrote ourselves deserialises into the same struct.
//! Fields we do not use (`torch_dtype`, `architectures`, …) are ignored on read.

use serde::{Deserialize, Serialize};

/// Architecture of a Llama-family causal LM (RMSNorm, RoPE, SwiGLU, grouped-query attention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: heads share key/value projections in groups.
    /// Absent in older configs, which then mean multi-head attention.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Whether the LM head reuses the token embedding matrix (SmolLM2 and Qwen2 small models do).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initialisation of fresh weights.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Kept so that a config we write is recognised by `transformers`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

/// `eos_token_id` is a single id in most configs and a list in Llama 3's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_model_type() -> String {
    "llama".into()
}

impl Config {
    /// A small model for tests and the bundled task, with every other field at its default.
    pub fn tiny(vocab_size: usize, hidden_size: usize, layers: usize, heads: usize, kv_heads: usize) -> Self {
        Config {
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 8 / 3,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            max_position_embeddings: default_max_position_embeddings(),
            rms_norm_eps: 1e-5,
            rope_theta: default_rope_theta(),
            tie_word_embeddings: false,
            initializer_range: default_initializer_range(),
            hidden_act: default_hidden_act(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            model_type: default_model_type(),
        }
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the model code relies on, so that a bad `config.json` fails with a reason
    /// instead of a shape error deep inside a matmul.
    pub fn validate(&self) -> candle_core::Result<()> {
        let fail = |msg: String| Err(candle_core::Error::Msg(format!("invalid model config: {msg}")));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return fail("vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive".into());
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!("head dimension {} must be even for rotary embeddings", self.head_dim()));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return fail(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if self.hidden_act != "silu" {
            return fail(format!("hidden_act {:?} is not supported (only \"silu\")", self.hidden_act));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return fail("rms_norm_eps and rope_theta must be positive".into());
        }
        Ok(())
    }
}
