//! Weight updates are atomic and checked; every rollout says which version made it.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::{Config, seeded_var_builder};
use rlhf_types::{GenerateRequest, PromptTokens, SamplingParams};

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
    let generator = PolicyGenerator::new(&Device::Cpu, "gen-0", cfg, 0, tensors, 7).unwrap();
    let rollouts = generator.generate(&request()).unwrap();
    assert_eq!(rollouts.len(), 2);
    assert_eq!(rollouts[0].rollout_id.as_str(), "req-1-0");
    assert_eq!(rollouts[1].rollout_id.as_str(), "req-1-1");
    assert!(rollouts.iter().all(|r| r.policy_version == 7 && r.generator_id == "gen-0" && r.prompt_id == "p1"));
    assert!(rollouts.iter().all(|r| r.response_tokens.len() == r.behaviour_logprobs.len()));
}

#[test]
fn a_bad_update_is_refused_and_the_old_version_keeps_serving() {
    let (cfg, tensors) = weights(0);
    let generator = PolicyGenerator::new(&Device::Cpu, "gen-0", cfg, 0, tensors.clone(), 1).unwrap();
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

mod wire_weights {
    use super::*;
    use rlhf_proto::weights::{Assembler, encode};

    #[test]
    fn a_non_finite_update_that_arrives_intact_still_leaves_the_old_version_serving() {
        let (cfg, tensors) = weights(5);
        let generator = PolicyGenerator::new(&Device::Cpu, "gen-0", cfg.clone(), 0, tensors.clone(), 1).unwrap();
        let mut poisoned = tensors.clone();
        let name = poisoned.keys().next().unwrap().clone();
        let shape = poisoned[&name].dims().to_vec();
        poisoned.insert(name, Tensor::full(f32::NAN, shape, &Device::Cpu).unwrap());
        let mut assembler = Assembler::default();
        encode(2, &poisoned, &cfg, 0).unwrap().into_iter().for_each(|c| assembler.push(c).unwrap());
        let update = assembler.finish().unwrap();
        assert!(matches!(generator.update_weights(update.version, update.tensors), Err(Error::NonFinite(_))));
        assert_eq!(generator.version(), 1);
        assert_eq!(generator.generate(&request()).unwrap().len(), 2);
    }
}

#[test]
fn a_newer_learner_epoch_may_roll_the_version_back_an_older_one_may_not() {
    let (cfg, tensors) = weights(6);
    let generator = PolicyGenerator::new(&Device::Cpu, "gen-0", cfg, 0, tensors.clone(), 0).unwrap();
    generator.update_weights_from(100, 4, tensors.clone()).unwrap();
    // The learner of epoch 100 died; its successor resumes from the checkpoint of version 3.
    generator.update_weights_from(200, 3, tensors.clone()).unwrap();
    assert_eq!((generator.epoch(), generator.version()), (200, 3));
    // A late push from the dead learner changes nothing.
    assert!(matches!(generator.update_weights_from(100, 5, tensors.clone()), Err(Error::StaleEpoch { .. })));
    assert!(matches!(generator.update_weights_from(200, 3, tensors), Err(Error::StaleVersion { .. })));
    assert_eq!((generator.epoch(), generator.version()), (200, 3));
}

#[test]
fn requests_beyond_the_context_or_the_limits_are_refused_before_any_work() {
    let (cfg, tensors) = weights(7);
    let context = cfg.max_position_embeddings;
    let generator = PolicyGenerator::new(&Device::Cpu, "gen-0", cfg, 0, tensors, 0).unwrap();
    let limits = Limits { max_rows: 4, max_sequence_tokens: Some(10), max_concurrent: 1 };
    let with = |tokens: usize, new: usize, samples: usize| GenerateRequest {
        prompts: vec![PromptTokens { prompt_id: "p".into(), tokens: vec![1; tokens] }],
        sampling: SamplingParams { max_new_tokens: new, ..Default::default() },
        samples_per_prompt: samples,
        ..request()
    };
    generator.check(&with(6, 4, 4), &limits).unwrap();
    for (tokens, new, samples, why) in
        [(7, 4, 1, "11 tokens > cap 10"), (2, 2, 5, "5 rows > 4"), (0, 4, 1, "an empty prompt")]
    {
        let err = generator.check(&with(tokens, new, samples), &limits).expect_err(why);
        assert!(matches!(err, Error::InvalidRequest(_)), "{why}: {err}");
    }
    // Without a service's limits only the model's context bounds a request, before any work.
    let err = generator.generate(&with(context, 1, 1)).unwrap_err();
    assert!(err.to_string().contains(&format!("the model's context is {context}")), "{err}");
    assert_eq!(generator.generate(&with(3, 2, 8)).unwrap().len(), 8);
}
