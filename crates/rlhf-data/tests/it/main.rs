//! rlhf-data against the outside world: Hugging Face checkpoints and tokenizers as
//! `transformers` reads them, GGUF files, and checkpoints written back out.

mod bad_inputs;
mod datasets;
mod export;
mod fuzz;
mod gguf;
mod helpers;
mod hf_tiny;
mod smollm2;
