//! A policy generator replica: samples responses with the policy version it serves.
//!
//! A weight update builds a complete new model first and swaps it in under a write lock, so a
//! batch always runs on one version from start to end, and an update that is incomplete or
//! holds a non-finite value is refused while the old version keeps serving.

mod service;

pub use service::{GeneratorServiceConfig, run};

use std::collections::HashMap;
use std::sync::RwLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rlhf_model::{Config, Llama, generate_until};
use rlhf_types::{GenerateRequest, Rollout, RolloutId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("weight update to version {new} refused: serving version {serving} already")]
    StaleVersion { new: u64, serving: u64 },
    #[error("weight update from learner epoch {new} refused: serving epoch {serving}, a newer learner")]
    StaleEpoch { new: u64, serving: u64 },
    #[error("weight update refused: tensor {0} has a non-finite value")]
    NonFinite(String),
    #[error("weight update refused: {0}")]
    BadWeights(String),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("generation cancelled: its client went away or its deadline passed")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

/// What one request may ask of a replica; checked before any work starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sequences (prompts × samples per prompt) in one request.
    pub max_rows: usize,
    /// Prompt plus new tokens of one sequence, below the model's context (`None`: the context).
    pub max_sequence_tokens: Option<usize>,
    /// Generation requests served at once; one more is shed with RESOURCE_EXHAUSTED, so the
    /// learner sends it to another replica instead of queueing behind this one.
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_rows: 1024, max_sequence_tokens: None, max_concurrent: 4 }
    }
}

impl From<rlhf_proto::weights::BadWeights> for Error {
    fn from(e: rlhf_proto::weights::BadWeights) -> Self {
        Error::BadWeights(e.0)
    }
}

struct Served {
    /// The learner epoch that published `version` (0 in one process).
    epoch: u64,
    version: u64,
    model: Llama,
}

/// One replica.
pub struct PolicyGenerator {
    id: String,
    config: Config,
    /// Where the model runs; weights published from elsewhere are moved here.
    device: Device,
    pad_id: u32,
    served: RwLock<Served>,
}

impl std::fmt::Debug for PolicyGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGenerator").field("id", &self.id).field("version", &self.version()).finish()
    }
}

