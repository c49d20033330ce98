//! A Hugging Face tokenizer together with its special tokens and chat template: everything the
//! stages need to turn a conversation into token ids and back.
//!
//! Any `tokenizer.json` loads (byte-level BPE, SentencePiece-style BPE or Unigram, WordPiece,
//! WordLevel) through the tokenizers crate; the special tokens come from `tokenizer_config.json`
//! (with `config.json` and `generation_config.json` as fallbacks), the chat template from
//! `chat_template.jinja` or `tokenizer_config.json`, as `transformers` reads them. A GGUF file
//! carries the same information in its metadata.
//!
//! The chat format is always the template's: a prompt is the conversation rendered with
//! `add_generation_prompt`, a response is what the template appends for the assistant's turn, up
//! to and including its end-of-turn token. Generation stops at that token as well as at `eos`.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::chat_template::{ChatTemplate, Message, TemplateTokens};
use crate::{Result, format_error, io_error};

pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const EOS: &str = "<eos>";
pub const USER: &str = "<|user|>";
pub const ASSISTANT: &str = "<|assistant|>";
const SPECIALS: [&str; 5] = [PAD, UNK, EOS, USER, ASSISTANT];

/// The bundled world's chat format, `<|user|> {prompt} <|assistant|> {response} <eos>`, as a
/// template, so that it goes through the same path as every other model's.
pub const BUNDLED_CHAT_TEMPLATE: &str = "{% for message in messages %}\
{% if message['role'] == 'user' %}{{ '<|user|> ' + message['content'] + ' ' }}\
{% elif message['role'] == 'assistant' %}{{ '<|assistant|> ' + message['content'] + ' ' + eos_token + ' ' }}\
{% else %}{{ raise_exception('the bundled chat format has only user and assistant turns') }}{% endif %}\
{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

/// Stands in for a response while the template's framing of the assistant turn is worked out.
const SENTINEL: &str = "\u{1}RLHF-RESPONSE\u{1}";

/// A tokenizer with its special tokens and chat template.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    inner: Tokenizer,
    template: Option<ChatTemplate>,
    tokens: TemplateTokens,
    /// Fills padding; the tokenizer's pad token, or `eos` where it has none (as TRL does).
    pub pad_id: u32,
    pub eos_id: u32,
    pub bos_id: Option<u32>,
    /// The token the template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`, …).
    pub end_of_turn_id: Option<u32>,
    /// Generation stops at any of these: `eos`, the end-of-turn token, and the ids
    /// `generation_config.json` lists.
    pub stop_ids: Vec<u32>,
    /// `tokenizer_config.json` as read, so that saving keeps the fields we do not interpret.
    config: serde_json::Map<String, Value>,
}

/// Where the special tokens were found, before they are resolved to ids.
#[derive(Debug, Default)]
pub struct SpecialSources {
    pub tokens: TemplateTokens,
    /// Ids from `config.json` / GGUF metadata, used where no token string is given.
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Extra stop ids (generation_config.json).
    pub extra_stop_ids: Vec<u32>,
}

