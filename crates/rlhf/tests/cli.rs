//! The `rlhf` binary as a user meets it: help texts, bad configs refused before anything is
//! written, and a run killed midway that resumes without redoing finished stages or losing
//! stored rankings.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rlhf() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    c.env("RUST_BACKTRACE", "0");
    c
}

#[test]
fn every_stage_explains_itself() {
    for stage in ["run", "sft", "collect", "rm", "ppo", "config", "bench"] {
        let out = rlhf().args([stage, "--help"]).output().unwrap();
        assert!(out.status.success(), "{stage} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: rlhf"), "{stage}: {text}");
    }
    for service in ["generator", "scorer", "preferences", "learner"] {
        let out = rlhf().args(["serve", service, "--help"]).output().unwrap();
        assert!(out.status.success(), "serve {service} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("Usage: rlhf serve {service}")) && text.contains("--listen"), "{text}");
    }
    let out = rlhf().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--resume") && text.contains("--length-bias") && text.contains("--config"), "{text}");
}

#[test]
fn a_config_that_does_not_parse_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    let run_dir = dir.path().join("run");
    for (text, expected) in [
        ("{ this is not json", "key must be a string"),
        (r#"{"sft": {"epochs": "many"}}"#, "invalid type"),
        (r#"{"sft": {"epoch": 3}}"#, "unknown field `epoch`"),
        (r#"{"collect": {"k": 1}}"#, "collect.k must be at least 2"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = rlhf()
            .args(["run", "--run-dir", run_dir.to_str().unwrap(), "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
        assert!(!run_dir.exists(), "a refused config must not create the run directory");
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ppo_checkpointed(run: &Path) -> bool {
    std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|s| s["ppo_progress"]["step"].as_u64().is_some_and(|step| step >= 2))
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = dir.path().join("small.json");
    std::fs::write(
        &config,
        r#"{"model": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
            "world": {"sft_responses_per_prompt": 2}, "sft": {"epochs": 1},
            "collect": {"rounds": 1, "train_prompts": 24}, "reward_model": {"epochs": 1},
            "ppo": {"steps": 60, "prompts_per_step": 8, "eval_every": 2, "max_new_tokens": 16}}"#,
    )
    .unwrap();
    let mut child = rlhf()
        .args(["run", "--run-dir", run.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a PPO checkpoint", Duration::from_secs(600), || ppo_checkpointed(&run));
    child.kill().unwrap();
    child.wait().unwrap();

    let sft_before = std::fs::metadata(run.join("sft/model.safetensors")).unwrap().modified().unwrap();
    let rm_before = std::fs::metadata(run.join("rm/model.safetensors")).unwrap().modified().unwrap();
    let rankings = |run: &Path| ranking_count(&run.join("preferences.sqlite"));
    let stored = rankings(&run);
    assert!(stored > 0);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert!(state["ppo"].is_null(), "the run finished before it could be killed; make its PPO stage longer");
    let checkpoint_step = state["ppo_progress"]["step"].as_u64().unwrap();
    let ppo_steps = |run: &Path| -> Vec<u64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["stage"] == "ppo")
            .filter_map(|m| m["step"].as_u64())
            .collect()
    };
    let before = ppo_steps(&run).len();

    let out = rlhf().args(["run", "--resume", "--run-dir", run.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for stage in ["sft", "collect", "rm"] {
        assert!(err.contains(&format!("stage {stage}: already finished, skipped")), "{err}");
    }
    assert_eq!(std::fs::metadata(run.join("sft/model.safetensors")).unwrap().modified().unwrap(), sft_before);
    assert_eq!(std::fs::metadata(run.join("rm/model.safetensors")).unwrap().modified().unwrap(), rm_before);
    assert_eq!(rankings(&run), stored, "rankings lost or duplicated");

    // PPO continued from the checkpoint: the resumed session's steps run checkpoint + 1 ..= 60.
    let steps = ppo_steps(&run);
    let expected: Vec<u64> = (checkpoint_step + 1..=60).collect();
    assert_eq!(&steps[before..], &expected[..], "steps before the kill: {:?}", &steps[..before]);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["gold_win_rate_vs_sft"].is_number(), "{summary}");
    assert!(run.join("report.html").exists());
}

fn ranking_count(path: &Path) -> u64 {
    use preference_store::PreferenceStore;
    preference_store::SqliteStore::open(path).unwrap().stats().unwrap().rankings
}
