//! GGUF files, the format of llama.cpp and Ollama: a Llama-family model (quantized or not), its
//! hyper-parameters and its tokenizer in one file.
//!
//! Loading does what `transformers` does with `from_pretrained(..., gguf_file=...)`: every
//! tensor is dequantized to f32 with candle-core's quantized module, renamed from llama.cpp's
//! names (`blk.0.attn_q.weight`) to Hugging Face's (`model.layers.0.self_attn.q_proj.weight`),
//! and for the `llama` architecture the Q and K rows are put back in Hugging Face's order
//! (llama.cpp's converter interleaves the two rotary halves of every head; see
//! [`unpermute_rows`]). The tokenizer is rebuilt from `tokenizer.ggml.*` metadata.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, tokenizer::TokenizerFromGguf};
use candle_core::{DType, Device, Tensor};
use rlhf_model::Config;
use rlhf_model::config::TokenIds;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::chat_template::{ChatTemplate, TemplateTokens};
use crate::tokenizer::{ChatTokenizer, SpecialSources};
use crate::{Result, format_error, io_error};

/// The quantizations this loader dequantizes; others are refused by name.
pub const SUPPORTED_TYPES: [GgmlDType; 8] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// The `general.architecture`s whose tensors map onto our model.
const ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

/// A model read from a GGUF file.
#[derive(Debug)]
pub struct GgufModel {
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: ChatTokenizer,
}

/// Reads the header (metadata and tensor table) of a GGUF file.
pub fn read_content(path: &Path) -> Result<(Content, File)> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let content = Content::read(&mut file).map_err(|e| format_error(path, format!("not a readable GGUF file: {e}")))?;
    Ok((content, file))
}

/// Loads model, config and tokenizer from a GGUF file.
pub fn load(path: &Path) -> Result<GgufModel> {
    let (content, mut file) = read_content(path)?;
    let config = config(&content, path)?;
    config.validate().map_err(|e| format_error(path, e))?;
    for (name, info) in &content.tensor_infos {
        if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
            return Err(format_error(
                path,
                format!(
                    "tensor {name} is quantized as {:?}, which rlhf does not dequantize (supported: {})",
                    info.ggml_dtype,
                    SUPPORTED_TYPES.map(|t| format!("{t:?}")).join(", ")
                ),
            ));
        }
    }
    check_tensor_table(&content, &config, &file, path)?;
    let permuted = config.model_type == "llama";
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let hf = hf_name(name)
            .ok_or_else(|| format_error(path, format!("tensor {name} has no counterpart in the model")))?;
        let quantized =
            content.tensor(&mut file, name, &Device::Cpu).map_err(|e| format_error(path, format!("{name}: {e}")))?;
        let mut tensor = quantized.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?;
        if permuted && (hf.contains("self_attn.q_proj") || hf.contains("self_attn.k_proj")) {
            let heads = if hf.contains("q_proj") { config.num_attention_heads } else { config.num_kv_heads() };
            tensor = unpermute_rows(&tensor, heads)?;
        }
        tensors.insert(hf, tensor);
    }
    for (name, shape) in config.expected_shapes() {
        match tensors.get(&name) {
            None => {
                return Err(format_error(path, format!("the metadata implies a tensor {name}, which the file lacks")));
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(format_error(
                    path,
                    format!("{name} has shape {:?}, the metadata implies {shape:?}", t.dims()),
                ));
            }
            Some(_) => {}
        }
    }
    let tokenizer = tokenizer(&content, path)?;
    Ok(GgufModel { config, tensors, tokenizer })
}

/// Refuses a tensor table that does not fit the model or the file before anything is read or
/// allocated: every tensor has the shape the metadata implies (shapes the config bounds), and
/// its bytes lie inside the file. A damaged or hostile file would otherwise have candle
/// allocate whatever its table claims (found by fuzzing: a dimension that overflowed the
/// dequantized buffer's size).
fn check_tensor_table(content: &Content, config: &Config, file: &File, path: &Path) -> Result<()> {
    let expected: HashMap<String, Vec<usize>> = config.expected_shapes().into_iter().collect();
    let file_len = file.metadata().map_err(io_error(path))?.len();
    for (name, info) in &content.tensor_infos {
        let hf = hf_name(name)
            .ok_or_else(|| format_error(path, format!("tensor {name} has no counterpart in the model")))?;
        let dims = info.shape.dims();
        match expected.get(&hf) {
            Some(shape) if shape.as_slice() == dims => {}
            Some(shape) => {
                return Err(format_error(path, format!("{name} has shape {dims:?}, the metadata implies {shape:?}")));
            }
            None => return Err(format_error(path, format!("tensor {name} ({hf}) is not part of this model"))),
        }
        let elements: usize = dims.iter().product();
        let (block, block_bytes) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        let bytes = (elements / block * block_bytes) as u64;
        let end = (content.tensor_data_offset).checked_add(info.offset).and_then(|start| start.checked_add(bytes));
        if !elements.is_multiple_of(block) || end.is_none_or(|end| end > file_len) {
            return Err(format_error(path, format!("tensor {name} lies outside the file (is it truncated?)")));
        }
    }
    Ok(())
}

/// Undoes llama.cpp's Q/K permutation. Its converter writes each head's rows as
/// `w.reshape(heads, 2, d/2, in).swapaxes(1, 2)`, interleaving the two rotary halves; this is
/// the inverse, `w.reshape(heads, d/2, 2, in).swapaxes(1, 2)` (transformers' `reverse_permute_weights`).
pub fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / heads / 2;
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, half, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

