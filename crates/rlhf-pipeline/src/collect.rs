//! Stage 2, preference collection: the SFT policy (through a generator replica) samples K
//! responses per prompt, simulated annotators rank them, and each ranking is stored whole.
//!
//! Rankings are collected for training prompts (reward-model training) and for held-out
//! prompts (its evaluation). Prompts that already have a ranking are skipped, so a resumed
//! collection continues where it stopped and never loses or duplicates a stored ranking.

use std::collections::HashSet;
use std::time::Instant;

use policy_generator::PolicyGenerator;
use preference_store::{PreferenceStore, SqliteStore};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rlhf_types::GenerateRequest;
use rlhf_types::Rollout;
use rlhf_types::{RankedResponse, Ranking};
use rlhf_world::{Annotator, Prompt, Split};

use crate::config::PipelineConfig;
use crate::progress::bar;
use crate::run_dir::{CollectResult, RunDir};
use crate::task::Task;
use crate::{Error, Result};

const PROMPTS_PER_REQUEST: usize = 16;
/// Requests sampled together before their rankings are submitted (a unit of progress).
const REQUESTS_PER_ROUND: usize = 4;

/// Receives one prompt's K sampled responses for one round.
pub(crate) type Take<'a> = &'a mut dyn FnMut(&Prompt, usize, Vec<RankedResponse>) -> Result<()>;

/// Samples a group of requests: one `Vec` of rollouts per request, in request order.
pub type Sampler<'a> = &'a mut dyn FnMut(&[GenerateRequest]) -> Result<Vec<Vec<Rollout>>>;

/// The annotators of a run: the same noise and bias, distinct ids.
pub fn annotators(config: &PipelineConfig) -> Vec<Annotator> {
    (0..config.collect.annotators)
        .map(|i| Annotator {
            id: format!("sim-annotator-{i}"),
            temperature: config.collect.annotator_temperature,
            length_bias: config.collect.length_bias,
        })
        .collect()
}

/// Opens the run's preference store with every prompt of the world registered.
pub fn open_store(run: &RunDir, task: &Task) -> Result<SqliteStore> {
    let mut store = SqliteStore::open(&run.path("preferences.sqlite"))?;
    let prompts: Vec<(String, String)> = task.world.prompts.iter().map(|p| (p.id.clone(), p.text.clone())).collect();
    store.register_prompts(&prompts)?;
    Ok(store)
}

/// A generator replica serving the SFT checkpoint.
pub fn sft_generator(run: &RunDir, id: &str) -> Result<PolicyGenerator> {
    let path = run.path("sft");
    if !path.exists() {
        return Err(Error::MissingStage { stage: "collect", missing: "sft" });
    }
    let ckpt = rlhf_data::load_checkpoint(&path)?;
    Ok(PolicyGenerator::new(run.device(), id, ckpt.config, ckpt.tokenizer.pad_id, ckpt.tensors, 0)?)
}

/// Collects in this process: an in-process SFT generator, the run's SQLite store.
pub fn run(run: &RunDir, config: &PipelineConfig) -> Result<CollectResult> {
    let task = Task::load(run, config)?;
    let generator = sft_generator(run, "generator-0")?;
    let mut store = open_store(run, &task)?;
    let mut sample = |requests: &[GenerateRequest]| -> Result<Vec<Vec<Rollout>>> {
        requests.iter().map(|r| Ok(generator.generate(r)?)).collect()
    };
    run_with(run, config, &mut sample, &mut store)
}

