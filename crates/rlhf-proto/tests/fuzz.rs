//! Fuzzing of what a service decodes from the wire: arbitrary bytes as every message, messages
//! with arbitrary fields through the domain conversions, and damaged weight streams. Nothing may
//! panic; a conversion accepts exactly what its type can say; a weight stream is refused or
//! arrives bit for bit.
//!
//! `PROPTEST_CASES` sets how many inputs each property tries (256 in `make test`); a failing input
//! is kept in `tests/fuzz.proptest-regressions` and tried first from then on.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use prost::Message;
use rlhf_model::Config;
use rlhf_proto::v1;
use rlhf_proto::weights::{Assembler, encode_for_epoch};
use rlhf_types::{Rollout, SamplingParams};

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -20.0f32..0.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => any::<f32>(),
    ]
}

prop_compose! {
    fn any_rollout()(
        rollout_id in prop_oneof![Just(String::new()), "[a-z0-9-]{1,12}"],
        prompt in prop::collection::vec(any::<u32>(), 0..8),
        response in prop::collection::vec(any::<u32>(), 0..8),
        extra_logprobs in -1i32..=1,
        logprobs_seed in prop::collection::vec(any_f32(), 9),
        policy_version in any::<u64>(),
        finished in any::<bool>(),
    ) -> v1::Rollout {
        let n = (response.len() as i32 + extra_logprobs).max(0) as usize;
        v1::Rollout {
            rollout_id,
            prompt_id: "p".into(),
            prompt_token_ids: prompt,
            behaviour_logprobs: logprobs_seed.into_iter().take(n).collect(),
            response_token_ids: response,
            policy_version,
            finished,
            generator_id: "g".into(),
        }
    }
}

proptest! {
    #![proptest_config(rlhf_harness::fuzzing("tests/fuzz.proptest-regressions"))]

    /// Whatever arrives on the wire: decoding never panics, and what decodes converts or is refused.
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = v1::Rollout::decode(bytes.as_slice()) {
            let _ = Rollout::try_from(r);
        }
        if let Ok(s) = v1::ScoredRollout::decode(bytes.as_slice()) {
            let _ = s.rollout.map(Rollout::try_from);
        }
        if let Ok(r) = v1::Ranking::decode(bytes.as_slice()) {
            let _ = rlhf_proto::ranking_from_proto(r).validate();
        }
        if let Ok(g) = v1::GenerateRequest::decode(bytes.as_slice()) {
            let _ = g.sampling.map(SamplingParams::from);
        }
        if let Ok(chunk) = v1::WeightChunk::decode(bytes.as_slice()) {
            let mut assembler = Assembler::default();
            if assembler.push(chunk).is_ok() {
                let _ = assembler.finish();
            }
        }
        if let Ok(chunk) = v1::JudgesChunk::decode(bytes.as_slice()) {
            let mut assembler = rlhf_proto::judges::JudgesAssembler::default();
            if assembler.push(chunk).is_ok() {
                let _ = assembler.finish();
            }
        }
    }

    /// A rollout converts exactly when it has an id and one finite log-prob per response token,
    /// and then it comes back unchanged.
    #[test]
    fn a_rollout_converts_exactly_when_it_is_consistent(wire in any_rollout()) {
        let consistent = !wire.rollout_id.is_empty()
            && wire.behaviour_logprobs.len() == wire.response_token_ids.len()
            && wire.behaviour_logprobs.iter().all(|v| v.is_finite());
        match Rollout::try_from(wire.clone()) {
            Ok(rollout) => {
                prop_assert!(consistent);
                prop_assert_eq!(v1::Rollout::from(rollout), wire);
            }
            Err(_) => prop_assert!(!consistent),
        }
    }

    /// Sampling settings from the wire are always usable: top-p inside (0, 1], top-k unset or positive.
    #[test]
    fn sampling_settings_from_the_wire_stay_in_range(
        temperature in any_f32(), top_p in any_f32(), top_k in any::<u32>(), max_new in any::<u32>()
    ) {
        let s = SamplingParams::from(v1::SamplingParams {
            temperature, top_p, top_k, max_new_tokens: max_new, stop_token_ids: vec![], seed: 1,
        });
        prop_assert!(s.top_p > 0.0 && s.top_p <= 1.0, "top_p {}", s.top_p);
        prop_assert!(s.top_k.is_none_or(|k| k > 0));
    }
}