/// The inverse of [`unpermute_rows`]: what llama.cpp's converter writes. Used to build test files.
pub fn permute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let half = dims[0] / heads / 2;
    let rest: usize = dims[1..].iter().product();
    Ok(w.reshape((heads, 2, half, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

/// llama.cpp's per-layer module names beside Hugging Face's.
const LAYER_MODULES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The tensors outside the layers, llama.cpp's name beside Hugging Face's.
const GLOBAL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// llama.cpp's tensor name → Hugging Face's.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_TENSORS.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let (layer, rest) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (_, target) = LAYER_MODULES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{layer}.{target}.{kind}"))
}

/// Hugging Face's tensor name → llama.cpp's (for writing GGUF files, as tests do).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL_TENSORS.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let (g, _) = LAYER_MODULES.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

fn meta<'a>(content: &'a Content, key: &str) -> Option<&'a Value> {
    content.metadata.get(key)
}

fn meta_usize(content: &Content, key: &str) -> Option<usize> {
    let v = meta(content, key)?;
    v.to_u64()
        .ok()
        .map(|n| n as usize)
        .or_else(|| v.to_u32().ok().map(|n| n as usize))
        .or_else(|| v.to_i32().ok().map(|n| n as usize))
}

fn meta_f64(content: &Content, key: &str) -> Option<f64> {
    let v = meta(content, key)?;
    v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok())
}

fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    meta_usize(content, key).map(|n| n as u32)
}

/// The model config the metadata describes.
pub fn config(content: &Content, path: &Path) -> Result<Config> {
    let arch = meta(content, "general.architecture")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| format_error(path, "no general.architecture in the metadata"))?
        .clone();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(format_error(
            path,
            format!("general.architecture {arch:?} is not supported (supported: {})", ARCHITECTURES.join(", ")),
        ));
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(format_error(path, "carries rope_freqs (Llama 3.1-style rope scaling), which is not implemented"));
    }
    let need = |key: &str| {
        meta_usize(content, &format!("{arch}.{key}"))
            .ok_or_else(|| format_error(path, format!("no {arch}.{key} in the metadata")))
    };
    let vocab_size = match meta_usize(content, &format!("{arch}.vocab_size")) {
        Some(n) => n,
        None => meta(content, "tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(Vec::len)
            .ok_or_else(|| format_error(path, "neither a vocab_size nor tokenizer tokens in the metadata"))?,
    };
    let hidden_size = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let mut config = Config::tiny(vocab_size, hidden_size, need("block_count")?, heads, heads);
    config.model_type = arch.clone();
    config.intermediate_size = need("feed_forward_length")?;
    config.num_key_value_heads = Some(meta_usize(content, &format!("{arch}.attention.head_count_kv")).unwrap_or(heads));
    let head_dim = meta_usize(content, &format!("{arch}.attention.key_length"))
        .or_else(|| meta_usize(content, &format!("{arch}.rope.dimension_count")));
    if let Some(d) = head_dim.filter(|&d| heads > 0 && d != hidden_size / heads) {
        config.head_dim = Some(d);
    }
    config.max_position_embeddings = meta_usize(content, &format!("{arch}.context_length")).unwrap_or(2048);
    config.rms_norm_eps = meta_f64(content, &format!("{arch}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
    config.rope_theta = meta_f64(content, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0);
    if let Some(kind) = meta(content, &format!("{arch}.rope.scaling.type")).and_then(|v| v.to_string().ok())
        && kind != "none"
    {
        config.rope_scaling = Some(serde_json::json!({"rope_type": kind}));
    }
    config.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    config.bos_token_id = meta_u32(content, "tokenizer.ggml.bos_token_id");
    config.eos_token_id = meta_u32(content, "tokenizer.ggml.eos_token_id").map(TokenIds::One);
    config.pad_token_id = meta_u32(content, "tokenizer.ggml.padding_token_id");
    Ok(config)
}

/// The tokenizer in the metadata: vocabulary, merges and special tokens through candle-core's
/// GGUF tokenizer builder; for GPT-2-style pre-tokenization the leading-space setting is taken
/// from `tokenizer.ggml.add_space_prefix` (false unless set, as llama.cpp and transformers read
/// it), and the chat template from `tokenizer.chat_template`.
pub fn tokenizer(content: &Content, path: &Path) -> Result<ChatTokenizer> {
    let mut inner = Tokenizer::from_gguf(content).map_err(|e| format_error(path, format!("tokenizer: {e}")))?;
    let pre = meta(content, "tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str);
    if !matches!(pre, Some("qwen2" | "smaug-bpe" | "lfm2" | "llama3")) {
        let prefix = meta(content, "tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        inner.with_pre_tokenizer(Some(ByteLevel::new(prefix, true, true)));
    }
    let token = |key: &str| meta_u32(content, key).and_then(|id| inner.id_to_token(id));
    let sources = SpecialSources {
        tokens: TemplateTokens {
            bos_token: token("tokenizer.ggml.bos_token_id"),
            eos_token: token("tokenizer.ggml.eos_token_id"),
            pad_token: token("tokenizer.ggml.padding_token_id"),
            unk_token: token("tokenizer.ggml.unknown_token_id"),
        },
        ..SpecialSources::default()
    };
    let template = match meta(content, "tokenizer.chat_template").and_then(|v| v.to_string().ok()) {
        Some(source) => Some(ChatTemplate::new(source).map_err(|e| format_error(path, e))?),
        None => None,
    };
    ChatTokenizer::assemble(inner, template, sources, serde_json::Map::new(), path)
}
