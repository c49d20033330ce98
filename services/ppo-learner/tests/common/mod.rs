//! What the learner's tests share: a tiny policy's weights.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::{Config, seeded_var_builder};

/// A 2-layer policy (vocabulary 24, hidden 16) made from `seed`, as HF-named tensors.
pub fn tiny_policy(seed: u64) -> (Config, HashMap<String, Tensor>) {
    let cfg = Config::tiny(24, 16, 2, 2, 1);
    let varmap = VarMap::new();
    rlhf_model::Llama::new(&cfg, seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu)).unwrap();
    let tensors =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap())).collect();
    (cfg, tensors)
}
