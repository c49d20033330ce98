//! The reward scorer: the frozen judges of PPO.
//!
//! For each rollout it computes the reward model's score of prompt + response (normalised by the
//! mean and standard deviation of the SFT policy's responses, so a reward of 1 means one SFT
//! standard deviation) and the reference policy's log-prob of every response token.
//! It consumes raw rollouts from one queue and publishes scored ones to the next, acknowledging
//! a raw entry only after its scored result is published.

mod learner_judges;
pub(crate) mod service;

pub use learner_judges::{FetchJudges, LearnerJudges};
pub use service::{ScorerServiceConfig, run};

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rlhf_model::{Config, Kernels, Llama, RewardHead, SequenceBatch, tempered_logprobs};
use rlhf_proto::judges::Judges;
use rlhf_queue::Queue;
use rlhf_types::{Rollout, ScoredRollout, ScoringRequest};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("scoring failed: {0}")]
    Model(String),
    #[error("the reward model gave a non-finite score for rollout {0}")]
    NonFinite(String),
    #[error(transparent)]
    Queue(#[from] rlhf_queue::Error),
    #[error("rollout {rollout} asks for judges version {wanted}, but these are version {loaded}")]
    WrongJudges { rollout: String, wanted: u64, loaded: u64 },
}

pub type Result<T> = std::result::Result<T, Error>;

fn model_error(e: candle_core::Error) -> Error {
    Error::Model(e.to_string())
}

/// Rollouts scored at once: bounds the reference's vocabulary logits in memory.
pub const SCORE_ROWS: usize = 16;

/// Reward model + reference policy, both frozen.
pub struct RewardScorer {
    reward_model: Llama,
    reward_head: RewardHead,
    reference: Llama,
    /// Where both judges run.
    device: Device,
    pad_id: u32,
    /// Raw score ↦ (score - mean) / std.
    normaliser: (f32, f32),
    /// Reference log-probs are taken under `logits / temperature`, the distribution the policy
    /// samples from, so that the KL penalty compares like with like (as TRL does).
    temperature: f64,
    /// The judges version, stamped on everything scored (0 in one process).
    version: u64,
}

impl std::fmt::Debug for RewardScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardScorer").field("normaliser", &self.normaliser).finish_non_exhaustive()
    }
}

impl RewardScorer {
    /// Both judges on `device` (the tensors may be anywhere).
    pub fn new(
        device: &Device,
        reward_config: &Config,
        reward_tensors: HashMap<String, Tensor>,
        reference_config: &Config,
        reference_tensors: HashMap<String, Tensor>,
        pad_id: u32,
    ) -> Result<Self> {
        let rvb = VarBuilder::from_tensors(reward_tensors, DType::F32, device);
        let reward_model = Llama::backbone(reward_config, rvb.clone()).map_err(model_error)?;
        let reward_head = RewardHead::new(reward_config.hidden_size, rvb).map_err(model_error)?;
        let reference = Llama::new(reference_config, VarBuilder::from_tensors(reference_tensors, DType::F32, device))
            .map_err(model_error)?;
        Ok(RewardScorer {
            reward_model,
            reward_head,
            reference,
            device: device.clone(),
            pad_id,
            normaliser: (0.0, 1.0),
            temperature: 1.0,
            version: 0,
        })
    }

    /// The judges the learner announced as `version`, normalised and tempered as it says, on `device`.
    pub fn from_judges(device: &Device, version: u64, judges: Judges) -> Result<Self> {
        let Judges { reward_model, reference, pad_id, score_mean, score_std, temperature, bf16_reward_model } = judges;
        let mut scorer = RewardScorer::new(
            device,
            &reward_model.config,
            reward_model.tensors,
            &reference.config,
            reference.tensors,
            pad_id,
        )?;
        scorer.set_normaliser(score_mean, score_std);
        scorer.set_temperature(temperature);
        scorer.version = version;
        if bf16_reward_model { scorer.with_bf16_reward_model() } else { Ok(scorer) }
    }

    /// The reward model's products in mixed precision (bf16 operands, f32 sums:
    /// [`Llama::with_bf16_matmuls`]), as a bf16 run of TRL scores under autocast. The reference
    /// stays f32: its log-probs feed the KL penalty, where bf16 does not belong.
    pub fn with_bf16_reward_model(mut self) -> Result<Self> {
        self.reward_model = self.reward_model.with_bf16_matmuls().map_err(model_error)?;
        Ok(self)
    }

    /// The judges version stamped on what this scorer scores.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the normalisation applied to raw reward-model scores.
    pub fn set_normaliser(&mut self, mean: f32, std: f32) {
        self.normaliser = (mean, std.max(1e-6));
    }

