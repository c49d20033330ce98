//! The run directory: everything a run writes, and what a resumed run reads back.
//!
//! ```text
//! runs/<run-id>/
//!   config.json          the PipelineConfig the run was started with
//!   state.json           which stages finished, and their results
//!   tokenizer/           tokenizer.json, tokenizer_config.json, chat_template.jinja
//!   sft/ rm/ ppo/        checkpoints in Hugging Face layout (see rlhf_data::checkpoint);
//!                        ppo/ (the last step, for --resume) also holds the critic,
//!                        value_head.safetensors
//!   ppo-selected/        the policy PPO chose by its validation win rate: the run's result
//!   preferences.sqlite   every ranking, whole
//!   metrics.jsonl        one line per training step and evaluation
//!   report.html summary.json
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::PipelineConfig;
use crate::eval::EvalPoint;
use crate::metric::Metric;
use crate::{Error, Result};

/// Results of the stages that finished, persisted after each one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub sft: Option<SftResult>,
    pub collect: Option<CollectResult>,
    pub reward_model: Option<RewardModelResult>,
    pub ppo: Option<PpoResult>,
    /// PPO progress of an unfinished PPO stage, for `--resume`.
    pub ppo_progress: Option<PpoProgress>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftResult {
    /// Mean loss of the last logged steps; none when SFT was skipped.
    pub final_loss: Option<f64>,
    pub examples: usize,
    /// `sft.skip`: the starting model became the SFT model untrained.
    #[serde(default)]
    pub skipped: bool,
    /// Examples left out because they do not fit the model's context.
    #[serde(default)]
    pub dropped_too_long: usize,
    /// Answer types of greedy answers to the training and held-out prompts.
    #[serde(default)]
    pub greedy_train: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    pub greedy_heldout: std::collections::BTreeMap<String, f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CollectResult {
    pub rankings: u64,
    pub pairs: u64,
    pub seconds: f64,
    /// When people rank: the tasks handed out (gold ones among them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human: Option<HumanCollection>,
}

/// How collection by people went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HumanCollection {
    pub tasks: u64,
    pub gold_tasks: u64,
    /// Rankings still missing when collection ended (at its deadline), over all tasks.
    pub missing_rankings: u64,
    /// Tasks someone flagged as unsafe.
    pub flagged: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardModelResult {
    pub heldout_accuracy: f64,
    /// The annotators' agreement with the hidden gold preference on the same held-out rankings;
    /// `None` when some of them are imported (no gold is known for those).
    pub noise_ceiling: Option<f64>,
    pub train_accuracy: f64,
    /// Rankings of prompts from imported files (not the bundled world's).
    #[serde(default)]
    pub imported_rankings: usize,
    /// Rankings left out because a prompt and response did not fit the model's context.
    #[serde(default)]
    pub dropped_too_long: usize,
    /// Annotators whose rankings were left out for agreeing too little with the gold tasks
    /// (`reward_model.min_gold_agreement`), and how many rankings went with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<preference_store::quality::Exclusion>,
    #[serde(default)]
    pub excluded_rankings: usize,
    /// Held-out accuracy against the gold preference by kind of answer pair (bundled world's
    /// prompts only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gold_pairs: Vec<crate::gold_pairs::GoldPairAccuracy>,
    /// Best of each held-out prompt's K answers by the reward model, against a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_k: Option<crate::gold_pairs::BestOfK>,
    /// Mean and standard deviation of raw scores of the SFT policy's responses.
    pub score_mean: f32,
    pub score_std: f32,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PpoResult {
    pub steps: u64,
    pub seconds: f64,
    /// The step whose policy the run chose (in `ppo-selected/`) by its validation win rate;
    /// `final_eval` and `kl_to_sft` are that policy's.
    #[serde(default)]
    pub selected_step: Option<u64>,
    pub final_eval: EvalPoint,
    /// The evaluation after the last step, whether chosen or not.
    #[serde(default)]
    pub last_eval: Option<EvalPoint>,
    pub baseline_eval: EvalPoint,
    pub kl_to_sft: f64,
    pub alarms: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PpoProgress {
    pub step: u64,
    pub version: u64,
    pub kl: rlhf_model::KlController,
    pub seconds: f64,
    pub evals: Vec<EvalPoint>,
    pub alarms: Vec<String>,
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    /// Where this process runs the run's models (`--device`). Not part of the run, so not
    /// saved: a run started on a GPU may resume on a CPU.
    device: candle_core::Device,
}

impl RunDir {
    /// Creates `root` for a new run, writing `config`; refuses a directory that already holds a run.
    pub fn create(root: &Path, config: &PipelineConfig) -> Result<Self> {
        if root.join("config.json").exists() {
            return Err(Error::RunDir(format!(
                "{} already holds a run; pass --resume to continue it or choose another --run-dir",
                root.display()
            )));
        }
        std::fs::create_dir_all(root).map_err(|e| Error::RunDir(format!("{}: {e}", root.display())))?;
        let dir = RunDir { root: root.to_path_buf(), device: candle_core::Device::Cpu };
        dir.write_json("config.json", config)?;
        dir.write_json("state.json", &RunState::default())?;
        Ok(dir)
    }

    /// Opens an existing run.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("config.json").exists() {
            return Err(Error::RunDir(format!("{} holds no run (no config.json)", root.display())));
        }
        Ok(RunDir { root: root.to_path_buf(), device: candle_core::Device::Cpu })
    }

    /// The run at `root`, or a new one with the config file `config` (the default config when
    /// `None`). A config for a directory that already holds a run is refused: the run keeps its
    /// own.
    pub fn open_or_create(root: &Path, config: Option<&Path>) -> Result<Self> {
        if root.join("config.json").exists() {
            if config.is_some() {
                return Err(Error::RunDir(format!(
                    "{} already holds a run with its own config; drop --config",
                    root.display()
                )));
            }
            return RunDir::open(root);
        }
        let config = match config {
            Some(path) => PipelineConfig::load(path)?,
            None => PipelineConfig::default(),
        };
        config.validate()?;
        RunDir::create(root, &config)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same run, its models on `device` (the CPU unless this is called). Open a device once
    /// and share it: candle keeps tensors of two openings of one GPU apart.
    pub fn on_device(self, device: candle_core::Device) -> Self {
        RunDir { device, ..self }
    }

    /// Where every stage builds its models and batches.
    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// Takes the run for this process: a second writer (another `rlhf run`, a second learner)
    /// would interleave checkpoints and metrics. Held until the returned guard drops; the
    /// operating system releases it when a process dies.
    pub fn lock(&self) -> Result<RunLock> {
        let path = self.path(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::RunDir(format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::RunDir(format!(
                "{} is in use by another process (a running `rlhf run` or learner); wait for it or stop it",
                self.root.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::RunDir(format!("{}: {e}", path.display()))),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn config(&self) -> Result<PipelineConfig> {
        PipelineConfig::load(&self.path("config.json"))
    }

    pub fn state(&self) -> Result<RunState> {
        self.read_json("state.json")
    }

    pub fn save_state(&self, state: &RunState) -> Result<()> {
        self.write_json("state.json", state)
    }

    /// Appends one metrics record (a JSON object with at least `stage`).
    pub fn metric(&self, record: &Metric<'_>) -> Result<()> {
        Ok(rlhf_data::jsonl::append(&self.path("metrics.jsonl"), record)?)
    }

    /// Drops the records of `stages` that a resumed stage will write again: those after
    /// `checkpoint` (every one when `None`, a stage starting over), so `metrics.jsonl` keeps one
    /// record per step however often the run was stopped. Rewritten through a rename.
    pub fn forget_metrics_after(&self, stages: &[&str], checkpoint: Option<u64>) -> Result<()> {
        let records = self.metrics()?;
        let redone = |r: &serde_json::Value| {
            let stage = r["stage"].as_str().unwrap_or_default();
            let step = r["step"].as_u64().unwrap_or(0);
            stages.contains(&stage) && checkpoint.is_none_or(|c| step > c)
        };
        if !records.iter().any(redone) {
            return Ok(());
        }
        let mut text = String::new();
        for r in records.iter().filter(|r| !redone(r)) {
            text.push_str(&serde_json::to_string(r).map_err(|e| Error::RunDir(e.to_string()))?);
            text.push('\n');
        }
        let tmp = self.path(".metrics.jsonl.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::RunDir(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, self.path("metrics.jsonl")).map_err(|e| Error::RunDir(e.to_string()))
    }

    pub fn metrics(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.path("metrics.jsonl");
        if !path.exists() {
            return Ok(vec![]);
        }
        Ok(rlhf_data::jsonl::read(&path)?)
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.path(name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::RunDir(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::RunDir(format!("{}: {e}", path.display())))
    }

    /// Writes through a temporary file and a rename, so a crash never leaves half a file.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::RunDir(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| Error::RunDir(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::RunDir(format!("{}: {e}", path.display())))
    }
}

/// Exclusive use of a run directory by this process (see [`RunDir::lock`]).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

#[cfg(test)]
mod tests {
    use ppo_learner::StepStats;

    use super::*;

    #[test]
    fn a_resumed_stage_forgets_only_the_records_it_will_write_again() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("run"), &PipelineConfig::default()).unwrap();
        let stats: Vec<StepStats> = (1..=3).map(|step| StepStats { step, ..StepStats::default() }).collect();
        let eval = |step| EvalPoint {
            step,
            gold_win_rate: 0.5,
            gold_win_se: 0.1,
            validation_win_rate: None,
            validation_win_se: None,
            proxy_reward: 0.0,
            kl_to_sft: 1.0,
            mean_length: 8.0,
            answer_types: Default::default(),
            samples: vec![],
        };
        let ppo = |i: usize| Metric::Ppo { stats: &stats[i], rollout_seconds: 0.1, step_seconds: 0.2 };
        let records = [
            Metric::Sft { step: 9, loss: 1.5 },
            Metric::eval(&eval(0)),
            ppo(0),
            ppo(1),
            Metric::eval(&eval(2)),
            ppo(2),
            Metric::Alarm { step: 3, message: "verbosity" },
        ];
        let values: Vec<serde_json::Value> = records.iter().map(|r| serde_json::to_value(r).unwrap()).collect();
        assert_eq!(values[2]["stage"], "ppo");
        assert_eq!(values[2]["step"], 1);
        assert_eq!(values[2]["step_seconds"], 0.2);
        assert_eq!(values[6]["message"], "verbosity");
        records.iter().for_each(|r| run.metric(r).unwrap());
        run.forget_metrics_after(&["ppo", "eval", "alarm"], Some(2)).unwrap();
        assert_eq!(run.metrics().unwrap(), values[..5].to_vec());
        run.forget_metrics_after(&["ppo", "eval", "alarm"], None).unwrap();
        assert_eq!(run.metrics().unwrap(), vec![values[0].clone()]);
    }
}
