//! Micro-batches change how much of a minibatch goes through the network at once, not the
//! update: the summed, token-weighted gradients of the parts are the whole minibatch's.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ppo_learner::{PpoConfig, PpoLearner};
use rlhf_model::Config;
use rlhf_types::{Rollout, ScoredRollout};

fn weights() -> (Config, HashMap<String, Tensor>) {
    common::tiny_policy(3)
}

/// Rollouts of different prompt and response lengths, so token shares differ between rows.
fn batch() -> Vec<ScoredRollout> {
    (0..6u32)
        .map(|i| {
            let prompt: Vec<u32> = (1..3 + i % 3).collect();
            let response: Vec<u32> = (0..2 + (i * 5) % 4).map(|t| 5 + (t + i) % 17).collect();
            let n = response.len();
            ScoredRollout {
                rollout: Rollout {
                    rollout_id: format!("r{i}").into(),
                    prompt_id: format!("p{i}"),
                    prompt_tokens: prompt,
                    response_tokens: response,
                    behaviour_logprobs: (0..n).map(|t| -2.5 - 0.1 * (t as f32) - 0.05 * i as f32).collect(),
                    policy_version: 0,
                    finished: i % 2 == 0,
                    generator_id: "g".into(),
                },
                score: i as f32 * 0.4 - 1.0,
                reference_logprobs: (0..n).map(|t| -2.7 - 0.05 * (t as f32)).collect(),
                judges_version: 0,
            }
        })
        .collect()
}

fn train(micro: Option<usize>) -> (HashMap<String, Vec<f32>>, ppo_learner::StepStats) {
    let (cfg, tensors) = weights();
    let config = PpoConfig { minibatch_size: 6, epochs: 2, micro_batch_size: micro, ..PpoConfig::default() };
    let mut learner = PpoLearner::new(&Device::Cpu, config, cfg, tensors, 0, 0, 7).unwrap();
    let stats = learner.train_step(batch()).unwrap();
    let weights = learner
        .policy_weights()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    (weights, stats)
}

#[test]
fn micro_batches_give_the_whole_minibatchs_update() {
    let (whole, whole_stats) = train(None);
    let (_, start) = weights();
    for micro in [1, 4] {
        let (parts, stats) = train(Some(micro));
        let mut moved = 0.0f32;
        for (name, w) in &whole {
            let before = start[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for ((a, b), s) in w.iter().zip(&parts[name]).zip(&before) {
                assert!((a - b).abs() < 1e-5, "{name} differs with micro-batches of {micro}: {a} vs {b}");
                moved = moved.max((a - s).abs());
            }
        }
        assert!(moved > 1e-5, "the step moved no weight, so the comparison shows nothing");
        for (x, y) in [
            (whole_stats.policy_loss, stats.policy_loss),
            (whole_stats.value_loss, stats.value_loss),
            (whole_stats.clip_fraction, stats.clip_fraction),
            (whole_stats.approx_kl, stats.approx_kl),
            (whole_stats.entropy, stats.entropy),
            (whole_stats.grad_norm, stats.grad_norm),
        ] {
            assert!((x - y).abs() < 1e-5 * (1.0 + x.abs()), "{x} vs {y} with micro-batches of {micro}");
        }
    }
}
