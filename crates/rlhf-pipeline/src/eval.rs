//! Held-out evaluation against the gold preference, and the reward-hacking alarm.
//!
//! Every evaluation samples responses to the held-out prompts from the current policy and
//! compares each with the SFT model's response to the same prompt under the gold preference
//! (win 1, tie ½, loss 0). The proxy reward (the reward model's score) of the same responses is
//! recorded beside it: reward hacking is the proxy rising while the gold win rate does not.

use std::collections::BTreeMap;

use policy_generator::PolicyGenerator;
use reward_scorer::RewardScorer;
use rlhf_types::GenerateRequest;
use rlhf_world::gold::{self, AnswerType};
use rlhf_world::{Prompt, Split};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::config::{MonitorConfig, PipelineConfig};
use crate::task::Task;

/// One evaluation of the policy on the held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    /// Gold-preference win rate against the SFT model's responses (ties count half).
    pub gold_win_rate: f64,
    /// Its standard error over prompts (a prompt's answers are not independent draws).
    #[serde(default)]
    pub gold_win_se: f64,
    /// The same on the validation prompts, by which PPO's checkpoint is chosen (none without
    /// validation prompts).
    #[serde(default)]
    pub validation_win_rate: Option<f64>,
    /// Its standard error over the validation prompts.
    #[serde(default)]
    pub validation_win_se: Option<f64>,
    /// Mean normalised reward-model score.
    pub proxy_reward: f64,
    /// Mean sequence KL(π ‖ π_SFT) of the sampled responses, Σ_t log π − log π_SFT, both at the
    /// sampling temperature.
    pub kl_to_sft: f64,
    /// Mean response length in tokens (end token included).
    pub mean_length: f64,
    /// Share of each answer type.
    pub answer_types: BTreeMap<String, f64>,
    /// A few responses to read (left out of `metrics.jsonl`'s records, so absent there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
    pub answer_type: String,
}

/// Which prompts an [`Evaluator`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSet {
    HeldOut,
    Validation,
}

/// Evaluates policies on one set of prompts against fixed SFT responses.
#[derive(Debug)]
pub struct Evaluator {
    prompts: Vec<Prompt>,
    request: GenerateRequest,
    baseline: Vec<String>,
}

impl Evaluator {
    /// Samples the SFT model's responses once; every later evaluation uses the same seed, so
    /// policy and baseline share their random numbers and only the weights differ.
    ///
    /// Evaluation on the held-out prompts (the run's figures) or on the validation prompts (the
    /// choice of checkpoint); `None` when there are no such prompts.
    pub fn new(task: &Task, config: &PipelineConfig, sft: &PolicyGenerator, on: EvalSet) -> Result<Option<Self>> {
        let (prompts, request_id, seed): (Vec<Prompt>, _, _) = match on {
            EvalSet::HeldOut => {
                (task.prompts(Split::HeldOut).into_iter().cloned().collect(), "eval", config.seed ^ 0xe7a1)
            }
            EvalSet::Validation => (task.validation_prompts.clone(), "eval-validation", config.seed ^ 0x7a11),
        };
        if prompts.is_empty() {
            return Ok(None);
        }
        let request = GenerateRequest {
            request_id: request_id.into(),
            prompts: task.prompt_tokens(&prompts)?,
            sampling: task.sampling(
                config.ppo.algorithm.temperature,
                config.ppo.top_p,
                config.ppo.max_new_tokens,
                seed,
            ),
            samples_per_prompt: config.ppo.eval_samples_per_prompt,
        };
        let baseline =
            sft.generate(&request)?.iter().map(|r| task.decode(&r.response_tokens)).collect::<Result<Vec<_>>>()?;
        Ok(Some(Evaluator { prompts, request, baseline }))
    }

