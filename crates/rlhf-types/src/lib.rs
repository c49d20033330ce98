//! The domain vocabulary of rlhf, independent of any transport: what flows between the policy
//! generator, the reward scorer, the preference store and the learner.
//!
//! # Layout
//! - [`GenerateRequest`] ([`PromptTokens`], [`SamplingParams`]): what the learner asks a
//!   generator replica for.
//! - [`Rollout`] / [`ScoringRequest`] / [`ScoredRollout`]: one sampled response on its way to the
//!   learner through a scorer, named by its [`RolloutId`].
//! - [`Ranking`] / [`Pair`]: a K-way human (or simulated) ranking, stored whole, and the pairs
//!   derived from it.
//!
//! **Architecture invariant:** no IO, no tensors, no transport: `rlhf-proto` converts to and
//! from these at the gRPC edge, and nothing here knows that it does.

use serde::{Deserialize, Serialize};

mod generation;

pub use generation::{GenerateRequest, PromptTokens, RolloutId, SamplingParams};

/// One sampled response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Unique; the learner deduplicates on it.
    pub rollout_id: RolloutId,
    pub prompt_id: String,
    pub prompt_tokens: Vec<u32>,
    pub response_tokens: Vec<u32>,
    /// Behaviour log-prob of each response token (see `rlhf_model::sampling`).
    pub behaviour_logprobs: Vec<f32>,
    /// The policy version whose weights sampled it.
    pub policy_version: u64,
    /// True when the response ended with a stop token.
    pub finished: bool,
    pub generator_id: String,
}

/// A rollout after the frozen judges saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRollout {
    pub rollout: Rollout,
    /// The reward model's score, normalised by the statistics of the SFT policy's responses.
    pub score: f32,
    /// Reference-policy log-prob of each response token.
    pub reference_logprobs: Vec<f32>,
    /// The judges version that scored it (see [`ScoringRequest`]).
    #[serde(default)]
    pub judges_version: u64,
}

/// A rollout on its way to a scorer, with the judges version the learner announced for its step:
/// a scorer loads that version before scoring it, so no rollout is judged by other models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoringRequest {
    pub rollout: Rollout,
    pub judges_version: u64,
}

/// One candidate inside a ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedResponse {
    pub response_id: String,
    pub text: String,
    pub tokens: Vec<u32>,
}

/// A K-way ranking of responses to one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub ranking_id: String,
    pub prompt_id: String,
    /// The candidates in the order they were shown.
    pub responses: Vec<RankedResponse>,
    /// `order[i]` is the index into `responses` of the i-th best: a permutation of `0..K`.
    pub order: Vec<usize>,
    pub annotator_id: String,
    pub created_unix_ms: i64,
}

/// Why a ranking is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRanking {
    #[error("a ranking needs at least 2 responses, got {0}")]
    TooFewResponses(usize),
    #[error("the order ranks {ranked} responses but {shown} were shown")]
    IncompleteOrder { ranked: usize, shown: usize },
    #[error("position {0} is out of range")]
    OutOfRange(usize),
    #[error("response {0} is ranked more than once")]
    Duplicate(usize),
    #[error("response ids must be unique and non-empty")]
    BadResponseIds,
    #[error("ranking_id, prompt_id and annotator_id must be non-empty")]
    MissingId,
}

impl Ranking {
    /// Checks the ranking is a complete, strict order over K >= 2 distinct responses.
    pub fn validate(&self) -> Result<(), InvalidRanking> {
        if self.ranking_id.is_empty() || self.prompt_id.is_empty() || self.annotator_id.is_empty() {
            return Err(InvalidRanking::MissingId);
        }
        let k = self.responses.len();
        if k < 2 {
            return Err(InvalidRanking::TooFewResponses(k));
        }
        if self.order.len() != k {
            return Err(InvalidRanking::IncompleteOrder { ranked: self.order.len(), shown: k });
        }
        let mut seen = vec![false; k];
        for &i in &self.order {
            let slot = seen.get_mut(i).ok_or(InvalidRanking::OutOfRange(i))?;
            if std::mem::replace(slot, true) {
                return Err(InvalidRanking::Duplicate(i));
            }
        }
        let mut ids: Vec<&str> = self.responses.iter().map(|r| r.response_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != k || ids.first() == Some(&"") {
            return Err(InvalidRanking::BadResponseIds);
        }
        Ok(())
    }

    /// The `C(K, 2)` pairs this ranking implies, best-first order.
    pub fn pairs(&self) -> Vec<Pair> {
        let total = self.order.len() * (self.order.len() - 1) / 2;
        let mut pairs = Vec::with_capacity(total);
        for (i, &w) in self.order.iter().enumerate() {
            for &l in &self.order[i + 1..] {
                pairs.push(Pair {
                    ranking_id: self.ranking_id.clone(),
                    prompt_id: self.prompt_id.clone(),
                    chosen: self.responses[w].clone(),
                    rejected: self.responses[l].clone(),
                    pairs_in_ranking: total,
                });
            }
        }
        pairs
    }
}

/// A derived comparison: `chosen` was ranked above `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub ranking_id: String,
    pub prompt_id: String,
    pub chosen: RankedResponse,
    pub rejected: RankedResponse,
    /// C(K, 2) of the ranking it came from; the K-way loss weighs each pair by its inverse.
    pub pairs_in_ranking: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(order: Vec<usize>, k: usize) -> Ranking {
        Ranking {
            ranking_id: "r".into(),
            prompt_id: "p".into(),
            responses: (0..k)
                .map(|i| RankedResponse { response_id: format!("x{i}"), text: format!("t{i}"), tokens: vec![i as u32] })
                .collect(),
            order,
            annotator_id: "a".into(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn valid_rankings_expand_to_all_pairs() {
        let r = ranking(vec![2, 0, 1], 3);
        r.validate().unwrap();
        let pairs: Vec<(String, String)> = r.pairs().into_iter().map(|p| (p.chosen.text, p.rejected.text)).collect();
        let expected = [("t2", "t0"), ("t2", "t1"), ("t0", "t1")].map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(pairs, expected.to_vec());
        assert!(r.pairs().iter().all(|p| p.pairs_in_ranking == 3));
    }

    #[test]
    fn invalid_rankings_say_why() {
        assert_eq!(ranking(vec![0], 1).validate(), Err(InvalidRanking::TooFewResponses(1)));
        assert_eq!(ranking(vec![0, 1], 3).validate(), Err(InvalidRanking::IncompleteOrder { ranked: 2, shown: 3 }));
        assert_eq!(ranking(vec![0, 0, 1], 3).validate(), Err(InvalidRanking::Duplicate(0)));
        assert_eq!(ranking(vec![0, 3, 1], 3).validate(), Err(InvalidRanking::OutOfRange(3)));
        let mut same_ids = ranking(vec![0, 1], 2);
        same_ids.responses[1].response_id = "x0".into();
        assert_eq!(same_ids.validate(), Err(InvalidRanking::BadResponseIds));
        let mut no_prompt = ranking(vec![0, 1], 2);
        no_prompt.prompt_id.clear();
        assert_eq!(no_prompt.validate(), Err(InvalidRanking::MissingId));
    }
}
