//! The task as the stages see it: the world, the run's tokenizer and chat template, and
//! encoded prompts.
//!
//! The tokenizer is the pretrained model's when the run starts from one (`model.path`), else a
//! word-level tokenizer over the bundled world's words; either way it is saved once in the run
//! directory (`tokenizer/`: `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) and
//! every stage encodes through its chat template.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rlhf_data::ChatTokenizer;
use rlhf_model::{Config, SamplingParams};
use rlhf_types::PromptTokens;
use rlhf_world::{Prompt, Split, World};

use crate::config::PipelineConfig;
use crate::run_dir::RunDir;
use crate::{Error, Result};

/// The world of a run, its tokenizer, and the prompts PPO samples rollouts for.
#[derive(Debug, Clone)]
pub struct Task {
    pub world: World,
    pub tokenizer: ChatTokenizer,
    /// The file of `ppo.prompts` (ids `prompts:<line>`) or the world's training prompts, encoded.
    pub rollout_prompts: Vec<PromptTokens>,
    /// Training prompts on which the gold preference chooses PPO's checkpoint (`world.validation`).
    pub validation_prompts: Vec<Prompt>,
}

impl Task {
    /// Rebuilds the world from the config (it is a pure function of it) and loads the run's
    /// tokenizer, creating it on first use.
    pub fn load(run: &RunDir, config: &PipelineConfig) -> Result<Task> {
        let world = World::with_phrasing(config.world.held_out, config.seed, config.phrasing());
        let dir = run.path("tokenizer");
        let tokenizer = if dir.exists() {
            ChatTokenizer::from_dir(&dir, None)?
        } else if run.path("tokenizer.json").exists() {
            // Runs made before the tokenizer had its own folder.
            ChatTokenizer::from_dir(run.root(), None)?
        } else {
            let tokenizer = match &config.model.path {
                Some(model) => rlhf_data::checkpoint::load_tokenizer(model)?,
                None => ChatTokenizer::word_level(&world.words())?,
            };
            std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
            tokenizer.save(&dir)?;
            tokenizer
        };
        // Validation questions come from training: PPO never sees the gold preference, so judging
        // its checkpoints by it on questions it trained on measures what PPO is for, while the
        // held-out questions the run reports on stay untouched. (Carving them out of training
        // instead cost the SFT model facts: wrong answers rose from 4-7% to 11-15%, measured.)
        let count = (config.world.validation * world.prompts.len() as f64).round() as usize;
        let mut validation_prompts: Vec<Prompt> = world.split(Split::Train).into_iter().cloned().collect();
        validation_prompts.shuffle(&mut StdRng::seed_from_u64(config.seed ^ 0x7a11_da7e));
        validation_prompts.truncate(count);
        let mut task = Task { world, tokenizer, rollout_prompts: vec![], validation_prompts };
        task.rollout_prompts = match &config.ppo.prompts {
            Some(path) => rlhf_data::datasets::read_prompts(path)?
                .iter()
                .enumerate()
                .map(|(i, messages)| {
                    let tokens = task.tokenizer.encode_chat_prompt(messages)?;
                    Ok(PromptTokens { prompt_id: format!("prompts:{}", i + 1), tokens })
                })
                .collect::<Result<_>>()?,
            None => task.prompt_tokens(task.world.split(Split::Train))?,
        };
        if task.rollout_prompts.is_empty() {
            return Err(Error::Config("ppo.prompts holds no prompts".into()));
        }
        Ok(task)
    }

    /// Refuses rollout prompts that leave no room for `max_new_tokens` in the model's context.
    pub fn check_rollout_prompts(&self, context: usize, max_new_tokens: usize) -> Result<()> {
        match self.rollout_prompts.iter().find(|p| p.tokens.len() + max_new_tokens > context) {
            Some(p) => Err(Error::Config(format!(
                "rollout prompt {} is {} tokens: with ppo.max_new_tokens = {max_new_tokens} it does not fit the \
                 model's context of {context}",
                p.prompt_id,
                p.tokens.len()
            ))),
            None => Ok(()),
        }
    }

    /// The architecture of a policy trained from scratch (no `model.path`).
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

    /// Sampling settings in the chat format: a response ends at the template's end-of-turn
    /// token or at `eos`.
    pub fn sampling(&self, temperature: f64, top_p: f64, max_new_tokens: usize, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            max_new_tokens,
            stop_tokens: self.tokenizer.stop_ids.clone(),
            seed,
            ..SamplingParams::default()
        }
    }

    /// Response text without the end-of-sequence token.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        Ok(self.tokenizer.decode(tokens)?)
    }
}
