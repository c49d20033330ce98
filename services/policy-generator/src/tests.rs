//! Weight updates are atomic and checked; every rollout says which version made it.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::{Config, SamplingParams, seeded_var_builder};

use crate::*;

fn weights(seed: u64) -> (Config, HashMap<String, Tensor>) {
    let cfg = Config::tiny(20, 16, 1, 2, 1);
    let varmap = VarMap::new();
    rlhf_model::Llama::new(&cfg, seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu)).unwrap();
    let tensors = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    (cfg, tensors)
}

fn request() -> GenerateRequest {
    GenerateRequest {
        request_id: "req-1".into(),
        prompts: vec![PromptTokens { prompt_id: "p1".into(), tokens: vec![1, 2, 3] }],
        sampling: SamplingParams { max_new_tokens: 4, seed: 9, ..Default::default() },
        samples_per_prompt: 2,
    }
}

#[test]
fn rollouts_carry_ids_and_the_serving_version() {
    let (cfg, tensors) = weights(0);
    let generator = PolicyGenerator::new("gen-0", cfg, 0, tensors, 7).unwrap();
    let rollouts = generator.generate(&request()).unwrap();
    assert_eq!(rollouts.len(), 2);
    assert_eq!(rollouts[0].rollout_id, "req-1-0");
    assert_eq!(rollouts[1].rollout_id, "req-1-1");
    assert!(rollouts.iter().all(|r| r.policy_version == 7 && r.generator_id == "gen-0" && r.prompt_id == "p1"));
    assert!(rollouts.iter().all(|r| r.response_tokens.len() == r.behaviour_logprobs.len()));
}

#[test]
fn a_bad_update_is_refused_and_the_old_version_keeps_serving() {
    let (cfg, tensors) = weights(0);
    let generator = PolicyGenerator::new("gen-0", cfg, 0, tensors.clone(), 1).unwrap();
    let before = generator.generate(&request()).unwrap();

    let mut poisoned = tensors.clone();
    let name = "model.norm.weight".to_string();
    let nan = Tensor::full(f32::NAN, poisoned[&name].shape(), &Device::Cpu).unwrap();
    poisoned.insert(name.clone(), nan);
    assert!(matches!(generator.update_weights(2, poisoned), Err(Error::NonFinite(n)) if n == name));

    let mut incomplete = tensors.clone();
    incomplete.remove("model.embed_tokens.weight");
    assert!(matches!(generator.update_weights(2, incomplete), Err(Error::BadWeights(_))));
    assert!(matches!(generator.update_weights(1, tensors.clone()), Err(Error::StaleVersion { new: 1, serving: 1 })));

    assert_eq!(generator.version(), 1);
    assert_eq!(generator.generate(&request()).unwrap(), before);

    // A good update switches versions and changes what is sampled.
    let (_, other) = weights(1);
    generator.update_weights(2, other).unwrap();
    let after = generator.generate(&request()).unwrap();
    assert!(after.iter().all(|r| r.policy_version == 2));
    assert_ne!(
        after.iter().map(|r| &r.behaviour_logprobs).collect::<Vec<_>>(),
        before.iter().map(|r| &r.behaviour_logprobs).collect::<Vec<_>>()
    );
}
