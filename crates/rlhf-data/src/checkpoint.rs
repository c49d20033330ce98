//! Model checkpoints in Hugging Face layout, in and out.
//!
//! In: a model folder (`config.json`, `model.safetensors` or shards with an index,
//! `tokenizer.json`, `tokenizer_config.json`, a chat template) of a `LlamaForCausalLM`,
//! `MistralForCausalLM` or `Qwen2ForCausalLM`, a reward model saved as
//! `*ForSequenceClassification` with one label, or a GGUF file.
//!
//! Out: what `transformers`, vLLM and llama.cpp's converter expect to find. A policy is saved as
//! the causal-LM class of its architecture; a reward model as `*ForSequenceClassification` with
//! `num_labels = 1`, `score.weight` and `pad_token_id` (TRL's convention), its score normaliser
//! in `config.json`; each with the tokenizer files and chat template it was trained with and a
//! `generation_config.json` whose `eos_token_id` lists every stop token. PPO's value head is not
//! part of the policy: it goes to `value_head.safetensors` beside it, which `transformers`
//! never opens.
//!
//! Writes go to a sibling temporary directory that is renamed into place, so a process killed
//! mid-write leaves the previous checkpoint intact rather than a half-written one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rlhf_model::Config;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tokenizer::ChatTokenizer;
use crate::{Result, format_error, gguf, io_error, safetensors_io};

/// Where PPO's critic is kept, beside the policy: the value head, and a separate critic's
/// backbone (`critic.model.*`) when PPO trains one.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

fn is_critic(name: &str) -> bool {
    name.starts_with("value_head.") || name.starts_with("critic.")
}
const NORMALIZER_KEY: &str = "rlhf_score_normalizer";

/// What a checkpoint holds a model for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal LM (`*ForCausalLM`): policies and SFT models.
    CausalLm,
    /// A reward model (`*ForSequenceClassification`, one label): the decoder plus `score.weight`.
    RewardModel,
}

/// The dtype weights are written in. Training runs in f32; bf16 halves the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    #[default]
    F32,
    Bf16,
}

impl SaveDtype {
    pub fn dtype(self) -> DType {
        match self {
            SaveDtype::F32 => DType::F32,
            SaveDtype::Bf16 => DType::BF16,
        }
    }

    /// The name `config.json` uses (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
}

impl std::str::FromStr for SaveDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(SaveDtype::F32),
            "bf16" | "bfloat16" => Ok(SaveDtype::Bf16),
            _ => Err(format!("unknown dtype {s:?} (expected bf16 or f32)")),
        }
    }
}

/// Mean and standard deviation of the reward model's raw scores on the SFT policy's responses;
/// PPO's reward is `(score - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreNormalizer {
    pub mean: f32,
    pub std: f32,
}

/// What a checkpoint holds.
#[derive(Debug)]
pub struct Checkpoint {
    pub config: Config,
    /// Every weight, f32, in Hugging Face names (plus `value_head.*` where a critic was saved).
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: ChatTokenizer,
    pub kind: ModelKind,
    pub score_normalizer: Option<ScoreNormalizer>,
}

/// How to write a checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    pub dtype: SaveDtype,
    pub score_normalizer: Option<ScoreNormalizer>,
}

/// The weights a model of `kind` consists of, with their shapes.
pub fn expected_shapes(config: &Config, kind: ModelKind) -> Vec<(String, Vec<usize>)> {
    let mut shapes = config.expected_shapes();
    if kind == ModelKind::RewardModel {
        shapes.retain(|(name, _)| name != "lm_head.weight");
        shapes.push(("score.weight".into(), vec![1, config.hidden_size]));
    }
    shapes
}

/// The tensors of a `VarMap`, by name.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("VarMap lock");
    data.iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())).collect()
}

/// Writes a model of `kind` to `dir`, replacing what was there. Only the weights the
/// architecture has go into `model.safetensors`; the critic goes to [`VALUE_HEAD_FILE`];
/// anything else (the unused LM head of a reward model) is left out.
pub fn save_checkpoint(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    config: &Config,
    tokenizer: &ChatTokenizer,
    kind: ModelKind,
    options: SaveOptions,
) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    let written = write_files(&tmp, tensors, config, tokenizer, kind, &options);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    replace_dir(&tmp, dir)
}

