//! The bundled task as the stages see it: the world, its tokenizer, and encoded prompts.

use policy_generator::PromptTokens;
use rlhf_data::ChatTokenizer;
use rlhf_model::{Config, SamplingParams};
use rlhf_world::{Prompt, Split, World};

use crate::Result;
use crate::config::PipelineConfig;
use crate::run_dir::RunDir;

/// The world of a run and its tokenizer.
#[derive(Debug, Clone)]
pub struct Task {
    pub world: World,
    pub tokenizer: ChatTokenizer,
}

impl Task {
    /// Rebuilds the world from the config (it is a pure function of it) and loads the run's
    /// tokenizer, creating it on first use.
    pub fn load(run: &RunDir, config: &PipelineConfig) -> Result<Task> {
        let world = World::new(config.world.held_out, config.seed);
        let path = run.path("tokenizer.json");
        let tokenizer = if path.exists() {
            ChatTokenizer::load(&path)?
        } else {
            let tokenizer = ChatTokenizer::word_level(&world.words())?;
            tokenizer.save(&path)?;
            tokenizer
        };
        Ok(Task { world, tokenizer })
    }

    /// The architecture of the run's policy.
    pub fn model_config(&self, config: &PipelineConfig) -> Config {
        let m = &config.model;
        let mut c = Config::tiny(
            self.tokenizer.vocab_size(),
            m.hidden_size,
            m.num_hidden_layers,
            m.num_attention_heads,
            m.num_key_value_heads,
        );
        c.intermediate_size = m.intermediate_size;
        c.max_position_embeddings = 256;
        c.tie_word_embeddings = true;
        c.eos_token_id = Some(rlhf_model::config::TokenIds::One(self.tokenizer.eos_id));
        c.pad_token_id = Some(self.tokenizer.pad_id);
        c
    }

    pub fn prompts(&self, split: Split) -> Vec<&Prompt> {
        self.world.split(split)
    }

    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_prompt(&prompt.text)?)
    }

    /// Prompts as a generator takes them.
    pub fn prompt_tokens<'a>(&self, prompts: impl IntoIterator<Item = &'a Prompt>) -> Result<Vec<PromptTokens>> {
        prompts
            .into_iter()
            .map(|p| Ok(PromptTokens { prompt_id: p.id.clone(), tokens: self.encode_prompt(p)? }))
            .collect()
    }

    /// Sampling settings in the chat format: a response ends with `<eos>`.
    pub fn sampling(&self, temperature: f64, top_p: f64, max_new_tokens: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            max_new_tokens,
            stop_tokens: vec![self.tokenizer.eos_id],
            seed,
            ..SamplingParams::default()
        }
    }

    /// Response text without the end-of-sequence token.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(tokens)?)
    }
}
