//! What the learner asks of a generator replica: prompts as token ids, how to sample, and the
//! ids that let a retried request be recognised.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A rollout's unique id, `<request id>-<index>`: a retried request yields the same ids, so the
/// learner deduplicates on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RolloutId(pub String);

impl RolloutId {
    /// The id of the `index`-th rollout of request `request_id`.
    pub fn of(request_id: &str, index: usize) -> Self {
        RolloutId(format!("{request_id}-{index}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for RolloutId {
    fn from(id: String) -> Self {
        RolloutId(id)
    }
}

impl From<&str> for RolloutId {
    fn from(id: &str) -> Self {
        RolloutId(id.to_string())
    }
}

/// How logits become tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; `0.0` decodes greedily.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (`1.0`: all).
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// A response ends after any of these tokens; the stop token is part of the response.
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: None, top_p: 1.0, max_new_tokens: 64, stop_tokens: vec![], seed: 0 }
    }
}

/// One prompt to sample for, already rendered through the chat template and tokenized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTokens {
    pub prompt_id: String,
    pub tokens: Vec<u32>,
}

/// A batch of prompts to sample responses for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Part of every rollout id, so retries of the same request produce the same ids.
    pub request_id: String,
    pub prompts: Vec<PromptTokens>,
    pub sampling: SamplingParams,
    pub samples_per_prompt: usize,
}

impl GenerateRequest {
    /// The ids of every rollout this request yields, in order.
    pub fn rollout_ids(&self) -> impl Iterator<Item = RolloutId> + '_ {
        (0..self.prompts.len() * self.samples_per_prompt).map(|i| RolloutId::of(&self.request_id, i))
    }
}
