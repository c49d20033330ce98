//! The stages in order: each records its result in `state.json`; `run_all` with `resume`
//! skips the finished ones and PPO continues from its last checkpoint.

use crate::report;
use crate::run_dir::RunDir;
use crate::{Error, Result, collect, ppo, reward, sft};

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

/// How the PPO stage runs: [`crate::ppo::run`] in one process, or over the services.
pub type PpoRunner<'a> = &'a mut dyn FnMut(&RunDir, &crate::PipelineConfig) -> Result<crate::run_dir::PpoResult>;

/// Runs one stage and records its result; then refreshes the report.
pub fn run_stage(run: &RunDir, stage: Stage) -> Result<()> {
    run_stage_with(run, stage, &mut ppo::run)
}

/// [`run_stage`] with PPO run by `ppo`.
pub fn run_stage_with(run: &RunDir, stage: Stage, ppo: PpoRunner<'_>) -> Result<()> {
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
            let result = collect::run(run, &config)?;
            let mut state = run.state()?;
            state.collect = Some(result);
            run.save_state(&state)?;
        }
        Stage::RewardModel => {
            if run.state()?.collect.is_none() {
                return Err(Error::MissingStage { stage: "rm", missing: "collect" });
            }
            let result = reward::run(run, &config)?;
            let mut state = run.state()?;
            state.reward_model = Some(result);
            run.save_state(&state)?;
        }
        Stage::Ppo => {
            let result = ppo(run, &config)?;
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
    run_all_with(run, &mut ppo::run)
}

/// [`run_all`] with PPO run by `ppo`.
pub fn run_all_with(run: &RunDir, ppo: PpoRunner<'_>) -> Result<()> {
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
        run_stage_with(run, stage, &mut *ppo)?;
    }
    report::write(run)
}
