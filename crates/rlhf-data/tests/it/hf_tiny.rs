//! The tiny Hugging Face checkpoints against what `transformers` computed with them
//! (`tests/fixtures/hf-tiny/golden.json`): tokenizer ids, chat templates, logits, teacher-forced
//! log-probs, greedy continuations, a left-padded batch and reward-model scores.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rlhf_data::{ChatTokenizer, Checkpoint, Message, ModelKind, load_checkpoint};
use rlhf_model::{Kernels, Llama, RewardHead, SamplingParams, generate, next_token_logprobs};
use serde_json::Value;

use crate::helpers::{golden, ids_of, max_diff, model_of, tiny};

pub const CAUSAL_MODELS: [&str; 4] = ["llama-untied", "llama-tied-bf16-sharded", "qwen2-tied-bias", "mistral"];

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Last-position logits, teacher-forced log-probs and the greedy continuation of every case,
/// through both the training (differentiable) and the inference (fused) kernels.
fn check_cases(name: &str, model: &Llama, cases: &Value, tol: f32) {
    for (n, case) in cases.as_array().unwrap().iter().enumerate() {
        let ids = ids_of(&case["input_ids"]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mask = input.ones_like().unwrap();
        for kernels in [Kernels::Differentiable, Kernels::Fused] {
            let logits = model.forward(&input, &mask, kernels).unwrap();
            let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
            let d = max_diff(&last, &floats(&case["last_logits"]));
            assert!(d < tol, "{name} case {n} {kernels:?}: last logits differ by {d}");
            let logp = next_token_logprobs(&logits, &input).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
            let d = max_diff(&logp, &floats(&case["teacher_forced_logprobs"]));
            assert!(d < tol, "{name} case {n} {kernels:?}: teacher-forced log-probs differ by {d}");
        }
        let params = SamplingParams { temperature: 0.0, max_new_tokens: 16, ..SamplingParams::default() };
        let greedy = generate(model, std::slice::from_ref(&ids), &params, 0).unwrap();
        assert_eq!(greedy[0].tokens, ids_of(&case["greedy_16_ids"]), "{name} case {n}: greedy continuation");
    }
}

#[test]
fn causal_models_reproduce_transformers_logits_logprobs_and_greedy_tokens() {
    let golden = golden();
    for name in CAUSAL_MODELS {
        let ckpt = load_checkpoint(&tiny(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ckpt.kind, ModelKind::CausalLm);
        assert_eq!(ckpt.config.causal_lm_architecture(), golden["models"][name]["architecture"].as_str().unwrap());
        let model = model_of(&ckpt);
        check_cases(name, &model, &golden["models"][name]["cases"], 1e-4);

        // Two prompts left-padded into one batch give each row's unpadded last logits.
        let batch = &golden["models"][name]["left_padded_batch"];
        let rows: Vec<Vec<u32>> = batch["input_ids"].as_array().unwrap().iter().map(ids_of).collect();
        let masks: Vec<Vec<u32>> = batch["attention_mask"].as_array().unwrap().iter().map(ids_of).collect();
        let width = rows[0].len();
        let ids = Tensor::new(rows, &Device::Cpu).unwrap();
        let mask = Tensor::new(masks, &Device::Cpu).unwrap();
        let logits = model.forward(&ids, &mask, Kernels::Fused).unwrap();
        for (row, expected) in batch["last_logits"].as_array().unwrap().iter().enumerate() {
            let last = logits.get(row).unwrap().get(width - 1).unwrap().to_vec1::<f32>().unwrap();
            let d = max_diff(&last, &floats(expected));
            assert!(d < 1e-4, "{name} left-padded row {row}: logits differ by {d}");
        }
    }
}

#[test]
fn the_reward_model_reproduces_transformers_scores() {
    let golden = golden();
    let ckpt = load_checkpoint(&tiny("llama-reward-model")).unwrap();
    assert_eq!(ckpt.kind, ModelKind::RewardModel);
    let Checkpoint { config, tensors, .. } = ckpt;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = Llama::backbone(&config, vb.clone()).unwrap();
    let head = RewardHead::new(config.hidden_size, vb).unwrap();
    let batch = &golden["models"]["llama-reward-model"]["right_padded_batch"];
    let rows: Vec<Vec<u32>> = batch["input_ids"].as_array().unwrap().iter().map(ids_of).collect();
    let masks: Vec<Vec<u32>> = batch["attention_mask"].as_array().unwrap().iter().map(ids_of).collect();
    let ids = Tensor::new(rows, &Device::Cpu).unwrap();
    let mask = Tensor::new(masks, &Device::Cpu).unwrap();
    for kernels in [Kernels::Differentiable, Kernels::Fused] {
        let hidden = model.hidden_states(&ids, &mask, kernels).unwrap();
        let scores = head.forward(&hidden, &mask).unwrap().to_vec1::<f32>().unwrap();
        let d = max_diff(&scores, &floats(&batch["scores"]));
        assert!(d < 1e-4, "{kernels:?}: scores {scores:?} differ by {d}");
    }
}

#[test]
fn the_tokenizer_reproduces_transformers_ids_and_text() {
    let golden = golden();
    let tok = ChatTokenizer::from_dir(&tiny("llama-untied"), None).unwrap();
    for case in golden["tokenizer"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), case["decoded"].as_str().unwrap(), "{text:?}");
    }
    // Special tokens come from tokenizer_config.json, the stop tokens include the end of turn.
    assert_eq!((tok.pad_id, tok.eos_id, tok.bos_id), (0, 2, Some(1)));
    assert_eq!(tok.end_of_turn_id, Some(2));
    assert_eq!(tok.stop_ids, vec![2]);
}

#[test]
fn every_chat_template_renders_as_in_transformers() {
    let golden = golden();
    // The untied model keeps its template inside tokenizer_config.json (the older layout), the
    // others in chat_template.jinja.
    for name in ["llama-untied", "llama-tied-bf16-sharded", "qwen2-tied-bias", "mistral", "llama-reward-model"] {
        let tok = ChatTokenizer::from_dir(&tiny(name), None).unwrap();
        for case in golden["chat_template"]["cases"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let generation = case["add_generation_prompt"].as_bool().unwrap();
            let text = tok.apply_chat_template(&messages, generation).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}");
            assert_eq!(tok.encode(&text).unwrap(), ids_of(&case["ids"]), "{name}");
        }
    }
}

#[test]
fn a_response_is_the_assistant_turn_through_its_end_of_turn_token() {
    let tok = ChatTokenizer::from_dir(&tiny("qwen2-tied-bias"), None).unwrap();
    let (prompt, response) = tok.encode_exchange("What is the capital of Japan?", "Tokyo.").unwrap();
    // The prompt is the rendered conversation with the generation prompt; the response ends at
    // <|im_end|> (the newline the template writes after it is not the model's to produce).
    let golden = golden();
    assert_eq!(prompt, ids_of(&golden["chat_template"]["cases"][0]["ids"]));
    assert_eq!(response.last(), Some(&2));
    assert_eq!(tok.decode(&response).unwrap(), "Tokyo.");
    let whole =
        tok.apply_chat_template(&[Message::user("What is the capital of Japan?"), Message::assistant("Tokyo.")], false);
    let mut joined = prompt.clone();
    joined.extend(&response);
    joined.extend(tok.encode("\n").unwrap());
    assert_eq!(joined, tok.encode(&whole.unwrap()).unwrap());
}
