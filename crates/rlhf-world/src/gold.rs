//! The hidden gold preference: what the people RLHF serves actually want.
//!
//! Correct beats wrong; among correct answers, concise beats verbose; an honest refusal beats a
//! wrong answer but loses to a correct one; off-topic loses to everything.
//! Responses are judged from their text alone, so anything a policy generates gets a verdict.

use serde::{Deserialize, Serialize};

use crate::facts::{Fact, values_of};
use crate::prompts::{Phrasing, World, claim};
use crate::responses::REFUSALS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerType {
    Correct,
    Verbose,
    Refusal,
    Wrong,
    OffTopic,
}

impl AnswerType {
    pub const ALL: [AnswerType; 5] =
        [AnswerType::Correct, AnswerType::Verbose, AnswerType::Refusal, AnswerType::Wrong, AnswerType::OffTopic];

    pub fn name(self) -> &'static str {
        match self {
            AnswerType::Correct => "correct",
            AnswerType::Verbose => "verbose",
            AnswerType::Refusal => "refusal",
            AnswerType::Wrong => "wrong",
            AnswerType::OffTopic => "off_topic",
        }
    }
}

/// The sentences of a response in the world's phrasing.
pub fn sentences_of(world: &World, text: &str) -> Vec<String> {
    match world.phrasing {
        Phrasing::Bundled => sentences(text),
        Phrasing::Natural => crate::free_text::sentences(text),
    }
}

/// Splits bundled text into sentences ending in ".", "?" or "!" (the end token is kept).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut current: Vec<&str> = vec![];
    for word in text.split_whitespace() {
        current.push(word);
        if matches!(word, "." | "?" | "!") {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

/// What kind of answer `response` is to a question about `fact`, judged as the world's phrasing
/// asks: free text by [`crate::free_text::classify_free_text`], bundled text by its first
/// sentence: exactly the correct claim is correct (verbose if more sentences follow), a refusal
/// is a refusal, a sentence naming another value of the category is wrong, anything else off-topic.
pub fn classify(world: &World, fact: &Fact, response: &str) -> AnswerType {
    if world.phrasing == Phrasing::Natural {
        return crate::free_text::classify_free_text(world, fact, response);
    }
    let sentences = sentences(response);
    let Some(first) = sentences.first() else {
        return AnswerType::OffTopic;
    };
    if *first == claim(fact) {
        return if sentences.len() > 1 { AnswerType::Verbose } else { AnswerType::Correct };
    }
    if REFUSALS.contains(&first.as_str()) {
        return AnswerType::Refusal;
    }
    let words: Vec<&str> = first.split_whitespace().collect();
    let names_other_value =
        values_of(&world.facts, fact.category).iter().any(|v| *v != fact.value && words.contains(&v.as_str()));
    if names_other_value { AnswerType::Wrong } else { AnswerType::OffTopic }
}

/// The gold utility of an answer type. Its order is the gold preference; its gaps set how
/// reliably noisy annotators agree with it. A confident mistake sits two steps below an honest
/// refusal, as annotation guidelines that treat hallucination as harmful would put it.
pub fn utility(answer: AnswerType) -> f64 {
    match answer {
        AnswerType::Correct => 3.0,
        AnswerType::Verbose => 2.0,
        AnswerType::Refusal => 1.0,
        AnswerType::Wrong => -1.0,
        AnswerType::OffTopic => -2.0,
    }
}

/// Gold comparison of two responses to the same question: 1 if `a` is preferred, 0.5 for a
/// tie, 0 otherwise.
pub fn gold_win(world: &World, fact: &Fact, a: &str, b: &str) -> f64 {
    let (ua, ub) = (utility(classify(world, fact, a)), utility(classify(world, fact, b)));
    if ua > ub {
        1.0
    } else if ua == ub {
        0.5
    } else {
        0.0
    }
}
