//! Checkpoints that cannot be run are refused with an error that names what is wrong and where,
//! and a failed save leaves the previous checkpoint as it was.

use std::path::{Path, PathBuf};

use rlhf_data::{ModelKind, SaveOptions, load_checkpoint, save_checkpoint};
use serde_json::Value;

use crate::helpers::tiny;

/// A copy of a fixture folder to break.
fn copy(name: &str, into: &Path) -> PathBuf {
    let dir = into.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(tiny(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

#[track_caller]
fn refused(dir: &Path, needles: &[&str]) {
    let err = load_checkpoint(dir).map(|_| ()).unwrap_err().to_string();
    for needle in needles {
        assert!(err.contains(needle), "error {err:?} should name {needle:?}");
    }
}

#[test]
fn broken_checkpoints_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();

    let dir = copy("llama-tied-bf16-sharded", tmp.path());
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    refused(&dir, &["model-00002-of-00003.safetensors", "missing"]);

    let dir = copy("llama-untied", &tmp.path().join("shape"));
    edit_config(&dir, |c| c["intermediate_size"] = 170.into());
    refused(&dir, &["model.safetensors", "mlp.", "[160, 64]", "[170, 64]"]);

    let dir = copy("llama-untied", &tmp.path().join("missing-weight"));
    edit_config(&dir, |c| c["num_hidden_layers"] = 3.into());
    refused(&dir, &["model.layers.2.", "no safetensors file holds"]);

    let dir = copy("llama-untied", &tmp.path().join("arch"));
    edit_config(&dir, |c| c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]));
    refused(&dir, &["GPTNeoXForCausalLM", "not supported"]);

    let dir = copy("llama-untied", &tmp.path().join("model-type"));
    edit_config(&dir, |c| c["model_type"] = "gemma".into());
    refused(&dir, &["model_type \"gemma\""]);

    let dir = copy("llama-untied", &tmp.path().join("rope"));
    edit_config(&dir, |c| c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
    refused(&dir, &["rope scaling \"llama3\""]);

    let dir = copy("llama-tied-bf16-sharded", &tmp.path().join("rope-parameters"));
    edit_config(&dir, |c| c["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "rope_theta": 1e4}));
    refused(&dir, &["rope scaling \"yarn\""]);

    let dir = copy("mistral", &tmp.path().join("window"));
    edit_config(&dir, |c| c["sliding_window"] = 64.into());
    refused(&dir, &["sliding_window 64", "max_position_embeddings 256"]);

    // Qwen2 ignores its window unless use_sliding_window is set.
    let dir = copy("qwen2-tied-bias", &tmp.path().join("qwen-window"));
    edit_config(&dir, |c| c["sliding_window"] = 64.into());
    load_checkpoint(&dir).unwrap();
    edit_config(&dir, |c| c["use_sliding_window"] = true.into());
    refused(&dir, &["sliding_window 64"]);

    let dir = copy("llama-untied", &tmp.path().join("quantized"));
    edit_config(&dir, |c| c["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4}));
    refused(&dir, &["quant_method \"gptq\""]);

    let dir = copy("llama-reward-model", &tmp.path().join("labels"));
    edit_config(&dir, |c| {
        c["id2label"] = serde_json::json!({"0": "NEG", "1": "POS"});
    });
    refused(&dir, &["2 labels", "num_labels = 1"]);

    let dir = copy("llama-untied", &tmp.path().join("no-weights"));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    refused(&dir, &["no model.safetensors"]);

    let dir = copy("llama-untied", &tmp.path().join("no-tokenizer"));
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    refused(&dir, &["no tokenizer.json"]);

    refused(&tmp.path().join("nowhere"), &["no such model folder"]);
}

#[test]
fn a_failed_save_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let source = load_checkpoint(&tiny("llama-untied")).unwrap();
    let dir = tmp.path().join("sft");
    save_checkpoint(
        &dir,
        &source.tensors,
        &source.config,
        &source.tokenizer,
        ModelKind::CausalLm,
        SaveOptions::default(),
    )
    .unwrap();
    let before = std::fs::read(dir.join("model.safetensors")).unwrap();
    let mut incomplete = source.tensors.clone();
    incomplete.remove("model.norm.weight");
    let err = save_checkpoint(
        &dir,
        &incomplete,
        &source.config,
        &source.tokenizer,
        ModelKind::CausalLm,
        SaveOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.norm.weight"), "{err}");
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), before);
    let names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["sft".to_string()], "no temporary folder left behind");
}
