//! What the reward model learnt, by kind of answer: on held-out answer pairs whose kinds the
//! hidden gold preference orders (correct over wrong, wrong over off-topic, …), how often the
//! reward model orders them the same way.
//!
//! Best-of-K says the same in the currency of the run's result: the answer the reward model
//! picks from each held-out prompt's K, against one of the K at random, under the gold
//! preference. PPO against that reward model moves the policy toward what it would pick, so
//! this is roughly the win rate it can hope for; the gold pick is what a perfect one allows.
//!
//! One accuracy against noisy annotators hides which distinctions a reward model makes: on
//! SmolLM2-135M it learnt "a short right answer beats anything" (0.92–0.98) but ordered a padded
//! right answer against a wrong one at chance (0.39–0.47), so PPO traded padded right answers for
//! short wrong ones. This table says so.

use std::collections::BTreeMap;

use rlhf_types::Ranking;
use rlhf_world::World;
use rlhf_world::gold::{self, AnswerType};
use serde::{Deserialize, Serialize};

/// The reward model's agreement with the gold preference on one kind of pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldPairAccuracy {
    /// The kind the gold preference puts first.
    pub better: AnswerType,
    pub worse: AnswerType,
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
            better: AnswerType::ALL[better],
            worse: AnswerType::ALL[worse],
            pairs,
            accuracy: agreed / pairs as f64,
        })
        .collect()
}

/// Gold win rate of the best of each ranking's answers against one of them at random.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestOfK {
    /// Mean number of answers per ranking.
    pub k: f64,
    /// Best by the reward model's score.
    pub by_reward_model: f64,
    /// Best by the gold preference itself (the ceiling).
    pub by_gold: f64,
}

/// [`BestOfK`] over `rankings` of `world`'s prompts (others are skipped; `None` when none is left).
pub fn best_of_k(world: &World, rankings: &[&Ranking], scores: &[Vec<f32>]) -> Option<BestOfK> {
    let (mut n, mut k, mut by_rm, mut by_gold) = (0usize, 0.0, 0.0, 0.0);
    for (ranking, scores) in rankings.iter().zip(scores) {
        let Some(prompt) = world.prompt(&ranking.prompt_id) else { continue };
        let fact = world.fact_of(prompt);
        let utilities: Vec<f64> =
            ranking.responses.iter().map(|r| gold::utility(gold::classify(world, fact, &r.text))).collect();
        if utilities.is_empty() {
            continue;
        }
        // Against a random one of the K: ties count half, as in the run's win rate.
        let win_rate = |u: f64| {
            utilities
                .iter()
                .map(|&v| {
                    if u > v {
                        1.0
                    } else if u == v {
                        0.5
                    } else {
                        0.0
                    }
                })
                .sum::<f64>()
                / utilities.len() as f64
        };
        let picked = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).expect("non-empty");
        by_rm += win_rate(utilities[picked]);
        by_gold += win_rate(utilities.iter().copied().fold(f64::MIN, f64::max));
        k += utilities.len() as f64;
        n += 1;
    }
    (n > 0).then(|| BestOfK { k: k / n as f64, by_reward_model: by_rm / n as f64, by_gold: by_gold / n as f64 })
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
        let get = |b, w| table.iter().find(|p| p.better == b && p.worse == w).map(|p| (p.pairs, p.accuracy));
        assert_eq!(get(AnswerType::Correct, AnswerType::Wrong), Some((1, 0.0)));
        assert_eq!(get(AnswerType::Correct, AnswerType::OffTopic), Some((1, 0.5)));
        assert_eq!(get(AnswerType::Wrong, AnswerType::OffTopic), Some((1, 1.0)));
        assert_eq!(table.len(), 3);
        // The reward model picks the wrong answer: it beats off-topic, ties itself, loses to
        // correct: (0 + 0.5 + 1) / 3. The gold pick beats both others and ties itself.
        let best = best_of_k(&world, &[&r], &scores).expect("a world prompt");
        assert_eq!(best.k, 3.0);
        assert!((best.by_reward_model - 0.5).abs() < 1e-12, "{best:?}");
        assert!((best.by_gold - 2.5 / 3.0).abs() < 1e-12, "{best:?}");
        // A prompt the world does not know (imported) has no gold kinds and is skipped.
        let imported = ranking("imported-1", &["a", "b"]);
        assert!(gold_pair_accuracy(&world, &[&imported], &[vec![0.0, 1.0]]).is_empty());
        assert_eq!(best_of_k(&world, &[&imported], &[vec![0.0, 1.0]]), None);
    }
}
