//! Batched autoregressive sampling with a KV cache.
//!
//! Prompts of different lengths are padded on the left, so every row's next token is in the last
//! column; positions and the attention bias skip the padding (see [`crate::padding`]).
//! The forward passes use [`Kernels::Fused`]: nothing here needs gradients.
//!
//! # Which distribution the log-probs refer to
//!
//! Each returned log-prob is `log softmax(logits / T)[token]` over the **whole vocabulary**, where
//! `T` is the temperature (`T = 1` when decoding greedily). Top-k and top-p only restrict which
//! tokens may be drawn; they are not part of the returned log-prob. This is the distribution a
//! training forward pass recomputes with [`crate::token_logprobs`] on `logits / T`, so the PPO
//! ratio `π_θ / π_behaviour` starts at exactly 1 (TRL and OpenRLHF use the same convention).

use candle_core::{Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::llama::{Kernels, KvCache, Llama};
use crate::padding;

pub use rlhf_types::SamplingParams;

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Behaviour log-prob of each token in `tokens` (see the module docs for the distribution).
    pub logprobs: Vec<f32>,
    /// True when the response ended with a stop token, false when it hit `max_new_tokens`.
    pub finished: bool,
}

/// Samples one response per prompt. `pad_id` fills the left padding and the rows that finished
/// early; it never reaches a returned response.
pub fn generate(model: &Llama, prompts: &[Vec<u32>], params: &SamplingParams, pad_id: u32) -> Result<Vec<Generation>> {
    Ok(generate_until(model, prompts, params, pad_id, &|| false)?.unwrap_or_default())
}

/// [`generate`], asking `cancelled` before every decode step: `None` once it says yes (the
/// client went away or its deadline passed), so a cancelled request stops within one step.
pub fn generate_until(
    model: &Llama,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    pad_id: u32,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Vec<Generation>>> {
    validate(model, prompts, params)?;
    let device = model.device().clone();
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut key_mask: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| std::iter::repeat_n(false, width - p.len()).chain(std::iter::repeat_n(true, p.len())).collect())
        .collect();
    let ids: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(pad_id, width - p.len()).chain(p.iter().copied())).collect();
    let mut next_position: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();

    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let input = Tensor::from_vec(ids, (batch, width), &device)?;
    let bias = padding::attention_bias(&key_mask, width, &device)?;
    let hidden =
        model.forward_positions(&input, &padding::positions(&key_mask), &bias, Some(&mut cache), Kernels::Fused)?;
    let mut logits = model.lm_head(&hidden.narrow(1, width - 1, 1)?.squeeze(1)?)?;

    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut out: Vec<Generation> =
        (0..batch).map(|_| Generation { tokens: vec![], logprobs: vec![], finished: false }).collect();
    for step in 0..params.max_new_tokens {
        if cancelled() {
            return Ok(None);
        }
        let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let mut next = vec![pad_id; batch];
        for (b, row) in rows.iter().enumerate() {
            if out[b].finished {
                continue;
            }
            let (token, logprob) = pick(row, params, &mut rng)?;
            out[b].tokens.push(token);
            out[b].logprobs.push(logprob);
            out[b].finished = params.stop_tokens.contains(&token);
            next[b] = token;
        }
        if step + 1 == params.max_new_tokens || out.iter().all(|g| g.finished) {
            break;
        }
        for row in &mut key_mask {
            row.push(true);
        }
        let positions: Vec<Vec<u32>> = next_position.iter().map(|&p| vec![p]).collect();
        next_position.iter_mut().for_each(|p| *p += 1);
        let input = Tensor::from_vec(next, (batch, 1), &device)?;
        let bias = padding::attention_bias(&key_mask, 1, &device)?;
        let hidden = model.forward_positions(&input, &positions, &bias, Some(&mut cache), Kernels::Fused)?;
        logits = model.lm_head(&hidden.squeeze(1)?)?;
    }
    Ok(Some(out))
}

fn validate(model: &Llama, prompts: &[Vec<u32>], params: &SamplingParams) -> Result<()> {
    let fail = |msg: String| Err(candle_core::Error::Msg(format!("invalid sampling request: {msg}")));
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return fail("every prompt needs at least one token".into());
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = prompts.iter().flatten().find(|&&t| t >= vocab) {
        return fail(format!("token id {bad} is outside the vocabulary of {vocab}"));
    }
    if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
        return fail(format!("temperature {} must be finite and >= 0", params.temperature));
    }
    if !(params.top_p > 0.0 && params.top_p <= 1.0) {
        return fail(format!("top_p {} must be in (0, 1]", params.top_p));
    }
    if params.top_k == Some(0) {
        return fail("top_k must be at least 1 (use None to turn it off)".into());
    }
    Ok(())
}

/// Draws one token from one row of logits; returns it with its log-prob under the
/// temperature-scaled full distribution.
fn pick(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> Result<(u32, f32)> {
    let temperature = if params.temperature == 0.0 { 1.0 } else { params.temperature };
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(candle_core::Error::Msg("non-finite logits while sampling".into()));
    }
    let log_norm = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    let logprob = |token: usize| (scaled[token] - log_norm) as f32;

    if params.temperature == 0.0 {
        let best = (0..scaled.len()).fold(0, |best, i| if scaled[i] > scaled[best] { i } else { best });
        return Ok((best as u32, logprob(best)));
    }
    // Candidates in descending probability, cut by top-k, then by top-p on what is left.
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_unstable_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
    order.truncate(params.top_k.unwrap_or(order.len()).min(order.len()));
    let probs: Vec<f64> = order.iter().map(|&i| (scaled[i] - max).exp()).collect();
    let kept_mass: f64 = probs.iter().sum();
    let mut keep = probs.len();
    if params.top_p < 1.0 {
        let mut cumulative = 0.0;
        for (n, p) in probs.iter().enumerate() {
            cumulative += p / kept_mass;
            if cumulative >= params.top_p {
                keep = n + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    let mut target = rng.random::<f64>() * total;
    for (n, p) in probs[..keep].iter().enumerate() {
        target -= p;
        if target < 0.0 {
            return Ok((order[n] as u32, logprob(order[n])));
        }
    }
    let last = order[keep - 1];
    Ok((last as u32, logprob(last)))
}

/// Log-probs of the response tokens under `logits / temperature`, as the sampler reports them.
/// `logits: [B, T, V]` from a forward pass over prompt + response, `targets: [B, T]` the next
/// tokens; the caller masks what is not response.
pub fn tempered_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let t = if temperature == 0.0 { 1.0 } else { temperature };
    crate::token_logprobs(&(logits / t)?, targets)
}
