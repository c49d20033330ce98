//! The model configuration, read from and written to a Hugging Face `config.json`.
//!
//! Field names are exactly those of `transformers`' `LlamaConfig`, `MistralConfig` and
//! `Qwen2Config`, so the `config.json` of SmolLM2, Llama, Mistral, Qwen2 or a checkpoint we wrote
//! ourselves deserialises into the same struct. Two layouts exist in the wild for the rotary
//! base: `rope_theta` at the top (older checkpoints) and `rope_parameters: {rope_type,
//! rope_theta}` (transformers 5); both are read. Fields we do not use (`torch_dtype`,
//! `architectures`, `use_cache`, …) are ignored on read; fields that change the maths and that we
//! do not implement are kept so that [`Config::validate`] can refuse them by name instead of
//! silently computing something else.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `model_type`s whose maths this crate implements.
pub const SUPPORTED_MODEL_TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// Largest vocabulary [`Config::validate`] accepts (released models stay below 300,000).
pub const MAX_VOCAB: usize = 1 << 24;
/// Largest hidden, intermediate or head width accepted (released models stay below 60,000).
pub const MAX_WIDTH: usize = 1 << 18;
pub const MAX_LAYERS: usize = 1 << 12;
pub const MAX_HEADS: usize = 1 << 12;
/// Longest context accepted (no rotary table is built ahead: it only bounds arithmetic).
pub const MAX_CONTEXT: usize = 1 << 24;

/// Architecture of a Llama-family causal LM (RMSNorm, RoPE, SwiGLU, grouped-query attention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawConfig")]
pub struct Config {
    /// `llama`, `mistral` or `qwen2`; anything else is refused by [`Config::validate`].
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: heads share key/value projections in groups.
    /// Absent in older configs, which then mean multi-head attention.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width when it is not `hidden_size / num_attention_heads` (Mistral and newer
    /// Llama configs state it explicitly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    /// Rotary base, from the top level or from `rope_parameters`.
    pub rope_theta: f64,
    /// A rotary scaling scheme (`linear`, `dynamic`, `yarn`, `llama3`, …) from `rope_scaling` or a
    /// `rope_parameters` whose `rope_type` is not `default`. None are implemented, so any value
    /// here is refused; it is kept so the refusal can name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Biases on q, k, v and o (Llama's `attention_bias`). Qwen2 has q/k/v biases regardless.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the SwiGLU projections (Llama's `mlp_bias`).
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's and Qwen2's sliding-window attention. Only a window at least as long as the
    /// context can run here (it is then plain causal attention).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2 applies `sliding_window` only when this is true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Set by checkpoints quantized for GPTQ, AWQ, bitsandbytes and the like; refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<Value>,
    /// Whether the LM head reuses the token embedding matrix (SmolLM2 and Qwen2 small models do).
    pub tie_word_embeddings: bool,
    /// Standard deviation of the normal initialisation of fresh weights.
    pub initializer_range: f64,
    pub hidden_act: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
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

/// `config.json` as written, before the two rotary layouts are folded into one.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default = "default_model_type")]
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    quantization_config: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_initializer_range")]
    initializer_range: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

impl From<RawConfig> for Config {
    fn from(raw: RawConfig) -> Self {
        let parameters = raw.rope_parameters.filter(|p| !p.is_null());
        let nested_theta = parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64);
        let nested_type = parameters.as_ref().and_then(|p| p.get("rope_type")).and_then(Value::as_str);
        let scaling = match (raw.rope_scaling.filter(|s| !s.is_null()), nested_type) {
            (Some(scaling), _) => Some(scaling),
            (None, Some(kind)) if kind != "default" => parameters.clone(),
            _ => None,
        };
        Config {
            model_type: raw.model_type,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: raw.head_dim,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: nested_theta.or(raw.rope_theta).unwrap_or(default_rope_theta()),
            rope_scaling: scaling,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            sliding_window: raw.sliding_window,
            use_sliding_window: raw.use_sliding_window,
            quantization_config: raw.quantization_config.filter(|q| !q.is_null()),
            tie_word_embeddings: raw.tie_word_embeddings,
            initializer_range: raw.initializer_range,
            hidden_act: raw.hidden_act,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
            pad_token_id: raw.pad_token_id,
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
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size: hidden_size * 8 / 3,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            max_position_embeddings: default_max_position_embeddings(),
            rms_norm_eps: 1e-5,
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            use_sliding_window: None,
            quantization_config: None,
            tie_word_embeddings: false,
            initializer_range: default_initializer_range(),
            hidden_act: default_hidden_act(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q, k and v carry biases: always in Qwen2, with `attention_bias` in Llama.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// Whether the attention output projection carries a bias (Llama's `attention_bias` only).
    pub fn o_bias(&self) -> bool {
        self.model_type == "llama" && self.attention_bias
    }

    /// The transformers class of the causal LM with this config (`LlamaForCausalLM`, …).
    pub fn causal_lm_architecture(&self) -> &'static str {
        match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        }
    }

