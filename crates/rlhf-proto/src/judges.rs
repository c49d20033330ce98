//! The frozen judges on the wire: the reward model and the reference policy as one stream of
//! [`JudgesChunk`]s, each role's weights cut and checked exactly as policy weights are
//! ([`crate::weights`]), so a scorer gets its models from the learner and never from a shared disk.

use std::collections::HashMap;

use candle_core::Tensor;
use rlhf_model::Config;

use crate::v1::{JudgeRole, JudgesChunk};
use crate::weights::{Assembler, BadWeights, encode_for_epoch};

/// One model: its `config.json` and its tensors (Hugging Face names).
#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
}

/// Everything a scorer needs to judge rollouts.
#[derive(Debug, Clone)]
pub struct Judges {
    /// Backbone plus `score.weight`.
    pub reward_model: ModelWeights,
    /// The SFT policy.
    pub reference: ModelWeights,
    pub pad_id: u32,
    /// Raw reward ↦ (reward − mean) / std.
    pub score_mean: f32,
    pub score_std: f32,
    /// The temperature the reference log-probs are taken at (the policy's sampling temperature).
    pub temperature: f64,
    /// Whether the reward model scores with its products in mixed precision, as the run's
    /// learner trains (`bf16_matmuls`); the reference is always f32.
    pub bf16_reward_model: bool,
}

/// `judges` as the chunks of `version`: the reward model's, then the reference's.
pub fn encode_judges(version: u64, judges: &Judges) -> Result<Vec<JudgesChunk>, BadWeights> {
    let mut out = vec![];
    for (role, model) in [(JudgeRole::RewardModel, &judges.reward_model), (JudgeRole::Reference, &judges.reference)] {
        for chunk in encode_for_epoch(0, version, &model.tensors, &model.config, judges.pad_id)? {
            let first = out.is_empty();
            out.push(JudgesChunk {
                judges_version: version,
                role: role.into(),
                chunk: Some(chunk),
                score_mean: if first { judges.score_mean } else { 0.0 },
                score_std: if first { judges.score_std } else { 0.0 },
                temperature: if first { judges.temperature } else { 0.0 },
                bf16_reward_model: first && judges.bf16_reward_model,
            });
        }
    }
    Ok(out)
}

/// Receives one version of the judges.
#[derive(Debug, Default)]
pub struct JudgesAssembler {
    version: Option<u64>,
    first: Option<(f32, f32, f64, bool)>,
    reward_model: Assembler,
    reference: Assembler,
}

impl JudgesAssembler {
    pub fn push(&mut self, chunk: JudgesChunk) -> Result<(), BadWeights> {
        match self.version {
            None => {
                self.version = Some(chunk.judges_version);
                self.first = Some((chunk.score_mean, chunk.score_std, chunk.temperature, chunk.bf16_reward_model));
            }
            Some(v) if v != chunk.judges_version => {
                return Err(BadWeights(format!("one judges stream mixes versions {v} and {}", chunk.judges_version)));
            }
            Some(_) => {}
        }
        let weights = chunk.chunk.ok_or_else(|| BadWeights("a judges chunk without weights".into()))?;
        match JudgeRole::try_from(chunk.role) {
            Ok(JudgeRole::RewardModel) => self.reward_model.push(weights),
            Ok(JudgeRole::Reference) => self.reference.push(weights),
            _ => Err(BadWeights(format!("unknown judge role {}", chunk.role))),
        }
    }

    /// The version and the checked judges, or why they are refused.
    pub fn finish(self) -> Result<(u64, Judges), BadWeights> {
        let version = self.version.ok_or_else(|| BadWeights("empty judges stream".into()))?;
        let (score_mean, score_std, temperature, bf16_reward_model) = self.first.unwrap_or((0.0, 1.0, 1.0, false));
        if !(score_mean.is_finite() && score_std.is_finite() && score_std > 0.0 && temperature > 0.0) {
            return Err(BadWeights(format!(
                "judges normaliser ({score_mean}, {score_std}) or temperature {temperature} is not usable"
            )));
        }
        let model = |a: Assembler, role: &str| -> Result<(ModelWeights, u32), BadWeights> {
            let update = a.finish().map_err(|e| BadWeights(format!("{role}: {}", e.0)))?;
            let config = update.config.ok_or_else(|| BadWeights(format!("{role}: no config.json")))?;
            Ok((ModelWeights { config, tensors: update.tensors }, update.pad_id))
        };
        let (reward_model, pad_id) = model(self.reward_model, "reward model")?;
        let (reference, _) = model(self.reference, "reference")?;
        Ok((version, Judges { reward_model, reference, pad_id, score_mean, score_std, temperature, bf16_reward_model }))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn model(shift: f64) -> ModelWeights {
        let t = |n: usize| Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().affine(1.0, shift).unwrap();
        let tensors = [("a.weight".to_string(), t(6)), ("score.weight".to_string(), t(4))].into_iter().collect();
        ModelWeights { config: Config::tiny(20, 16, 1, 2, 1), tensors }
    }

    fn judges() -> Judges {
        Judges {
            reward_model: model(0.0),
            reference: model(10.0),
            pad_id: 3,
            score_mean: 0.5,
            score_std: 2.0,
            temperature: 0.7,
            bf16_reward_model: true,
        }
    }

    fn assemble(chunks: Vec<JudgesChunk>) -> Result<(u64, Judges), BadWeights> {
        let mut a = JudgesAssembler::default();
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }

    #[test]
    fn both_judges_and_their_settings_survive_the_trip() {
        let sent = judges();
        let (version, got) = assemble(encode_judges(42, &sent).unwrap()).unwrap();
        assert_eq!(version, 42);
        assert_eq!(
            (got.pad_id, got.score_mean, got.score_std, got.temperature, got.bf16_reward_model),
            (3, 0.5, 2.0, 0.7, true)
        );
        for (a, b) in [(&sent.reward_model, &got.reward_model), (&sent.reference, &got.reference)] {
            assert_eq!(a.config, b.config);
            for (name, t) in &a.tensors {
                let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(values(t), values(&b.tensors[name]), "{name}");
            }
        }
    }

    #[test]
    fn mixed_versions_roles_or_a_missing_judge_are_refused() {
        let good = encode_judges(1, &judges()).unwrap();
        let mut mixed = good.clone();
        mixed.last_mut().unwrap().judges_version = 2;
        assert!(assemble(mixed).unwrap_err().0.contains("mixes versions"));
        let reward_only: Vec<_> =
            good.iter().filter(|c| c.role == i32::from(JudgeRole::RewardModel)).cloned().collect();
        assert!(assemble(reward_only).unwrap_err().0.contains("reference"));
        let mut unknown = good.clone();
        unknown[1].role = 9;
        assert!(assemble(unknown).unwrap_err().0.contains("role"));
        let mut bad_std = good;
        bad_std[0].score_std = 0.0;
        assert!(assemble(bad_std).unwrap_err().0.contains("normaliser"));
    }
}
