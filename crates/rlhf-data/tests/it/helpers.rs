//! Fixture paths and small comparisons shared by the tests.

use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use rlhf_data::Checkpoint;
use rlhf_model::Llama;
use serde_json::Value;

/// A checkpoint folder of `tests/fixtures/hf-tiny`.
pub fn tiny(name: &str) -> PathBuf {
    rlhf_harness::fixture(&format!("hf-tiny/{name}"))
}

/// `hf-tiny/golden.json`.
pub fn golden() -> Value {
    let path = rlhf_harness::fixture("hf-tiny/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The causal LM of a checkpoint.
pub fn model_of(ckpt: &Checkpoint) -> Llama {
    Llama::new(&ckpt.config, VarBuilder::from_tensors(ckpt.tensors.clone(), DType::F32, &Device::Cpu)).unwrap()
}
