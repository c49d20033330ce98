//! A pretrained Hugging Face model with SFT data and PPO prompts of one's own through every stage:
//! the run keeps the model's architecture, tokenizer and chat template from SFT to PPO, SFT learns
//! the file, and PPO's rollouts answer the prompt file.

use rlhf_data::Message;
use rlhf_model::{Llama, SamplingParams, generate};
use rlhf_pipeline::ppo::step_requests;
use rlhf_pipeline::reward;
use rlhf_pipeline::task::Task;
use rlhf_pipeline::{PipelineConfig, RunDir, run_all};

use crate::small::small_config;

/// Four questions, each with a reply the tiny model cannot know beforehand.
const EXCHANGES: [(&str, &str); 4] = [
    ("Who keeps the lighthouse?", "Mira does."),
    ("What is the password?", "Swordfish."),
    ("Where is the key?", "Under the mat."),
    ("When does the ferry leave?", "At nine."),
];

/// Collection, reward model and PPO cut to a few seconds: these tests check the path, not learning.
fn seconds_after_sft(seed: u64) -> PipelineConfig {
    let mut config = small_config(seed);
    config.collect.train_prompts = 8;
    config.collect.rounds = Some(1);
    config.reward_model.epochs = 1;
    config.ppo.steps = 2;
    config.ppo.prompts_per_step = 8;
    config.ppo.eval_every = 2;
    config.ppo.max_new_tokens = 8;
    config
}

fn architecture(run: &RunDir, stage: &str) -> String {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path(stage).join("config.json")).unwrap()).unwrap();
    config["architectures"][0].as_str().unwrap().to_string()
}

#[test]
fn a_pretrained_model_with_our_own_sft_data_and_prompts_goes_through_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sft.jsonl");
    let lines: Vec<serde_json::Value> = (0..4)
        .flat_map(|_| EXCHANGES)
        .enumerate()
        .map(|(i, (q, a))| match i % 2 {
            0 => serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}),
            _ => serde_json::json!({"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}),
        })
        .collect();
    rlhf_data::datasets::write_lines(&data, &lines).unwrap();

    let mut config = seconds_after_sft(3);
    config.model.path = Some(rlhf_harness::fixture("hf-tiny/mistral"));
    config.sft.data = Some(data);
    let prompts = dir.path().join("prompts.jsonl");
    let own_prompts = ["Who keeps the lighthouse?", "Where is the key?", "When does the ferry leave?"];
    let prompt_lines: Vec<serde_json::Value> = own_prompts.iter().map(|p| serde_json::json!({"prompt": p})).collect();
    rlhf_data::datasets::write_lines(&prompts, &prompt_lines).unwrap();
    config.ppo.prompts = Some(prompts);
    config.sft.epochs = 30;
    config.sft.batch_size = 4;
    config.collect.k = 2;
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_all(&run).unwrap();

    // PPO's rollouts answer the prompt file, through the model's chat template.
    let task = Task::load(&run, &config).unwrap();
    let requests = step_requests(&task, &config, 0, ppo_learner::RolloutMode::OneProcess, "").unwrap();
    let asked: Vec<&[u32]> = requests[0].prompts.iter().map(|p| p.tokens.as_slice()).collect();
    for prompt in own_prompts {
        let tokens = task.tokenizer.encode_chat_prompt(&[Message::user(prompt)]).unwrap();
        assert!(asked.contains(&tokens.as_slice()), "{prompt:?} is among the rollout prompts");
    }
    assert_eq!(asked.len(), own_prompts.len());

    let state = run.state().unwrap();
    assert_eq!(state.sft.as_ref().unwrap().examples, 16);
    assert!(state.ppo.is_some());
    assert_eq!(architecture(&run, "sft"), "MistralForCausalLM");
    assert_eq!(architecture(&run, "rm"), "MistralForSequenceClassification");
    assert_eq!(architecture(&run, "ppo"), "MistralForCausalLM");
    for stage in ["sft", "rm", "ppo"] {
        assert!(run.path(stage).join("chat_template.jinja").exists(), "{stage} keeps the model's chat template");
    }

    // SFT learned the file: greedy answers through the chat template are its replies.
    let ckpt = rlhf_data::load_checkpoint(&run.path("sft")).unwrap();
    let tokenizer = ckpt.tokenizer;
    let vb = candle_nn::VarBuilder::from_tensors(ckpt.tensors, candle_core::DType::F32, &candle_core::Device::Cpu);
    let model = Llama::new(&ckpt.config, vb).unwrap();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 16,
        stop_tokens: tokenizer.stop_ids.clone(),
        ..SamplingParams::default()
    };
    let prompts: Vec<Vec<u32>> =
        EXCHANGES.iter().map(|(q, _)| tokenizer.encode_chat_prompt(&[Message::user(q)]).unwrap()).collect();
    let answers = generate(&model, &prompts, &params, tokenizer.pad_id).unwrap();
    for ((question, reply), answer) in EXCHANGES.iter().zip(answers) {
        let text = tokenizer.decode(&answer.tokens).unwrap();
        assert_eq!(text.trim(), *reply, "the SFT model's answer to {question:?}");
    }
}

