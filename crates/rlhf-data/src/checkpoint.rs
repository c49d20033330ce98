//! A checkpoint directory in Hugging Face layout: `model.safetensors` (HF weight names),
//! `config.json` and `tokenizer.json`.
//!
//! Writes go to a sibling temporary directory that is renamed into place, so a process killed
//! mid-write leaves the previous checkpoint intact rather than a half-written one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::Config;

use crate::tokenizer::ChatTokenizer;
use crate::{Result, format_error, io_error};

/// What a checkpoint directory holds.
#[derive(Debug)]
pub struct Checkpoint {
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: ChatTokenizer,
}

/// Writes `varmap`'s weights, `config` and `tokenizer` to `dir`, replacing what was there.
pub fn save_checkpoint(dir: &Path, varmap: &VarMap, config: &Config, tokenizer: &ChatTokenizer) -> Result<()> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
    let weights = tmp.join("model.safetensors");
    varmap.save(&weights).map_err(|e| format_error(&weights, e))?;
    let config_path = tmp.join("config.json");
    let json = serde_json::to_string_pretty(config).map_err(|e| format_error(&config_path, e))?;
    std::fs::write(&config_path, json).map_err(io_error(&config_path))?;
    tokenizer.save(&tmp.join("tokenizer.json"))?;
    if dir.exists() {
        let old = sibling(dir, "old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io_error(dir))?;
        std::fs::rename(&tmp, dir).map_err(io_error(dir))?;
        std::fs::remove_dir_all(&old).map_err(io_error(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io_error(dir))?;
    }
    Ok(())
}

/// Reads a checkpoint directory written by [`save_checkpoint`] (or by `transformers`, for a
/// Llama-family model with a `tokenizer.json` in our chat format).
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let config: Config = serde_json::from_str(&text).map_err(|e| format_error(&config_path, e))?;
    config.validate().map_err(|e| format_error(&config_path, e))?;
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| format_error(&weights, e))?;
    let tokenizer = ChatTokenizer::load(&dir.join("tokenizer.json"))?;
    Ok(Checkpoint { config, tensors, tokenizer })
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{suffix}"))
}
