//! Preference data in and out of a store, in the JSON Lines formats TRL documents: what lets a
//! reward model train on rankings someone already has, and lets anyone train on ours.
//!
//! Import keeps every judgement whole (a pair is a K = 2 ranking). Ids are hashes of content, so
//! importing a file twice stores nothing new: every ranking of the second pass is a duplicate,
//! refused by the store and counted. The whole file is validated before anything is stored.
//!
//! Rankings imported from files carry text only (no token ids): the reward-model stage encodes
//! them with the run's tokenizer and chat template.

use std::collections::HashMap;
use std::path::Path;

use preference_store::PreferenceStore;
use rlhf_data::chat_template::Message;
use rlhf_data::datasets::{Conversation, PreferenceRecord, prompt_from_text, prompt_to_text, read_preferences};
use rlhf_types::{RankedResponse, Ranking};
use serde::Serialize;

use crate::Result;
use crate::collect::{fnv, now_ms};

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Records in the file.
    pub records: usize,
    /// Rankings stored by this import.
    pub stored: usize,
    /// Records the store already held (from an earlier import, or twice in this file).
    pub duplicates: usize,
    /// Distinct prompts among the records.
    pub prompts: usize,
}

/// A prompt or a reply as TRL spells it: plain text, or a list of messages (conversational).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TrlText {
    Text(String),
    Messages(Conversation),
}

/// One line of TRL's preference format (explicit prompt), with who judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairLine {
    pub prompt: TrlText,
    pub chosen: TrlText,
    pub rejected: TrlText,
    pub annotator: String,
}

/// One whole ranking: the responses as shown and their order, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankingLine {
    pub prompt: TrlText,
    pub responses: Vec<TrlText>,
    pub ranking: Vec<usize>,
    pub annotator: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Lines written.
    pub written: usize,
    /// Pairs left out because chosen and rejected are the same text (their order says nothing a
    /// reward model can learn from text; TRL would train on them as noise).
    pub identical_dropped: usize,
}

/// The prompt id an imported prompt gets: a hash of its stored text, so the same prompt from
/// two files is one prompt.
pub fn imported_prompt_id(prompt_text: &str) -> String {
    format!("prompt-{:016x}", fnv(prompt_text))
}

/// The ranking one record becomes; `default_annotator` stands in where the record names none.
pub fn ranking_of_record(record: &PreferenceRecord, default_annotator: &str) -> Ranking {
    let prompt_text = prompt_to_text(&record.prompt);
    let annotator = record.annotator.clone().unwrap_or_else(|| default_annotator.to_string());
    let fingerprint = serde_json::to_string(&(&prompt_text, &record.responses, &record.ranking, &annotator))
        .expect("strings and indices serialise");
    let ranking_id = format!("import-{:016x}", fnv(&fingerprint));
    Ranking {
        prompt_id: imported_prompt_id(&prompt_text),
        responses: record
            .responses
            .iter()
            .enumerate()
            .map(|(i, text)| RankedResponse {
                response_id: format!("{ranking_id}-{i}"),
                text: text.clone(),
                tokens: vec![],
            })
            .collect(),
        order: record.ranking.clone(),
        annotator_id: annotator,
        created_unix_ms: now_ms(),
        ranking_id,
    }
}

/// Reads, validates and stores the preference file at `path`. Records without an annotator
/// are attributed to `import:<file name>`.
pub fn import(path: &Path, store: &mut dyn PreferenceStore) -> Result<ImportReport> {
    let records = read_preferences(path)?;
    let source = format!(
        "import:{}",
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into())
    );
    let rankings: Vec<Ranking> = records.iter().map(|r| ranking_of_record(r, &source)).collect();
    for (ranking, line) in rankings.iter().zip(1..) {
        ranking.validate().map_err(|e| rlhf_data::Error::Format {
            path: path.display().to_string(),
            message: format!("record {line}: {e}"),
        })?;
    }
    let mut prompts: Vec<(String, String)> =
        records.iter().map(|r| prompt_to_text(&r.prompt)).map(|text| (imported_prompt_id(&text), text)).collect();
    prompts.sort();
    prompts.dedup();
    store.register_prompts(&prompts)?;
    let mut report = ImportReport { records: records.len(), stored: 0, duplicates: 0, prompts: prompts.len() };
    for ranking in &rankings {
        match store.submit(ranking) {
            Ok(()) => report.stored += 1,
            Err(preference_store::Error::DuplicateRanking(_)) => report.duplicates += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(report)
}

/// The store's rankings as TRL preference pairs (`prompt`, `chosen`, `rejected`, plus
/// `annotator`), one line per pair; conversational where the prompt is a conversation.
pub fn export_pairs(store: &dyn PreferenceStore) -> Result<(Vec<PairLine>, ExportReport)> {
    let prompts = prompt_texts(store)?;
    let mut lines = vec![];
    let mut identical_dropped = 0;
    for ranking in store.rankings(None)? {
        let prompt = prompt_of(&prompts, &ranking.prompt_id);
        for pair in ranking.pairs() {
            if pair.chosen.text == pair.rejected.text {
                identical_dropped += 1;
                continue;
            }
            lines.push(PairLine {
                prompt: prompt.field.clone(),
                chosen: prompt.reply(&pair.chosen.text),
                rejected: prompt.reply(&pair.rejected.text),
                annotator: ranking.annotator_id.clone(),
            });
        }
    }
    let report = ExportReport { written: lines.len(), identical_dropped };
    Ok((lines, report))
}

/// One line per ranking, whole: `prompt`, `responses` (as shown), `ranking` (best first), `annotator`.
pub fn export_rankings(store: &dyn PreferenceStore) -> Result<(Vec<RankingLine>, ExportReport)> {
    let prompts = prompt_texts(store)?;
    let lines: Vec<RankingLine> = store
        .rankings(None)?
        .into_iter()
        .map(|ranking| {
            let prompt = prompt_of(&prompts, &ranking.prompt_id);
            RankingLine {
                responses: ranking.responses.iter().map(|r| prompt.reply(&r.text)).collect(),
                prompt: prompt.field,
                ranking: ranking.order,
                annotator: ranking.annotator_id,
            }
        })
        .collect();
    let report = ExportReport { written: lines.len(), identical_dropped: 0 };
    Ok((lines, report))
}

fn prompt_texts(store: &dyn PreferenceStore) -> Result<HashMap<String, String>> {
    Ok(store.prompts()?.into_iter().collect())
}

/// A prompt as an exported line spells it, and how its replies are spelled to match (TRL wants
/// both in the same layout: text with text, messages with messages).
struct ExportedPrompt {
    field: TrlText,
    conversational: bool,
}

impl ExportedPrompt {
    fn reply(&self, text: &str) -> TrlText {
        if self.conversational {
            TrlText::Messages(vec![Message::new("assistant", text)])
        } else {
            TrlText::Text(text.to_string())
        }
    }
}

fn prompt_of(prompts: &HashMap<String, String>, prompt_id: &str) -> ExportedPrompt {
    let text = prompts.get(prompt_id).map_or("", String::as_str);
    let conversation: Conversation = prompt_from_text(text);
    match conversation.as_slice() {
        [m] if m.role == "user" => ExportedPrompt { field: TrlText::Text(m.content.clone()), conversational: false },
        _ => ExportedPrompt { field: TrlText::Messages(conversation), conversational: true },
    }
}