    /// The transformers class of the reward model (`LlamaForSequenceClassification`, …).
    pub fn sequence_classification_architecture(&self) -> &'static str {
        match self.model_type.as_str() {
            "mistral" => "MistralForSequenceClassification",
            "qwen2" => "Qwen2ForSequenceClassification",
            _ => "LlamaForSequenceClassification",
        }
    }

    /// Every weight of the decoder and LM head with its shape, in Hugging Face names: what a
    /// checkpoint must hold for this config. Lets a loader name a missing or misshapen tensor
    /// (and the file it sits in) before any of it is used.
    pub fn expected_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (q, kv) = (self.num_attention_heads * d, self.num_kv_heads() * d);
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for l in 0..self.num_hidden_layers {
            let p = |name: &str| format!("model.layers.{l}.{name}");
            out.push((p("input_layernorm.weight"), vec![h]));
            out.push((p("post_attention_layernorm.weight"), vec![h]));
            for (name, rows, cols) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
                out.push((p(&format!("self_attn.{name}.weight")), vec![rows, cols]));
                let biased = if name == "o_proj" { self.o_bias() } else { self.qkv_bias() };
                if biased {
                    out.push((p(&format!("self_attn.{name}.bias")), vec![rows]));
                }
            }
            for (name, rows, cols) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
                out.push((p(&format!("mlp.{name}.weight")), vec![rows, cols]));
                if self.mlp_bias {
                    out.push((p(&format!("mlp.{name}.bias")), vec![rows]));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }

    /// Checks what the model code relies on, so that a bad or unsupported `config.json` fails
    /// with a reason instead of a shape error deep inside a matmul, or worse, with numbers that
    /// are silently not what the checkpoint's authors computed.
    /// Refuses what the model code cannot build: unsupported architectures and features,
    /// inconsistent shapes, and sizes beyond [`MAX_WIDTH`] and its siblings.
    pub fn validate(&self) -> candle_core::Result<()> {
        let fail = |msg: String| Err(candle_core::Error::Msg(format!("invalid model config: {msg}")));
        if !SUPPORTED_MODEL_TYPES.contains(&self.model_type.as_str()) {
            return fail(format!(
                "model_type {:?} is not supported (supported: {})",
                self.model_type,
                SUPPORTED_MODEL_TYPES.join(", ")
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return fail("vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive".into());
        }
        if self.num_attention_heads == 0 {
            return fail("num_attention_heads must be positive".into());
        }
        // A damaged or hostile config.json must not make a loader count, allocate or multiply
        // the impossible: bounds far beyond any released model, checked before anything else.
        let bounds = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads(), MAX_HEADS),
            ("head_dim", self.head_dim(), MAX_WIDTH),
            ("max_position_embeddings", self.max_position_embeddings, MAX_CONTEXT),
        ];
        if let Some((name, value, max)) = bounds.into_iter().find(|&(_, v, max)| v > max) {
            return fail(format!("{name} {value} is beyond any model this loads (at most {max})"));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
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
        if let Some(scaling) = &self.rope_scaling {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str);
            return fail(format!(
                "rope scaling {:?} is not supported (only the default rotary embedding is implemented)",
                kind.unwrap_or("<unnamed>")
            ));
        }
        let window_applies = match self.model_type.as_str() {
            "qwen2" => self.use_sliding_window.unwrap_or(false),
            _ => true,
        };
        if let Some(window) = self.sliding_window.filter(|&w| window_applies && w < self.max_position_embeddings) {
            return fail(format!(
                "sliding_window {window} is shorter than the context (max_position_embeddings {}); \
                 sliding-window attention is not implemented",
                self.max_position_embeddings
            ));
        }
        if let Some(q) = &self.quantization_config {
            let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("<unnamed>");
            return fail(format!(
                "quantization_config (quant_method {method:?}) is not supported: load an unquantized checkpoint or a GGUF file"
            ));
        }
        Ok(())
    }
}
