//! Files in the layouts the field uses, so checkpoints move between rlhf, `transformers`, vLLM
//! and llama.cpp, and data sets between rlhf and TRL.
//!
//! # Layout
//! - [`checkpoint`]: model folders in and out (`config.json`, safetensors, tokenizer files), and
//!   GGUF files in; policies as `*ForCausalLM`, reward models as `*ForSequenceClassification`.
//! - [`safetensors_io`]: single-file and sharded safetensors, memory-mapped, widened to f32.
//! - [`gguf`]: llama.cpp's format: dequantization, tensor names, the Q/K permutation, the tokenizer.
//! - [`tokenizer`]: `ChatTokenizer`, a `tokenizer.json` with its special tokens and chat template.
//! - [`chat_template`]: Jinja chat templates rendered as `transformers` renders them.
//! - [`datasets`]: TRL's JSON Lines formats (prompts, SFT, preference pairs and rankings), validated.
//! - [`jsonl`]: append-only JSON lines (metrics) and reading them back.

pub mod chat_template;
pub mod checkpoint;
pub mod datasets;
pub mod gguf;
pub mod jsonl;
pub mod safetensors_io;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, Message};
pub use checkpoint::{
    Checkpoint, ModelKind, SaveDtype, SaveOptions, ScoreNormalizer, load_checkpoint, save_checkpoint, varmap_tensors,
};
pub use tokenizer::ChatTokenizer;

/// Everything that can go wrong reading or writing project files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

pub(crate) fn format_error(path: &std::path::Path, message: impl std::fmt::Display) -> Error {
    Error::Format { path: path.display().to_string(), message: message.to_string() }
}

#[cfg(test)]
mod tests;
