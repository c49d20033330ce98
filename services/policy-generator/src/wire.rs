//! Generation requests on the wire, both ways: the learner encodes, the replica decodes.

use rlhf_model::SamplingParams;
use rlhf_proto::v1;

use crate::{GenerateRequest, PromptTokens};

pub fn sampling_to_proto(s: &SamplingParams) -> v1::SamplingParams {
    v1::SamplingParams {
        temperature: s.temperature as f32,
        top_k: s.top_k.unwrap_or(0) as u32,
        top_p: s.top_p as f32,
        max_new_tokens: s.max_new_tokens as u32,
        stop_token_ids: s.stop_tokens.clone(),
        seed: s.seed,
    }
}

/// `top_p` 0 (unset on the wire) means no filter, like 1.
pub fn sampling_from_proto(s: v1::SamplingParams) -> SamplingParams {
    SamplingParams {
        temperature: f64::from(s.temperature),
        top_k: (s.top_k > 0).then_some(s.top_k as usize),
        top_p: if s.top_p > 0.0 && s.top_p < 1.0 { f64::from(s.top_p) } else { 1.0 },
        max_new_tokens: s.max_new_tokens as usize,
        stop_tokens: s.stop_token_ids,
        seed: s.seed,
    }
}

pub fn request_to_proto(r: &GenerateRequest, min_policy_version: u64) -> v1::GenerateRequest {
    v1::GenerateRequest {
        request_id: r.request_id.clone(),
        prompts: r
            .prompts
            .iter()
            .map(|p| v1::Prompt { prompt_id: p.prompt_id.clone(), text: String::new(), token_ids: p.tokens.clone() })
            .collect(),
        sampling: Some(sampling_to_proto(&r.sampling)),
        samples_per_prompt: r.samples_per_prompt as u32,
        min_policy_version,
    }
}

pub fn prompts_from_proto(prompts: Vec<v1::Prompt>) -> Vec<PromptTokens> {
    prompts.into_iter().map(|p| PromptTokens { prompt_id: p.prompt_id, tokens: p.token_ids }).collect()
}
