//! Whether a team's rankings can be trusted, per annotator and overall: agreement with gold
//! tasks (whose order is known), agreement with the peers who ranked the same task, Krippendorff's
//! alpha over everyone, and the position-bias check (how often the first card shown wins).
//!
//! Agreement is counted over response pairs: two orders agree on a pair when they put its two
//! responses the same way round. Responses are matched by id, so orders shown differently (cards
//! shuffled per annotator) compare correctly.

use std::collections::{BTreeMap, HashMap};

use rlhf_types::Ranking;

use crate::alpha::{Level, krippendorff_alpha};

/// Pairs put the same way round, out of pairs compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Agreement {
    pub agree: usize,
    pub pairs: usize,
}

impl Agreement {
    /// The share of pairs that agree; `None` before any pair was compared.
    pub fn rate(&self) -> Option<f64> {
        (self.pairs > 0).then(|| self.agree as f64 / self.pairs as f64)
    }

    fn add(&mut self, other: Agreement) {
        self.agree += other.agree;
        self.pairs += other.pairs;
    }
}

/// How two orders of response ids (best first) agree over the pairs of responses both rank.
pub fn pair_agreement(a: &[&str], b: &[&str]) -> Agreement {
    let rank_in_b: HashMap<&str, usize> = b.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let shared: Vec<usize> = a.iter().filter_map(|id| rank_in_b.get(id).copied()).collect();
    let mut out = Agreement::default();
    // `shared` lists b's ranks in a's order: a pair agrees when b's ranks rise with a's.
    for i in 0..shared.len() {
        for j in i + 1..shared.len() {
            out.pairs += 1;
            out.agree += usize::from(shared[i] < shared[j]);
        }
    }
    out
}

/// The response ids of `r`, best first.
fn best_first(r: &Ranking) -> Vec<&str> {
    r.order.iter().filter_map(|&i| r.responses.get(i)).map(|resp| resp.response_id.as_str()).collect()
}

/// One annotator's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnnotatorQuality {
    pub annotator: String,
    pub rankings: usize,
    /// Against the known order of gold tasks.
    pub gold: Agreement,
    /// Against every other annotator who ranked the same prompt's responses.
    pub peers: Agreement,
    /// Rankings whose winner was the first card shown.
    pub first_card_wins: usize,
}

/// The whole team's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityReport {
    pub annotators: Vec<AnnotatorQuality>,
    /// Ordinal alpha over every response ranked by two or more annotators (`None` when there is
    /// no overlap).
    pub alpha: Option<f64>,
    /// The share of rankings won by the first card shown, and what chance gives (the mean of
    /// 1 / K over the rankings).
    pub first_card_wins: f64,
    pub first_card_chance: f64,
}

/// The report over `rankings`, with `gold` the known order (response ids, best first) of the
/// gold tasks by prompt id.
pub fn report(rankings: &[Ranking], gold: &HashMap<String, Vec<String>>) -> QualityReport {
    let mut by_annotator: BTreeMap<&str, Vec<&Ranking>> = BTreeMap::new();
    let mut by_prompt: BTreeMap<&str, Vec<&Ranking>> = BTreeMap::new();
    for r in rankings {
        by_annotator.entry(&r.annotator_id).or_default().push(r);
        by_prompt.entry(&r.prompt_id).or_default().push(r);
    }
    let wins_first = |r: &Ranking| r.order.first() == Some(&0);
    let annotators = by_annotator
        .iter()
        .map(|(&annotator, own)| {
            let mut gold_agreement = Agreement::default();
            let mut peers = Agreement::default();
            for r in own {
                let mine = best_first(r);
                if let Some(known) = gold.get(&r.prompt_id) {
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    gold_agreement.add(pair_agreement(&mine, &known));
                }
                for other in by_prompt[r.prompt_id.as_str()].iter().filter(|o| o.annotator_id != annotator) {
                    peers.add(pair_agreement(&mine, &best_first(other)));
                }
            }
            AnnotatorQuality {
                annotator: annotator.to_string(),
                rankings: own.len(),
                gold: gold_agreement,
                peers,
                first_card_wins: own.iter().filter(|r| wins_first(r)).count(),
            }
        })
        .collect();
    // Alpha's units: each response of a prompt, valued by the position each annotator gave it
    // (their first ranking of it: alpha measures agreement between people, not with oneself).
    let mut units: BTreeMap<(&str, &str), BTreeMap<&str, f64>> = BTreeMap::new();
    for r in rankings {
        for (position, id) in best_first(r).into_iter().enumerate() {
            units.entry((&r.prompt_id, id)).or_default().entry(&r.annotator_id).or_insert((position + 1) as f64);
        }
    }
    let units: Vec<Vec<f64>> = units.into_values().map(|by| by.into_values().collect()).collect();
    let n = rankings.len().max(1) as f64;
    QualityReport {
        annotators,
        alpha: krippendorff_alpha(&units, Level::Ordinal),
        first_card_wins: rankings.iter().filter(|r| wins_first(r)).count() as f64 / n,
        first_card_chance: rankings.iter().map(|r| 1.0 / r.responses.len().max(1) as f64).sum::<f64>() / n,
    }
}

