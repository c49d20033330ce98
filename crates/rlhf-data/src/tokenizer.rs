//! A word-level Hugging Face tokenizer and the chat format around it.
//!
//! The chat format is `<|user|> {prompt} <|assistant|> {response} <eos>`. The tokenizer is a
//! real `tokenizer.json` (WordLevel model, whitespace pre-tokenizer, special tokens as added
//! tokens), so `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads it too.

use std::path::Path;
use std::str::FromStr;

use serde_json::json;
use tokenizers::Tokenizer;

use crate::{Result, format_error, io_error};

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const EOS: &str = "<eos>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
const SPECIALS: [&str; 5] = [PAD, UNK, EOS, USER, ASSISTANT];

/// A tokenizer with the ids of the chat format's special tokens.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    inner: Tokenizer,
    pub pad_id: u32,
    pub eos_id: u32,
    pub user_id: u32,
    pub assistant_id: u32,
}

impl ChatTokenizer {
    /// A word-level tokenizer over `words` (plus the special tokens, which take ids 0–4).
    pub fn word_level(words: &[String]) -> Result<Self> {
        let mut vocab = serde_json::Map::new();
        for (id, token) in SPECIALS.iter().map(|s| s.to_string()).chain(words.iter().cloned()).enumerate() {
            vocab.entry(token).or_insert(json!(id));
        }
        let added: Vec<_> = SPECIALS
            .iter()
            .enumerate()
            .map(|(id, s)| {
                json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": true})
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        });
        let inner = Tokenizer::from_str(&spec.to_string())
            .map_err(|e| format_error(Path::new("<built tokenizer>"), e.to_string()))?;
        Self::from_tokenizer(inner, Path::new("<built tokenizer>"))
    }

    fn from_tokenizer(inner: Tokenizer, path: &Path) -> Result<Self> {
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| format_error(path, format!("special token {token} missing")))
        };
        Ok(ChatTokenizer {
            pad_id: id(PAD)?,
            eos_id: id(EOS)?,
            user_id: id(USER)?,
            assistant_id: id(ASSISTANT)?,
            inner,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let inner = Tokenizer::from_str(&text).map_err(|e| format_error(path, e.to_string()))?;
        Self::from_tokenizer(inner, path)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, true).map_err(|e| format_error(path, e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of plain text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding =
            self.inner.encode(text, false).map_err(|e| format_error(Path::new("<encode>"), e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `<|user|> prompt <|assistant|>`: what the policy continues.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.user_id];
        ids.extend(self.encode(prompt)?);
        ids.push(self.assistant_id);
        Ok(ids)
    }

    /// `response <eos>`: the tokens a policy should produce.
    pub fn encode_response(&self, response: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(response)?;
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| format_error(Path::new("<decode>"), e.to_string()))
    }
}
