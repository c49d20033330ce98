//! The five response styles of SFT data, and the SFT data set itself.
//!
//! Real SFT data follows the format without following it well: besides concise correct answers
//! it holds padded ones, honest refusals, confident mistakes and off-topic replies. An SFT model
//! trained on it produces all five, which is what RLHF then has to sort out.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::facts::{Category, Fact, values_of};
use crate::prompts::{Prompt, Split, World, claim, claim_with};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    Concise,
    Verbose,
    Refusal,
    Wrong,
    OffTopic,
}

pub const FILLER: &[&str] = &[
    "i hope this helps .",
    "that is a great question .",
    "let me know if you have more questions .",
    "thank you for asking .",
    "it is always good to learn new things .",
    "have a wonderful day .",
];

pub const REFUSALS: &[&str] = &["i do not know .", "i am not sure , sorry ."];

pub const OFF_TOPIC: &[&str] = &[
    "i like to talk about the weather .",
    "my favourite food is pasta .",
    "the train leaves at noon .",
    "let us play a game instead .",
    "music makes me happy .",
];

/// Every sentence that does not depend on a fact.
pub fn fixed_sentences() -> Vec<&'static str> {
    FILLER.iter().chain(REFUSALS).chain(OFF_TOPIC).copied().collect()
}

/// A response to `fact` in `style`. Verbose answers pad the correct claim with 1–4 filler
/// sentences; wrong answers state another value of the same category.
pub fn respond(world: &World, fact: &Fact, style: Style, rng: &mut StdRng) -> String {
    match style {
        Style::Concise => claim(fact),
        Style::Verbose => {
            let n = rng.random_range(1..=4);
            let mut parts = vec![claim(fact)];
            parts.extend(FILLER.choose_multiple(rng, n).map(|s| s.to_string()));
            parts.join(" ")
        }
        Style::Refusal => REFUSALS.choose(rng).expect("non-empty").to_string(),
        Style::Wrong => {
            let others: Vec<String> =
                values_of(&world.facts, fact.category).into_iter().filter(|v| *v != fact.value).collect();
            claim_with(fact, others.choose(rng).expect("every category has several values"))
        }
        Style::OffTopic => OFF_TOPIC.choose(rng).expect("non-empty").to_string(),
    }
}

/// The share of each style in the SFT data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StyleMix {
    pub concise: f64,
    pub verbose: f64,
    pub refusal: f64,
    pub wrong: f64,
    pub off_topic: f64,
}

impl Default for StyleMix {
    fn default() -> Self {
        StyleMix { concise: 0.3, verbose: 0.25, refusal: 0.15, wrong: 0.1, off_topic: 0.2 }
    }
}

impl StyleMix {
    pub fn sample(&self, rng: &mut StdRng) -> Style {
        let weights = [
            (Style::Concise, self.concise),
            (Style::Verbose, self.verbose),
            (Style::Refusal, self.refusal),
            (Style::Wrong, self.wrong),
            (Style::OffTopic, self.off_topic),
        ];
        let total: f64 = weights.iter().map(|w| w.1).sum();
        let mut x = rng.random::<f64>() * total;
        for (style, w) in weights {
            x -= w;
            if x < 0.0 {
                return style;
            }
        }
        Style::OffTopic
    }
}

/// One SFT example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt_id: String,
    pub prompt: String,
    pub response: String,
    pub style: Style,
}

/// `per_prompt` responses for every training prompt, styles drawn from `mix`, in the world's
/// phrasing.
pub fn sft_data(world: &World, mix: &StyleMix, per_prompt: usize, rng: &mut StdRng) -> Vec<SftExample> {
    let mut out = vec![];
    for prompt in world.split(Split::Train) {
        for _ in 0..per_prompt {
            out.push(example(world, prompt, mix.sample(rng), rng));
        }
    }
    out
}

fn example(world: &World, prompt: &Prompt, style: Style, rng: &mut StdRng) -> SftExample {
    let fact = world.fact_of(prompt);
    SftExample {
        prompt_id: prompt.id.clone(),
        prompt: prompt.text.clone(),
        response: world.phrase(&respond(world, fact, style, rng)),
        style,
    }
}

/// Categories whose answers come from memory rather than arithmetic; used by reports.
pub fn is_recall(category: Category) -> bool {
    category != Category::Sum
}
