//! Any bytes as any wire message, then through the conversion a service applies to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rlhf_proto::v1;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = v1::Rollout::decode(bytes) {
        let _ = rlhf_types::Rollout::try_from(r);
    }
    if let Ok(s) = v1::ScoredRollout::decode(bytes) {
        let _ = s.rollout.map(rlhf_types::Rollout::try_from);
    }
    if let Ok(r) = v1::Ranking::decode(bytes) {
        let _ = rlhf_proto::ranking_from_proto(r).validate();
    }
    if let Ok(g) = v1::GenerateRequest::decode(bytes) {
        let _ = g.sampling.map(rlhf_types::SamplingParams::from);
        let _ = g.prompts.into_iter().map(rlhf_types::PromptTokens::from).count();
    }
    if let Ok(r) = v1::SubmitRankingRequest::decode(bytes) {
        let _ = r.ranking.map(|r| rlhf_proto::ranking_from_proto(r).validate());
    }
});
