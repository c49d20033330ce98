//! One PPO step over a batch of scored rollouts.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rlhf_model::{
    AdamW, Config, Kernels, Llama, PolicyClip, RewardShaping, SequenceBatch, ValueHead, entropy, gae,
    kl_penalized_rewards, masked_mean, policy_loss, seeded_var_builder, tempered_logprobs, value_loss, whiten,
};
use rlhf_types::ScoredRollout;
use serde::Serialize;

use crate::config::{Critic, PpoConfig};

/// Where a separate critic's backbone lives among the learner's weights (and in checkpoints,
/// beside the value head).
pub const CRITIC_PREFIX: &str = "critic.";
use crate::grad::{GradSum, clip_grad_norm};
use crate::{Error, Result};

/// What one step did, for metrics and the reward-hacking monitor.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub policy_version: u64,
    pub rollouts: usize,
    pub duplicates_skipped: usize,
    /// Mean normalised reward-model score.
    pub reward: f64,
    /// Mean per-sequence KL(π_old ‖ π_ref), summed over tokens.
    pub kl: f64,
    pub kl_coef: f64,
    pub entropy: f64,
    pub response_length: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clip_fraction: f64,
    pub value_clip_fraction: f64,
    pub approx_kl: f64,
    pub grad_norm: f64,
}

/// The policy, its value head, the optimizer and the KL controller.
pub struct PpoLearner {
    config: PpoConfig,
    model_config: Config,
    /// Where the weights, the optimizer state and every batch live.
    device: Device,
    pad_id: u32,
    varmap: VarMap,
    policy: Llama,
    /// The separate critic's backbone (`critic.model.*`), when `config.critic` asks for one.
    critic: Option<Llama>,
    value: ValueHead,
    optimizer: AdamW,
    version: u64,
    step: u64,
    seen: HashSet<rlhf_types::RolloutId>,
    /// Seeds the minibatch shuffles.
    seed: u64,
}

impl std::fmt::Debug for PpoLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PpoLearner").field("step", &self.step).field("version", &self.version).finish_non_exhaustive()
    }
}

