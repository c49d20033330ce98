//! Checkpoints rlhf writes: read back they compute the same numbers, and their files carry the
//! names and keys `transformers` looks for.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rlhf_data::{ModelKind, SaveDtype, SaveOptions, ScoreNormalizer, load_checkpoint, save_checkpoint};
use rlhf_model::{Kernels, Llama, RewardHead};
use serde_json::Value;

use crate::helpers::{golden, ids_of, model_of, tiny};
use crate::hf_tiny::CAUSAL_MODELS;

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Names, dtypes and metadata of a safetensors file, from its header.
fn header(path: &Path) -> (Vec<String>, Vec<String>, Option<String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut names: Vec<String> = meta.tensors().keys().cloned().collect();
    names.sort();
    let dtypes = names.iter().map(|n| format!("{:?}", meta.info(n).unwrap().dtype)).collect();
    let format = meta.metadata().as_ref().and_then(|m| m.get("format").cloned());
    (names, dtypes, format)
}

fn logits(model: &Llama, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&input, &input.ones_like().unwrap(), Kernels::Fused).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn a_saved_policy_reads_back_with_the_same_logits_and_transformers_fields() {
    let golden = golden();
    let out = tempfile::tempdir().unwrap();
    for name in CAUSAL_MODELS {
        let source = load_checkpoint(&tiny(name)).unwrap();
        let original = json(&tiny(name).join("config.json"));
        let ids = ids_of(&golden["models"][name]["cases"][0]["input_ids"]);
        let before = logits(&model_of(&source), &ids);
        for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
            let dir = out.path().join(format!("{name}-{dtype:?}"));
            let options = SaveOptions { dtype, score_normalizer: None };
            save_checkpoint(&dir, &source.tensors, &source.config, &source.tokenizer, ModelKind::CausalLm, options)
                .unwrap();
            let again = load_checkpoint(&dir).unwrap();
            let after = logits(&model_of(&again), &ids);
            let d = max_abs(&before, &after);
            // f32 is exact; bf16 rounds every weight (exact for the model stored in bf16).
            let tol = match (dtype, name) {
                (SaveDtype::F32, _) | (_, "llama-tied-bf16-sharded") => 0.0,
                _ => 0.05,
            };
            assert!(d <= tol, "{name} {dtype:?}: logits moved by {d}");

            // config.json: the class and every architectural key transformers reads.
            let config = json(&dir.join("config.json"));
            assert_eq!(config["architectures"], original["architectures"], "{name}");
            for key in [
                "model_type",
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "rms_norm_eps",
                "tie_word_embeddings",
                "pad_token_id",
                "eos_token_id",
                "bos_token_id",
                "max_position_embeddings",
            ] {
                assert_eq!(config[key], original[key], "{name}: config.json {key}");
            }
            let theta = original.get("rope_theta").unwrap_or(&original["rope_parameters"]["rope_theta"]);
            assert_eq!(config["rope_theta"], *theta, "{name}");
            assert_eq!(config["rope_parameters"]["rope_theta"], *theta, "{name}");
            assert_eq!(config["rope_parameters"]["rope_type"], "default");
            let torch = if dtype == SaveDtype::Bf16 { "bfloat16" } else { "float32" };
            assert_eq!((config["torch_dtype"].as_str(), config["dtype"].as_str()), (Some(torch), Some(torch)));
            if name == "qwen2-tied-bias" {
                assert!(config.get("num_labels").is_none());
            }

            // model.safetensors: exactly the tensors transformers' class has, in the asked dtype.
            let (names, dtypes, format) = header(&dir.join("model.safetensors"));
            let mut expected: Vec<String> = rlhf_data::checkpoint::expected_shapes(&source.config, ModelKind::CausalLm)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            expected.sort();
            assert_eq!(names, expected, "{name}");
            let want = if dtype == SaveDtype::Bf16 { "BF16" } else { "F32" };
            assert!(dtypes.iter().all(|d| d == want), "{name}: {dtypes:?}");
            assert_eq!(format.as_deref(), Some("pt"));

            // Tokenizer files: special tokens, the chat template, stop tokens for generate().
            let tok = json(&dir.join("tokenizer_config.json"));
            assert_eq!(
                (tok["bos_token"].as_str(), tok["eos_token"].as_str()),
                (Some("<|im_start|>"), Some("<|im_end|>"))
            );
            assert_eq!(tok["pad_token"].as_str(), Some("<|endoftext|>"));
            let template = source.tokenizer.chat_template().unwrap().source();
            assert_eq!(tok["chat_template"].as_str(), Some(template));
            assert_eq!(std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap(), template);
            let generation = json(&dir.join("generation_config.json"));
            assert_eq!(generation["eos_token_id"], serde_json::json!([2]));
            assert_eq!(generation["pad_token_id"], 0);
            assert!(dir.join("tokenizer.json").exists());

            // Readable by other users and serving containers.
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o644, "{}", entry.path().display());
            }
        }
    }
}

