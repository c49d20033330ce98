//! Any bytes as a JSONL dataset file (prompts, SFT, preferences): read, or refused naming the
//! file; every ranking read is a permutation of its responses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rlhf_data::datasets;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("rlhf-fuzz-{}.jsonl", std::process::id()));
    std::fs::write(&path, bytes).expect("write the input");
    let _ = datasets::read_prompts(&path);
    let _ = datasets::read_sft(&path);
    if let Ok(records) = datasets::read_preferences(&path) {
        for r in records {
            let mut seen = r.ranking.clone();
            seen.sort_unstable();
            seen.dedup();
            assert!(seen.len() == r.ranking.len() && r.ranking.iter().all(|&i| i < r.responses.len()));
        }
    }
});
