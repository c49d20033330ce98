//! The sampler: its behaviour log-probs equal what a training forward pass recomputes, it is
//! seeded, and it honours stop tokens, greedy decoding, top-k and top-p.

use candle_core::{DType, Device, Tensor};
use rlhf_model::*;

use crate::helpers::*;

const PAD: u32 = 0;

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![3, 1, 4, 1, 5, 9, 2], vec![6, 5], vec![3, 5, 8, 9], vec![7]]
}

/// Recomputes the log-prob of every generated token with the differentiable full forward pass
/// on each row alone (no padding, no cache), under `logits / temperature`.
fn recomputed(model: &Llama, prompt: &[u32], generation: &Generation, temperature: f64) -> Vec<f64> {
    let sequence: Vec<u32> = prompt.iter().chain(&generation.tokens).copied().collect();
    let ids = Tensor::new(sequence.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&ids, &ids.ones_like().unwrap(), Kernels::Differentiable).unwrap();
    let n = sequence.len();
    let logp = tempered_logprobs(&logits.narrow(1, 0, n - 1).unwrap(), &ids.narrow(1, 1, n - 1).unwrap(), temperature)
        .unwrap();
    vec1(&logp)[prompt.len() - 1..].to_vec()
}

#[test]
fn behaviour_logprobs_equal_a_recomputed_forward_pass() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 21, DType::F32);
    let cases = [
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 1.3, top_k: Some(5), top_p: 0.8, ..Default::default() },
        SamplingParams { temperature: 0.0, ..Default::default() },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let params = SamplingParams { max_new_tokens: 12, stop_tokens: vec![40], seed: 100 + i as u64, ..case };
        let out = generate(&model, &prompts(), &params, PAD).unwrap();
        let mut worst = 0f64;
        for (prompt, generation) in prompts().iter().zip(&out) {
            assert_eq!(generation.tokens.len(), generation.logprobs.len());
            let expected = recomputed(&model, prompt, generation, params.temperature);
            let got: Vec<f64> = generation.logprobs.iter().map(|&l| l as f64).collect();
            for (g, e) in got.iter().zip(&expected) {
                worst = worst.max((g - e).abs());
            }
        }
        assert!(worst < 1e-4, "case {i} ({params:?}): log-probs differ by up to {worst}");
    }
}

#[test]
fn sampling_is_seeded() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 22, DType::F32);
    let params = SamplingParams { max_new_tokens: 10, seed: 5, ..Default::default() };
    let a = generate(&model, &prompts(), &params, PAD).unwrap();
    let b = generate(&model, &prompts(), &params, PAD).unwrap();
    let c = generate(&model, &prompts(), &SamplingParams { seed: 6, ..params }, PAD).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.iter().map(|g| &g.tokens).collect::<Vec<_>>(), c.iter().map(|g| &g.tokens).collect::<Vec<_>>());
}

#[test]
fn greedy_and_top_k_1_follow_the_argmax() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 23, DType::F32);
    let greedy = generate(
        &model,
        &prompts(),
        &SamplingParams { temperature: 0.0, max_new_tokens: 8, ..Default::default() },
        PAD,
    )
    .unwrap();
    let top1 = generate(
        &model,
        &prompts(),
        &SamplingParams { temperature: 0.9, top_k: Some(1), max_new_tokens: 8, seed: 77, ..Default::default() },
        PAD,
    )
    .unwrap();
    for ((prompt, g), t) in prompts().iter().zip(&greedy).zip(&top1) {
        assert_eq!(g.tokens, t.tokens);
        // Each greedy token is the argmax of a fresh full forward pass over what came before.
        let mut sequence = prompt.clone();
        for &token in &g.tokens {
            let ids = Tensor::new(sequence.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = model.forward(&ids, &ids.ones_like().unwrap(), Kernels::Differentiable).unwrap();
            let last = logits.squeeze(0).unwrap().get(sequence.len() - 1).unwrap();
            assert_eq!(last.argmax(0).unwrap().to_scalar::<u32>().unwrap(), token);
            sequence.push(token);
        }
    }
}

#[test]
fn top_p_restricts_sampling_to_the_nucleus() {
    // A tiny nucleus (top_p → 0) keeps only the most likely token: the same as greedy.
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 24, DType::F32);
    let greedy = generate(
        &model,
        &prompts(),
        &SamplingParams { temperature: 0.0, max_new_tokens: 6, ..Default::default() },
        PAD,
    )
    .unwrap();
    let nucleus = generate(
        &model,
        &prompts(),
        &SamplingParams { temperature: 1.0, top_p: 1e-6, max_new_tokens: 6, seed: 3, ..Default::default() },
        PAD,
    )
    .unwrap();
    for (g, n) in greedy.iter().zip(&nucleus) {
        assert_eq!(g.tokens, n.tokens);
        assert_ne!(g.logprobs, vec![0.0; g.logprobs.len()]);
    }
}

