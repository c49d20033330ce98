//! The bundled "assistant world": RLHF's classic failures in miniature, small enough to train
//! from scratch on two CPU cores in minutes.
//!
//! # Layout
//! - [`facts`]: the knowledge base (capitals, colours, animal sounds, small sums).
//! - [`prompts`]: templated questions about it and a fixed train / held-out split.
//! - [`responses`]: the five response styles SFT data mixes, and the SFT data set.
//! - [`gold`]: the hidden gold preference that stands in for people: it classifies a response
//!   and gives it a utility.
//! - [`free_text`]: the same gold preference judged on free text, for pretrained models that
//!   answer in their own words.
//! - [`annotators`]: simulated annotators that rank K responses with Plackett–Luce noise and
//!   an optional planted bias for longer answers.
//!
//! Text is lower-case words with punctuation as separate words ("the sky is blue ."), so a
//! whitespace word-level tokenizer covers it exactly.
//!
//! **Architecture invariant:** pure and seeded: no IO, every random choice takes a seed.

pub mod annotators;
pub mod facts;
pub mod free_text;
pub mod gold;
pub mod prompts;
pub mod responses;

pub use annotators::Annotator;
pub use facts::{Category, Fact, knowledge_base};
pub use free_text::classify_free_text;
pub use gold::{AnswerType, classify, utility};
pub use prompts::{Phrasing, Prompt, Split, World};
pub use responses::{Style, StyleMix, respond};

#[cfg(test)]
mod tests;
