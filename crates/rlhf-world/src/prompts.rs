//! Templated questions about the knowledge base, with a fixed train / held-out split.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use crate::facts::{Category, Fact, knowledge_base};

/// Question templates per category; `{s}` is the subject.
fn templates(category: Category) -> &'static [&'static str] {
    match category {
        Category::Capital => &[
            "what is the capital of {s} ?",
            "which city is the capital of {s} ?",
            "tell me the capital of {s} .",
            "name the capital city of {s} .",
        ],
        Category::Colour => &["what colour is {s} ?", "which colour is {s} ?", "tell me the colour of {s} ."],
        Category::Sound => &["what sound does a {s} make ?", "what does a {s} say ?", "which sound does a {s} make ?"],
        Category::Sum => &["what is {s} ?", "how much is {s} ?", "please compute {s} ."],
    }
}

/// The answer sentence that states `fact` correctly.
pub fn claim(fact: &Fact) -> String {
    claim_with(fact, &fact.value)
}

/// The answer sentence that states `value` as the answer about `fact`'s subject.
pub fn claim_with(fact: &Fact, value: &str) -> String {
    match fact.category {
        Category::Capital => format!("the capital of {} is {value} .", fact.subject),
        Category::Colour => format!("{} is {value} .", fact.subject),
        Category::Sound => format!("a {} says {value} .", fact.subject),
        Category::Sum => format!("{} is {value} .", fact.subject),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

/// One question: `id` is stable across runs (`<category>-<fact>-<template>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub text: String,
    /// Index into [`World::facts`].
    pub fact: usize,
    pub split: Split,
}

/// How the world writes its questions and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phrasing {
    /// Lower-case words with punctuation apart ("what is the capital of france ?"): the text a
    /// word-level tokenizer covers exactly, for a model trained from scratch.
    #[default]
    Bundled,
    /// Plain English ("What is the capital of France?"), for a pretrained model, whose answers
    /// in its own words are judged by [`crate::free_text`].
    Natural,
}

/// The knowledge base and every prompt about it.
#[derive(Debug, Clone)]
pub struct World {
    pub facts: Vec<Fact>,
    pub prompts: Vec<Prompt>,
    pub phrasing: Phrasing,
}

impl World {
    /// Builds the world; `held_out` of the prompts (by a fixed shuffle of `seed`) are held out.
    /// Held-out prompts ask about facts the training prompts also cover, in other words:
    /// generalising the format, not guessing unseen facts.
    pub fn new(held_out: f64, seed: u64) -> World {
        World::with_phrasing(held_out, seed, Phrasing::Bundled)
    }

    /// [`World::new`] with questions and SFT answers in `phrasing`; the split is the same.
    pub fn with_phrasing(held_out: f64, seed: u64, phrasing: Phrasing) -> World {
        let facts = knowledge_base();
        let mut prompts = vec![];
        for (i, fact) in facts.iter().enumerate() {
            for (t, template) in templates(fact.category).iter().enumerate() {
                let category = format!("{:?}", fact.category).to_lowercase();
                prompts.push(Prompt {
                    id: format!("{category}-{i}-{t}"),
                    text: template.replace("{s}", &fact.subject),
                    fact: i,
                    split: Split::Train,
                });
            }
        }
        // Hold out one template of a fact at most, so every fact stays in training.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut by_fact: Vec<usize> = (0..facts.len()).collect();
        by_fact.shuffle(&mut rng);
        let target = (held_out * prompts.len() as f64).round() as usize;
        for &fact in by_fact.iter().take(target) {
            let choices: Vec<usize> = (0..prompts.len()).filter(|&p| prompts[p].fact == fact).collect();
            let pick = *choices.choose(&mut rng).expect("every fact has templates");
            prompts[pick].split = Split::HeldOut;
        }
        let mut world = World { facts, prompts, phrasing };
        if phrasing == Phrasing::Natural {
            for prompt in &mut world.prompts {
                prompt.text = naturalise(&world.facts, &prompt.text);
            }
        }
        world
    }

    /// The question as a person would type it to a pretrained assistant: "What is the capital
    /// of France?" for "what is the capital of france ?".
    pub fn natural_text(&self, prompt: &Prompt) -> String {
        naturalise(&self.facts, &prompt.text)
    }

    /// Bundled `text` in plain English, whatever this world's phrasing.
    pub fn natural_text_of(&self, text: &str) -> String {
        naturalise(&self.facts, text)
    }

    /// `text` written in this world's phrasing (`text` is in the bundled one).
    pub fn phrase(&self, text: &str) -> String {
        match self.phrasing {
            Phrasing::Bundled => text.to_string(),
            Phrasing::Natural => naturalise(&self.facts, text),
        }
    }

    pub fn fact_of(&self, prompt: &Prompt) -> &Fact {
        &self.facts[prompt.fact]
    }

    pub fn prompt(&self, id: &str) -> Option<&Prompt> {
        self.prompts.iter().find(|p| p.id == id)
    }

    pub fn split(&self, split: Split) -> Vec<&Prompt> {
        self.prompts.iter().filter(|p| p.split == split).collect()
    }

    /// Every word the world can produce: the vocabulary of its tokenizer.
    pub fn words(&self) -> Vec<String> {
        let mut text: Vec<String> = self.prompts.iter().map(|p| p.text.clone()).collect();
        for fact in &self.facts {
            text.push(claim(fact));
        }
        text.extend(crate::responses::fixed_sentences().iter().map(|s| s.to_string()));
        let mut words: Vec<String> = text.iter().flat_map(|t| t.split_whitespace().map(str::to_string)).collect();
        words.sort();
        words.dedup();
        words
    }
}

/// Bundled text in plain English: punctuation attached, sentences and names capitalised
/// ("the capital of france is paris . i hope this helps ." → "The capital of France is Paris.
/// I hope this helps."). Natural text comes back unchanged.
pub fn naturalise(facts: &[Fact], text: &str) -> String {
    let names: Vec<&str> = facts
        .iter()
        .filter(|f| f.category == Category::Capital)
        .flat_map(|f| [f.subject.as_str(), f.value.as_str()])
        .collect();
    let mut out = String::new();
    let mut sentence_start = true;
    for word in text.split_whitespace() {
        if matches!(word, "." | "?" | "!" | ",") {
            out.push_str(word);
            sentence_start = word != ",";
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        let capitalise = sentence_start || word == "i" || names.contains(&word);
        let mut chars = word.chars();
        if let (true, Some(first)) = (capitalise, chars.next()) {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        } else {
            out.push_str(word);
        }
        sentence_start = false;
    }
    out
}
