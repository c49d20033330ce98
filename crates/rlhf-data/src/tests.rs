//! Tokenizer and checkpoint round trips.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::{Config, Kernels, Llama, seeded_var_builder};

use crate::*;

fn tokenizer() -> ChatTokenizer {
    let words: Vec<String> = "the sky is blue . what colour ?".split_whitespace().map(String::from).collect();
    ChatTokenizer::word_level(&words).unwrap()
}

#[test]
fn the_chat_format_encodes_and_decodes() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 5 + 8);
    // The bundled chat template gives the format the bundled task has always used:
    // `<|user|> prompt <|assistant|>`, then `response <eos>`.
    let (prompt, response) = tok.encode_exchange("what colour is the sky ?", "the sky is blue .").unwrap();
    let id = |t: &str| tok.encode(t).unwrap()[0];
    assert_eq!(prompt.first(), Some(&id(tokenizer::USER)));
    assert_eq!(prompt.last(), Some(&id(tokenizer::ASSISTANT)));
    assert_eq!(prompt.len(), 8);
    assert_eq!(response.last(), Some(&tok.eos_id));
    assert_eq!(response.len(), 6);
    assert_eq!(tok.decode(&response).unwrap(), "the sky is blue .");
    assert_eq!((tok.eos_id, tok.pad_id, tok.end_of_turn_id, tok.stop_ids.clone()), (2, 0, Some(2), vec![2]));
    // Upper case is normalised; unknown words map to <unk> instead of failing.
    assert_eq!(tok.encode("The SKY").unwrap(), tok.encode("the sky").unwrap());
    assert_eq!(tok.encode("purple").unwrap(), vec![1]);
}

#[test]
fn checkpoints_round_trip_and_replace_atomically() {
    let tok = tokenizer();
    let cfg = Config::tiny(tok.vocab_size(), 16, 1, 2, 1);
    let varmap = VarMap::new();
    let model = Llama::new(&cfg, seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sft");
    let tensors = varmap_tensors(&varmap);
    save_checkpoint(&path, &tensors, &cfg, &tok, ModelKind::CausalLm, SaveOptions::default()).unwrap();
    // Replacing works too.
    save_checkpoint(&path, &tensors, &cfg, &tok, ModelKind::CausalLm, SaveOptions::default()).unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["sft".to_string()], "no temporary directories left behind");

    let ckpt = load_checkpoint(&path).unwrap();
    let mut expected = cfg.clone();
    expected.eos_token_id = Some(rlhf_model::config::TokenIds::One(tok.eos_id));
    expected.pad_token_id = Some(tok.pad_id);
    assert_eq!(ckpt.config, expected);
    assert_eq!(ckpt.tokenizer.encode("the sky").unwrap(), tok.encode("the sky").unwrap());
    let reloaded =
        Llama::new(&ckpt.config, candle_nn::VarBuilder::from_tensors(ckpt.tensors, DType::F32, &Device::Cpu)).unwrap();
    let ids = Tensor::new(&[[3u32, 5, 6, 7]], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let a = model.forward(&ids, &mask, Kernels::Fused).unwrap();
    let b = reloaded.forward(&ids, &mask, Kernels::Fused).unwrap();
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    std::fs::write(path.join("config.json"), "{ not json").unwrap();
    let err = load_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn jsonl_appends_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    jsonl::append(&path, &serde_json::json!({"step": 1})).unwrap();
    jsonl::append(&path, &serde_json::json!({"step": 2})).unwrap();
    let rows: Vec<serde_json::Value> = jsonl::read(&path).unwrap();
    assert_eq!(rows.len(), 2);
    std::fs::write(&path, "{\"step\": 1}\nnope\n").unwrap();
    let err = jsonl::read::<serde_json::Value>(&path).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}
