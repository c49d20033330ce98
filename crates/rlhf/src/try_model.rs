//! `rlhf generate` and `rlhf score`: try a checkpoint from the command line before spending
//! hours on it. Both take any model rlhf loads: a Hugging Face folder, a GGUF file, or a stage
//! checkpoint of a run (`runs/<id>/sft`, `rm`, `ppo`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use rlhf_data::{Checkpoint, ModelKind, load_checkpoint};
use rlhf_model::{Kernels, Llama, RewardHead, SamplingParams, generate};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The policy: a Hugging Face model folder, a .gguf file, or a run's sft/ or ppo/ checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user turn through the model's chat template (with the generation
    /// prompt) instead of as raw text.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate; generation also stops at eos and the template's end-of-turn token.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: draw only from the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep only the k most likely tokens (unset: all).
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object {prompt_token_ids, new_token_ids, logprobs, text} instead of the text.
    #[arg(long)]
    json: bool,
    /// Where the model runs: cpu, or cuda / cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

#[derive(Debug, Serialize)]
struct Generated {
    prompt_token_ids: Vec<u32>,
    new_token_ids: Vec<u32>,
    /// Log-prob of each new token under the temperature-scaled distribution (T = 1 when greedy).
    logprobs: Vec<f32>,
    text: String,
}

/// `rlhf generate`.
pub fn generate_command(args: &GenerateArgs) -> Result<()> {
    let device = args.device.open()?;
    let ckpt = load(&args.model)?;
    if ckpt.kind != ModelKind::CausalLm {
        bail!("{} is a reward model; score responses with `rlhf score`", args.model.display());
    }
    let tok = &ckpt.tokenizer;
    let prompt = if args.chat { tok.encode_prompt(&args.prompt)? } else { tok.encode_raw_prompt(&args.prompt)? };
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        stop_tokens: tok.stop_ids.clone(),
        seed: args.seed,
    };
    let model =
        Llama::new(&ckpt.config, VarBuilder::from_tensors(ckpt.tensors, DType::F32, &device))?.into_decode_layout()?;
    let generation = generate(&model, std::slice::from_ref(&prompt), &params, tok.pad_id)?.remove(0);
    let text = tok.decode(&generation.tokens)?;
    if args.json {
        let out = Generated {
            prompt_token_ids: prompt,
            new_token_ids: generation.tokens,
            logprobs: generation.logprobs,
            text,
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The reward model: a Hugging Face `*ForSequenceClassification` folder with one label, or a
    /// run's rm/ checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// The prompt (a user turn, rendered with the model's chat template).
    #[arg(long)]
    prompt: String,
    /// The response to score (the assistant's turn).
    #[arg(long)]
    response: String,
    /// Print one JSON object {score, normalized, tokens} instead of the score.
    #[arg(long)]
    json: bool,
    /// Where the model runs: cpu, or cuda / cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

#[derive(Debug, Serialize)]
struct Scored {
    /// The reward model's raw output at the last token.
    score: f32,
    /// `(score - mean) / std` with the normaliser saved beside the model (the reward PPO used);
    /// null when the checkpoint has none.
    normalized: Option<f32>,
    tokens: usize,
}

/// `rlhf score`.
pub fn score_command(args: &ScoreArgs) -> Result<()> {
    let device = args.device.open()?;
    let ckpt = load(&args.model)?;
    if ckpt.kind != ModelKind::RewardModel {
        bail!(
            "{} is not a reward model (config.json names no *ForSequenceClassification); try it with `rlhf generate`",
            args.model.display()
        );
    }
    let (prompt, response) = ckpt.tokenizer.encode_exchange(&args.prompt, &args.response)?;
    let ids: Vec<u32> = prompt.into_iter().chain(response).collect();
    let vb = VarBuilder::from_tensors(ckpt.tensors, DType::F32, &device);
    let model = Llama::backbone(&ckpt.config, vb.clone())?;
    let head = RewardHead::new(ckpt.config.hidden_size, vb)?;
    let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
    let mask = input.ones_like()?;
    let score = head.score(&model.last_hidden_states(&input, &mask, Kernels::Fused)?)?.to_vec1::<f32>()?[0];
    let normalized = ckpt.score_normalizer.map(|n| (score - n.mean) / n.std.max(1e-6));
    if args.json {
        println!("{}", serde_json::to_string(&Scored { score, normalized, tokens: ids.len() })?);
    } else {
        println!("{score}");
    }
    Ok(())
}

fn load(path: &std::path::Path) -> Result<Checkpoint> {
    load_checkpoint(path).with_context(|| format!("loading {}", path.display()))
}
