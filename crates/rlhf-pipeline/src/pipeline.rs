//! The stages in order: each records its result in `state.json`; `run_all` with `resume`
//! skips the finished ones and PPO continues from its last checkpoint.

use crate::PipelineConfig;
use crate::config::AnnotatedBy;
use crate::report;
use crate::run_dir::{CollectResult, PpoResult, RewardModelResult, RunDir};
use crate::{Result, collect, ppo, reward, sft};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sft,
    Collect,
    RewardModel,
    Ppo,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Sft, Stage::Collect, Stage::RewardModel, Stage::Ppo];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Sft => "sft",
            Stage::Collect => "collect",
            Stage::RewardModel => "rm",
            Stage::Ppo => "ppo",
        }
    }
}

/// How the stages that need other services run: in this process (the defaults), or over the
/// network (the distributed learner overrides them). SFT always runs where the learner is.
pub trait StageBackends {
    fn collect(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<CollectResult> {
        match config.collect.annotated_by {
            AnnotatedBy::Simulated => collect::run(run, config),
            AnnotatedBy::Human => crate::collect_human::run(run, config),
        }
    }
    fn reward_model(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<RewardModelResult> {
        reward::run(run, config)
    }
    fn ppo(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<PpoResult> {
        ppo::run(run, config)
    }
}

/// Every stage in this process, on the embedded queue and SQLite store.
#[derive(Debug, Default)]
pub struct InProcess;

impl StageBackends for InProcess {}

/// Runs one stage and records its result; then refreshes the report.
pub fn run_stage(run: &RunDir, stage: Stage) -> Result<()> {
    run_stage_with(run, stage, &mut InProcess)
}

/// [`run_stage`] with the stages' services reached through `backends`.
pub fn run_stage_with(run: &RunDir, stage: Stage, backends: &mut dyn StageBackends) -> Result<()> {
    let config = run.config()?;
    let started = std::time::Instant::now();
    eprintln!("stage {}: starting", stage.name());
    match stage {
        Stage::Sft => {
            let result = sft::run(run, &config)?;
            let mut state = run.state()?;
            state.sft = Some(result);
            run.save_state(&state)?;
        }
        Stage::Collect => {
            let result = backends.collect(run, &config)?;
            let mut state = run.state()?;
            state.collect = Some(result);
            run.save_state(&state)?;
        }
        Stage::RewardModel => {
            let result = backends.reward_model(run, &config)?;
            let mut state = run.state()?;
            state.reward_model = Some(result);
            run.save_state(&state)?;
        }
        Stage::Ppo => {
            let result = backends.ppo(run, &config)?;
            let mut state = run.state()?;
            state.ppo = Some(result);
            state.ppo_progress = None;
            run.save_state(&state)?;
        }
    }
    eprintln!("stage {}: done in {:.1} s", stage.name(), started.elapsed().as_secs_f64());
    report::write(run)
}

/// Runs every stage not yet finished (all of them on a fresh run).
pub fn run_all(run: &RunDir) -> Result<()> {
    run_all_with(run, &mut InProcess)
}

/// [`run_all`] with the stages' services reached through `backends`.
pub fn run_all_with(run: &RunDir, backends: &mut dyn StageBackends) -> Result<()> {
    for stage in Stage::ALL {
        let state = run.state()?;
        let done = match stage {
            Stage::Sft => state.sft.is_some(),
            Stage::Collect => state.collect.is_some(),
            Stage::RewardModel => state.reward_model.is_some(),
            Stage::Ppo => state.ppo.is_some(),
        };
        if done {
            eprintln!("stage {}: already finished, skipped", stage.name());
            continue;
        }
        run_stage_with(run, stage, &mut *backends)?;
    }
    report::write(run)
}
