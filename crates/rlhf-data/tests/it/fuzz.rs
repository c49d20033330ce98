//! Fuzzing of the files a user hands rlhf: GGUF models (a valid file with bytes overwritten,
//! lengths blown up, or cut short), dataset lines of any shape, and `config.json`. Each is read or
//! refused with an error; nothing panics.
//!
//! `PROPTEST_CASES` sets how many inputs each property tries (256 in `make test`); failing inputs
//! are kept in `tests/it/fuzz.proptest-regressions` and tried first from then on.

use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use proptest::prelude::*;
use rlhf_data::{datasets, gguf, load_checkpoint};

use crate::gguf::{tokenizer_metadata, write_gguf};
use crate::helpers::tiny;

/// A valid GGUF of the untied tiny llama, as bytes: the seed every mutation starts from.
fn seed_gguf() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let source = load_checkpoint(&tiny("llama-untied")).unwrap();
        let path = dir.path().join("seed.gguf");
        let meta = tokenizer_metadata(&tiny("mistral"), 448);
        write_gguf(&path, &source.config, &source.tensors, GgmlDType::F32, meta);
        std::fs::read(&path).unwrap()
    })
}

/// One way to damage a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite the bytes at a position with others.
    Write {
        at: usize,
        bytes: Vec<u8>,
    },
    /// A little-endian u64 (a length or a count in GGUF) made huge.
    Huge {
        at: usize,
        value: u64,
    },
    Truncate {
        at: usize,
    },
}

fn any_mutation() -> impl Strategy<Value = Mutation> {
    // Most damage lands in the header (metadata and tensor table), where the lengths are.
    let position = prop_oneof![3 => 0usize..4096, 1 => any::<usize>()];
    prop_oneof![
        (position.clone(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Write { at, bytes }),
        (position.clone(), prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just(1u64 << 31), any::<u64>()])
            .prop_map(|(at, value)| Mutation::Huge { at, value }),
        position.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Write { at, bytes: with } => {
            for (i, b) in with.iter().enumerate() {
                let j = (at + i) % n;
                bytes[j] = *b;
            }
        }
        Mutation::Huge { at, value } if n >= 8 => {
            let at = at % (n - 7);
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Huge { .. } => {}
        Mutation::Truncate { at } => bytes.truncate(at % n),
    }
}

/// A dataset line: sometimes a well-formed record, mostly something near one.
fn any_line() -> impl Strategy<Value = String> {
    let text = prop_oneof![
        12 => "\"[a-z ]{1,8}\"",
        2 => Just("[{\"role\":\"user\",\"content\":\"q\"}]".to_string()),
        1 => Just("\"\"".to_string()),
        1 => Just("null".into()),
        1 => Just("3".into()),
        1 => Just("[]".into()),
        1 => Just("[{\"role\":\"assistant\"}]".into()),
        1 => Just("{}".into()),
    ];
    let ranking = prop_oneof![
        6 => Just("[0,1]".to_string()),
        4 => Just("[1,0]".into()),
        1 => Just("[1,1]".into()),
        1 => Just("[5]".into()),
        1 => Just("[-1,0]".into()),
        1 => Just("[0,18446744073709551615]".into()),
        1 => Just("\"x\"".into()),
    ];
    let keys = prop_oneof![
        Just("prompt"),
        Just("chosen"),
        Just("rejected"),
        Just("responses"),
        Just("ranking"),
        Just("messages"),
        Just("completion"),
        Just("annotator")
    ];
    prop_oneof![
        1 => prop::collection::vec((keys, text.clone()), 0..5).prop_map(|fields| {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        }),
        2 => (text.clone(), text.clone(), text.clone()).prop_map(|(p, c, r)| format!("{{\"prompt\":{p},\"chosen\":{c},\"rejected\":{r}}}")),
        2 => (text.clone(), prop::collection::vec(text, 2..3), ranking).prop_map(|(p, rs, k)| {
            format!("{{\"prompt\":{p},\"responses\":[{}],\"ranking\":{k}}}", rs.join(","))
        }),
        1 => "[ -~]{0,30}",
    ]
}

proptest! {
    #![proptest_config(rlhf_harness::fuzzing("tests/it/fuzz.proptest-regressions"))]

    #[test]
    fn a_damaged_gguf_is_read_or_refused(mutations in prop::collection::vec(any_mutation(), 1..4)) {
        let mut bytes = seed_gguf().to_vec();
        for m in &mutations {
            if !bytes.is_empty() {
                mutate(&mut bytes, m);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = gguf::load(&path) {
            prop_assert!(e.to_string().contains("damaged.gguf"), "the error does not name the file: {e}");
        }
    }

    #[test]
    fn dataset_files_of_any_lines_are_read_or_refused_with_the_line(lines in prop::collection::vec(any_line(), 1..3)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        for outcome in [
            datasets::read_preferences(&path).map(|r| r.len()),
            datasets::read_sft(&path).map(|r| r.len()),
            datasets::read_prompts(&path).map(|r| r.len()),
        ] {
            if let Err(e) = outcome {
                prop_assert!(e.to_string().contains("data.jsonl"), "the error does not name the file: {e}");
            }
        }
        if let Ok(records) = datasets::read_preferences(&path) {
            for r in records {
                let mut seen = r.ranking.clone();
                seen.sort_unstable();
                seen.dedup();
                prop_assert!(seen.len() == r.ranking.len() && r.ranking.iter().all(|&i| i < r.responses.len()));
            }
        }
    }

    /// `config.json` with any value in any field: a usable config or an error.
    #[test]
    fn any_config_json_is_usable_or_refused(
        field in prop_oneof![Just("hidden_size"), Just("num_attention_heads"), Just("num_key_value_heads"),
            Just("num_hidden_layers"), Just("vocab_size"), Just("intermediate_size"), Just("head_dim"),
            Just("max_position_embeddings"), Just("rope_theta"), Just("rms_norm_eps"), Just("tie_word_embeddings")],
        value in prop_oneof![Just(serde_json::json!(0)), Just(serde_json::json!(-1)), Just(serde_json::json!(3)),
            Just(serde_json::json!(u64::MAX)), Just(serde_json::json!(1e300)), Just(serde_json::json!("x")),
            Just(serde_json::json!(null)), Just(serde_json::json!(7.5))],
    ) {
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tiny("llama-untied").join("config.json")).unwrap()).unwrap();
        config[field] = value;
        if let Ok(config) = serde_json::from_value::<rlhf_model::Config>(config)
            && config.validate().is_ok()
        {
            // A config that validates describes tensors that can be made.
            prop_assert!(config.expected_shapes().iter().all(|(_, s)| s.iter().all(|&d| d > 0)));
        }
    }
}
