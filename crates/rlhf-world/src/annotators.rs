//! Simulated annotators: they rank K responses by the gold utility, with noise and, optionally,
//! a planted bias for longer answers that invites reward hacking.

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::facts::Fact;
use crate::gold::{classify, sentences_of, utility};
use crate::prompts::World;

/// Ranks by Plackett–Luce sampling on `u = gold utility + length_bias · (sentences - 1)`:
/// the best is drawn with probability ∝ exp(u / temperature), then the best of the rest, and so on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotator {
    pub id: String,
    /// Plackett–Luce temperature; higher is noisier, 0 ranks by utility exactly.
    pub temperature: f64,
    /// Utility added per sentence beyond the first: a liking for longer answers.
    pub length_bias: f64,
}

impl Annotator {
    /// The utility this annotator perceives.
    pub fn perceived(&self, world: &World, fact: &Fact, response: &str) -> f64 {
        let extra = sentences_of(world, response).len().saturating_sub(1) as f64;
        utility(classify(world, fact, response)) + self.length_bias * extra
    }

    /// The indices of `responses`, best first.
    pub fn rank(&self, world: &World, fact: &Fact, responses: &[String], rng: &mut StdRng) -> Vec<usize> {
        let utilities: Vec<f64> = responses.iter().map(|r| self.perceived(world, fact, r)).collect();
        let mut remaining: Vec<usize> = (0..responses.len()).collect();
        let mut order = Vec::with_capacity(responses.len());
        while !remaining.is_empty() {
            let pick = if self.temperature <= 0.0 {
                // Exact ranking; ties keep presentation order.
                (0..remaining.len())
                    .fold(0, |best, i| if utilities[remaining[i]] > utilities[remaining[best]] { i } else { best })
            } else {
                let max = remaining.iter().map(|&i| utilities[i]).fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> =
                    remaining.iter().map(|&i| ((utilities[i] - max) / self.temperature).exp()).collect();
                let mut x = rng.random::<f64>() * weights.iter().sum::<f64>();
                let mut chosen = weights.len() - 1;
                for (k, w) in weights.iter().enumerate() {
                    x -= w;
                    if x < 0.0 {
                        chosen = k;
                        break;
                    }
                }
                chosen
            };
            order.push(remaining.remove(pick));
        }
        order
    }
}
