//! Files in the layouts the field uses, so checkpoints open in `transformers` and data sets
//! move between tools.
//!
//! # Layout
//! - [`tokenizer`]: `ChatTokenizer`, a Hugging Face `tokenizer.json` plus the chat format.
//! - [`checkpoint`]: a checkpoint directory: `model.safetensors`, `config.json`, `tokenizer.json`,
//!   written atomically.
//! - [`jsonl`]: append-only JSON lines (metrics) and reading them back.

pub mod checkpoint;
pub mod jsonl;
pub mod tokenizer;

pub use checkpoint::{Checkpoint, load_checkpoint, save_checkpoint};
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
