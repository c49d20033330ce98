//! The stages of a distributed run, as the learner process runs them: collection samples on
//! the generator replicas and submits to the preference service, the reward model reads the
//! rankings back from it, and PPO's rollouts go through the replicas, Redis and the scorer.

use std::sync::Arc;

use ppo_learner::{ClusterBackend, RolloutBackend, StatusBoard};
use preference_store::RemoteStore;
use rlhf_types::GenerateRequest;

use crate::config::AnnotatedBy;
use crate::pipeline::StageBackends;
use crate::run_dir::{CollectResult, PpoResult, RewardModelResult};
use crate::{PipelineConfig, Result, RunDir, collect, ppo, reward};

/// Runs the unfinished stages of `run` over the services; rankings go to `store` (the
/// preference service) or, without one, to the run's own SQLite file.
pub fn run_stages(
    run: &RunDir,
    backend: &mut ClusterBackend,
    board: &StatusBoard,
    store: Option<RemoteStore>,
) -> Result<()> {
    crate::run_all_with(run, &mut ClusterStages { backend, board, store })
}

struct ClusterStages<'a> {
    backend: &'a mut ClusterBackend,
    board: &'a StatusBoard,
    store: Option<RemoteStore>,
}

impl StageBackends for ClusterStages<'_> {
    fn collect(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<CollectResult> {
        // The replicas serve the SFT policy as version 0 while they collect.
        let sft = rlhf_data::load_checkpoint(&run.path("sft"))?;
        self.backend.publish(0, &sft.tensors, &sft.config, sft.tokenizer.pad_id)?;
        let backend = &mut *self.backend;
        let mut sample = |requests: &[GenerateRequest]| Ok(backend.generate_batch(requests)?);
        match &mut self.store {
            Some(_) if config.collect.annotated_by == AnnotatedBy::Human => Err(crate::Error::Config(
                "collect.annotated_by = human keeps its tasks in the run's own preference database: run the \
                 learner without --preferences (or collect with `rlhf collect --annotators human`)"
                    .into(),
            )),
            Some(store) => collect::run_with(run, config, &mut sample, store),
            None if config.collect.annotated_by == AnnotatedBy::Human => {
                crate::collect_human::run_with(run, config, &mut sample)
            }
            None => {
                let task = crate::task::Task::load(run, config)?;
                let mut store = collect::open_store(run, &task)?;
                collect::run_with(run, config, &mut sample, &mut store)
            }
        }
    }

    fn reward_model(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<RewardModelResult> {
        match &self.store {
            Some(store) => reward::run_with(run, config, store),
            None => reward::run(run, config),
        }
    }

    fn ppo(&mut self, run: &RunDir, config: &PipelineConfig) -> Result<PpoResult> {
        let scorer = Arc::new(ppo::prepared_scorer(run, config)?);
        ppo::run_with(run, config, scorer, self.backend, self.board)
    }
}