/// An annotator whose rankings the reward model leaves out, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Exclusion {
    pub annotator: String,
    pub rankings: usize,
    /// Their agreement with the gold tasks, below the bar.
    pub gold: Agreement,
}

/// The annotators of `report` who agree with gold on less than `min_agreement` of the pairs,
/// judged only once they have ranked `min_pairs` gold pairs.
pub fn below_gold(report: &QualityReport, min_agreement: f64, min_pairs: usize) -> Vec<Exclusion> {
    report
        .annotators
        .iter()
        .filter(|a| a.gold.pairs >= min_pairs && a.gold.rate().is_some_and(|rate| rate < min_agreement))
        .map(|a| Exclusion { annotator: a.annotator.clone(), rankings: a.rankings, gold: a.gold })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlhf_types::RankedResponse;

    /// A ranking of `shown` (ids, in the order shown) by `annotator`, best first as `best`.
    fn ranking(annotator: &str, prompt: &str, shown: &[&str], best: &[&str]) -> Ranking {
        Ranking {
            ranking_id: format!("{annotator}-{prompt}"),
            prompt_id: prompt.into(),
            responses: shown
                .iter()
                .map(|id| RankedResponse { response_id: id.to_string(), text: String::new(), tokens: vec![] })
                .collect(),
            order: best.iter().map(|b| shown.iter().position(|s| s == b).unwrap()).collect(),
            annotator_id: annotator.into(),
            created_unix_ms: 0,
        }
    }

    #[test]
    fn pairs_agree_when_both_orders_put_them_the_same_way_round() {
        // x>y>z against y>x>z: (x,y) differs; (x,z) and (y,z) agree.
        assert_eq!(pair_agreement(&["x", "y", "z"], &["y", "x", "z"]), Agreement { agree: 2, pairs: 3 });
        assert_eq!(pair_agreement(&["x", "y", "z"], &["z", "y", "x"]), Agreement { agree: 0, pairs: 3 });
        // Only responses both ranked count.
        assert_eq!(pair_agreement(&["x", "y", "w"], &["y", "x"]), Agreement { agree: 0, pairs: 1 });
        assert_eq!(Agreement::default().rate(), None);
    }

    #[test]
    fn annotators_below_the_gold_bar_are_named_once_they_have_enough_gold_pairs() {
        let quality = |annotator: &str, agree, pairs| AnnotatorQuality {
            annotator: annotator.into(),
            rankings: 5,
            gold: Agreement { agree, pairs },
            peers: Agreement::default(),
            first_card_wins: 0,
        };
        let report = QualityReport {
            annotators: vec![
                quality("careful", 5, 6),
                quality("random", 3, 6),
                quality("new", 0, 3),
                quality("ungold", 0, 0),
            ],
            alpha: None,
            first_card_wins: 0.0,
            first_card_chance: 0.0,
        };
        // 5/6 = 0.83 passes 0.6; 3/6 = 0.5 does not; 0/3 has too few pairs to judge; no gold, no verdict.
        let out = below_gold(&report, 0.6, 6);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].annotator.as_str(), out[0].gold), ("random", Agreement { agree: 3, pairs: 6 }));
        assert!(below_gold(&report, 0.0, 6).is_empty(), "a bar of 0 keeps everyone");
    }

    #[test]
    fn alpha_compares_people_not_one_person_with_themselves() {
        let two = vec![
            ranking("ann-1", "p", &["a", "b", "c"], &["a", "b", "c"]),
            ranking("ann-2", "p", &["c", "b", "a"], &["b", "a", "c"]),
        ];
        let mut three = two.clone();
        // Ann-1 meets the same responses again (a gold copy) and ranks them differently.
        three.push(ranking("ann-1", "p", &["c", "a", "b"], &["c", "b", "a"]));
        let gold = HashMap::new();
        assert_eq!(report(&three, &gold).alpha, report(&two, &gold).alpha);
        // Alone, one person gives alpha nothing to compare.
        assert_eq!(report(&[two[0].clone(), three[2].clone()], &gold).alpha, None);
    }

    #[test]
    fn the_report_by_hand() {
        // Prompt p (gold a>b>c): ann-1 agrees with gold, ann-2 swaps the top two. Prompt q: only
        // ann-1, who picks the first card shown (d) against e.
        let rankings = vec![
            ranking("ann-1", "p", &["a", "b", "c"], &["a", "b", "c"]),
            ranking("ann-2", "p", &["c", "b", "a"], &["b", "a", "c"]),
            ranking("ann-1", "q", &["d", "e"], &["d", "e"]),
        ];
        let gold = HashMap::from([("p".to_string(), vec!["a".to_string(), "b".into(), "c".into()])]);
        let r = report(&rankings, &gold);
        let (one, two) = (&r.annotators[0], &r.annotators[1]);
        assert_eq!((one.annotator.as_str(), one.rankings, two.rankings), ("ann-1", 2, 1));
        assert_eq!(one.gold, Agreement { agree: 3, pairs: 3 });
        assert_eq!(two.gold, Agreement { agree: 2, pairs: 3 });
        // Each against the other on p: 2 of 3 pairs; q has no peer.
        assert_eq!((one.peers, two.peers), (Agreement { agree: 2, pairs: 3 }, Agreement { agree: 2, pairs: 3 }));
        // First card wins: ann-1 on both (a shown first, d shown first); ann-2's first card (c)
        // came last.
        assert_eq!((one.first_card_wins, two.first_card_wins), (2, 0));
        assert!((r.first_card_wins - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.first_card_chance - (1.0 / 3.0 + 1.0 / 3.0 + 1.0 / 2.0) / 3.0).abs() < 1e-12);
        // Alpha over p's three responses, positions (a: 1, 2), (b: 2, 1), (c: 3, 3): the same
        // units through the alpha function directly.
        let units = vec![vec![1.0, 2.0], vec![2.0, 1.0], vec![3.0, 3.0]];
        assert_eq!(r.alpha, krippendorff_alpha(&units, Level::Ordinal));
        // By hand (ordinal): n = 6, n_1 = n_2 = n_3 = 2; o(1,2) = o(2,1) = 2, o(3,3) = 2;
        // delta(1,2) = (n_1 + n_2 - (n_1 + n_2) / 2)^2 = 4, delta(1,3) = (6 - 2)^2 = 16,
        // delta(2,3) = 4. Observed sum = 2*4 + 2*4 = 16; expected sum = 2*(4*4 + 4*16 + 4*4) = 192.
        // alpha = 1 - 5 * 16 / 192 = 7/12.
        assert!((r.alpha.unwrap() - 7.0 / 12.0).abs() < 1e-12, "{:?}", r.alpha);
    }
}
