//! Batched autoregressive sampling with a KV cache.
//!
//! Prompts of different lengths are padded on the left, so every row's next token is in the last
//! column; positions and the attention bias skip the padding (see [`crate::padding`]).
//! The forward passes use [`crate::Kernels::Fused`]: nothing here needs gradients.
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

use rayon::prelude::*;

use crate::llama::Llama;
use shard::Shard;

mod shard;

pub use rlhf_types::SamplingParams;

/// New positions the KV cache makes room for at a time. A cache sized for the whole of a long
/// generation is zeroed up front, before the first cancellation check: 1,024 rows of 1,500 new
/// tokens kept a replica busy for most of a second after its deadline.
const CACHE_CHUNK: usize = 128;

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
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Vec<Generation>>> {
    validate(model, prompts, params)?;
    // On the pool, the shards of each step are one fork on a pool thread, not a hand-off to it.
    crate::compute_pool::on_compute_pool(|| sample(model, prompts, params, pad_id, cancelled))
}

fn sample(
    model: &Llama,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    pad_id: u32,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Vec<Generation>>> {
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = width + params.max_new_tokens.min(CACHE_CHUNK);
    let ranges = shard::split(batch, shard_count(model, batch));
    let (mut shards, first): (Vec<Shard>, Vec<Vec<Vec<f32>>>) =
        on_shards(ranges, |rows| Shard::prefill(model, rows.clone(), &prompts[rows], width, capacity, pad_id))?
            .into_iter()
            .unzip();
    let mut rows: Vec<Vec<f32>> = first.into_iter().flatten().collect();

    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut out: Vec<Generation> =
        (0..batch).map(|_| Generation { tokens: vec![], logprobs: vec![], finished: false }).collect();
    for step in 0..params.max_new_tokens {
        if cancelled() {
            return Ok(None);
        }
        let mut next = vec![pad_id; batch];
        // One uniform draw per unfinished row, in row order, whether or not the rows are then
        // picked side by side: the tokens do not depend on the thread count.
        let draws: Vec<Option<f64>> = out
            .iter()
            .map(|g| (!g.finished).then(|| if params.temperature == 0.0 { 0.0 } else { rng.random::<f64>() }))
            .collect();
        for (b, picked) in pick_rows(&rows, &draws, params)?.into_iter().enumerate() {
            let Some((token, logprob)) = picked else { continue };
            out[b].tokens.push(token);
            out[b].logprobs.push(logprob);
            out[b].finished = params.stop_tokens.contains(&token);
            next[b] = token;
        }
        if step + 1 == params.max_new_tokens || out.iter().all(|g| g.finished) {
            break;
        }
        rows = on_shards(shards.iter_mut().collect(), |shard| {
            let own = &next[shard.rows.clone()];
            shard.step(model, own)
        })?
        .into_iter()
        .flatten()
        .collect();
    }
    Ok(Some(out))
}

/// How many shards to decode a batch in: one per rayon thread on the CPU, at most one per row.
/// A GPU runs a whole batch at once, so it gets one; so does a model whose weights a step
/// streams from memory ([`Llama::streams_weights`]): its products are split between the
/// threads instead, and each weight is read once a step rather than once per shard.
fn shard_count(model: &Llama, batch: usize) -> usize {
    if model.device().is_cpu() && !model.streams_weights() { rayon::current_num_threads().min(batch).max(1) } else { 1 }
}

/// `f` over each item on rayon's threads, results in item order. One item runs right here: a
/// hand-off to the pool would only add a wake-up to every step.
fn on_shards<I: Send, T: Send>(items: Vec<I>, f: impl Fn(I) -> Result<T> + Sync + Send) -> Result<Vec<T>> {
    if items.len() == 1 {
        return items.into_iter().map(f).collect();
    }
    items.into_par_iter().map(f).collect()
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

/// Logits in a step (rows × vocabulary) from which the rows are picked on rayon's threads: below
/// it (the bench model's 16 × 512) the split costs more than it saves; at SmolLM2-135M's 16 ×
/// 49,152 each row's f64 softmax is work enough to share.
const PARALLEL_PICK_LOGITS: usize = 1 << 16;

/// [`pick`] for every row that has a draw (`None`: the row has finished), on rayon's threads when
/// the step's logits are many.
fn pick_rows(rows: &[Vec<f32>], draws: &[Option<f64>], params: &SamplingParams) -> Result<Vec<Option<(u32, f32)>>> {
    let one = |(row, draw): (&Vec<f32>, &Option<f64>)| draw.map(|u| pick(row, params, u)).transpose();
    let logits: usize = rows.iter().map(Vec::len).sum();
    if logits >= PARALLEL_PICK_LOGITS && rayon::current_num_threads() > 1 {
        rows.par_iter().zip(draws).map(one).collect()
    } else {
        rows.iter().zip(draws).map(one).collect()
    }
}

/// Draws one token from one row of logits; returns it with its log-prob under the
/// temperature-scaled full distribution.
///
/// Top-k and top-p need the tokens in descending probability, but a real vocabulary has tens of
/// thousands of entries and a sort of all of them per row per step cost as much as the forward
/// pass of a 135M model. Only the tokens within [`TAIL_LOGIT_GAP`] of the best are sorted; the
/// draw falls back to the full order in the rare case the nucleus or the draw reaches past them,
/// so the token drawn is the one the full sort would give. Without top-k and top-p the draw walks
/// the vocabulary in its own order: the same distribution, no sort.
///
/// `u` is the row's uniform draw in [0, 1), unused when decoding greedily.
fn pick(logits: &[f32], params: &SamplingParams, u: f64) -> Result<(u32, f32)> {
    let temperature = if params.temperature == 0.0 { 1.0 } else { params.temperature };
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(candle_core::Error::Msg("non-finite logits while sampling".into()));
    }
    let weights: Vec<f64> = scaled.iter().map(|s| (s - max).exp()).collect();
    let log_norm = max + weights.iter().sum::<f64>().ln();
    let logprob = |token: usize| (scaled[token] - log_norm) as f32;

    if params.temperature == 0.0 {
        let best = (0..scaled.len()).fold(0, |best, i| if scaled[i] > scaled[best] { i } else { best });
        return Ok((best as u32, logprob(best)));
    }
    if params.top_k.is_none() && params.top_p >= 1.0 {
        // The whole distribution: no order is needed, the vocabulary's own will do.
        let mut target = u * weights.iter().sum::<f64>();
        let token = weights.iter().position(|w| {
            target -= w;
            target < 0.0
        });
        let token = token.unwrap_or(weights.len() - 1);
        return Ok((token as u32, logprob(token)));
    }
    let descending = |a: &usize, b: &usize| scaled[*b].total_cmp(&scaled[*a]).then(a.cmp(b));
    let cut_by_k = matches!(params.top_k, Some(k) if k < scaled.len());
    let (candidates, complete) = match params.top_k {
        Some(k) if cut_by_k => {
            let mut top: Vec<usize> = (0..scaled.len()).collect();
            top.select_nth_unstable_by(k - 1, descending);
            top.truncate(k);
            (top, true)
        }
        _ => {
            let near: Vec<usize> = (0..scaled.len()).filter(|&i| scaled[i] >= max - TAIL_LOGIT_GAP).collect();
            let complete = near.len() == scaled.len();
            (near, complete)
        }
    };
    let mut order = candidates;
    order.sort_unstable_by(descending);
    // The mass top-p is a share of: the top k when cut by top-k, otherwise the whole vocabulary.
    let mass = if cut_by_k { order.iter().map(|&i| weights[i]).sum() } else { weights.iter().sum() };
    let token = match draw(&order, &weights, mass, complete, params.top_p, u) {
        Some(token) => token,
        None => {
            let mut all: Vec<usize> = (0..scaled.len()).collect();
            all.sort_unstable_by(descending);
            draw(&all, &weights, mass, true, params.top_p, u).expect("a complete order always draws")
        }
    };
    Ok((token as u32, logprob(token)))
}

/// Tokens more than this far below the best logit (a probability ratio of e^-20 ≈ 2e-9) are
/// left out of the sort; together they hold at most `vocab · 2e-9` of the best token's weight.
const TAIL_LOGIT_GAP: f64 = 20.0;

/// The token a uniform draw `u` picks from `order` (descending probability) after cutting it to
/// the top-p nucleus of `mass`. `None` when `order` is not every candidate (`complete` false)
/// and the nucleus or the draw reaches past its end: the caller retries with the full order.
fn draw(order: &[usize], weights: &[f64], mass: f64, complete: bool, top_p: f64, u: f64) -> Option<usize> {
    let mut keep = None;
    if top_p < 1.0 {
        let mut cumulative = 0.0;
        for (n, &i) in order.iter().enumerate() {
            cumulative += weights[i] / mass;
            if cumulative >= top_p {
                keep = Some(n + 1);
                break;
            }
        }
    }
    let (nucleus, total) = match keep {
        Some(keep) => (&order[..keep], order[..keep].iter().map(|&i| weights[i]).sum::<f64>()),
        None if complete => (order, order.iter().map(|&i| weights[i]).sum::<f64>()),
        None if top_p < 1.0 => return None,
        None => (order, mass),
    };
    let mut target = u * total;
    for &i in nucleus {
        target -= weights[i];
        if target < 0.0 {
            return Some(i);
        }
    }
    if complete || keep.is_some() { nucleus.last().copied() } else { None }
}

/// Log-probs of the response tokens under `logits / temperature`, as the sampler reports them.
/// `logits: [B, T, V]` from a forward pass over prompt + response, `targets: [B, T]` the next
/// tokens; the caller masks what is not response.
pub fn tempered_logprobs(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let t = if temperature == 0.0 { 1.0 } else { temperature };
    crate::token_logprobs(&(logits / t)?, targets)
}

#[cfg(test)]
mod tests;
