//! Data sets in the JSON Lines formats TRL documents, read and validated line by line.
//!
//! - prompts: `{"prompt": "..."}` or `{"messages": [...]}` (a conversation ending with a user turn);
//! - SFT: `{"messages": [...]}` (ending with the assistant's turn) or `{"prompt": ..., "completion": ...}`;
//! - preferences: `{"prompt", "chosen", "rejected"}` with text or message lists (TRL's explicit
//!   prompt), `{"chosen": [...], "rejected": [...]}` as whole conversations that share their
//!   prompt (TRL's implicit prompt), and whole rankings
//!   `{"prompt", "responses": [...], "ranking": [...]}` for K > 2, where `ranking` lists the
//!   responses' indices best first.
//!
//! A line that is not JSON, lacks a field, has a field of the wrong type or a conversation that
//! ends with the wrong role is an error naming the file and the line; nothing of a file is used
//! unless all of it is valid. Unknown fields are ignored, as TRL ignores extra columns.

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat_template::Message;
use crate::{Result, format_error, io_error};

/// A prompt: the conversation so far, ending with a user turn.
pub type Conversation = Vec<Message>;

/// One supervised example: the conversation and the assistant's reply to learn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftExample {
    pub prompt: Conversation,
    pub completion: String,
}

/// One human judgement: K responses to a prompt and their order, best first (K = 2 for a pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceRecord {
    pub prompt: Conversation,
    pub responses: Vec<String>,
    /// Indices into `responses`, best first: a permutation of `0..K`.
    pub ranking: Vec<usize>,
    /// Who judged, where the file says (`annotator` or `annotator_id`).
    pub annotator: Option<String>,
}

/// Reads a prompt file.
pub fn read_prompts(path: &Path) -> Result<Vec<Conversation>> {
    read_lines(path, prompt_of_line)
}

/// Reads an SFT file.
pub fn read_sft(path: &Path) -> Result<Vec<SftExample>> {
    read_lines(path, |v| {
        if let Some(messages) = v.get("messages") {
            let mut conversation = conversation(messages, "messages")?;
            let last = conversation
                .pop()
                .filter(|m| m.role == "assistant")
                .ok_or("\"messages\" must end with the assistant's turn (the reply SFT learns)".to_string())?;
            check_prompt(&conversation, "messages before the last")?;
            return Ok(SftExample { prompt: conversation, completion: last.content });
        }
        let prompt = prompt_field(v)?;
        let completion = reply(field(v, "completion")?, "completion")?;
        Ok(SftExample { prompt, completion })
    })
}

/// Reads a preference file: pairs (both TRL layouts) and rankings, mixed freely.
pub fn read_preferences(path: &Path) -> Result<Vec<PreferenceRecord>> {
    read_lines(path, |v| {
        let annotator =
            ["annotator", "annotator_id"].iter().find_map(|k| v.get(*k)).and_then(Value::as_str).map(String::from);
        if let Some(responses) = v.get("responses") {
            let prompt = prompt_field(v)?;
            let responses: Vec<String> = responses
                .as_array()
                .ok_or("\"responses\" must be a list")?
                .iter()
                .enumerate()
                .map(|(i, r)| reply(r, &format!("responses[{i}]")))
                .collect::<std::result::Result<_, _>>()?;
            let ranking: Vec<usize> = serde_json::from_value(field(v, "ranking")?.clone())
                .map_err(|_| "\"ranking\" must be a list of response indices, best first".to_string())?;
            check_ranking(&ranking, responses.len())?;
            return Ok(PreferenceRecord { prompt, responses, ranking, annotator });
        }
        let (chosen, rejected) = (field(v, "chosen")?, field(v, "rejected")?);
        let prompt = match v.get("prompt") {
            Some(_) => prompt_field(v)?,
            None => implicit_prompt(chosen, rejected)?,
        };
        let strip = |x: &Value, name: &str| -> std::result::Result<String, String> {
            match x {
                Value::Array(_) if v.get("prompt").is_none() => {
                    let mut whole = conversation(x, name)?;
                    Ok(whole.pop().map(|m| m.content).unwrap_or_default())
                }
                _ => reply(x, name),
            }
        };
        let responses = vec![strip(chosen, "chosen")?, strip(rejected, "rejected")?];
        Ok(PreferenceRecord { prompt, responses, ranking: vec![0, 1], annotator })
    })
}

/// A prompt as a preference store keeps it: the text of a single user turn, or the whole
/// conversation as a JSON list of messages (so system turns and history survive the store).
pub fn prompt_to_text(prompt: &[Message]) -> String {
    match prompt {
        [m] if m.role == "user" => m.content.clone(),
        _ => serde_json::to_string(prompt).expect("messages serialise"),
    }
}

/// The inverse of [`prompt_to_text`]: a JSON list of messages is a conversation, anything else
/// is the text of one user turn.
pub fn prompt_from_text(text: &str) -> Conversation {
    if text.trim_start().starts_with('[')
        && let Ok(messages) = serde_json::from_str::<Conversation>(text)
        && !messages.is_empty()
    {
        return messages;
    }
    vec![Message::user(text)]
}