impl PpoLearner {
    /// Starts from `policy_tensors` (HF names; a `value_head` among them is kept, otherwise a
    /// fresh zero head is made) at `version`. A separate critic's backbone is kept likewise
    /// (`critic.model.*`), otherwise it starts as a copy of the policy's. Trains on `device`
    /// (the tensors may be anywhere).
    pub fn new(
        device: &Device,
        config: PpoConfig,
        model_config: Config,
        mut policy_tensors: HashMap<String, Tensor>,
        pad_id: u32,
        version: u64,
        seed: u64,
    ) -> Result<Self> {
        match config.critic {
            Critic::Head => policy_tensors.retain(|name, _| !name.starts_with(CRITIC_PREFIX)),
            Critic::Separate => {
                let copies: Vec<(String, Tensor)> = policy_tensors
                    .iter()
                    .filter(|(name, _)| name.starts_with("model."))
                    .map(|(name, t)| (format!("{CRITIC_PREFIX}{name}"), t.clone()))
                    .filter(|(name, _)| !policy_tensors.contains_key(name))
                    .collect();
                policy_tensors.extend(copies);
            }
        }
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().expect("fresh VarMap");
            for (name, t) in policy_tensors {
                data.insert(name, Var::from_tensor(&t.to_device(device)?.to_dtype(DType::F32)?.copy()?)?);
            }
        }
        let vb = seeded_var_builder(&varmap, seed, DType::F32, device);
        let mut policy = Llama::new(&model_config, vb.clone())?;
        let mut critic = match config.critic {
            Critic::Head => None,
            Critic::Separate => Some(Llama::backbone(&model_config, vb.pp(CRITIC_PREFIX.trim_end_matches('.')))?),
        };
        if config.bf16_matmuls {
            policy = policy.with_bf16_matmuls()?;
            critic = critic.map(Llama::with_bf16_matmuls).transpose()?;
        }
        let value = ValueHead::new(model_config.hidden_size, vb)?;
        let params = ParamsAdamW { lr: config.learning_rate, weight_decay: 0.0, ..Default::default() };
        let optimizer = AdamW::new(varmap.all_vars(), params)?;
        Ok(PpoLearner {
            config,
            model_config,
            device: device.clone(),
            pad_id,
            varmap,
            policy,
            critic,
            value,
            optimizer,
            version,
            step: 0,
            seen: HashSet::new(),
            seed,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn kl_coef(&self) -> f64 {
        self.config.kl.coef()
    }

    pub fn config(&self) -> &PpoConfig {
        &self.config
    }

    /// Restores the counters and KL controller of a resumed run.
    pub fn restore(&mut self, step: u64, version: u64, kl: rlhf_model::KlController) {
        (self.step, self.version, self.config.kl) = (step, version, kl);
    }

    /// All trainable weights (policy and value head), for checkpoints.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Copies of the policy weights, for generators (the critic stays here).
    pub fn policy_weights(&self) -> Result<HashMap<String, Tensor>> {
        let data = self.varmap.data().lock().expect("VarMap lock");
        data.iter()
            .filter(|(name, _)| !name.starts_with("value_head") && !name.starts_with(CRITIC_PREFIX))
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().copy()?)))
            .collect()
    }

    /// One PPO update: rollouts already trained on (same id) are skipped, rollouts older than
    /// `max_staleness` versions are refused.
    pub fn train_step(&mut self, batch: Vec<ScoredRollout>) -> Result<StepStats> {
        // Pure compute: on the pool, its matrix products fork there instead of handing off to it.
        rlhf_model::on_compute_pool(|| self.train_step_here(batch))
    }

    fn train_step_here(&mut self, batch: Vec<ScoredRollout>) -> Result<StepStats> {
        let total = batch.len();
        let mut fresh = vec![];
        for s in batch {
            let made_by = s.rollout.policy_version;
            if self.version.saturating_sub(made_by) > self.config.max_staleness {
                return Err(Error::Stale {
                    id: s.rollout.rollout_id.clone(),
                    made_by,
                    current: self.version,
                    max: self.config.max_staleness,
                });
            }
            if self.seen.insert(s.rollout.rollout_id.clone()) {
                fresh.push(s);
            }
        }
        if fresh.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let cfg = self.config.clone();
        let rows: Vec<(&[u32], &[u32])> =
            fresh.iter().map(|s| (s.rollout.prompt_tokens.as_slice(), s.rollout.response_tokens.as_slice())).collect();
        let batch = SequenceBatch::new(&rows, self.pad_id, &self.device)?;
        let mask = &batch.response_mask;
        let old_logp =
            batch.to_grid(&fresh.iter().map(|s| s.rollout.behaviour_logprobs.clone()).collect::<Vec<_>>())?;
        let ref_logp = batch.to_grid(&fresh.iter().map(|s| s.reference_logprobs.clone()).collect::<Vec<_>>())?;
        let scores = Tensor::from_vec(fresh.iter().map(|s| s.score).collect::<Vec<_>>(), fresh.len(), &self.device)?;
        let finished: Vec<bool> = fresh.iter().map(|s| s.rollout.finished).collect();

        let n = fresh.len();
        let mb = cfg.minibatch_size.max(1).min(n);
        let micro = cfg.micro_batch_size.unwrap_or(mb).max(1);
        // Old values: the critic before this step's updates, on the next-token grid. The first
        // minibatch's forward pass comes before any update, so its values are the old ones for
        // its rollouts: when it goes through the network in one piece, it runs first and is kept
        // for the first update, and only the other rollouts take a forward pass of their own
        // (with one minibatch per epoch, as TRL's defaults have it, none: 6% of the bench's PPO
        // iteration).
        let mut first_pass = None;
        let old_values = if cfg.epochs > 0 && micro >= mb {
            let order = self.epoch_order(n, 0);
            let pass = self.forward(&batch, &order[..mb], cfg.temperature)?;
            let mut values = vec![pass.values.detach().pad_with_zeros(1, pass.start, 0)?];
            if mb < n {
                values.push(self.old_values(&batch, &order[mb..], micro)?);
            }
            first_pass = Some(pass);
            let mut inverse = vec![0u32; n];
            for (at, &row) in order.iter().enumerate() {
                inverse[row] = at as u32;
            }
            Tensor::cat(&values, 0)?.contiguous()?.index_select(&Tensor::from_vec(inverse, n, &self.device)?, 0)?
        } else {
            self.old_values(&batch, &(0..n).collect::<Vec<_>>(), micro)?
        };

        let shaping = RewardShaping {
            kl_coef: cfg.kl.coef(),
            estimator: cfg.kl_estimator,
            score_clip: cfg.score_clip,
            missing_stop_penalty: cfg.missing_stop_penalty,
        };
        let shaped = kl_penalized_rewards(&scores, &old_logp, &ref_logp, mask, &finished, shaping)?;
        let estimates = gae(&shaped.rewards, &old_values, mask, cfg.gamma, cfg.lambda, None)?;
        let advantages =
            if cfg.whiten_advantages { whiten(&estimates.advantages, mask, true)? } else { estimates.advantages };
        // Sequence KL: the masked per-token estimates summed over each response, then averaged.
        let mean_kl = shaped.kl.sum(1)?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;

        let clip = PolicyClip { low: cfg.clip, high: cfg.clip, dual: cfg.dual_clip };
        let vars = self.varmap.all_vars();
        let mut sums = Sums::default();
        for epoch in 0..cfg.epochs {
            let order = self.epoch_order(n, epoch);
            for chunk in order.chunks(mb) {
                // The minibatch's losses are token means; each micro-batch's share of them is
                // weighted by its share of the response tokens, so the summed gradient is the
                // minibatch's own.
                let tokens: usize = chunk.iter().map(|&i| batch.response_lens[i]).sum();
                let (mut grads, mut parts) = (GradSum::default(), Parts::default());
                for micro in chunk.chunks(micro) {
                    let share = micro.iter().map(|&i| batch.response_lens[i]).sum::<usize>() as f64 / tokens as f64;
                    let pass = match first_pass.take() {
                        Some(pass) => pass,
                        None => self.forward(&batch, micro, cfg.temperature)?,
                    };
                    let Forward { sub, start, logits, logp, values } = pass;
                    let idx = Tensor::from_vec(
                        micro.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                        micro.len(),
                        &self.device,
                    )?;
                    let pick = |t: &Tensor| t.contiguous()?.index_select(&idx, 0);
                    let cols = logp.dim(1)?;
                    let grid = |t: &Tensor| t.narrow(1, start, cols);
                    let (m, adv, ret, old_lp, old_v) = (
                        &grid(&sub.response_mask)?,
                        grid(&pick(&advantages)?)?,
                        grid(&pick(&estimates.returns)?)?,
                        grid(&pick(&old_logp)?)?,
                        grid(&pick(&old_values)?)?,
                    );
                    let pl = policy_loss(&logp, &old_lp, &adv, m, clip)?;
                    let vl = value_loss(&values, &old_v, &ret, m, cfg.value_clip)?;
                    // The policy's loss and the critic's share no variable (the head critic reads
                    // detached features), so their gradients are back-propagated side by side.
                    let whole = micro.len() == chunk.len();
                    let weighted = |loss: Tensor| if whole { Ok(loss) } else { loss * share };
                    let value_part = weighted((&vl.loss * cfg.value_coef)?)?;
                    grads.add_disjoint(&weighted(pl.loss.clone())?, &value_part, &vars)?;
                    if epoch == 0 {
                        let h = masked_mean(&entropy(&(logits.detach() / cfg.temperature)?)?, m)?;
                        sums.entropy += h.to_dtype(DType::F64)?.to_scalar::<f64>()? * share * chunk.len() as f64;
                    }
                    parts.add(&pl, &vl, share)?;
                }
                let mut grads = grads.into_store();
                let norm = match cfg.max_grad_norm {
                    Some(max) => clip_grad_norm(&mut grads, &vars, max)?,
                    None => 0.0,
                };
                self.optimizer.step(&grads)?;
                sums.add(&parts, norm);
            }
        }
        let kl_coef = cfg.kl.coef();
        self.config.kl.update(mean_kl, n);
        self.step += 1;
        self.version += 1;
        let lengths: f64 = batch.response_lens.iter().sum::<usize>() as f64 / n as f64;
        let k = sums.count.max(1) as f64;
        Ok(StepStats {
            step: self.step,
            policy_version: self.version,
            rollouts: n,
            duplicates_skipped: total - n,
            reward: scores.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?,
            kl: mean_kl,
            kl_coef,
            entropy: sums.entropy / n as f64,
            response_length: lengths,
            policy_loss: sums.policy_loss / k,
            value_loss: sums.value_loss / k,
            clip_fraction: sums.clip_fraction / k,
            value_clip_fraction: sums.value_clip_fraction / k,
            approx_kl: sums.approx_kl / k,
            grad_norm: sums.grad_norm / k,
        })
    }

    pub fn model_config(&self) -> &Config {
        &self.model_config
    }

    /// The order in which `epoch` of this step visits the `n` rollouts.
    fn epoch_order(&self, n: usize, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.seed ^ (self.step << 8) ^ epoch as u64));
        order
    }

    /// The differentiable forward pass over `rows` of `batch`.
    fn forward(&self, batch: &SequenceBatch, rows: &[usize], temperature: f64) -> Result<Forward> {
        let sub = batch.select(rows)?;
        let width = sub.ids.dim(1)?;
        // Only grid columns from the shortest prompt's last token on can hold response tokens:
        // the vocabulary head (the largest activations by far with a real vocabulary) runs on
        // those alone, and every grid quantity is cut to match.
        // The last layer likewise runs only there (`hidden_states_in`).
        let start = sub.first_response_column();
        let cols = width - 1 - start;
        let read = start..width - 1;
        let policy = || -> Result<(Tensor, Tensor, Tensor)> {
            let hidden =
                self.policy.hidden_states_in(&sub.ids, &sub.attention_mask, read.clone(), Kernels::Differentiable)?;
            let logits = self.policy.lm_head(&hidden)?;
            let targets = sub.ids.narrow(1, start + 1, cols)?;
            let logp = tempered_logprobs(&logits, &targets, temperature)?;
            Ok((hidden, logits, logp))
        };
        // The head critic reads the policy's features without training them: a shared backbone
        // let value-loss spikes wreck the language model (measured: KL to SFT 3 → 14 nats). A
        // separate critic trains its own, in a pass independent of the policy's: the two run
        // side by side, each on its own core where there are two, instead of splitting every
        // op of both between the cores.
        let (logits, logp, values) = match &self.critic {
            None => {
                let (hidden, logits, logp) = policy()?;
                (logits, logp, self.value.forward(&hidden.detach())?)
            }
            Some(critic) => {
                let critic = || -> Result<Tensor> {
                    let features = critic.hidden_states_in(
                        &sub.ids,
                        &sub.attention_mask,
                        read.clone(),
                        Kernels::Differentiable,
                    )?;
                    Ok(self.value.forward(&features)?)
                };
                let (policy, values) = rayon::join(policy, critic);
                let (_, logits, logp) = policy?;
                (logits, logp, values?)
            }
        };
        Ok(Forward { sub, start, logits, logp, values })
    }

    /// The critic's values on the next-token grid for `rows` of `batch`, in that order, `micro`
    /// rollouts at a time, no gradient kept. Columns before a micro-batch's first response
    /// token hold zeros: nothing reads them (GAE and the value loss skip prompt positions).
    fn old_values(&self, batch: &SequenceBatch, rows: &[usize], micro: usize) -> Result<Tensor> {
        let width = batch.ids.dim(1)?;
        // The weights are variables, so this forward records a graph holding every layer's
        // activations: micro-batch by micro-batch, each dropped at once, it never holds the
        // whole batch's.
        let values = rows
            .chunks(micro)
            .map(|rows| {
                let sub = batch.select(rows)?;
                let features = self.critic.as_ref().unwrap_or(&self.policy);
                let start = sub.first_response_column();
                let hidden =
                    features.hidden_states_in(&sub.ids, &sub.attention_mask, start..width - 1, Kernels::Fused)?;
                Ok(self.value.forward(&hidden)?.detach().pad_with_zeros(1, start, 0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&values, 0)?)
    }
}

/// One differentiable forward pass over some rollouts: the policy's tempered log-probs (and the
/// logits behind them) and the critic's values, on the next-token grid from column `start` on.
struct Forward {
    sub: SequenceBatch,
    start: usize,
    logits: Tensor,
    logp: Tensor,
    values: Tensor,
}

/// One minibatch's losses and clip statistics, its micro-batches' weighted by token share.
#[derive(Default)]
struct Parts {
    policy_loss: f64,
    value_loss: f64,
    clip_fraction: f64,
    value_clip_fraction: f64,
    approx_kl: f64,
}

impl Parts {
    fn add(&mut self, pl: &rlhf_model::PolicyLoss, vl: &rlhf_model::ValueLoss, share: f64) -> Result<()> {
        self.policy_loss += share * pl.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.value_loss += share * vl.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        self.clip_fraction += share * pl.clip_fraction as f64;
        self.value_clip_fraction += share * vl.clip_fraction as f64;
        self.approx_kl += share * pl.approx_kl as f64;
        Ok(())
    }
}

#[derive(Default)]
struct Sums {
    count: usize,
    entropy: f64,
    policy_loss: f64,
    value_loss: f64,
    clip_fraction: f64,
    value_clip_fraction: f64,
    approx_kl: f64,
    grad_norm: f64,
}

impl Sums {
    fn add(&mut self, minibatch: &Parts, norm: f64) {
        self.count += 1;
        self.policy_loss += minibatch.policy_loss;
        self.value_loss += minibatch.value_loss;
        self.clip_fraction += minibatch.clip_fraction;
        self.value_clip_fraction += minibatch.value_clip_fraction;
        self.approx_kl += minibatch.approx_kl;
        self.grad_norm += norm;
    }
}
