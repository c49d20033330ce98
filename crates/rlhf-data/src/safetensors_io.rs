//! Weights in safetensors files, as Hugging Face stores them: one `model.safetensors`, or shards
//! listed in `model.safetensors.index.json`.
//!
//! Files are memory-mapped and each tensor is copied once, widened to f32 on the way (training
//! runs in f32; bf16 and f16 checkpoints are common), so loading never holds the file's bytes in
//! a second buffer. Every tensor the config implies is checked for presence and shape before any
//! is used, and a failure names the shard and the tensor.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;
use serde::Deserialize;

use crate::{Result, format_error, io_error};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

/// The safetensors files holding a model in `dir`, and for a sharded model which file the index
/// says holds each tensor.
fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, HashMap<String, String>)> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(io_error(&index_path))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| format_error(&index_path, e))?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        let mut files = vec![];
        for shard in shards {
            let path = dir.join(shard);
            if !path.exists() {
                return Err(format_error(
                    &index_path,
                    format!("lists shard {shard}, which is missing from {}", dir.display()),
                ));
            }
            files.push(path);
        }
        return Ok((files, index.weight_map));
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok((vec![single], HashMap::new()));
    }
    let hint = if dir.join("pytorch_model.bin").exists() {
        " (pytorch_model.bin is not read: convert it with transformers' save_pretrained(safe_serialization=True))"
    } else {
        ""
    };
    Err(format_error(dir, format!("no {SINGLE_FILE} or {INDEX_FILE}{hint}")))
}

/// Memory-maps one safetensors file.
#[allow(unsafe_code)]
fn map(path: &Path) -> Result<MmapedSafetensors> {
    // SAFETY: the mapping is read-only and lives only while this loader copies tensors out of it.
    // Like every mmap-based loader (transformers' safe_open, candle's VarBuilder), it assumes no
    // other process truncates the file meanwhile; checkpoints are replaced by rename, never in place.
    unsafe { MmapedSafetensors::new(path) }.map_err(|e| format_error(path, e))
}

/// Reads every tensor of the model in `dir` as f32 and checks the `expected` names and shapes
/// (from the model's config) against what the files hold.
pub fn read_model_weights(dir: &Path, expected: &[(String, Vec<usize>)]) -> Result<HashMap<String, Tensor>> {
    let (files, index) = weight_files(dir)?;
    let mut tensors = HashMap::new();
    let mut origin: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let mapped = map(file)?;
        for (name, view) in mapped.tensors() {
            let name_of = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(listed) = index.get(&name)
                && *listed != name_of
            {
                return Err(format_error(file, format!("holds {name}, which {INDEX_FILE} places in {listed}")));
            }
            match view.dtype() {
                Dtype::F32 | Dtype::BF16 | Dtype::F16 => {}
                other => {
                    return Err(format_error(
                        file,
                        format!("{name} is stored as {other:?}; only F32, BF16 and F16 weights are read"),
                    ));
                }
            }
            let tensor = view.load(&Device::Cpu).map_err(|e| format_error(file, format!("{name}: {e}")))?;
            tensors.insert(name.clone(), tensor.to_dtype(DType::F32)?);
            origin.insert(name, file.clone());
        }
    }
    for (name, listed) in &index {
        if !tensors.contains_key(name) {
            return Err(format_error(&dir.join(listed), format!("is missing {name}, which {INDEX_FILE} places there")));
        }
    }
    for (name, shape) in expected {
        match tensors.get(name) {
            None => {
                return Err(format_error(
                    dir,
                    format!("config.json implies a weight {name}, which no safetensors file holds"),
                ));
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(format_error(
                    &origin[name],
                    format!("{name} has shape {:?}, but config.json implies {shape:?}", t.dims()),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(tensors)
}

/// Reads a plain safetensors file (no shape expectations), as f32.
pub fn read_file(path: &Path) -> Result<HashMap<String, Tensor>> {
    let mapped = map(path)?;
    let mut out = HashMap::new();
    for (name, view) in mapped.tensors() {
        let tensor = view.load(&Device::Cpu).map_err(|e| format_error(path, format!("{name}: {e}")))?;
        out.insert(name, tensor.to_dtype(DType::F32)?);
    }
    Ok(out)
}

/// The names of the tensors in a safetensors file, from its header.
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    Ok(map(path)?.tensors().into_iter().map(|(name, _)| name).collect())
}

/// Writes `tensors` to `path` in `dtype`, with the `{"format": "pt"}` metadata transformers checks.
pub fn write_file(path: &Path, tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let mut converted: Vec<(String, Tensor)> =
        tensors.iter().map(|(name, t)| Ok((name.clone(), t.to_dtype(dtype)?.contiguous()?))).collect::<Result<_>>()?;
    converted.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(converted, Some(metadata), path).map_err(|e| format_error(path, e))
}
