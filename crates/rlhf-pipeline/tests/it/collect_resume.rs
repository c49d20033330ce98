//! Collection resumes: a second run keeps every stored ranking and adds only missing ones.

use preference_store::PreferenceStore;
use rlhf_pipeline::{RunDir, Stage, collect, run_stage, task::Task};

use crate::small::small_config;

#[test]
fn collecting_again_keeps_rankings_and_adds_only_new_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(3);
    config.sft.epochs = 1;
    config.collect.rounds = Some(1);
    config.collect.train_prompts = 20;
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_stage(&run, Stage::Sft).unwrap();
    run_stage(&run, Stage::Collect).unwrap();
    let task = Task::load(&run, &config).unwrap();
    let first = collect::open_store(&run, &task).unwrap().rankings(None).unwrap();
    let held_out = task.prompts(rlhf_world::Split::HeldOut).len();
    assert_eq!(first.len(), 20 + held_out);

    // Collecting again with the same settings stores nothing new and loses nothing.
    run_stage(&run, Stage::Collect).unwrap();
    assert_eq!(collect::open_store(&run, &task).unwrap().rankings(None).unwrap(), first);

    // A second round (as after a crash before it was collected) adds exactly one ranking per prompt.
    config.collect.rounds = Some(2);
    run.write_json("config.json", &config).unwrap();
    run_stage(&run, Stage::Collect).unwrap();
    let second = collect::open_store(&run, &task).unwrap().rankings(None).unwrap();
    assert_eq!(second.len(), 2 * first.len());
    assert_eq!(&second[..first.len()], &first[..]);
}