#[test]
fn stop_tokens_end_a_response_and_are_kept() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 25, DType::F32);
    // Find a token the model actually emits greedily, then make it the stop token.
    let base = SamplingParams { temperature: 0.0, max_new_tokens: 10, ..Default::default() };
    let free = generate(&model, &prompts(), &base, PAD).unwrap();
    let stop = free[0].tokens[2];
    let stopped = generate(&model, &prompts(), &SamplingParams { stop_tokens: vec![stop], ..base }, PAD).unwrap();
    for (f, s) in free.iter().zip(&stopped) {
        match f.tokens.iter().position(|&t| t == stop) {
            Some(at) => {
                assert_eq!(s.tokens, f.tokens[..=at].to_vec());
                assert!(s.finished);
            }
            None => {
                assert_eq!(s.tokens, f.tokens);
                assert!(!s.finished);
            }
        }
    }
    assert!(stopped[0].finished && stopped[0].tokens.len() <= 3);
}

#[test]
fn bad_sampling_requests_are_refused() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 26, DType::F32);
    let ok = SamplingParams::default();
    let refused = |prompts: &[Vec<u32>], params: &SamplingParams| generate(&model, prompts, params, PAD).unwrap_err();
    assert!(refused(&[vec![]], &ok).to_string().contains("at least one token"));
    assert!(refused(&[vec![41]], &ok).to_string().contains("outside the vocabulary"));
    assert!(
        refused(&[vec![1]], &SamplingParams { temperature: f64::NAN, ..ok.clone() })
            .to_string()
            .contains("temperature")
    );
    assert!(refused(&[vec![1]], &SamplingParams { top_p: 0.0, ..ok.clone() }).to_string().contains("top_p"));
    assert!(refused(&[vec![1]], &SamplingParams { top_k: Some(0), ..ok }).to_string().contains("top_k"));
}

#[test]
fn the_decode_layout_samples_what_the_training_layout_samples() {
    for tied in [true, false] {
        let cfg = Config { tie_word_embeddings: tied, ..tiny_config(41) };
        let (_vars, model) = tiny_model(&cfg, 23, DType::F32);
        let decoder = model.clone().into_decode_layout().unwrap();
        let params = SamplingParams { temperature: 0.8, top_p: 0.9, max_new_tokens: 12, seed: 9, ..Default::default() };
        let (a, b) = (
            generate(&model, &prompts(), &params, PAD).unwrap(),
            generate(&decoder, &prompts(), &params, PAD).unwrap(),
        );
        for (prompt, (x, y)) in prompts().iter().zip(a.iter().zip(&b)) {
            assert_eq!(x.tokens, y.tokens, "tied {tied}");
            let expected = recomputed(&model, prompt, y, params.temperature);
            for (got, want) in y.logprobs.iter().zip(&expected) {
                assert!((*got as f64 - want).abs() < 1e-4, "tied {tied}: {got} vs {want}");
            }
        }
    }
}

/// Sampling splits the batch into one shard per rayon thread (`sampling::shard`); the shards'
/// rows must draw what one batch draws, with uneven shards and rows that stop early among them.
#[test]
fn a_batch_split_over_threads_samples_what_one_batch_samples() {
    let cfg = tiny_config(41);
    let (_vars, model) = tiny_model(&cfg, 25, DType::F32);
    let decoder = model.into_decode_layout().unwrap();
    let prompts: Vec<Vec<u32>> = prompts().into_iter().chain([vec![2, 2, 9], vec![11, 4, 1, 30, 8]]).collect();
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 14,
        stop_tokens: vec![7],
        seed: 3,
        ..Default::default()
    };
    let on_threads = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| generate(&decoder, &prompts, &params, PAD).unwrap())
    };
    let whole = on_threads(1);
    assert!(whole.iter().any(|g| g.finished) && whole.iter().any(|g| !g.finished), "some rows stop early");
    for threads in [2, 4] {
        let split = on_threads(threads);
        for (row, (a, b)) in whole.iter().zip(&split).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{threads} threads, row {row}");
            assert_eq!(a.finished, b.finished, "{threads} threads, row {row}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-5, "{threads} threads, row {row}: {x} vs {y}");
            }
        }
    }
}

/// A model past the cache (`Llama::streams_weights`: here a 66,000-token head of 68 MB) decodes as
/// one shard whose products and cached attention are split between threads: it must sample what
/// it samples on one thread, and what its training layout samples, with the same log-probs.
#[test]
fn a_model_that_streams_its_weights_samples_the_same_on_any_thread_count() {
    let mut cfg = Config::tiny(66_000, 256, 1, 4, 2);
    cfg.initializer_range = 0.3;
    let (_vars, model) = tiny_model(&cfg, 31, DType::F32);
    let decoder = model.clone().into_decode_layout().unwrap();
    assert!(decoder.streams_weights() && !tiny_model(&tiny_config(41), 1, DType::F32).1.streams_weights());
    let prompts: Vec<Vec<u32>> = prompts().into_iter().chain([vec![65_999, 2, 9], vec![11, 4, 1, 30, 8]]).collect();
    let params = SamplingParams { temperature: 0.9, top_p: 0.95, max_new_tokens: 6, seed: 5, ..Default::default() };
    let on_threads = |model: &Llama, threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| generate(model, &prompts, &params, PAD).unwrap())
    };
    let whole = on_threads(&decoder, 1);
    for (name, other) in [("2 threads", on_threads(&decoder, 2)), ("training layout", on_threads(&model, 2))] {
        for (row, (a, b)) in whole.iter().zip(&other).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{name}, row {row}");
            for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
                assert!((x - y).abs() < 1e-4, "{name}, row {row}: {x} vs {y}");
            }
        }
    }
}