impl ChatTokenizer {
    /// A word-level tokenizer over `words` (plus the special tokens, which take ids 0–4) with the
    /// bundled chat template.
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
        let origin = Path::new("<built tokenizer>");
        let inner = Tokenizer::from_str(&spec.to_string()).map_err(|e| format_error(origin, e))?;
        let sources = SpecialSources {
            tokens: TemplateTokens {
                bos_token: None,
                eos_token: Some(EOS.into()),
                pad_token: Some(PAD.into()),
                unk_token: Some(UNK.into()),
            },
            ..SpecialSources::default()
        };
        let template = ChatTemplate::new(BUNDLED_CHAT_TEMPLATE).map_err(|e| format_error(origin, e))?;
        Self::assemble(inner, Some(template), sources, serde_json::Map::new(), origin)
    }

    /// Reads the tokenizer of a Hugging Face model folder: `tokenizer.json`, plus
    /// `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json` where present.
    /// `model_config` (the folder's `config.json`) supplies special-token ids the tokenizer files
    /// leave out.
    pub fn from_dir(dir: &Path, model_config: Option<&rlhf_model::Config>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(format_error(
                dir,
                "no tokenizer.json (rlhf reads fast tokenizers only; save one with transformers' \
                 `AutoTokenizer.from_pretrained(...).save_pretrained(...)`)",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let inner = Tokenizer::from_str(&text).map_err(|e| format_error(&path, e))?;

        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Map<String, Value> = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
            serde_json::from_str(&text).map_err(|e| format_error(&config_path, e))?
        } else {
            serde_json::Map::new()
        };
        let token = |key: &str| match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        let mut sources = SpecialSources {
            tokens: TemplateTokens {
                bos_token: token("bos_token"),
                eos_token: token("eos_token"),
                pad_token: token("pad_token"),
                unk_token: token("unk_token"),
            },
            ..SpecialSources::default()
        };
        if let Some(cfg) = model_config {
            sources.bos_id = cfg.bos_token_id;
            sources.eos_ids = cfg.eos_token_id.as_ref().map(|e| e.to_vec()).unwrap_or_default();
            sources.pad_id = cfg.pad_token_id;
        }
        let generation = dir.join("generation_config.json");
        if generation.exists() {
            let text = std::fs::read_to_string(&generation).map_err(io_error(&generation))?;
            let value: Value = serde_json::from_str(&text).map_err(|e| format_error(&generation, e))?;
            match value.get("eos_token_id") {
                Some(Value::Number(n)) => sources.extra_stop_ids.extend(n.as_u64().map(|n| n as u32)),
                Some(Value::Array(ids)) => {
                    sources.extra_stop_ids.extend(ids.iter().filter_map(Value::as_u64).map(|n| n as u32))
                }
                _ => {}
            }
        }

        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some((std::fs::read_to_string(&jinja).map_err(io_error(&jinja))?, jinja))
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => Some((s.clone(), config_path.clone())),
                // The older multi-template layout: a list of {name, template}; "default" is the chat one.
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(|s| (s.to_string(), config_path.clone())),
                _ => None,
            }
        };
        let mut template = match source {
            Some((source, origin)) => Some(ChatTemplate::new(&source).map_err(|e| format_error(&origin, e))?),
            None => None,
        };
        // Checkpoints of the bundled task written before chat templates: same tokens, same format.
        if template.is_none() && inner.token_to_id(USER).is_some() && inner.token_to_id(ASSISTANT).is_some() {
            template = Some(ChatTemplate::new(BUNDLED_CHAT_TEMPLATE).map_err(|e| format_error(&path, e))?);
            sources.tokens.eos_token.get_or_insert_with(|| EOS.into());
            sources.tokens.pad_token.get_or_insert_with(|| PAD.into());
        }
        Self::assemble(inner, template, sources, config, dir)
    }

    /// Resolves special tokens to ids and works out the template's end-of-turn token.
    pub fn assemble(
        inner: Tokenizer,
        template: Option<ChatTemplate>,
        mut sources: SpecialSources,
        config: serde_json::Map<String, Value>,
        origin: &Path,
    ) -> Result<Self> {
        let id_of = |token: &Option<String>, what: &str| -> Result<Option<u32>> {
            match token {
                None => Ok(None),
                Some(t) => inner
                    .token_to_id(t)
                    .map(Some)
                    .ok_or_else(|| format_error(origin, format!("{what} {t:?} is not in the vocabulary"))),
            }
        };
        let text_of = |id: u32| inner.id_to_token(id);
        let eos_id = match id_of(&sources.tokens.eos_token, "eos_token")? {
            Some(id) => id,
            None => *sources.eos_ids.first().ok_or_else(|| {
                format_error(origin, "no eos_token: set it in tokenizer_config.json or eos_token_id in config.json")
            })?,
        };
        let bos_id = id_of(&sources.tokens.bos_token, "bos_token")?.or(sources.bos_id);
        let pad_id = id_of(&sources.tokens.pad_token, "pad_token")?.or(sources.pad_id).unwrap_or(eos_id);
        sources.tokens.eos_token.get_or_insert_with(|| text_of(eos_id).unwrap_or_default());
        if sources.tokens.bos_token.is_none() {
            sources.tokens.bos_token = bos_id.and_then(text_of);
        }
        if sources.tokens.pad_token.is_none() {
            sources.tokens.pad_token = text_of(pad_id);
        }
        let mut tokenizer = ChatTokenizer {
            inner,
            template,
            tokens: sources.tokens,
            pad_id,
            eos_id,
            bos_id,
            end_of_turn_id: None,
            stop_ids: vec![],
            config,
        };
        tokenizer.end_of_turn_id = tokenizer.find_end_of_turn().map_err(|e| format_error(origin, e))?;
        let mut stops = BTreeSet::from([eos_id]);
        stops.extend(tokenizer.end_of_turn_id);
        stops.extend(sources.eos_ids);
        stops.extend(sources.extra_stop_ids);
        tokenizer.stop_ids = stops.into_iter().collect();
        Ok(tokenizer)
    }

    /// The first added (special) token the template writes after an assistant's content.
    fn find_end_of_turn(&self) -> std::result::Result<Option<u32>, String> {
        let Some(template) = &self.template else { return Ok(None) };
        let text = template.render(&[Message::user("Hi"), Message::assistant(SENTINEL)], false, &self.tokens)?;
        let Some(at) = text.find(SENTINEL) else {
            return Err("the chat template drops the assistant's reply".into());
        };
        let tail = &text[at + SENTINEL.len()..];
        let added = self.inner.get_added_tokens_decoder();
        let ids = self.encode(tail).map_err(|e| e.to_string())?;
        Ok(ids.into_iter().find(|id| added.contains_key(id)))
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`), as llama.cpp
    /// and `transformers` read it.
    pub fn from_gguf(content: &candle_core::quantized::gguf_file::Content, origin: &Path) -> Result<Self> {
        crate::gguf::tokenizer(content, origin)
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (special tokens and chat template, plus
    /// whatever the source's config held) and `chat_template.jinja` into `dir`, so that
    /// `AutoTokenizer.from_pretrained(dir)` and `apply_chat_template` work there.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        self.inner.save(&path, true).map_err(|e| format_error(&path, e))?;
        let mut config = self.config.clone();
        config.entry("tokenizer_class").or_insert(json!("PreTrainedTokenizerFast"));
        config.entry("clean_up_tokenization_spaces").or_insert(json!(false));
        config.entry("model_max_length").or_insert(json!(1_000_000_000_000u64));
        config.remove("added_tokens_decoder");
        for (key, value) in [
            ("bos_token", &self.tokens.bos_token),
            ("eos_token", &self.tokens.eos_token),
            ("pad_token", &self.tokens.pad_token),
            ("unk_token", &self.tokens.unk_token),
        ] {
            match value {
                Some(v) => config.insert(key.into(), json!(v)),
                None => config.remove(key),
            };
        }
        match &self.template {
            Some(t) => {
                config.insert("chat_template".into(), json!(t.source()));
                let jinja = dir.join("chat_template.jinja");
                std::fs::write(&jinja, t.source()).map_err(io_error(&jinja))?;
            }
            None => {
                config.remove("chat_template");
            }
        }
        let config_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|e| format_error(&config_path, e))?;
        std::fs::write(&config_path, text).map_err(io_error(&config_path))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The special-token strings (`bos_token`, `eos_token`, …).
    pub fn special_tokens(&self) -> &TemplateTokens {
        &self.tokens
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The underlying tokenizers-crate tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of plain text; no special tokens are added (special-token text in `text`, such
    /// as `<|im_start|>`, still maps to its id, as in `transformers`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| format_error(Path::new("<encode>"), e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of a raw (non-chat) prompt, with whatever special tokens the tokenizer's
    /// post-processor adds (a leading `<s>` for Llama 2, nothing for SmolLM2), as
    /// `tokenizer(text)` does in `transformers`.
    pub fn encode_raw_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, true).map_err(|e| format_error(Path::new("<encode>"), e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| format_error(Path::new("<decode>"), e))
    }

    fn require_template(&self) -> Result<&ChatTemplate> {
        self.template.as_ref().ok_or_else(|| {
            format_error(
                Path::new("<tokenizer>"),
                "this model has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json); \
                 add one, or use raw prompts",
            )
        })
    }

    /// The conversation rendered by the chat template; with `add_generation_prompt` the text
    /// ends where the assistant's reply begins.
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.require_template()?
            .render(messages, add_generation_prompt, &self.tokens)
            .map_err(|e| format_error(Path::new("<chat template>"), e))
    }

    /// The ids a policy continues: `messages` (ending with a user turn) with the generation prompt.
    pub fn encode_chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, true)?)
    }

    /// A single user turn as a prompt.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode_chat_prompt(&[Message::user(prompt)])
    }

    /// The tokens a policy should produce to answer `prompt` with `response`: what the template
    /// adds for the assistant turn, through its end-of-turn token (or `eos`, appended when the
    /// template writes none).
    pub fn encode_completion(&self, prompt: &[Message], response: &str) -> Result<Vec<u32>> {
        let before = self.apply_chat_template(prompt, true)?;
        let mut conversation = prompt.to_vec();
        conversation.push(Message::assistant(response));
        let after = self.apply_chat_template(&conversation, false)?;
        let Some(tail) = after.strip_prefix(&before) else {
            return Err(format_error(
                Path::new("<chat template>"),
                "the chat template renders the prompt differently once the reply is added, \
                 so the reply's tokens cannot be told apart",
            ));
        };
        let mut ids = self.encode(tail)?;
        let stop = self.end_of_turn_id.unwrap_or(self.eos_id);
        match ids.iter().position(|&id| id == stop) {
            Some(at) => ids.truncate(at + 1),
            None => ids.push(self.eos_id),
        }
        Ok(ids)
    }

    /// A single-turn exchange as (prompt ids, response ids).
    pub fn encode_exchange(&self, prompt: &str, response: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let messages = [Message::user(prompt)];
        Ok((self.encode_chat_prompt(&messages)?, self.encode_completion(&messages, response)?))
    }
}