/// One way to damage a weight stream.
#[derive(Debug, Clone)]
enum Damage {
    FlipBit { chunk: usize, byte: usize, bit: u8 },
    Drop { chunk: usize },
    Duplicate { chunk: usize },
    Swap { a: usize, b: usize },
    Truncate { chunk: usize, keep: usize },
    Offset { chunk: usize, offset: u64 },
    Shape { chunk: usize, shape: Vec<u64> },
    Version { chunk: usize, version: u64 },
    Count { count: u32 },
    Config { json: String },
}

fn any_damage() -> impl Strategy<Value = Damage> {
    let chunk = 0usize..64;
    prop_oneof![
        (chunk.clone(), any::<usize>(), 0u8..8).prop_map(|(chunk, byte, bit)| Damage::FlipBit { chunk, byte, bit }),
        chunk.clone().prop_map(|chunk| Damage::Drop { chunk }),
        chunk.clone().prop_map(|chunk| Damage::Duplicate { chunk }),
        (chunk.clone(), chunk.clone()).prop_map(|(a, b)| Damage::Swap { a, b }),
        (chunk.clone(), any::<usize>()).prop_map(|(chunk, keep)| Damage::Truncate { chunk, keep }),
        (chunk.clone(), any::<u64>()).prop_map(|(chunk, offset)| Damage::Offset { chunk, offset }),
        (chunk.clone(), prop::collection::vec(prop_oneof![0u64..8, any::<u64>()], 0..4))
            .prop_map(|(chunk, shape)| Damage::Shape { chunk, shape }),
        (chunk.clone(), any::<u64>()).prop_map(|(chunk, version)| Damage::Version { chunk, version }),
        any::<u32>().prop_map(|count| Damage::Count { count }),
        "[{}\":a-z0-9,]{0,40}".prop_map(|json| Damage::Config { json }),
    ]
}

fn damage(chunks: &mut Vec<v1::WeightChunk>, d: &Damage) {
    let n = chunks.len();
    match d.clone() {
        Damage::FlipBit { chunk, byte, bit } => {
            let data = &mut chunks[chunk % n].data;
            if !data.is_empty() {
                let i = byte % data.len();
                data[i] ^= 1 << bit;
            }
        }
        Damage::Drop { chunk } => {
            chunks.remove(chunk % n);
        }
        Damage::Duplicate { chunk } => {
            let copy = chunks[chunk % n].clone();
            chunks.insert(chunk % n, copy);
        }
        Damage::Swap { a, b } => chunks.swap(a % n, b % n),
        Damage::Truncate { chunk, keep } => {
            let data = &mut chunks[chunk % n].data;
            let keep = keep % (data.len() + 1);
            data.truncate(keep);
        }
        Damage::Offset { chunk, offset } => chunks[chunk % n].offset = offset,
        Damage::Shape { chunk, shape } => chunks[chunk % n].shape = shape,
        Damage::Version { chunk, version } => chunks[chunk % n].policy_version = version,
        Damage::Count { count } => chunks[0].tensor_count = count,
        Damage::Config { json } => chunks[0].model_config_json = json,
    }
}

fn tiny_model() -> (Config, HashMap<String, Tensor>) {
    let config = Config::tiny(16, 8, 1, 2, 1);
    let mut tensors = HashMap::new();
    for (i, shape) in [vec![4usize, 3], vec![5], vec![2, 2, 2]].into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|j| (i * 100 + j) as f32 * 0.25 - 3.0).collect();
        tensors.insert(format!("t{i}"), Tensor::from_vec(values, shape, &Device::Cpu).unwrap());
    }
    (config, tensors)
}

proptest! {
    #![proptest_config(rlhf_harness::fuzzing("tests/fuzz.proptest-regressions"))]

    /// A damaged weight stream is refused, or every tensor it delivers holds the values sent, bit
    /// for bit: never silently different numbers. (What the checksums do not cover, a stream
    /// may still claim consistently: fewer tensors with a matching count, another shape of the
    /// same size, another version. The replica's model build refuses missing or misshapen
    /// tensors, and a version is only taken when it is newer.)
    #[test]
    fn a_damaged_weight_stream_is_refused_or_exact(damages in prop::collection::vec(any_damage(), 1..4)) {
        let (config, tensors) = tiny_model();
        let mut chunks = encode_for_epoch(3, 7, &tensors, &config, 0).unwrap();
        for d in &damages {
            if !chunks.is_empty() {
                damage(&mut chunks, d);
            }
        }
        let mut assembler = Assembler::default();
        let outcome = chunks.into_iter().try_for_each(|c| assembler.push(c)).and_then(|()| assembler.finish());
        if let Ok(update) = outcome {
            for (name, got) in &update.tensors {
                let original = &tensors[name];
                prop_assert_eq!(got.elem_count(), original.elem_count());
                let (a, b) = (got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    original.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
            }
        }
    }
}