fn write_files(
    tmp: &Path,
    tensors: &HashMap<String, Tensor>,
    config: &Config,
    tokenizer: &ChatTokenizer,
    kind: ModelKind,
    options: &SaveOptions,
) -> Result<()> {
    let mut model = HashMap::new();
    for (name, _) in expected_shapes(config, kind) {
        let tensor = tensors
            .get(&name)
            .ok_or_else(|| format_error(tmp, format!("cannot save: the model has no weight {name}")))?;
        model.insert(name, tensor.clone());
    }
    safetensors_io::write_file(&tmp.join(safetensors_io::SINGLE_FILE), &model, options.dtype.dtype())?;
    let critic: HashMap<String, Tensor> =
        tensors.iter().filter(|(n, _)| is_critic(n)).map(|(n, t)| (n.clone(), t.clone())).collect();
    if !critic.is_empty() {
        safetensors_io::write_file(&tmp.join(VALUE_HEAD_FILE), &critic, DType::F32)?;
    }
    write_json(&tmp.join("config.json"), &hf_config(config, tokenizer, kind, options))?;
    if kind == ModelKind::CausalLm {
        let generation = json!({
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": tokenizer.stop_ids,
            "pad_token_id": tokenizer.pad_id,
        });
        write_json(&tmp.join("generation_config.json"), &generation)?;
    }
    tokenizer.save(tmp)?;
    make_readable(tmp)
}

/// `config.json` as `transformers` writes it for this model class.
fn hf_config(config: &Config, tokenizer: &ChatTokenizer, kind: ModelKind, options: &SaveOptions) -> Value {
    let mut value = serde_json::to_value(config).expect("a config serialises");
    let object = value.as_object_mut().expect("a config is an object");
    let architecture = match kind {
        ModelKind::CausalLm => config.causal_lm_architecture(),
        ModelKind::RewardModel => config.sequence_classification_architecture(),
    };
    object.insert("architectures".into(), json!([architecture]));
    object.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": config.rope_theta}));
    object.insert("torch_dtype".into(), json!(options.dtype.torch_name()));
    object.insert("dtype".into(), json!(options.dtype.torch_name()));
    object.insert("pad_token_id".into(), json!(tokenizer.pad_id));
    object.insert("eos_token_id".into(), json!(tokenizer.eos_id));
    match tokenizer.bos_id {
        Some(bos) => object.insert("bos_token_id".into(), json!(bos)),
        None => object.remove("bos_token_id"),
    };
    if kind == ModelKind::RewardModel {
        object.insert("num_labels".into(), json!(1));
        object.insert("id2label".into(), json!({"0": "LABEL_0"}));
        object.insert("label2id".into(), json!({"LABEL_0": 0}));
        if let Some(n) = options.score_normalizer {
            object.insert(NORMALIZER_KEY.into(), json!(n));
        }
    }
    value
}

/// Records the reward normaliser in an existing reward-model checkpoint's `config.json`
/// (written to a temporary file and renamed, so the config is never half-written).
pub fn set_score_normalizer(dir: &Path, normalizer: ScoreNormalizer) -> Result<()> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| format_error(&path, e))?;
    value[NORMALIZER_KEY] = json!(normalizer);
    let tmp = dir.join(".config.json.tmp");
    write_json(&tmp, &value)?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))
}

/// Reads a model folder or a `.gguf` file.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    if path.is_file() {
        let model = gguf::load(path)?;
        return Ok(Checkpoint {
            config: model.config,
            tensors: model.tensors,
            tokenizer: model.tokenizer,
            kind: ModelKind::CausalLm,
            score_normalizer: None,
        });
    }
    if !path.is_dir() {
        return Err(format_error(path, "no such model folder or GGUF file"));
    }
    let config_path = path.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let raw: Value = serde_json::from_str(&text).map_err(|e| format_error(&config_path, e))?;
    let config: Config = serde_json::from_value(raw.clone()).map_err(|e| format_error(&config_path, e))?;
    config.validate().map_err(|e| format_error(&config_path, e))?;
    let kind = model_kind(&raw, path).map_err(|e| format_error(&config_path, e))?;
    let mut tensors = safetensors_io::read_model_weights(path, &expected_shapes(&config, kind))?;
    let critic = path.join(VALUE_HEAD_FILE);
    if critic.exists() {
        tensors.extend(safetensors_io::read_file(&critic)?);
    }
    let tokenizer = ChatTokenizer::from_dir(path, Some(&config))?;
    let score_normalizer = match raw.get(NORMALIZER_KEY) {
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| format_error(&config_path, e))?),
        None => None,
    };
    Ok(Checkpoint { config, tensors, tokenizer, kind, score_normalizer })
}