/// Writes records as JSON lines (through a temporary file and a rename).
pub fn write_lines<T: Serialize>(path: &Path, records: impl IntoIterator<Item = T>) -> Result<()> {
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(&record).map_err(|e| format_error(path, e))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

fn read_lines<T>(path: &Path, parse: impl Fn(&Value) -> std::result::Result<T, String>) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut out = vec![];
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |message: String| format_error(path, format!("line {}: {message}", n + 1));
        let value: Value = serde_json::from_str(&line).map_err(|e| at(format!("not JSON ({e})")))?;
        if !value.is_object() {
            return Err(at("expected a JSON object".into()));
        }
        out.push(parse(&value).map_err(at)?);
    }
    if out.is_empty() {
        return Err(format_error(path, "holds no records"));
    }
    Ok(out)
}

fn field<'a>(v: &'a Value, name: &str) -> std::result::Result<&'a Value, String> {
    v.get(name).ok_or_else(|| format!("missing field \"{name}\""))
}

fn prompt_of_line(v: &Value) -> std::result::Result<Conversation, String> {
    if let Some(messages) = v.get("messages") {
        let conversation = conversation(messages, "messages")?;
        check_prompt(&conversation, "messages")?;
        return Ok(conversation);
    }
    prompt_field(v)
        .map_err(|e| if v.get("prompt").is_none() { "missing field \"prompt\" (or \"messages\")".into() } else { e })
}

/// The `prompt` field: text (one user turn) or a conversation ending with a user turn.
fn prompt_field(v: &Value) -> std::result::Result<Conversation, String> {
    match field(v, "prompt")? {
        Value::String(s) if !s.trim().is_empty() => Ok(vec![Message::user(s)]),
        Value::String(_) => Err("\"prompt\" is empty".into()),
        messages @ Value::Array(_) => {
            let conversation = conversation(messages, "prompt")?;
            check_prompt(&conversation, "prompt")?;
            Ok(conversation)
        }
        _ => Err("\"prompt\" must be text or a list of messages".into()),
    }
}

/// A reply: text, or a message list holding exactly one assistant turn.
fn reply(v: &Value, name: &str) -> std::result::Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(_) => match conversation(v, name)?.as_slice() {
            [m] if m.role == "assistant" => Ok(m.content.clone()),
            _ => Err(format!("\"{name}\" as messages must be a single assistant turn")),
        },
        _ => Err(format!("\"{name}\" must be text or a list of messages")),
    }
}

fn conversation(v: &Value, name: &str) -> std::result::Result<Conversation, String> {
    let messages: Vec<Message> = serde_json::from_value(v.clone())
        .map_err(|_| format!("\"{name}\" must be a list of {{\"role\", \"content\"}} messages"))?;
    if let Some(bad) = messages.iter().find(|m| !["system", "user", "assistant"].contains(&m.role.as_str())) {
        return Err(format!("\"{name}\" has a message with role {:?} (expected system, user or assistant)", bad.role));
    }
    if messages.is_empty() {
        return Err(format!("\"{name}\" is empty"));
    }
    Ok(messages)
}

fn check_prompt(conversation: &[Message], name: &str) -> std::result::Result<(), String> {
    match conversation.last() {
        Some(m) if m.role == "user" => Ok(()),
        Some(m) => Err(format!("\"{name}\" must end with a user turn, not {:?}", m.role)),
        None => Err(format!("\"{name}\" is empty")),
    }
}

/// TRL's implicit prompt: `chosen` and `rejected` are whole conversations that differ only in
/// the final assistant turn; the shared part is the prompt.
fn implicit_prompt(chosen: &Value, rejected: &Value) -> std::result::Result<Conversation, String> {
    if !chosen.is_array() {
        return Err("missing field \"prompt\" (text \"chosen\" and \"rejected\" need one)".into());
    }
    let (mut c, mut r) = (conversation(chosen, "chosen")?, conversation(rejected, "rejected")?);
    for (name, side) in [("chosen", c.pop()), ("rejected", r.pop())] {
        if side.is_none_or(|m| m.role != "assistant") {
            return Err(format!(
                "\"{name}\" without a \"prompt\" must be a conversation ending with the assistant's turn"
            ));
        }
    }
    if c != r {
        return Err("\"chosen\" and \"rejected\" must share every turn but the last (or give a \"prompt\")".into());
    }
    check_prompt(&c, "chosen")?;
    Ok(c)
}

fn check_ranking(ranking: &[usize], k: usize) -> std::result::Result<(), String> {
    if k < 2 {
        return Err(format!("a ranking needs at least 2 responses, got {k}"));
    }
    let mut seen = vec![false; k];
    for &i in ranking {
        if i >= k || std::mem::replace(&mut seen[i], true) {
            return Err(format!(
                "\"ranking\" {ranking:?} is not an order of the {k} responses (indices 0..{k}, each once)"
            ));
        }
    }
    if ranking.len() != k {
        return Err(format!("\"ranking\" orders {} of the {k} responses; rank all of them", ranking.len()));
    }
    Ok(())
}