    /// Sets the sampling temperature the reference log-probs are computed at.
    pub fn set_temperature(&mut self, temperature: f64) {
        self.temperature = temperature;
    }

    /// Raw reward-model scores of (prompt, response) token sequences.
    pub fn raw_scores(&self, rows: &[(&[u32], &[u32])]) -> Result<Vec<f32>> {
        let batch = SequenceBatch::new(rows, self.pad_id, &self.device).map_err(model_error)?;
        let last = self
            .reward_model
            .last_hidden_states(&batch.ids, &batch.attention_mask, Kernels::Fused)
            .map_err(model_error)?;
        self.reward_head.score(&last).and_then(|s| s.to_vec1::<f32>()).map_err(model_error)
    }

    /// Scores and reference log-probs for a batch of rollouts.
    pub fn score(&self, rollouts: &[Rollout]) -> Result<Vec<ScoredRollout>> {
        // Pure compute: on the pool, its matrix products fork there instead of handing off to it.
        rlhf_model::on_compute_pool(|| {
            let mut out = Vec::with_capacity(rollouts.len());
            // A part at a time: the reference's vocabulary logits of a whole evaluation (400
            // answers of a 49k-token vocabulary) would take gigabytes.
            for part in rollouts.chunks(SCORE_ROWS) {
                out.extend(self.score_part(part)?);
            }
            Ok(out)
        })
    }

    fn score_part(&self, rollouts: &[Rollout]) -> Result<Vec<ScoredRollout>> {
        if rollouts.is_empty() {
            return Ok(vec![]);
        }
        let rows: Vec<(&[u32], &[u32])> =
            rollouts.iter().map(|r| (r.prompt_tokens.as_slice(), r.response_tokens.as_slice())).collect();
        let batch = SequenceBatch::new(&rows, self.pad_id, &self.device).map_err(model_error)?;
        // Only grid columns from the shortest prompt's last token on hold response tokens: the
        // last layer and the vocabulary head run there alone.
        let width = batch.ids.dim(1).map_err(model_error)?;
        let start = batch.first_response_column();
        let cols = width - 1 - start;
        let reference_logprobs = || -> candle_core::Result<Vec<Vec<f32>>> {
            let hidden =
                self.reference.hidden_states_in(&batch.ids, &batch.attention_mask, start..width - 1, Kernels::Fused)?;
            let logits = self.reference.lm_head(&hidden)?;
            let targets = batch.ids.narrow(1, start + 1, cols)?;
            tempered_logprobs(&logits, &targets, self.temperature)?.to_dtype(DType::F32)?.to_vec2::<f32>()
        };
        // The two judges' passes are independent: side by side, each on its own core where
        // there are two, rather than every op of both split between the cores.
        let (raw, logp) = rayon::join(|| self.raw_scores(&rows), reference_logprobs);
        let (raw, logp) = (raw?, logp.map_err(model_error)?);
        let (mean, std) = self.normaliser;
        rollouts
            .iter()
            .zip(raw)
            .zip(logp)
            .enumerate()
            .map(|(b, ((rollout, raw), row))| {
                if !raw.is_finite() {
                    return Err(Error::NonFinite(rollout.rollout_id.to_string()));
                }
                let from = batch.prompt_lens[b] - 1 - start;
                let reference_logprobs = row[from..from + batch.response_lens[b]].to_vec();
                Ok(ScoredRollout {
                    rollout: rollout.clone(),
                    score: (raw - mean) / std,
                    reference_logprobs,
                    judges_version: self.version,
                })
            })
            .collect()
    }

    /// Moves up to `max` rollouts from `raw` to `scored`; returns how many it moved. Every
    /// request must ask for this scorer's judges version; otherwise nothing moves.
    pub fn drain(
        &self,
        consumer: &str,
        raw: &dyn Queue<ScoringRequest>,
        scored: &dyn Queue<ScoredRollout>,
        max: usize,
    ) -> Result<usize> {
        let deliveries = raw.pop(consumer, max, std::time::Duration::ZERO)?;
        if deliveries.is_empty() {
            return Ok(0);
        }
        if let Some(d) = deliveries.iter().find(|d| d.item.judges_version != self.version) {
            return Err(Error::WrongJudges {
                rollout: d.item.rollout.rollout_id.to_string(),
                wanted: d.item.judges_version,
                loaded: self.version,
            });
        }
        let rollouts: Vec<Rollout> = deliveries.iter().map(|d| d.item.rollout.clone()).collect();
        let results = self.score(&rollouts)?;
        scored.push(results)?;
        raw.ack(&deliveries.iter().map(|d| d.id.clone()).collect::<Vec<_>>())?;
        Ok(deliveries.len())
    }
}

#[cfg(test)]
mod tests;
