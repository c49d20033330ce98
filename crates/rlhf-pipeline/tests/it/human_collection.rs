//! Collection by people, end to end on a small run: the collect stage samples, enqueues ranking
//! tasks (gold ones mixed in) and serves the labeling app; three annotators work the board
//! while it waits (one ranks against the gold preference on purpose). Collection ends when every
//! task has its N rankings, no ranking is lost or doubled, and the reward model leaves out the
//! careless annotator, saying so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use preference_store::PreferenceStore;
use preference_store::tasks::TaskBoard;
use rlhf_pipeline::config::AnnotatedBy;
use rlhf_pipeline::{RunDir, Stage, collect, run_stage, task::Task};
use rlhf_world::gold;

use crate::small::small_config;

/// Works the board for `people` (name, careless), in turns, until no task is left for anyone:
/// each ranks by the gold preference, or against it when careless. Turns, not threads, so who
/// gets which task does not depend on scheduling (racing annotators are `tasks_tests`' subject).
fn annotate(db: std::path::PathBuf, people: &[(&'static str, bool)], task: Task) -> HashMap<&'static str, usize> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !db.exists() || TaskBoard::open(&db, 60_000).unwrap().task_ids().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no tasks were enqueued");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut board = TaskBoard::open(&db, 60_000).unwrap();
    for (who, _) in people {
        board.add_annotator(who, false, 0).unwrap();
    }
    let mut ranked: HashMap<&str, usize> = HashMap::new();
    loop {
        let mut any = false;
        for &(who, careless) in people {
            let Some(t) = board.next_task(who, 1_000).unwrap() else { continue };
            let fact = task.world.fact_of(task.world.prompt(&t.prompt_id).unwrap());
            let utility: Vec<f64> =
                t.responses.iter().map(|r| gold::utility(gold::classify(&task.world, fact, &r.text))).collect();
            let mut order: Vec<usize> = (0..utility.len()).collect();
            order.sort_by(|&a, &b| utility[b].total_cmp(&utility[a]).then(a.cmp(&b)));
            if careless {
                order.reverse();
            }
            board.submit(who, &t.id, &order, 2_000).unwrap();
            *ranked.entry(who).or_default() += 1;
            any = true;
        }
        if !any {
            return ranked;
        }
    }
}

#[test]
fn people_rank_every_task_n_times_and_the_careless_one_is_left_out_of_the_reward_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(5);
    config.sft.epochs = 6;
    config.collect.k = 3;
    config.collect.train_prompts = 24;
    config.collect.rounds = None; // one round when people rank
    config.collect.annotated_by = AnnotatedBy::Human;
    config.collect.human.annotators_per_task = 2;
    config.collect.human.gold_rate = 0.25;
    config.collect.human.http = "127.0.0.1:0".into();
    config.collect.human.deadline_minutes = 10.0;
    config.reward_model.epochs = 1;
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_stage(&run, Stage::Sft).unwrap();
    let task = Task::load(&run, &config).unwrap();
    let db = run.path("preferences.sqlite");

    let people = [("ada", false), ("ben", false), ("cy", true)];
    let worker = {
        let (db, task) = (db.clone(), Task::load(&run, &config).unwrap());
        std::thread::spawn(move || annotate(db, &people, task))
    };
    run_stage(&run, Stage::Collect).unwrap();
    let done = worker.join().unwrap();

    let human = run.state().unwrap().collect.unwrap().human.expect("a human collection");
    let held_out = task.prompts(rlhf_world::Split::HeldOut).len() as u64;
    assert_eq!(human.tasks, 24 + held_out + human.gold_tasks);
    assert!(human.gold_tasks >= 2, "gold tasks: {}", human.gold_tasks);
    assert_eq!(human.missing_rankings, 0);

    // Every task ranked by exactly two different people; nothing lost, nothing doubled.
    let rankings = collect::open_store(&run, &task).unwrap().rankings(None).unwrap();
    assert_eq!(rankings.len() as u64, 2 * human.tasks);
    assert_eq!(done.values().sum::<usize>(), rankings.len());
    let mut per_task: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &rankings {
        let task_id = r.ranking_id.rsplit_once("--").unwrap().0;
        per_task.entry(task_id).or_default().push(&r.annotator_id);
    }
    assert!(per_task.values().all(|who| who.len() == 2 && who[0] != who[1]), "{per_task:?}");

    run_stage(&run, Stage::RewardModel).unwrap();
    let rm = run.state().unwrap().reward_model.unwrap();
    let names: Vec<&str> = rm.excluded.iter().map(|e| e.annotator.as_str()).collect();
    assert_eq!(names, ["cy"], "only the annotator who ranks against gold is left out");
    assert_eq!(rm.excluded_rankings, done["cy"]);
    assert_eq!(rm.excluded[0].gold.agree, 0);
}

#[test]
fn at_the_deadline_collection_ends_with_what_people_ranked_and_reports_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(6);
    config.sft.epochs = 1;
    config.collect.train_prompts = 8;
    config.collect.rounds = None;
    config.collect.annotated_by = AnnotatedBy::Human;
    config.collect.human.annotators_per_task = 1;
    config.collect.human.gold_rate = 0.0;
    config.collect.human.http = "127.0.0.1:0".into();
    config.collect.human.deadline_minutes = 0.15; // 9 s from when the tasks are up
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_stage(&run, Stage::Sft).unwrap();
    let task = Task::load(&run, &config).unwrap();
    let db = run.path("preferences.sqlite");

    // One person ranks five tasks and goes home.
    let worker = {
        let db = db.clone();
        std::thread::spawn(move || {
            while !db.exists() || TaskBoard::open(&db, 60_000).unwrap().task_ids().unwrap().is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut board = TaskBoard::open(&db, 60_000).unwrap();
            board.add_annotator("dee", false, 0).unwrap();
            for _ in 0..5 {
                let t = board.next_task("dee", 1_000).unwrap().unwrap();
                board.submit("dee", &t.id, &[1, 0, 2, 3], 2_000).unwrap();
            }
        })
    };
    run_stage(&run, Stage::Collect).unwrap();
    worker.join().unwrap();
    let human = run.state().unwrap().collect.unwrap().human.unwrap();
    let held_out = task.prompts(rlhf_world::Split::HeldOut).len() as u64;
    assert_eq!((human.tasks, human.missing_rankings), (8 + held_out, 8 + held_out - 5));
    assert_eq!(collect::open_store(&run, &task).unwrap().rankings(None).unwrap().len(), 5);
}
