//! What the reward model learnt, by kind of answer: on held-out answer pairs whose kinds the
//! hidden gold preference orders (correct over wrong, wrong over off-topic, …), how often the
//! reward model orders them the same way.
//!
//! One accuracy against noisy annotators hides which distinctions a reward model makes: on a
//! real model it can learn "an answer beats rambling" and not "the right capital beats a wrong
//! one", and PPO then buys wrong answers as readily as right ones. This table says so.

use std::collections::BTreeMap;

use rlhf_types::Ranking;
use rlhf_world::World;
use rlhf_world::gold::{self, AnswerType};
use serde::{Deserialize, Serialize};

/// The reward model's agreement with the gold preference on one kind of pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldPairAccuracy {
    /// The kind the gold preference puts first.
    pub better: String,
    pub worse: String,
    pub pairs: usize,
    /// Share of those pairs the reward model scores the gold way (ties count half).
    pub accuracy: f64,
}

/// Every kind of pair met among `rankings` (all of prompts of `world`), best kinds first;
/// `scores[i][j]` is the reward model's score of response `j` of ranking `i`.
pub fn gold_pair_accuracy(world: &World, rankings: &[&Ranking], scores: &[Vec<f32>]) -> Vec<GoldPairAccuracy> {
    let mut tally: BTreeMap<(usize, usize), (usize, f64)> = BTreeMap::new();
    let rank = |t: AnswerType| AnswerType::ALL.iter().position(|&a| a == t).expect("every type listed");
    for (ranking, scores) in rankings.iter().zip(scores) {
        let Some(prompt) = world.prompt(&ranking.prompt_id) else { continue };
        let fact = world.fact_of(prompt);
        let kinds: Vec<AnswerType> = ranking.responses.iter().map(|r| gold::classify(world, fact, &r.text)).collect();
        for i in 0..kinds.len() {
            for j in 0..kinds.len() {
                if gold::utility(kinds[i]) <= gold::utility(kinds[j]) {
                    continue;
                }
                let agree = match scores[i].partial_cmp(&scores[j]) {
                    Some(std::cmp::Ordering::Greater) => 1.0,
                    Some(std::cmp::Ordering::Equal) => 0.5,
                    _ => 0.0,
                };
                let entry = tally.entry((rank(kinds[i]), rank(kinds[j]))).or_default();
                entry.0 += 1;
                entry.1 += agree;
            }
        }
    }
    tally
        .into_iter()
        .map(|((better, worse), (pairs, agreed))| GoldPairAccuracy {
            better: AnswerType::ALL[better].name().into(),
            worse: AnswerType::ALL[worse].name().into(),
            pairs,
            accuracy: agreed / pairs as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rlhf_types::RankedResponse;
    use rlhf_world::{Phrasing, facts::Category};

    use super::*;

    fn ranking(prompt_id: &str, texts: &[&str]) -> Ranking {
        Ranking {
            ranking_id: format!("r-{prompt_id}"),
            prompt_id: prompt_id.into(),
            responses: texts
                .iter()
                .enumerate()
                .map(|(i, t)| RankedResponse { response_id: i.to_string(), text: (*t).into(), tokens: vec![] })
                .collect(),
            order: (0..texts.len()).collect(),
            annotator_id: "a".into(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn pairs_are_counted_by_kind_and_scored_against_the_gold_order() {
        let world = World::with_phrasing(0.2, 0, Phrasing::Natural);
        let france = world
            .prompts
            .iter()
            .find(|p| {
                let fact = world.fact_of(p);
                fact.category == Category::Capital && fact.subject == "france"
            })
            .expect("a question about France's capital");
        let r = ranking(
            &france.id,
            &["The capital of France is Paris.", "The capital of France is Berlin.", "The sea is full of mysteries."],
        );
        // Correct, wrong, off-topic. The reward model puts wrong first, then correct, and ties
        // correct with off-topic.
        let scores = vec![vec![1.0f32, 2.0, 1.0]];
        let table = gold_pair_accuracy(&world, &[&r], &scores);
        let get =
            |b: &str, w: &str| table.iter().find(|p| p.better == b && p.worse == w).map(|p| (p.pairs, p.accuracy));
        assert_eq!(get("correct", "wrong"), Some((1, 0.0)));
        assert_eq!(get("correct", "off_topic"), Some((1, 0.5)));
        assert_eq!(get("wrong", "off_topic"), Some((1, 1.0)));
        assert_eq!(table.len(), 3);
        // A prompt the world does not know (imported) has no gold kinds and is skipped.
        let imported = ranking("imported-1", &["a", "b"]);
        assert!(gold_pair_accuracy(&world, &[&imported], &[vec![0.0, 1.0]]).is_empty());
    }
}