#[test]
fn a_saved_reward_model_is_a_sequence_classifier_with_one_label() {
    let golden = golden();
    let source = load_checkpoint(&tiny("llama-reward-model")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rm");
    // A reward model trained from a policy still holds the policy's LM head: it is left out.
    let mut tensors = source.tensors.clone();
    tensors.insert("lm_head.weight".into(), Tensor::zeros((448, 64), DType::F32, &Device::Cpu).unwrap());
    let options =
        SaveOptions { dtype: SaveDtype::F32, score_normalizer: Some(ScoreNormalizer { mean: 0.5, std: 2.0 }) };
    save_checkpoint(&dir, &tensors, &source.config, &source.tokenizer, ModelKind::RewardModel, options).unwrap();

    let config = json(&dir.join("config.json"));
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]));
    assert_eq!(config["num_labels"], 1);
    assert_eq!(config["id2label"], serde_json::json!({"0": "LABEL_0"}));
    assert_eq!(config["pad_token_id"], 0);
    assert_eq!(config["rlhf_score_normalizer"], serde_json::json!({"mean": 0.5, "std": 2.0}));
    let (names, _, _) = header(&dir.join("model.safetensors"));
    assert!(names.contains(&"score.weight".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("lm_head")), "{names:?}");
    assert!(!dir.join("generation_config.json").exists());

    let again = load_checkpoint(&dir).unwrap();
    assert_eq!(again.kind, ModelKind::RewardModel);
    assert_eq!(again.score_normalizer, Some(ScoreNormalizer { mean: 0.5, std: 2.0 }));
    let vb = VarBuilder::from_tensors(again.tensors, DType::F32, &Device::Cpu);
    let model = Llama::backbone(&again.config, vb.clone()).unwrap();
    let head = RewardHead::new(again.config.hidden_size, vb).unwrap();
    let batch = &golden["models"]["llama-reward-model"]["right_padded_batch"];
    let rows: Vec<Vec<u32>> = batch["input_ids"].as_array().unwrap().iter().map(ids_of).collect();
    let ids = Tensor::new(rows, &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let scores = head.forward(&model.hidden_states(&ids, &mask, Kernels::Fused).unwrap(), &mask).unwrap();
    let expected: Vec<f32> = batch["scores"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    for (a, b) in scores.to_vec1::<f32>().unwrap().iter().zip(&expected) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn the_critic_is_saved_beside_the_policy_not_in_it() {
    let source = load_checkpoint(&tiny("qwen2-tied-bias")).unwrap();
    let mut tensors: HashMap<String, Tensor> = source.tensors.clone();
    tensors.insert("value_head.weight".into(), Tensor::ones((1, 64), DType::F32, &Device::Cpu).unwrap());
    tensors.insert("value_head.bias".into(), Tensor::ones(1, DType::F32, &Device::Cpu).unwrap());
    // A separate critic's backbone (ppo.algorithm.critic = separate) goes with the head.
    let norm = source.tensors["model.norm.weight"].affine(2.0, 0.5).unwrap();
    tensors.insert("critic.model.norm.weight".into(), norm.clone());
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("ppo");
    let options = SaveOptions { dtype: SaveDtype::Bf16, score_normalizer: None };
    save_checkpoint(&dir, &tensors, &source.config, &source.tokenizer, ModelKind::CausalLm, options).unwrap();
    let (names, _, _) = header(&dir.join("model.safetensors"));
    assert!(!names.iter().any(|n| n.starts_with("value_head") || n.starts_with("critic.")), "{names:?}");
    let (critic, dtypes, _) = header(&dir.join("value_head.safetensors"));
    assert_eq!(critic, vec!["critic.model.norm.weight", "value_head.bias", "value_head.weight"]);
    assert!(dtypes.iter().all(|d| d == "F32"), "the critic stays in f32: {dtypes:?}");
    let again = load_checkpoint(&dir).unwrap();
    assert!(again.tensors.contains_key("value_head.weight"));
    let back = (&again.tensors["critic.model.norm.weight"] - &norm).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(back.to_scalar::<f32>().unwrap(), 0.0, "the critic's backbone comes back exactly");
}
