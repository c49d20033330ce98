//! GGUF files written the way llama.cpp's converter writes them (Q/K rows permuted, llama.cpp
//! tensor names, tokenizer in the metadata) from the tiny Hugging Face checkpoints, read back
//! and compared with what `transformers` computed on the originals.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rlhf_data::{gguf, load_checkpoint};
use rlhf_model::{Config, Kernels, Llama, seeded_var_builder};

use crate::helpers::{golden, ids_of, max_diff, model_of, tiny};

/// The tokenizer of an hf-tiny folder as `tokenizer.ggml.*` metadata, its vocabulary padded
/// with filler tokens to `vocab_size`.
pub(crate) fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Vec<(String, Value)> {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = spec["model"]["vocab"].as_object().unwrap();
    let mut tokens: Vec<String> = (0..vocab_size.max(vocab.len())).map(|i| format!("<filler{i}>")).collect();
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let merges: Vec<Value> = spec["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Value::String(format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())))
        .collect();
    // llama_token_type: 1 normal, 3 control (the three ChatML specials).
    let types = (0..tokens.len()).map(|i| Value::I32(if i < 3 { 3 } else { 1 })).collect();
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        ("tokenizer.chat_template".into(), Value::String(template)),
    ]
}

/// Writes `tensors` (Hugging Face names) of a model with `config` as a llama.cpp GGUF file:
/// matrices quantized as `matrices`, vectors in F32, q/k rows permuted for the `llama` arch.
pub(crate) fn write_gguf(
    path: &Path,
    config: &Config,
    tensors: &HashMap<String, Tensor>,
    matrices: GgmlDType,
    meta: Vec<(String, Value)>,
) {
    let arch = config.model_type.clone();
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.clone())),
        (format!("{arch}.block_count"), Value::U32(config.num_hidden_layers as u32)),
        (format!("{arch}.context_length"), Value::U32(config.max_position_embeddings as u32)),
        (format!("{arch}.embedding_length"), Value::U32(config.hidden_size as u32)),
        (format!("{arch}.feed_forward_length"), Value::U32(config.intermediate_size as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(config.num_attention_heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(config.num_kv_heads() as u32)),
        (format!("{arch}.rope.freq_base"), Value::F32(config.rope_theta as f32)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(config.rms_norm_eps as f32)),
    ];
    metadata.extend(meta);
    let mut quantized: Vec<(String, QTensor)> = vec![];
    for (name, _) in config.expected_shapes() {
        let mut t = tensors[&name].clone();
        if arch == "llama" && name.contains("q_proj") {
            t = gguf::permute_rows(&t, config.num_attention_heads).unwrap();
        }
        if arch == "llama" && name.contains("k_proj") {
            t = gguf::permute_rows(&t, config.num_kv_heads()).unwrap();
        }
        let dtype = if t.rank() == 2 { matrices } else { GgmlDType::F32 };
        quantized.push((gguf::gguf_name(&name).unwrap(), QTensor::quantize(&t, dtype).unwrap()));
    }
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

fn last_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, &input.ones_like().unwrap(), Kernels::Fused).unwrap();
    logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn a_permuted_gguf_reproduces_transformers_and_its_tokenizer_matches() {
    let golden = golden();
    let dir = tempfile::tempdir().unwrap();
    // The tied bf16 model covers the missing output.weight; the untied one the LM head.
    for (name, tol) in [("llama-untied", 1e-4), ("llama-tied-bf16-sharded", 1e-4)] {
        let source = load_checkpoint(&tiny(name)).unwrap();
        let path = dir.path().join(format!("{name}.gguf"));
        write_gguf(&path, &source.config, &source.tensors, GgmlDType::F32, tokenizer_metadata(&tiny("mistral"), 448));
        let ckpt = load_checkpoint(&path).unwrap();
        assert_eq!(ckpt.config.tie_word_embeddings, source.config.tie_word_embeddings, "{name}");
        assert_eq!(ckpt.config.rope_theta, source.config.rope_theta, "{name}");
        let model = model_of(&ckpt);
        for case in golden["models"][name]["cases"].as_array().unwrap() {
            let ids = ids_of(&case["input_ids"]);
            let expected: Vec<f32> =
                case["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let d = max_diff(&last_logits(&model, &ids), &expected);
            assert!(d < tol, "{name}: logits differ by {d}");
        }
        for case in golden["tokenizer"]["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(ckpt.tokenizer.encode(text).unwrap(), ids_of(&case["ids"]), "{text:?}");
            assert_eq!(ckpt.tokenizer.decode(&ids_of(&case["ids"])).unwrap(), text);
        }
        let chat = &golden["chat_template"]["cases"][0];
        let messages: Vec<rlhf_data::Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        assert_eq!(ckpt.tokenizer.encode_chat_prompt(&messages).unwrap(), ids_of(&chat["ids"]));
        assert_eq!(ckpt.tokenizer.stop_ids, vec![2]);
    }
}

#[test]
fn every_supported_quantization_dequantizes_to_the_weights_it_stores() {
    // K-quants need rows of 256, so this model is wider than the fixtures. Each file's logits
    // must equal those of a model built from the dequantized tensors (names, permutation and
    // dequantization right) and stay near the unquantized model's (the quantization is mild).
    let mut config = Config::tiny(448, 256, 1, 4, 2);
    config.intermediate_size = 512;
    let varmap = candle_nn::VarMap::new();
    let reference = Llama::new(&config, seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu)).unwrap();
    let tensors = rlhf_data::varmap_tensors(&varmap);
    let ids = [5u32, 17, 2, 9, 250, 31];
    let exact = last_logits(&reference, &ids);
    let dir = tempfile::tempdir().unwrap();
    let meta = tokenizer_metadata(&tiny("mistral"), 448);
    for (dtype, tol) in [
        (GgmlDType::F16, 1e-2),
        (GgmlDType::Q8_0, 5e-2),
        (GgmlDType::Q6K, 0.1),
        (GgmlDType::Q4K, 0.3),
        (GgmlDType::Q4_0, 0.3),
        (GgmlDType::Q4_1, 0.3),
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        write_gguf(&path, &config, &tensors, dtype, meta.clone());
        let ckpt = load_checkpoint(&path).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        let loaded = last_logits(&model_of(&ckpt), &ids);
        // The same dequantized weights, built directly.
        let direct: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(name, t)| {
                let q = if t.rank() == 2 {
                    QTensor::quantize(t, dtype).unwrap().dequantize(&Device::Cpu).unwrap()
                } else {
                    t.clone()
                };
                (name.clone(), q)
            })
            .collect();
        let direct =
            Llama::new(&config, candle_nn::VarBuilder::from_tensors(direct, DType::F32, &Device::Cpu)).unwrap();
        let d = max_diff(&loaded, &last_logits(&direct, &ids));
        assert!(d < 1e-4, "{dtype:?}: the loader's weights differ from the dequantized ones ({d})");
        let d = max_diff(&loaded, &exact);
        assert!(d < tol, "{dtype:?}: quantization moved logits by {d}");
    }
}

#[test]
fn unsupported_gguf_files_are_refused_by_name() {
    let source = load_checkpoint(&tiny("llama-untied")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta = tokenizer_metadata(&tiny("mistral"), 448);
    let path = dir.path().join("q5.gguf");
    write_gguf(&path, &source.config, &source.tensors, GgmlDType::Q5_0, meta.clone());
    let err = load_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("Q5_0") && err.contains("q5.gguf"), "{err}");

    let path = dir.path().join("gemma.gguf");
    let mut config = source.config.clone();
    config.model_type = "gemma".into();
    write_gguf(&path, &config, &source.tensors, GgmlDType::F32, vec![]);
    let err = load_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("\"gemma\""), "{err}");

    let path = dir.path().join("garbage.gguf");
    std::fs::write(&path, b"not a gguf file at all").unwrap();
    let err = load_checkpoint(&path).unwrap_err().to_string();
    assert!(err.contains("garbage.gguf") && err.contains("GGUF"), "{err}");
}
