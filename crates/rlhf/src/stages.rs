//! The stage subcommands: `rlhf sft|collect|rm|ppo|run`, all reading and writing a run directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use rlhf_pipeline::{PipelineConfig, RunDir, Stage};

/// Where a run lives and how it is configured.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The run directory (checkpoints, rankings, metrics, report). Default for a new run:
    /// runs/run-<unix time>; with --resume: the most recent directory under runs/.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// A JSON file with pipeline settings; any field left out keeps its default
    /// (see `rlhf config` for all of them). Only read when the run is created.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed of everything: weights, data, sampling, annotators (overrides the config file).
    #[arg(long)]
    seed: Option<u64>,
    /// Plant a bias in the simulated annotators: utility added per sentence beyond the first
    /// (0 = none). Invites reward hacking by verbosity (overrides the config file).
    #[arg(long)]
    length_bias: Option<f64>,
    /// Start from a pretrained model instead of training one from scratch: a Hugging Face folder
    /// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) or a GGUF file. Its tokenizer and
    /// chat template are used throughout (overrides the config file's model.path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The dtype checkpoints are written in: f32 (default) or bf16; training keeps f32 weights
    /// (overrides the config file's model.save_dtype).
    #[arg(long)]
    save_dtype: Option<rlhf_data::SaveDtype>,
    /// Train every stage with the projections' products in bf16 (f32 sums, f32 weights) on
    /// Intel AMX (Xeon 4th generation or later; about twice the training speed there) or on AMD's
    /// AVX512-BF16 (Zen 4 or later); the run's
    /// figures move by the rounding (sets model.bf16_matmuls).
    #[arg(long)]
    bf16_matmuls: bool,
    /// SFT on your own examples instead of the bundled world's: JSON Lines in TRL's formats,
    /// `{"messages": [...]}` ending with the assistant's turn, or `{"prompt", "completion"}`.
    /// Needs --model. Checked line by line before the run is created (overrides sft.data).
    #[arg(long)]
    sft_data: Option<PathBuf>,
    /// PPO's rollout prompts from your own file instead of the bundled world's training questions:
    /// JSON Lines, `{"prompt": "..."}` or `{"messages": [...]}` ending with a user turn. Needs
    /// --model; evaluation stays on the bundled world's held-out questions (overrides ppo.prompts).
    #[arg(long)]
    ppo_prompts: Option<PathBuf>,
    /// Who ranks the sampled responses: simulated annotators, or people in the labeling app,
    /// which collection serves while it waits (collect.human sets the address, annotators per
    /// task, gold tasks and the deadline; add people with `rlhf annotators add`). Sets
    /// collect.annotated_by.
    #[arg(long, value_enum)]
    annotators: Option<Annotators>,
    /// Use --model as the SFT model without training it (for an instruction-tuned model); the
    /// SFT stage then only records its answers (sets sft.skip).
    #[arg(long)]
    skip_sft: bool,
    /// Continue the run in --run-dir: finished stages are skipped, PPO resumes from its last
    /// checkpoint, stored rankings are kept.
    #[arg(long)]
    resume: bool,
    /// Where every stage trains and samples: cpu, or cuda / cuda:N (a build with the `cuda`
    /// feature). Not part of the run's settings: a run may resume on another device.
    #[arg(long, default_value = "cpu")]
    device: rlhf_model::DeviceChoice,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Annotators {
    Simulated,
    Human,
}

