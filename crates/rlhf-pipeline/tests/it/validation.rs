//! The prompts that choose PPO's checkpoint: training prompts, fixed by the seed, never the
//! held-out prompts the run reports on.

use rlhf_pipeline::RunDir;
use rlhf_pipeline::task::Task;
use rlhf_world::Split;

use crate::small::small_config;

#[test]
fn validation_prompts_are_training_prompts_fixed_by_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, seed: u64, share: f64| {
        let mut config = small_config(seed);
        config.world.validation = share;
        let run = RunDir::create(&dir.path().join(name), &config).unwrap();
        Task::load(&run, &config).unwrap()
    };
    let task = load("a", 0, 0.1);
    let total = task.world.prompts.len();
    assert_eq!(task.validation_prompts.len(), (0.1 * total as f64).round() as usize);
    for p in &task.validation_prompts {
        assert_eq!(p.split, Split::Train, "{} is not a training prompt", p.id);
    }
    let ids = |t: &Task| t.validation_prompts.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&load("b", 0, 0.1)), ids(&task));
    assert_ne!(ids(&load("c", 1, 0.1)), ids(&task));
    assert!(load("d", 0, 0.0).validation_prompts.is_empty());
}
