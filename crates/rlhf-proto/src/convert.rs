//! Wire messages ↔ domain types. Decoding checks what the type system cannot: lengths that must
//! agree, a ranking's order fitting in memory, non-finite floats.

use rlhf_types::{
    GenerateRequest, Pair, PromptTokens, RankedResponse, Ranking, Rollout, SamplingParams, ScoredRollout,
};

use crate::v1;

/// A wire message that cannot become a domain value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {message}: {reason}")]
pub struct InvalidMessage {
    pub message: &'static str,
    pub reason: String,
}

fn invalid(message: &'static str, reason: impl Into<String>) -> InvalidMessage {
    InvalidMessage { message, reason: reason.into() }
}

impl From<Rollout> for v1::Rollout {
    fn from(r: Rollout) -> Self {
        v1::Rollout {
            rollout_id: r.rollout_id.0,
            prompt_id: r.prompt_id,
            prompt_token_ids: r.prompt_tokens,
            response_token_ids: r.response_tokens,
            behaviour_logprobs: r.behaviour_logprobs,
            policy_version: r.policy_version,
            finished: r.finished,
            generator_id: r.generator_id,
        }
    }
}

impl TryFrom<v1::Rollout> for Rollout {
    type Error = InvalidMessage;

    fn try_from(r: v1::Rollout) -> Result<Self, InvalidMessage> {
        if r.rollout_id.is_empty() {
            return Err(invalid("rollout", "empty rollout_id"));
        }
        if r.behaviour_logprobs.len() != r.response_token_ids.len() {
            return Err(invalid(
                "rollout",
                format!(
                    "{}: {} log-probs for {} response tokens",
                    r.rollout_id,
                    r.behaviour_logprobs.len(),
                    r.response_token_ids.len()
                ),
            ));
        }
        if r.behaviour_logprobs.iter().any(|v| !v.is_finite()) {
            return Err(invalid("rollout", format!("{}: non-finite behaviour log-prob", r.rollout_id)));
        }
        Ok(Rollout {
            rollout_id: r.rollout_id.into(),
            prompt_id: r.prompt_id,
            prompt_tokens: r.prompt_token_ids,
            response_tokens: r.response_token_ids,
            behaviour_logprobs: r.behaviour_logprobs,
            policy_version: r.policy_version,
            finished: r.finished,
            generator_id: r.generator_id,
        })
    }
}

impl From<ScoredRollout> for v1::ScoredRollout {
    fn from(s: ScoredRollout) -> Self {
        v1::ScoredRollout {
            rollout: Some(s.rollout.into()),
            score: s.score,
            reference_logprobs: s.reference_logprobs,
            judges_version: s.judges_version,
        }
    }
}

impl From<RankedResponse> for v1::RankedResponse {
    fn from(r: RankedResponse) -> Self {
        v1::RankedResponse { response_id: r.response_id, text: r.text, token_ids: r.tokens }
    }
}

impl From<v1::RankedResponse> for RankedResponse {
    fn from(r: v1::RankedResponse) -> Self {
        RankedResponse { response_id: r.response_id, text: r.text, tokens: r.token_ids }
    }
}

pub fn ranking_to_proto(r: Ranking) -> v1::Ranking {
    v1::Ranking {
        ranking_id: r.ranking_id,
        prompt_id: r.prompt_id,
        responses: r.responses.into_iter().map(Into::into).collect(),
        order: r.order.into_iter().map(|i| i as u32).collect(),
        annotator_id: r.annotator_id,
        created_unix_ms: r.created_unix_ms,
    }
}

/// Decodes a ranking; whether it is a valid ranking is `Ranking::validate`'s question.
pub fn ranking_from_proto(r: v1::Ranking) -> Ranking {
    Ranking {
        ranking_id: r.ranking_id,
        prompt_id: r.prompt_id,
        responses: r.responses.into_iter().map(Into::into).collect(),
        order: r.order.into_iter().map(|i| i as usize).collect(),
        annotator_id: r.annotator_id,
        created_unix_ms: r.created_unix_ms,
    }
}

/// Encodes a pair with its prompt's text (a [`Pair`] refers to its prompt by id only).
pub fn pair_to_proto(p: Pair, prompt_text: String) -> v1::PreferencePair {
    v1::PreferencePair {
        ranking_id: p.ranking_id,
        prompt_id: p.prompt_id,
        chosen: Some(p.chosen.into()),
        rejected: Some(p.rejected.into()),
        pairs_in_ranking: p.pairs_in_ranking as u32,
        prompt_text,
    }
}

impl From<&SamplingParams> for v1::SamplingParams {
    fn from(s: &SamplingParams) -> Self {
        v1::SamplingParams {
            temperature: s.temperature as f32,
            top_k: s.top_k.unwrap_or(0) as u32,
            top_p: s.top_p as f32,
            max_new_tokens: s.max_new_tokens as u32,
            stop_token_ids: s.stop_tokens.clone(),
            seed: s.seed,
        }
    }
}

/// `top_p` 0 (unset on the wire) means no filter, like 1.
impl From<v1::SamplingParams> for SamplingParams {
    fn from(s: v1::SamplingParams) -> Self {
        SamplingParams {
            temperature: f64::from(s.temperature),
            top_k: (s.top_k > 0).then_some(s.top_k as usize),
            top_p: if s.top_p > 0.0 && s.top_p < 1.0 { f64::from(s.top_p) } else { 1.0 },
            max_new_tokens: s.max_new_tokens as usize,
            stop_tokens: s.stop_token_ids,
            seed: s.seed,
        }
    }
}

/// The wire form of `r`, to be served by a replica on `min_policy_version` or later.
pub fn request_to_proto(r: &GenerateRequest, min_policy_version: u64) -> v1::GenerateRequest {
    v1::GenerateRequest {
        request_id: r.request_id.clone(),
        prompts: r
            .prompts
            .iter()
            .map(|p| v1::Prompt { prompt_id: p.prompt_id.clone(), text: String::new(), token_ids: p.tokens.clone() })
            .collect(),
        sampling: Some((&r.sampling).into()),
        samples_per_prompt: r.samples_per_prompt as u32,
        min_policy_version,
    }
}

impl From<v1::Prompt> for PromptTokens {
    fn from(p: v1::Prompt) -> Self {
        PromptTokens { prompt_id: p.prompt_id, tokens: p.token_ids }
    }
}