impl RunArgs {
    fn config(&self) -> Result<PipelineConfig> {
        let mut config = match &self.config {
            Some(path) => PipelineConfig::parse(path)?,
            None => PipelineConfig::default(),
        };
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if let Some(bias) = self.length_bias {
            config.collect.length_bias = bias;
        }
        if let Some(model) = &self.model {
            config.model.path = Some(model.clone());
        }
        if let Some(dtype) = self.save_dtype {
            config.model.save_dtype = dtype;
        }
        if self.bf16_matmuls {
            config.model.bf16_matmuls = true;
        }
        if let Some(data) = &self.sft_data {
            config.sft.data = Some(data.clone());
        }
        if let Some(prompts) = &self.ppo_prompts {
            config.ppo.prompts = Some(prompts.clone());
        }
        if self.skip_sft {
            config.sft.skip = true;
        }
        if let Some(annotators) = self.annotators {
            config.collect.annotated_by = match annotators {
                Annotators::Simulated => rlhf_pipeline::config::AnnotatedBy::Simulated,
                Annotators::Human => rlhf_pipeline::config::AnnotatedBy::Human,
            };
        }
        config.validate()?;
        if let Some(data) = &mut config.sft.data {
            // The stage reads the file when it runs, perhaps from another working directory.
            *data = std::fs::canonicalize(&*data).with_context(|| format!("--sft-data {}", data.display()))?;
            let examples = rlhf_data::datasets::read_sft(data)?;
            if examples.is_empty() {
                bail!("--sft-data {} holds no examples", data.display());
            }
        }
        if let Some(prompts) = &mut config.ppo.prompts {
            *prompts =
                std::fs::canonicalize(&*prompts).with_context(|| format!("--ppo-prompts {}", prompts.display()))?;
            if rlhf_data::datasets::read_prompts(prompts)?.is_empty() {
                bail!("--ppo-prompts {} holds no prompts", prompts.display());
            }
        }
        if let Some(path) = &config.model.path {
            let (_, kind, tokenizer) =
                rlhf_data::checkpoint::inspect(path).with_context(|| format!("--model {}", path.display()))?;
            if kind != rlhf_data::ModelKind::CausalLm {
                bail!("--model {} is a reward model; the pipeline starts from a causal LM", path.display());
            }
            if tokenizer.chat_template().is_none() {
                bail!(
                    "--model {} has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json); \
                     the stages format every prompt through it",
                    path.display()
                );
            }
        }
        Ok(config)
    }

    /// Opens the run to continue, or creates a new one, on --device (opened first, so that a
    /// device that is not there leaves no empty run behind).
    fn open(&self, allow_existing: bool) -> Result<RunDir> {
        let device = self.device.open()?;
        Ok(self.open_dir(allow_existing)?.on_device(device))
    }

    fn open_dir(&self, allow_existing: bool) -> Result<RunDir> {
        let overrides = self.config.is_some()
            || self.seed.is_some()
            || self.length_bias.is_some()
            || self.model.is_some()
            || self.save_dtype.is_some()
            || self.bf16_matmuls
            || self.sft_data.is_some()
            || self.ppo_prompts.is_some()
            || self.skip_sft
            || self.annotators.is_some();
        if self.resume {
            if overrides {
                bail!(
                    "--resume continues a run with the settings it was created with; drop --config, --seed, --length-bias, --model, --save-dtype, --sft-data, --ppo-prompts, --skip-sft and --annotators"
                );
            }
            let dir = match &self.run_dir {
                Some(dir) => dir.clone(),
                None => latest_run(Path::new("runs"))?,
            };
            eprintln!("resuming {}", dir.display());
            return Ok(RunDir::open(&dir)?);
        }
        let dir = self.run_dir.clone().unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            PathBuf::from(format!("runs/run-{now}"))
        });
        if allow_existing && dir.join("config.json").exists() {
            if overrides {
                bail!(
                    "{} already holds a run with its own config; settings are only read when a run is created",
                    dir.display()
                );
            }
            return Ok(RunDir::open(&dir)?);
        }
        Ok(RunDir::create(&dir, &self.config()?)?)
    }
}

fn latest_run(root: &Path) -> Result<PathBuf> {
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("no run to resume: {} cannot be read", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").exists())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    runs.sort();
    runs.pop().map(|(_, p)| p).with_context(|| format!("no run to resume under {}", root.display()))
}

/// `rlhf run`: every stage.
pub fn run_all(args: &RunArgs) -> Result<()> {
    let run = args.open(false)?;
    let _lock = run.lock()?;
    eprintln!("run directory: {}", run.root().display());
    rlhf_pipeline::run_all(&run)?;
    finish(&run)
}

/// `rlhf sft` and friends: one stage, in a new or existing run directory.
pub fn run_one(args: &RunArgs, stage: Stage) -> Result<()> {
    let run = args.open(true)?;
    let _lock = run.lock()?;
    eprintln!("run directory: {}", run.root().display());
    rlhf_pipeline::run_stage(&run, stage)?;
    finish(&run)
}

fn finish(run: &RunDir) -> Result<()> {
    let summary = rlhf_pipeline::report::summary(run)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("report: {}", run.path("report.html").display());
    Ok(())
}
