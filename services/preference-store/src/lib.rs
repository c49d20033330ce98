//! The preference store: K-way rankings kept whole, with annotator and time; pairs are derived
//! from them on the way out and never stored instead of them.
//!
//! # Layout
//! - [`PreferenceStore`]: the operations every backend offers (the gRPC service wraps it).
//! - [`SqliteStore`]: the embedded default, one SQLite file.
//! - `service`: the store as a gRPC service; [`RemoteStore`]: its client, behind the same trait.
//! - [`tasks`]: ranking tasks for people, each assigned to N annotators under expiring leases,
//!   and the annotators themselves (tokens stored hashed).
//! - [`activity`]: per annotator, tasks ranked, skipped and flagged and the time they take.
//! - [`web`]: the labeling app over the task board: the ranking page and the admin dashboard
//!   (static files in `web/`, compiled in) and their HTTP API (sessions, CSRF, CSP).
//! - [`quality`]: whether the rankings can be trusted, per annotator and overall (agreement with
//!   gold and with peers, position bias), with [`alpha`]: Krippendorff's alpha.
//!
//! **Architecture invariant:** only this crate speaks SQL. A ranking that fails validation, or
//! names an unknown prompt, is refused before anything is written; a valid one is written in a
//! single transaction.

pub mod activity;
pub mod alpha;
pub mod quality;
mod remote;
mod service;
mod sqlite;
pub mod tasks;
#[cfg(test)]
mod tasks_tests;
pub mod web;
#[cfg(test)]
mod web_tests;

pub use remote::RemoteStore;
pub use service::{PreferenceServiceConfig, run};
pub use sqlite::SqliteStore;

use rlhf_types::{InvalidRanking, Pair, Ranking};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ranking: {0}")]
    Invalid(#[from] InvalidRanking),
    #[error("unknown prompt id {0:?}")]
    UnknownPrompt(String),
    #[error("ranking {0:?} is already stored")]
    DuplicateRanking(String),
    #[error("preference store: {0}")]
    Storage(String),
    /// The preference service refused a request as invalid (its message says why).
    #[error("refused by the preference service: {0}")]
    Rejected(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Counts over the whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub rankings: u64,
    pub pairs: u64,
    pub prompts: u64,
    pub annotators: u64,
}

/// What a preference backend offers.
pub trait PreferenceStore: Send {
    /// Makes prompt ids known; rankings of unknown prompts are refused.
    fn register_prompts(&mut self, prompts: &[(String, String)]) -> Result<()>;
    /// Validates and stores one ranking, whole.
    fn submit(&mut self, ranking: &Ranking) -> Result<()>;
    /// Every registered prompt as `(prompt_id, text)`, in id order.
    fn prompts(&self) -> Result<Vec<(String, String)>>;
    /// Rankings in the order they were stored, optionally of one prompt.
    fn rankings(&self, prompt_id: Option<&str>) -> Result<Vec<Ranking>>;
    /// Every stored ranking expanded into its C(K, 2) pairs.
    fn pairs(&self) -> Result<Vec<Pair>> {
        Ok(self.rankings(None)?.iter().flat_map(Ranking::pairs).collect())
    }
    fn stats(&self) -> Result<Stats>;
}

#[cfg(test)]
mod tests;