    pub fn evaluate(
        &self,
        task: &Task,
        policy: &PolicyGenerator,
        scorer: &RewardScorer,
        step: u64,
    ) -> Result<EvalPoint> {
        let rollouts = policy.generate(&self.request)?;
        let scored = scorer.score(&rollouts)?;
        let k = self.request.samples_per_prompt;
        let (mut wins, mut kl, mut length) = (0.0, 0.0, 0.0);
        let mut types: BTreeMap<String, f64> = AnswerType::ALL.iter().map(|t| (t.name().to_string(), 0.0)).collect();
        let mut samples = vec![];
        let mut prompt_wins = vec![0.0; self.prompts.len()];
        for (i, s) in scored.iter().enumerate() {
            let prompt = &self.prompts[i / k];
            let fact = task.world.fact_of(prompt);
            let text = task.decode(&s.rollout.response_tokens)?;
            let answer = gold::classify(&task.world, fact, &text);
            *types.get_mut(answer.name()).expect("every type listed") += 1.0;
            let win = gold::gold_win(&task.world, fact, &text, &self.baseline[i]);
            wins += win;
            prompt_wins[i / k] += win / k as f64;
            kl += s
                .rollout
                .behaviour_logprobs
                .iter()
                .zip(&s.reference_logprobs)
                .map(|(p, r)| (p - r) as f64)
                .sum::<f64>();
            length += s.rollout.response_tokens.len() as f64;
            if i % k == 0 && samples.len() < 12 {
                samples.push(Sample { prompt: prompt.text.clone(), response: text, answer_type: answer.name().into() });
            }
        }
        let n = scored.len() as f64;
        types.values_mut().for_each(|v| *v /= n);
        Ok(EvalPoint {
            step,
            gold_win_rate: wins / n,
            gold_win_se: standard_error(&prompt_wins),
            validation_win_rate: None,
            validation_win_se: None,
            proxy_reward: scored.iter().map(|s| s.score as f64).sum::<f64>() / n,
            kl_to_sft: kl / n,
            mean_length: length / n,
            answer_types: types,
            samples,
        })
    }
}

/// The standard error of the mean of `xs` (0 for fewer than two).
fn standard_error(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / n;
    let variance = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (variance / n).sqrt()
}

/// The alarm on the policy a run ends with: below the KL band's lower edge, PPO has barely
/// moved it from the SFT model, so the run learned little whatever its figures say.
pub fn final_alarms(config: &MonitorConfig, chosen: &EvalPoint) -> Vec<String> {
    if chosen.step > 0 && chosen.kl_to_sft < config.kl_band[0] {
        vec![format!(
            "step {}: the chosen policy's KL to the SFT model is {:.2} nats, below the band's {:.2}: PPO barely moved it",
            chosen.step, chosen.kl_to_sft, config.kl_band[0]
        )]
    } else if chosen.step == 0 {
        vec!["no PPO step beat the SFT model on the validation prompts: the run ends with the SFT policy".into()]
    } else {
        vec![]
    }
}

/// The reward-hacking alarm, checked at every evaluation: fires when responses grow too long,
/// KL rises above its band, or the proxy reward keeps rising while the gold win rate falls.
/// (The band's lower edge is checked on the policy the run ends with: [`final_alarms`].)
pub fn check_alarms(config: &MonitorConfig, evals: &[EvalPoint]) -> Vec<String> {
    let (Some(first), Some(last)) = (evals.first(), evals.last()) else {
        return vec![];
    };
    let mut alarms = vec![];
    let ratio = last.mean_length / first.mean_length.max(1e-9);
    if ratio > config.max_length_ratio {
        alarms.push(format!(
            "step {}: held-out responses are {ratio:.2}x as long as the SFT model's (bound {:.2}x)",
            last.step, config.max_length_ratio
        ));
    }
    if last.kl_to_sft > config.kl_band[1] {
        alarms.push(format!(
            "step {}: KL to the SFT model is {:.2} nats, above the band's {:.2}",
            last.step, last.kl_to_sft, config.kl_band[1]
        ));
    }
    // Reward hacking as it happens: the gold win rate falls from its best while the proxy reward
    // keeps rising. A healthy run's gold and proxy fall together when they fall (measured on the
    // bundled run), and a gold win rate that only saturates is not an alarm.
    // Step 0 (the SFT policy against itself: 0.5 by construction) is never the best.
    let (lo, hi) = (evals.len().saturating_sub(1 + config.window).max(1), evals.len() - 1);
    let earlier = if lo < hi { &evals[lo..hi] } else { &[] };
    if let Some(best) = earlier.iter().max_by(|a, b| a.gold_win_rate.total_cmp(&b.gold_win_rate)) {
        let rise = last.proxy_reward - best.proxy_reward;
        let drop = best.gold_win_rate - last.gold_win_rate;
        if rise >= config.min_reward_rise && drop >= config.min_gold_drop {
            alarms.push(format!(
                "step {}: proxy reward rose by {rise:.2} since step {} while the gold win rate fell from {:.3} to {:.3}",
                last.step, best.step, best.gold_win_rate, last.gold_win_rate
            ));
        }
    }
    alarms
}
