//! A model's Jinja chat template, rendered the way `transformers`' `apply_chat_template` does.
//!
//! Hugging Face renders templates with Jinja2 in a sandbox with `trim_blocks` and
//! `lstrip_blocks` on and the loop-controls extension, passing the conversation as `messages`,
//! `add_generation_prompt`, and the tokenizer's special tokens (`bos_token`, `eos_token`, …) as
//! strings. minijinja (what text-generation-inference uses) with the same settings, plus
//! minijinja-contrib's Python-compatible methods (`.strip()`, `.startswith()`, `.items()`) and a
//! `raise_exception` function, renders the templates published with Llama, Mistral, Qwen2 and
//! SmolLM2 checkpoints to the same text.

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

/// One turn of a conversation, as TRL's conversational datasets and chat templates spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.to_string(), content: content.to_string() }
    }

    pub fn user(content: &str) -> Self {
        Message::new("user", content)
    }

    pub fn assistant(content: &str) -> Self {
        Message::new("assistant", content)
    }
}

/// The special-token strings a template may refer to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        ChatTemplate::new(&self.source).expect("a template that compiled once compiles again")
    }
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax =
            SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| format!("chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate { source: source.to_string(), env })
    }

    /// The Jinja source, as found in `chat_template.jinja` or `tokenizer_config.json`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
    ) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => tokens.bos_token.as_deref(),
                eos_token => tokens.eos_token.as_deref(),
                pad_token => tokens.pad_token.as_deref(),
                unk_token => tokens.unk_token.as_deref(),
            })
            .map_err(|e| format!("chat template failed to render: {e:#}"))
    }
}
