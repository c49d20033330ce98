//! Stage 4, PPO: the policy (with a value head) starts from SFT, the frozen reference is SFT,
//! the reward is the reward model.
//!
//! Each step runs the same path as the distributed system: the learner asks a generator
//! replica for rollouts, they go through the raw queue to the scorer, come back scored through
//! the next queue, the learner trains on them, acknowledges them and pushes the new policy
//! version to the generator. Every `eval_every` steps it evaluates on held-out prompts, checks
//! the reward-hacking alarm and checkpoints (policy, value head, step, KL controller).

use std::time::Instant;

use policy_generator::{GenerateRequest, PolicyGenerator};
use ppo_learner::PpoLearner;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rlhf_queue::{InProcessQueue, Queue};
use rlhf_types::{Rollout, ScoredRollout};
use rlhf_world::Split;
use serde_json::json;

use crate::collect::sft_generator;
use crate::config::PipelineConfig;
use crate::eval::{EvalPoint, Evaluator, check_alarms};
use crate::progress::bar;
use crate::reward::load_scorer;
use crate::run_dir::{PpoProgress, PpoResult, RunDir};
use crate::task::Task;
use crate::{Error, Result};

pub fn run(run: &RunDir, config: &PipelineConfig) -> Result<PpoResult> {
    let start = Instant::now();
    let task = Task::load(run, config)?;
    let mut state = run.state()?;
    let rm = state.reward_model.clone().ok_or(Error::MissingStage { stage: "ppo", missing: "rm" })?;
    let mut scorer = load_scorer(run)?;
    scorer.set_normaliser(rm.score_mean, rm.score_std);
    scorer.set_temperature(config.ppo.algorithm.temperature);
    let sft = sft_generator(run, "sft-baseline")?;
    let evaluator = Evaluator::new(&task, config, &sft)?;

    let resume = state.ppo_progress.clone().filter(|_| run.path("ppo").exists());
    let start_from = if resume.is_some() { "ppo" } else { "sft" };
    let ckpt = rlhf_data::load_checkpoint(&run.path(start_from))?;
    let pad = ckpt.tokenizer.pad_id;
    let mut learner =
        PpoLearner::new(config.ppo.algorithm.clone(), ckpt.config.clone(), ckpt.tensors, pad, 0, config.seed ^ 0x990)?;
    let (mut evals, mut alarms, earlier_seconds) = match &resume {
        Some(p) => {
            learner.restore(p.step, p.version, p.kl.clone());
            (p.evals.clone(), p.alarms.clone(), p.seconds)
        }
        None => (vec![], vec![], 0.0),
    };
    let generator =
        PolicyGenerator::new("generator-0", ckpt.config, pad, learner.policy_weights()?, learner.version())?;
    if evals.is_empty() {
        evals.push(evaluator.evaluate(&task, &generator, &scorer, 0)?);
        run.metric(&eval_record(&evals[0]))?;
    }

    let raw: InProcessQueue<Rollout> = InProcessQueue::new("rollouts");
    let scored: InProcessQueue<ScoredRollout> = InProcessQueue::new("scored");
    let train: Vec<_> = task.prompts(Split::Train);
    let steps = config.ppo.steps as u64;
    let progress = bar(steps, "ppo");
    progress.set_position(learner.step());
    while learner.step() < steps {
        let step = learner.step();
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let picked: Vec<_> = train.choose_multiple(&mut rng, config.ppo.prompts_per_step).collect();
        let request = GenerateRequest {
            request_id: format!("ppo-{step}"),
            prompts: task.prompt_tokens(picked.iter().copied().copied())?,
            sampling: task.sampling(
                config.ppo.algorithm.temperature,
                config.ppo.top_p,
                config.ppo.max_new_tokens,
                rng.random::<u64>(),
            ),
            samples_per_prompt: 1,
        };
        raw.push(generator.generate(&request)?)?;
        scorer.drain("scorer-0", &raw, &scored, usize::MAX)?;
        let deliveries = scored.pop("learner", usize::MAX, std::time::Duration::ZERO)?;
        let stats = learner.train_step(deliveries.iter().map(|d| d.item.clone()).collect())?;
        generator.update_weights(learner.version(), learner.policy_weights()?)?;
        scored.ack(&deliveries.iter().map(|d| d.id.clone()).collect::<Vec<_>>())?;
        let mut record = serde_json::to_value(&stats).map_err(|e| Error::Io(e.to_string()))?;
        record["stage"] = json!("ppo");
        run.metric(&record)?;
        progress.set_message(format!("reward {:.2} kl {:.2}", stats.reward, stats.kl));
        progress.inc(1);

        let step = learner.step();
        if step % config.ppo.eval_every as u64 == 0 || step == steps {
            let point = evaluator.evaluate(&task, &generator, &scorer, step)?;
            run.metric(&eval_record(&point))?;
            evals.push(point);
            for alarm in check_alarms(&config.monitor, &evals) {
                progress.suspend(|| eprintln!("reward-hacking alarm: {alarm}"));
                run.metric(&json!({"stage": "alarm", "step": step, "message": alarm}))?;
                alarms.push(alarm);
            }
            rlhf_data::save_checkpoint(&run.path("ppo"), learner.varmap(), learner.model_config(), &task.tokenizer)?;
            state.ppo_progress = Some(PpoProgress {
                step,
                version: learner.version(),
                kl: learner.config().kl.clone(),
                seconds: earlier_seconds + start.elapsed().as_secs_f64(),
                evals: evals.clone(),
                alarms: alarms.clone(),
            });
            run.save_state(&state)?;
        }
    }
    progress.finish_and_clear();
    let last: &EvalPoint = evals.last().expect("evaluated at least once");
    Ok(PpoResult {
        steps,
        seconds: earlier_seconds + start.elapsed().as_secs_f64(),
        final_eval: last.clone(),
        baseline_eval: evals[0].clone(),
        kl_to_sft: last.kl_to_sft,
        alarms,
    })
}

fn eval_record(point: &EvalPoint) -> serde_json::Value {
    let mut v = serde_json::to_value(point).unwrap_or_default();
    v["stage"] = json!("eval");
    if let Some(o) = v.as_object_mut() {
        o.remove("samples");
    }
    v
}
