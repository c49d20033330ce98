//! Micro-batches change how much of a minibatch goes through the network at once, not the
//! update: the summed, token-weighted gradients of the parts are the whole minibatch's.
//!
//! The whole minibatch in one piece is also the case where the first epoch's forward pass gives
//! the old values (`micro: None`), while micro-batches get them from a forward pass of their own:
//! the value head starts non-zero here, so the two must agree on every rollout's values.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ppo_learner::{Critic, PpoConfig, PpoLearner};
use rlhf_model::Config;
use rlhf_types::{Rollout, ScoredRollout};

fn weights() -> (Config, HashMap<String, Tensor>) {
    let (cfg, mut tensors) = common::tiny_policy(3);
    let w: Vec<f32> = (0..cfg.hidden_size).map(|i| ((i * 7) % 11) as f32 * 0.09 - 0.45).collect();
    tensors.insert("value_head.weight".into(), Tensor::from_vec(w, (1, cfg.hidden_size), &Device::Cpu).unwrap());
    tensors.insert("value_head.bias".into(), Tensor::new(&[0.3f32], &Device::Cpu).unwrap());
    (cfg, tensors)
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

fn train(
    minibatch: usize,
    micro: Option<usize>,
    critic: Critic,
) -> (HashMap<String, Vec<f32>>, ppo_learner::StepStats) {
    train_with(PpoConfig {
        minibatch_size: minibatch,
        epochs: 2,
        micro_batch_size: micro,
        critic,
        ..PpoConfig::default()
    })
}

fn train_with(config: PpoConfig) -> (HashMap<String, Vec<f32>>, ppo_learner::StepStats) {
    let (cfg, tensors) = weights();
    let mut learner = PpoLearner::new(&Device::Cpu, config, cfg, tensors, 0, 0, 7).unwrap();
    let stats = learner.train_step(batch()).unwrap();
    let weights = (learner.varmap().data().lock().unwrap().iter())
        .map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    (weights, stats)
}

#[test]
fn micro_batches_give_the_whole_minibatchs_update() {
    same_update_in_pieces(Critic::Head, 6);
}

#[test]
fn micro_batches_give_the_whole_minibatchs_update_with_a_separate_critic() {
    same_update_in_pieces(Critic::Separate, 6);
}

/// Two minibatches an epoch: the first one's forward pass gives its rollouts' old values, a
/// forward pass of their own the others'.
#[test]
fn micro_batches_give_the_same_updates_with_two_minibatches_an_epoch() {
    same_update_in_pieces(Critic::Head, 3);
    same_update_in_pieces(Critic::Separate, 3);
}

fn same_update_in_pieces(critic: Critic, minibatch: usize) {
    let (whole, whole_stats) = train(minibatch, None, critic);
    let (_, start) = weights();
    for micro in [1, 2, 4].into_iter().filter(|&m| m < minibatch) {
        let (parts, stats) = train(minibatch, Some(micro), critic);
        let mut moved = 0.0f32;
        for (name, w) in &whole {
            // A separate critic starts as a copy of the policy's backbone.
            let before = start[name.trim_start_matches("critic.")].flatten_all().unwrap().to_vec1::<f32>().unwrap();
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

/// With `bf16_matmuls` (where the CPU has AMX or AMD's AVX512-BF16) the learner takes the f32 learner's step up to
/// bf16's rounding of the products' operands: its losses, entropy and gradient norm agree to
/// about a percent, and it moves the weights.
#[test]
fn a_learner_with_bf16_matmuls_takes_the_f32_step_up_to_rounding() {
    if !rlhf_model::amx::available() {
        eprintln!("a_learner_with_bf16_matmuls_takes_the_f32_step_up_to_rounding: skipped, no AMX-BF16 here");
        return;
    }
    let config = |bf16_matmuls| PpoConfig { minibatch_size: 3, epochs: 2, bf16_matmuls, ..PpoConfig::default() };
    let (_, plain) = train_with(config(false));
    let (weights_after, mixed) = train_with(config(true));
    for (what, a, b) in [
        ("policy loss", plain.policy_loss, mixed.policy_loss),
        ("value loss", plain.value_loss, mixed.value_loss),
        ("entropy", plain.entropy, mixed.entropy),
        ("gradient norm", plain.grad_norm, mixed.grad_norm),
    ] {
        assert!((a - b).abs() <= 0.02 * a.abs().max(b.abs()) + 1e-3, "{what}: f32 {a}, bf16 matmuls {b}");
    }
    let (_, start) = weights();
    let moved = weights_after.iter().any(|(name, w)| {
        let before = start[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        w.iter().zip(&before).any(|(a, b)| (a - b).abs() > 1e-6)
    });
    assert!(moved, "the bf16 learner moved no weight");
}
