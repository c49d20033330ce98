//! Stage 2 with people ranking: the SFT policy samples K responses per prompt as usual, but each
//! (prompt, K responses) becomes a ranking task on the [`TaskBoard`] in the run's preference
//! database, for `annotators_per_task` distinct people; gold tasks (K responses of K different
//! answer types, whose order the bundled world's hidden gold preference knows) are mixed in at
//! random. The stage serves the labeling app while it waits, and ends when every task has its
//! rankings or at the deadline, reporting what is missing. The reward model then trains from the
//! store as after simulated collection.
//!
//! Tasks are enqueued in one transaction once everything is sampled, so a resumed collection
//! either finds all of them (and only waits) or none (and samples again).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use preference_store::tasks::{NewTask, TaskBoard};
use preference_store::web::App;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rlhf_types::{GenerateRequest, RankedResponse, Rollout};
use rlhf_world::{Prompt, gold};

use crate::collect::{Sampler, fnv, open_store, ranking_id, sample_groups, sft_generator, wanted};
use crate::config::PipelineConfig;
use crate::progress::bar;
use crate::run_dir::{CollectResult, HumanCollection, RunDir};
use crate::task::Task;
use crate::{Error, Result};

/// How often the stage looks at the board while people rank.
const POLL: Duration = Duration::from_millis(500);

/// Collects rankings from people, sampling with an in-process SFT generator.
pub fn run(run: &RunDir, config: &PipelineConfig) -> Result<CollectResult> {
    let generator = sft_generator(run, "generator-0")?;
    let mut sample = |requests: &[GenerateRequest]| -> Result<Vec<Vec<Rollout>>> {
        requests.iter().map(|r| Ok(generator.generate(r)?)).collect()
    };
    run_with(run, config, &mut sample)
}

/// Collects rankings from people, sampling through `sample` (which must serve the SFT policy).
pub fn run_with(run: &RunDir, config: &PipelineConfig, sample: Sampler<'_>) -> Result<CollectResult> {
    let start = Instant::now();
    let task = Task::load(run, config)?;
    let store = open_store(run, &task)?;
    let human = &config.collect.human;
    let lease_ms = human.lease_minutes as i64 * 60_000;
    let db = run.path("preferences.sqlite");
    let mut board = TaskBoard::open(&db, lease_ms)?;
    if board.task_ids()?.is_empty() {
        let tasks = ranking_tasks(&task, config, sample)?;
        board.enqueue(&tasks)?;
    }
    let tasks = board.task_ids()?.len() as u64;
    let gold_tasks = board.gold_orders()?.len() as u64;
    let guidelines = match &human.guidelines {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("collect.human.guidelines {}: {e}", path.display())))?,
        ),
        None => None,
    };

    // The app runs on its own runtime while this thread watches the board.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("the labeling app's runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&human.http))
        .map_err(|e| Error::Config(format!("collect.human.http {}: {e}", human.http)))?;
    let addr = listener.local_addr().map_err(|e| Error::Io(e.to_string()))?;
    let mut app = App::new(TaskBoard::open(&db, lease_ms)?);
    if let Some(markdown) = guidelines {
        app = app.with_guidelines(markdown);
    }
    runtime.spawn(preference_store::web::serve(listener, app));
    eprintln!(
        "collect: {tasks} ranking tasks ({gold_tasks} gold), each for {} annotator(s). The labeling app is at \
         http://{addr}/ ; add people with `rlhf annotators add NAME --db {}` (--admin for the dashboard).",
        human.annotators_per_task,
        db.display()
    );

    let total = tasks * human.annotators_per_task as u64;
    let progress = bar(total, "rankings");
    // The deadline counts from when the tasks are up, not from the start of sampling.
    let deadline = Instant::now() + Duration::from_secs_f64(human.deadline_minutes * 60.0);
    let missing = loop {
        let now = board.progress()?;
        progress.set_position(total.saturating_sub(now.missing));
        if now.missing == 0 {
            break 0;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                missing = now.missing,
                complete = now.complete,
                tasks = now.tasks,
                "collect: the deadline passed with rankings missing; the reward model trains on what there is"
            );
            break now.missing;
        }
        std::thread::sleep(POLL);
    };
    progress.finish_and_clear();
    runtime.shutdown_timeout(Duration::from_secs(1));

    use preference_store::PreferenceStore;
    let stats = store.stats()?;
    if stats.rankings == 0 {
        return Err(Error::NoRankings(format!("nobody ranked any of the {tasks} tasks before the deadline")));
    }
    Ok(CollectResult {
        rankings: stats.rankings,
        pairs: stats.pairs,
        seconds: start.elapsed().as_secs_f64(),
        human: Some(HumanCollection {
            tasks,
            gold_tasks,
            missing_rankings: missing,
            flagged: board.progress()?.flagged,
        }),
    })
}

