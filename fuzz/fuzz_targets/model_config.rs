//! Any bytes as a Hugging Face `config.json`: a config that validates describes tensors that
//! can be made (sizes bounded, no overflow); anything else is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<rlhf_model::Config>(bytes)
        && config.validate().is_ok()
    {
        assert!(config.expected_shapes().iter().all(|(_, shape)| shape.iter().all(|&d| d > 0)));
    }
});