impl PolicyGenerator {
    /// A replica serving `tensors` (HF names) as `version`, on `device` (the tensors may be anywhere).
    pub fn new(
        device: &Device,
        id: &str,
        config: Config,
        pad_id: u32,
        tensors: HashMap<String, Tensor>,
        version: u64,
    ) -> Result<Self> {
        let model = build(&config, tensors, device)?;
        Ok(PolicyGenerator {
            id: id.to_string(),
            config,
            device: device.clone(),
            pad_id,
            served: RwLock::new(Served { epoch: 0, version, model }),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The policy version this replica serves.
    pub fn version(&self) -> u64 {
        self.served.read().map(|s| s.version).unwrap_or(0)
    }

    /// The same replica, its version published by learner `epoch` (a new replica's first
    /// update; later ones go through [`PolicyGenerator::update_weights_from`]).
    pub fn with_epoch(self, epoch: u64) -> Self {
        if let Ok(mut s) = self.served.write() {
            s.epoch = epoch;
        }
        self
    }

    /// The learner epoch of the version served.
    pub fn epoch(&self) -> u64 {
        self.served.read().map(|s| s.epoch).unwrap_or(0)
    }

    /// Switches to `version`, which must be newer, once the whole model is built and checked.
    pub fn update_weights(&self, version: u64, tensors: HashMap<String, Tensor>) -> Result<()> {
        self.update_weights_from(self.epoch(), version, tensors)
    }

    /// Switches to `version` of learner `epoch`: a newer version of the same epoch, or any
    /// version of a newer epoch (a restarted learner rolling back to its checkpoint).
    pub fn update_weights_from(&self, epoch: u64, version: u64, tensors: HashMap<String, Tensor>) -> Result<()> {
        let (serving_epoch, serving) = (self.epoch(), self.version());
        if epoch < serving_epoch {
            return Err(Error::StaleEpoch { new: epoch, serving: serving_epoch });
        }
        if epoch == serving_epoch && version <= serving {
            return Err(Error::StaleVersion { new: version, serving });
        }
        let model = build(&self.config, tensors, &self.device)?;
        let mut served = self.served.write().map_err(|_| Error::BadWeights("lock poisoned".into()))?;
        *served = Served { epoch, version, model };
        Ok(())
    }

    /// Refuses, before any work, a request the replica cannot serve within `limits` and the
    /// model's context: every prompt plus `max_new_tokens` must fit both, and so must the rows.
    pub fn check(&self, request: &GenerateRequest, limits: &Limits) -> Result<()> {
        if request.samples_per_prompt == 0 || request.prompts.is_empty() {
            return Err(Error::InvalidRequest("no prompts or zero samples per prompt".into()));
        }
        let rows = request.prompts.len().saturating_mul(request.samples_per_prompt);
        if rows > limits.max_rows {
            return Err(Error::InvalidRequest(format!(
                "{rows} sequences (prompts × samples per prompt) in one request; this replica takes at most {}",
                limits.max_rows
            )));
        }
        let context = self.config.max_position_embeddings;
        let cap = limits.max_sequence_tokens.map_or(context, |c| c.min(context));
        let longest = request.prompts.iter().map(|p| p.tokens.len()).max().unwrap_or(0);
        let total = longest.saturating_add(request.sampling.max_new_tokens);
        if total > cap || longest == 0 {
            return Err(Error::InvalidRequest(format!(
                "a prompt of {longest} tokens plus max_new_tokens {} is {total} tokens; this replica takes 1 to                  {cap} (the model's context is {context})",
                request.sampling.max_new_tokens
            )));
        }
        Ok(())
    }

    /// Samples `samples_per_prompt` responses for every prompt, all with one policy version.
    /// Only the model's context bounds a request here; a service checks its own [`Limits`] first.
    pub fn generate(&self, request: &GenerateRequest) -> Result<Vec<Rollout>> {
        self.generate_until(request, &|| false)
    }

    /// [`PolicyGenerator::generate`], stopping within one decode step once `cancelled` says so.
    pub fn generate_until(
        &self,
        request: &GenerateRequest,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<Vec<Rollout>> {
        self.check(request, &Limits { max_rows: usize::MAX, max_sequence_tokens: None, max_concurrent: usize::MAX })?;
        let served = self.served.read().map_err(|_| Error::Generation("lock poisoned".into()))?;
        let mut prompts = vec![];
        for p in &request.prompts {
            for _ in 0..request.samples_per_prompt {
                prompts.push(p.tokens.clone());
            }
        }
        let generations = generate_until(&served.model, &prompts, &request.sampling, self.pad_id, cancelled)
            .map_err(|e| Error::Generation(e.to_string()))?
            .ok_or(Error::Cancelled)?;
        Ok(generations
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                let prompt = &request.prompts[i / request.samples_per_prompt];
                Rollout {
                    rollout_id: RolloutId::of(&request.request_id, i),
                    prompt_id: prompt.prompt_id.clone(),
                    prompt_tokens: prompt.tokens.clone(),
                    response_tokens: g.tokens,
                    behaviour_logprobs: g.logprobs,
                    policy_version: served.version,
                    finished: g.finished,
                    generator_id: self.id.clone(),
                }
            })
            .collect())
    }
}

/// Builds a model from named tensors, refusing missing, misshapen or non-finite weights.
/// The decode layout copies every tensor, so the sender may keep training its own.
fn build(config: &Config, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Llama> {
    for (name, t) in &tensors {
        let finite = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(|e| Error::BadWeights(format!("{name}: {e}")))?
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(Error::NonFinite(name.clone()));
        }
    }
    // The generator only samples: the decode layout spares gemm a repack of every weight per step.
    Llama::new(config, VarBuilder::from_tensors(tensors, DType::F32, device))
        .and_then(Llama::into_decode_layout)
        .map_err(|e| Error::BadWeights(e.to_string()))
}

#[cfg(test)]
mod tests;