#[test]
fn sft_data_without_a_pretrained_model_is_refused() {
    let mut config = PipelineConfig::default();
    config.sft.data = Some("sft.jsonl".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("need model.path"), "{err}");
    config.model.path = Some("model".into());
    config.sft.skip = true;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("exclude each other"), "{err}");
}

/// The real-model path (`rlhf run --model X --skip-sft`) on a tiny checkpoint: the world asks in
/// plain English through the model's chat template, the starting model is the SFT model as is,
/// and every stage runs to a report. No learning bar: the tiny model knows nothing.
#[test]
fn an_instruction_tuned_model_skips_sft_and_goes_through_every_stage_in_plain_english() {
    let dir = tempfile::tempdir().unwrap();
    let model = rlhf_harness::fixture("hf-tiny/qwen2-tied-bias");
    let mut config = seconds_after_sft(4);
    config.model.path = Some(model.clone());
    config.sft.skip = true;
    // The reward model trains its top layer only, as configs/smollm2.json has it do.
    config.reward_model.train_top_layers = Some(1);
    let run = RunDir::create(&dir.path().join("run"), &config).unwrap();
    run_all(&run).unwrap();

    let state = run.state().unwrap();
    let sft = state.sft.as_ref().unwrap();
    assert!(sft.skipped && sft.examples == 0 && sft.final_loss.is_none());
    let start = rlhf_data::load_checkpoint(&model).unwrap();
    let saved = rlhf_data::load_checkpoint(&run.path("sft")).unwrap();
    for (name, tensor) in &start.tensors {
        let diff = (tensor - &saved.tensors[name]).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} is the starting model's");
    }
    let rm = rlhf_data::load_checkpoint(&run.path("rm")).unwrap();
    for (name, tensor) in &rm.tensors {
        let Some(start) = start.tensors.get(name) else { continue };
        let moved = (tensor - start).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        if name.starts_with("model.layers.1.mlp.") || name == "model.norm.weight" {
            assert!(moved > 0.0, "{name} trains");
        } else if !name.starts_with("model.layers.1.") {
            assert_eq!(moved, 0.0, "{name} is frozen below the top layer");
        }
    }
    assert_eq!(architecture(&run, "ppo"), "Qwen2ForCausalLM");
    assert_eq!(architecture(&run, "rm"), "Qwen2ForSequenceClassification");
    // The training scores came from the frozen layers' cache (each ranking's prompt through them
    // once): the saved reward model scores the same rankings the same way.
    let result = state.reward_model.as_ref().unwrap();
    let task = Task::load(&run, &config).unwrap();
    let store = preference_store::SqliteStore::open(&run.path("preferences.sqlite")).unwrap();
    let all = preference_store::PreferenceStore::rankings(&store, None).unwrap();
    let train: Vec<_> =
        all.iter().filter(|r| task.world.prompt(&r.prompt_id).unwrap().split == rlhf_world::Split::Train).collect();
    let prompts = reward::prompt_tokens(&task).unwrap();
    let scores = reward::score_rankings(&reward::load_scorer(&run).unwrap(), &train, &prompts).unwrap();
    let flat: Vec<f64> = scores.iter().flatten().map(|&s| s as f64).collect();
    let mean = flat.iter().sum::<f64>() / flat.len() as f64;
    assert!((mean - result.score_mean as f64).abs() < 1e-4 * (1.0 + mean.abs()), "{mean} vs {}", result.score_mean);
    let agreement = reward::agreement(&train, |i, j| scores[i][j] as f64);
    assert!((agreement - result.train_accuracy).abs() < 1e-9, "{agreement} vs {}", result.train_accuracy);
    let best = result.best_of_k.as_ref().expect("best of K on the world's held-out questions");
    assert!(best.by_gold >= best.by_reward_model && best.by_gold >= 0.5, "{best:?}");

    // Questions in plain English, through the chat template.
    let task = Task::load(&run, &config).unwrap();
    let france = task.world.prompts.iter().find(|p| p.id == "capital-0-0").unwrap();
    assert_eq!(france.text, "What is the capital of France?");
    let rankings = preference_store::SqliteStore::open(&run.path("preferences.sqlite")).unwrap();
    let prompts = preference_store::PreferenceStore::prompts(&rankings).unwrap();
    assert!(prompts.iter().any(|(_, text)| text == "What is the capital of France?"));
    assert!(state.ppo.is_some());
    let report = std::fs::read_to_string(run.path("report.html")).unwrap();
    assert!(report.contains("What is") || report.contains("Which") || report.contains("Tell me"), "samples in English");
    for part in [
        "Settings of this run",
        "Noise ceiling",
        "band 0.25",
        "band 6",
        "bar 0.75",
        "alarm 1.25× SFT",
        "validation (chooses)",
        "chosen at step",
    ] {
        assert!(report.contains(part), "the report shows {part:?}");
    }
}

/// The shipped configurations (`make run-smollm2`'s among them) parse and pass validation, with
/// the model the command line would name.
#[test]
fn the_shipped_configs_parse_and_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let mut config = PipelineConfig::parse(&path).unwrap();
            config.model.path.get_or_insert_with(|| rlhf_harness::fixture("hf-tiny/qwen2-tied-bias"));
            config.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked > 0, "no configs found in {}", dir.display());
}
