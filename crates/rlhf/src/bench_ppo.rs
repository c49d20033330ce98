//! `rlhf bench --only ppo`: one PPO iteration as TRL's bench runs it, through rlhf's own service
//! cores in one process: `--batch` prompts of `--prompt-len` tokens sample exactly `--new-tokens`
//! new tokens each (no stop token), the reward model and the reference score them, and the
//! learner takes 4 epochs of one minibatch of the whole batch (k1 KL, γ = 1, λ = 0.95, clip 0.2,
//! value clip 0.2). The new weights then go to the generator, as every PPO step does.
//!
//! The phases are timed apart: rollout (sampling with behaviour log-probs), scoring (reward model
//! and reference log-probs), update (advantages, then the epochs), publish (weights into the
//! generator). Figures are medians over the repeats after one warm-up iteration.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use rand::rngs::StdRng;
use rlhf_model::{Config, Llama, RewardHead, seeded_var_builder};
use rlhf_types::{GenerateRequest, PromptTokens, SamplingParams};
use serde::Serialize;

use crate::bench_flops::{self, FlopRate, Peaks};

/// Seconds of one iteration's phases.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    pub rollout: f64,
    pub scoring: f64,
    pub update: f64,
    pub publish: f64,
}

impl Phases {
    fn total(&self) -> f64 {
        self.rollout + self.scoring + self.update + self.publish
    }
}

/// The `--json` record of the PPO bench.
#[derive(Debug, Serialize)]
pub struct PpoMeasurement {
    pub workload: &'static str,
    pub critic: ppo_learner::Critic,
    /// Whether the learner multiplied in mixed precision (`--bf16` on a CPU).
    pub bf16_matmuls: bool,
    pub seconds_per_iteration: f64,
    pub phases: Phases,
    /// The update phase's (the learner's training): rollout and scoring are forward passes
    /// bound by reading weights and caches, not by the products' multiply-adds.
    #[serde(flatten)]
    pub flops: FlopRate,
}

/// TRL's default PPO epochs per batch.
const EPOCHS: usize = 4;

fn tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("VarMap lock");
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the iteration `1 + repeats` times on the policy in `varmap`; returns the medians.
pub fn bench_ppo(
    device: &Device,
    cfg: &Config,
    varmap: &VarMap,
    (batch, prompt_len, new_tokens, repeats, seed): (usize, usize, usize, usize, u64),
    (critic, bf16_matmuls): (ppo_learner::Critic, bool),
    peaks: Option<Peaks>,
    rng: &mut StdRng,
) -> Result<PpoMeasurement> {
    let policy = tensors(varmap);
    let judges = VarMap::new();
    let vb = seeded_var_builder(&judges, seed + 1, DType::F32, device);
    Llama::backbone(cfg, vb.clone())?;
    RewardHead::new(cfg.hidden_size, vb)?;
    let scorer = reward_scorer::RewardScorer::new(device, cfg, tensors(&judges), cfg, policy.clone(), 0)?;
    let scorer = if bf16_matmuls { scorer.with_bf16_reward_model()? } else { scorer };
    let generator = policy_generator::PolicyGenerator::new(device, "bench", cfg.clone(), 0, policy.clone(), 0)?;
    // TRL's defaults, whitened advantages and the k1 KL estimator included: the same work as
    // the iteration it is timed against.
    let config = ppo_learner::PpoConfig {
        epochs: EPOCHS,
        minibatch_size: batch,
        critic,
        bf16_matmuls,
        whiten_advantages: true,
        kl_estimator: rlhf_model::KlEstimator::K1,
        ..Default::default()
    };
    let mut learner = ppo_learner::PpoLearner::new(device, config, cfg.clone(), policy, 0, 0, seed)?;
    let prompts: Vec<PromptTokens> = (0..batch)
        .map(|i| PromptTokens {
            prompt_id: format!("p{i}"),
            tokens: (0..prompt_len).map(|_| rng.random_range(1..cfg.vocab_size as u32)).collect(),
        })
        .collect();
    // A GPU queues work: each phase ends when the device says it is done.
    let timed = |t: Instant| -> Result<f64> {
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut iteration = |i: usize| -> Result<Phases> {
        let request = GenerateRequest {
            request_id: format!("bench-{i}"),
            prompts: prompts.clone(),
            sampling: SamplingParams { max_new_tokens: new_tokens, seed: seed + i as u64, ..Default::default() },
            samples_per_prompt: 1,
        };
        let t = Instant::now();
        let rollouts = generator.generate(&request)?;
        let rollout = timed(t)?;
        anyhow::ensure!(rollouts.iter().all(|r| r.response_tokens.len() == new_tokens), "a sequence stopped early");
        let t = Instant::now();
        let scored = scorer.score(&rollouts)?;
        let scoring = timed(t)?;
        let t = Instant::now();
        learner.train_step(scored)?;
        let update = timed(t)?;
        let t = Instant::now();
        generator.update_weights(learner.version(), learner.policy_weights()?)?;
        let publish = timed(t)?;
        Ok(Phases { rollout, scoring, update, publish })
    };
    iteration(0)?;
    let runs: Vec<Phases> = (1..=repeats.max(1)).map(&mut iteration).collect::<Result<_>>()?;
    let phases = Phases {
        rollout: median(runs.iter().map(|p| p.rollout).collect()),
        scoring: median(runs.iter().map(|p| p.scoring).collect()),
        update: median(runs.iter().map(|p| p.update).collect()),
        publish: median(runs.iter().map(|p| p.publish).collect()),
    };
    let seconds_per_iteration = median(runs.iter().map(Phases::total).collect());
    println!(
        "ppo      {:>9.3} s per iteration ({:?} critic): rollout {:.3}, scoring {:.3}, update {:.3} (advantages and {EPOCHS} epochs), publish {:.3}",
        seconds_per_iteration, critic, phases.rollout, phases.scoring, phases.update, phases.publish
    );
    let update_flops = bench_flops::ppo_update(cfg, (batch, prompt_len, new_tokens), EPOCHS, critic);
    let flops = FlopRate::reported(update_flops, phases.update, peaks, " in the update");
    Ok(PpoMeasurement { workload: "ppo", critic, bf16_matmuls, seconds_per_iteration, phases, flops })
}