/// What a model folder or GGUF file holds, read and checked without loading its weights: a
/// quick refusal before a run is created for a model it could not use.
pub fn inspect(path: &Path) -> Result<(Config, ModelKind, ChatTokenizer)> {
    if path.is_file() {
        let (content, _) = gguf::read_content(path)?;
        let config = gguf::config(&content, path)?;
        config.validate().map_err(|e| format_error(path, e))?;
        return Ok((config, ModelKind::CausalLm, gguf::tokenizer(&content, path)?));
    }
    if !path.is_dir() {
        return Err(format_error(path, "no such model folder or GGUF file"));
    }
    let config_path = path.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let raw: Value = serde_json::from_str(&text).map_err(|e| format_error(&config_path, e))?;
    let config: Config = serde_json::from_value(raw.clone()).map_err(|e| format_error(&config_path, e))?;
    config.validate().map_err(|e| format_error(&config_path, e))?;
    let kind = model_kind(&raw, path).map_err(|e| format_error(&config_path, e))?;
    let tokenizer = ChatTokenizer::from_dir(path, Some(&config))?;
    Ok((config, kind, tokenizer))
}

/// Only the tokenizer (with special tokens and chat template) of a model folder or GGUF file.
pub fn load_tokenizer(path: &Path) -> Result<ChatTokenizer> {
    if path.is_file() {
        let (content, _) = gguf::read_content(path)?;
        return gguf::tokenizer(&content, path);
    }
    let config_path = path.join("config.json");
    let config: Option<Config> = match std::fs::read_to_string(&config_path) {
        Ok(text) => Some(serde_json::from_str(&text).map_err(|e| format_error(&config_path, e))?),
        Err(_) => None,
    };
    ChatTokenizer::from_dir(path, config.as_ref())
}

/// The model class `config.json` names, refused unless it is one we can run.
fn model_kind(raw: &Value, dir: &Path) -> std::result::Result<ModelKind, String> {
    let Some(architecture) = raw.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) else {
        // Checkpoints of the bundled task written before architectures were recorded: a reward
        // model is the one with a score head.
        let legacy_rm = raw.get(NORMALIZER_KEY).is_some()
            || safetensors_io::tensor_names(&dir.join(safetensors_io::SINGLE_FILE))
                .is_ok_and(|names| names.iter().any(|n| n == "score.weight"));
        return Ok(if legacy_rm { ModelKind::RewardModel } else { ModelKind::CausalLm });
    };
    let families = ["Llama", "Mistral", "Qwen2"];
    let family = families.iter().find(|f| {
        architecture.starts_with(*f) && {
            let rest = &architecture[f.len()..];
            rest == "ForCausalLM" || rest == "ForSequenceClassification"
        }
    });
    if family.is_none() {
        return Err(format!(
            "architecture {architecture:?} is not supported (supported: {})",
            families.map(|f| format!("{f}ForCausalLM, {f}ForSequenceClassification")).join(", ")
        ));
    }
    if architecture.ends_with("ForCausalLM") {
        return Ok(ModelKind::CausalLm);
    }
    let labels = raw
        .get("num_labels")
        .and_then(Value::as_u64)
        .or_else(|| raw.get("id2label").and_then(Value::as_object).map(|m| m.len() as u64))
        .unwrap_or(2);
    if labels != 1 {
        return Err(format!("{architecture} has {labels} labels; a reward model has one (num_labels = 1)"));
    }
    Ok(ModelKind::RewardModel)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| format_error(path, e))?;
    std::fs::write(path, text + "\n").map_err(io_error(path))
}

/// Checkpoints are shared artefacts (other users, containers, serving hosts): world-readable
/// files in a world-readable folder, whatever the writing library chose.
fn make_readable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io_error(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io_error(&path))?;
    }
    Ok(())
}

/// Moves `tmp` to `dir`, replacing it.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    if dir.exists() {
        let old = sibling(dir, "old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io_error(dir))?;
        std::fs::rename(tmp, dir).map_err(io_error(dir))?;
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    } else {
        std::fs::rename(tmp, dir).map_err(io_error(dir))?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}