/// Collects with responses from `sample` (which must serve the SFT policy) into `store`, ranked
/// by the simulated annotators.
pub fn run_with(
    run: &RunDir,
    config: &PipelineConfig,
    sample: Sampler<'_>,
    store: &mut dyn PreferenceStore,
) -> Result<CollectResult> {
    let start = Instant::now();
    let task = Task::load(run, config)?;
    let prompts: Vec<(String, String)> = task.world.prompts.iter().map(|p| (p.id.clone(), p.text.clone())).collect();
    store.register_prompts(&prompts)?;
    let done: HashSet<String> = store.rankings(None)?.into_iter().map(|r| r.ranking_id).collect();
    let todo: Vec<(&Prompt, usize)> =
        wanted(&task, config).into_iter().filter(|(p, round)| !done.contains(&ranking_id(p, *round))).collect();
    let annotators = annotators(config);
    sample_groups(&task, config, &todo, sample, &mut |prompt, round, responses| {
        let id = ranking_id(prompt, round);
        let annotator = &annotators[fnv(&id) as usize % annotators.len()];
        let texts: Vec<String> = responses.iter().map(|r| r.text.clone()).collect();
        let mut rank_rng = StdRng::seed_from_u64(config.seed ^ fnv(&id));
        let order = annotator.rank(&task.world, task.world.fact_of(prompt), &texts, &mut rank_rng);
        store.submit(&Ranking {
            ranking_id: id,
            prompt_id: prompt.id.clone(),
            responses,
            order,
            annotator_id: annotator.id.clone(),
            created_unix_ms: now_ms(),
        })?;
        Ok(())
    })?;
    let stats = store.stats()?;
    Ok(CollectResult {
        rankings: stats.rankings,
        pairs: stats.pairs,
        seconds: start.elapsed().as_secs_f64(),
        ..CollectResult::default()
    })
}

/// Every (prompt, round) a collection ranks: each round is a fresh sample of K responses and a
/// fresh ranking, of the (shuffled, perhaps truncated) training prompts and all held-out ones.
pub(crate) fn wanted<'t>(task: &'t Task, config: &PipelineConfig) -> Vec<(&'t Prompt, usize)> {
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0xc011);
    let mut train: Vec<&Prompt> = task.prompts(Split::Train);
    train.shuffle(&mut rng);
    if config.collect.train_prompts > 0 {
        train.truncate(config.collect.train_prompts);
    }
    let prompts: Vec<&Prompt> = train.into_iter().chain(task.prompts(Split::HeldOut)).collect();
    (0..config.collect.rounds()).flat_map(|round| prompts.iter().map(move |p| (*p, round))).collect()
}

/// Samples K responses for each (prompt, round) of `todo` through `sample`, and hands each
/// prompt's K, decoded, to `take`.
pub(crate) fn sample_groups(
    task: &Task,
    config: &PipelineConfig,
    todo: &[(&Prompt, usize)],
    sample: Sampler<'_>,
    take: Take<'_>,
) -> Result<()> {
    let k = config.collect.k;
    let progress = bar(todo.len() as u64, "collect");
    let chunks: Vec<&[(&Prompt, usize)]> = todo.chunks(PROMPTS_PER_REQUEST).collect();
    for group in chunks.chunks(REQUESTS_PER_ROUND) {
        let requests = group
            .iter()
            .map(|chunk| {
                // The request id names the first ranking, so a resumed run draws fresh, distinct ids.
                let first = ranking_id(chunk[0].0, chunk[0].1);
                Ok(GenerateRequest {
                    request_id: format!("collect-{first}"),
                    prompts: task.prompt_tokens(chunk.iter().map(|(p, _)| *p))?,
                    sampling: task.sampling(
                        config.collect.temperature,
                        config.collect.top_p,
                        config.ppo.max_new_tokens,
                        config.seed ^ fnv(&first),
                    ),
                    samples_per_prompt: k,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sampled = sample(&requests)?;
        if sampled.len() != requests.len() {
            return Err(Error::Io(format!("{} requests sampled, {} answered", requests.len(), sampled.len())));
        }
        for (chunk, rollouts) in group.iter().zip(sampled) {
            if rollouts.len() != chunk.len() * k {
                return Err(Error::Io(format!("{} rollouts for {} prompts × {k}", rollouts.len(), chunk.len())));
            }
            for (&(prompt, round), group) in chunk.iter().zip(rollouts.chunks(k)) {
                let responses = group
                    .iter()
                    .map(|r| {
                        let tokens = r.response_tokens.clone();
                        Ok(RankedResponse {
                            response_id: r.rollout_id.to_string(),
                            text: task.decode(&tokens)?,
                            tokens,
                        })
                    })
                    .collect::<Result<_>>()?;
                take(prompt, round, responses)?;
            }
            progress.inc(chunk.len() as u64);
        }
    }
    progress.finish_and_clear();
    Ok(())
}

pub(crate) fn ranking_id(prompt: &Prompt, round: usize) -> String {
    format!("ranking-{}-{round}", prompt.id)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A stable hash of an id, for per-prompt seeds and annotator assignment.
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
