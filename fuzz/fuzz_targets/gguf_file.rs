//! Any bytes as a GGUF model file (the corpus starts from a real one): loaded, or refused with
//! an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::env::temp_dir().join(format!("rlhf-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).expect("write the input");
    if let Err(e) = rlhf_data::gguf::load(&path) {
        assert!(e.to_string().contains("rlhf-fuzz-"), "{e}");
    }
});
