//! Fuzzing of a replica's generation path with whatever a client may send: prompts of any token
//! ids, any sampling settings (NaN, negative, zero, huge), any counts. Each request is refused
//! with an error or served with well-formed rollouts; nothing panics.
//!
//! `PROPTEST_CASES` sets how many requests are tried (256 in `make test`); failing inputs are kept
//! in `tests/fuzz.proptest-regressions` and tried first from then on.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use policy_generator::{Limits, PolicyGenerator};
use proptest::prelude::*;
use rlhf_model::{Config, seeded_var_builder};
use rlhf_proto::v1;
use rlhf_types::GenerateRequest;

const VOCAB: usize = 20;

fn generator() -> PolicyGenerator {
    let cfg = Config::tiny(VOCAB, 16, 1, 2, 1);
    let varmap = VarMap::new();
    rlhf_model::Llama::new(&cfg, seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu)).unwrap();
    let tensors: HashMap<String, Tensor> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    PolicyGenerator::new(&Device::Cpu, "fuzz", cfg, 0, tensors, 1).unwrap()
}

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => 0.1f32..2.0,
        1 => Just(0.0),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => -5.0f32..0.0,
        1 => any::<f32>(),
    ]
}

fn any_token() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..VOCAB as u32, 1 => any::<u32>()]
}

prop_compose! {
    fn any_request()(
        prompts in prop_oneof![
            9 => prop::collection::vec(prop::collection::vec(any_token(), 1..6), 1..3),
            1 => prop::collection::vec(prop::collection::vec(any_token(), 0..2), 0..2),
        ],
        temperature in any_f32(),
        // Mostly usable sampling settings, so that most requests reach the model.
        top_p in any_f32(),
        top_k in prop_oneof![Just(0u32), 1u32..30, any::<u32>()],
        max_new_tokens in prop_oneof![9 => 0u32..6, 1 => any::<u32>()],
        stop in prop::collection::vec(any_token(), 0..3),
        samples_per_prompt in prop_oneof![9 => 1u32..3, 1 => Just(0u32), 1 => any::<u32>()],
        seed in any::<u64>(),
    ) -> v1::GenerateRequest {
        v1::GenerateRequest {
            request_id: "fuzz".into(),
            prompts: prompts.into_iter().enumerate()
                .map(|(i, token_ids)| v1::Prompt { prompt_id: format!("p{i}"), text: String::new(), token_ids })
                .collect(),
            sampling: Some(v1::SamplingParams { temperature, top_k, top_p, max_new_tokens, stop_token_ids: stop, seed }),
            samples_per_prompt,
            min_policy_version: 0,
        }
    }
}

proptest! {
    #![proptest_config(rlhf_harness::fuzzing("tests/fuzz.proptest-regressions"))]

    #[test]
    fn any_request_is_refused_or_served_with_well_formed_rollouts(wire in any_request()) {
        let generator = generator();
        // What the service does with a request off the wire.
        let request = GenerateRequest {
            request_id: wire.request_id,
            prompts: wire.prompts.into_iter().map(Into::into).collect(),
            sampling: wire.sampling.expect("set above").into(),
            samples_per_prompt: wire.samples_per_prompt as usize,
        };
        let limits = Limits { max_rows: 16, max_sequence_tokens: Some(64), max_concurrent: 1 };
        if generator.check(&request, &limits).is_err() {
            return Ok(());
        }
        if let Ok(rollouts) = generator.generate(&request) {
            prop_assert_eq!(rollouts.len(), request.prompts.len() * request.samples_per_prompt);
            for r in &rollouts {
                prop_assert!(r.response_tokens.len() <= request.sampling.max_new_tokens);
                prop_assert_eq!(r.response_tokens.len(), r.behaviour_logprobs.len());
                prop_assert!(r.response_tokens.iter().all(|&t| (t as usize) < VOCAB), "{:?}", r.response_tokens);
                prop_assert!(r.behaviour_logprobs.iter().all(|&l| l.is_finite() && l <= 0.0), "{:?}", r.behaviour_logprobs);
            }
        }
    }
}