/// One task per (prompt, round), and gold tasks at `gold_rate`, inserted at random places.
fn ranking_tasks(task: &Task, config: &PipelineConfig, sample: Sampler<'_>) -> Result<Vec<NewTask>> {
    let needed = config.collect.human.annotators_per_task;
    let todo = wanted(task, config);
    let mut tasks = Vec::with_capacity(todo.len());
    // Every response sampled for a prompt, by prompt id: what its gold task is drawn from.
    let mut pooled: BTreeMap<String, Vec<RankedResponse>> = BTreeMap::new();
    sample_groups(task, config, &todo, sample, &mut |prompt, round, responses| {
        pooled.entry(prompt.id.clone()).or_default().extend(responses.iter().cloned());
        tasks.push(NewTask {
            id: ranking_id(prompt, round),
            prompt_id: prompt.id.clone(),
            responses,
            needed,
            gold_order: None,
        });
        Ok(())
    })?;
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x601d);
    let wanted_gold = (config.collect.human.gold_rate * tasks.len() as f64).round() as usize;
    let mut candidates: Vec<(&Prompt, &[RankedResponse])> =
        pooled.iter().filter_map(|(id, responses)| Some((task.world.prompt(id)?, responses.as_slice()))).collect();
    candidates.shuffle(&mut rng);
    let gold: Vec<NewTask> = candidates
        .into_iter()
        .filter_map(|(prompt, responses)| gold_task(task, prompt, responses, config.collect.k, needed, &mut rng))
        .take(wanted_gold)
        .collect();
    if gold.len() < wanted_gold {
        tracing::warn!(
            made = gold.len(),
            wanted = wanted_gold,
            "collect: too few prompts had K responses of K different answer types for every gold task asked for"
        );
    }
    for g in gold {
        let at = rng.random_range(0..=tasks.len());
        tasks.insert(at, g);
    }
    Ok(tasks)
}

/// A gold task for `prompt`: K of its responses of K different answer types, shown in random
/// order, the known order best first by the gold utility; `None` when it has fewer types.
fn gold_task(
    task: &Task,
    prompt: &Prompt,
    responses: &[RankedResponse],
    k: usize,
    needed: usize,
    rng: &mut StdRng,
) -> Option<NewTask> {
    let fact = task.world.fact_of(prompt);
    let mut by_type: BTreeMap<String, Vec<(&RankedResponse, f64)>> = BTreeMap::new();
    for r in responses {
        let answer = gold::classify(&task.world, fact, &r.text);
        by_type.entry(answer.name().to_string()).or_default().push((r, gold::utility(answer)));
    }
    let types: Vec<&Vec<(&RankedResponse, f64)>> = by_type.values().collect();
    if types.len() < k {
        return None;
    }
    let mut chosen: Vec<(RankedResponse, f64)> =
        types.choose_multiple(rng, k).filter_map(|group| group.choose(rng)).map(|(r, u)| ((*r).clone(), *u)).collect();
    chosen.shuffle(rng);
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by(|&a, &b| chosen[b].1.total_cmp(&chosen[a].1));
    Some(NewTask {
        id: format!("gold-{}-{:08x}", prompt.id, fnv(&prompt.id) as u32),
        prompt_id: prompt.id.clone(),
        responses: chosen.into_iter().map(|(r, _)| r).collect(),
        needed,
        gold_order: Some(order),
    })
}
