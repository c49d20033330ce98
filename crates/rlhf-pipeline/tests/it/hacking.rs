//! The reward-hacking alarm on real runs: annotators with a planted liking for longer answers
//! teach the reward model verbosity, PPO follows it, and the alarm fires; the same run without
//! the bias stays quiet. Both runs share one SFT stage.

use rlhf_pipeline::{RunDir, Stage, run_stage};

use crate::small::small_config;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_alarm_fires_with_a_length_bias_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(0);
    let base = RunDir::create(&dir.path().join("base"), &config).unwrap();
    run_stage(&base, Stage::Sft).unwrap();

    let mut outcomes = vec![];
    for bias in [0.0, 1.5] {
        let path = dir.path().join(format!("bias-{bias}"));
        copy_dir(base.root(), &path);
        let run = RunDir::open(&path).unwrap();
        let mut c = config.clone();
        c.collect.length_bias = bias;
        run.write_json("config.json", &c).unwrap();
        for stage in [Stage::Collect, Stage::RewardModel, Stage::Ppo] {
            run_stage(&run, stage).unwrap();
        }
        let summary = rlhf_pipeline::report::summary(&run).unwrap();
        outcomes.push((bias, summary.hacking_alarm, summary.alarms.clone()));
    }
    assert!(!outcomes[0].1, "no bias, yet the alarm fired: {:?}", outcomes[0].2);
    assert!(outcomes[1].1, "length bias 1.5, yet the alarm stayed quiet");
    assert!(outcomes[1].2.iter().any(|a| a.contains("as long")), "{:?}", outcomes[1].2);
}
