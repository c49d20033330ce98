//! The sampler's partial sort against the full sort it replaced.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{PARALLEL_PICK_LOGITS, SamplingParams, pick, pick_rows};

/// The sampler as it was: every token sorted by probability, then top-k, then top-p.
fn pick_by_full_sort(logits: &[f32], params: &SamplingParams, rng: &mut StdRng) -> (u32, f32) {
    let temperature = params.temperature;
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_norm = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    let logprob = |token: usize| (scaled[token] - log_norm) as f32;
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
            return (order[n] as u32, logprob(order[n]));
        }
    }
    (order[keep - 1] as u32, logprob(order[keep - 1]))
}

/// Logits shaped like a language model's: a few likely tokens, a long tail, repeated values.
fn logits(rng: &mut StdRng, vocab: usize, spread: f32) -> Vec<f32> {
    (0..vocab)
        .map(|i| {
            let base = if i % 97 == 0 { 8.0 } else { 0.0 };
            let noise: f32 = rng.random_range(-1.0..1.0);
            (base + spread * noise * noise * noise).round_ties_even() / 4.0
        })
        .collect()
}

#[test]
fn the_partial_sort_draws_what_the_full_sort_draws() {
    let mut data = StdRng::seed_from_u64(7);
    let settings = [
        SamplingParams { temperature: 0.7, top_p: 0.95, ..Default::default() },
        SamplingParams { temperature: 1.0, top_p: 0.5, ..Default::default() },
        SamplingParams { temperature: 1.3, top_p: 0.999_999, ..Default::default() },
        SamplingParams { temperature: 1.0, top_k: Some(5), top_p: 0.8, ..Default::default() },
        SamplingParams { temperature: 0.9, top_k: Some(300), ..Default::default() },
        SamplingParams { temperature: 2.0, top_k: Some(100_000), top_p: 0.9, ..Default::default() },
    ];
    let mut draws = 0;
    for (s, params) in settings.iter().enumerate() {
        for row in 0..40 {
            // Spreads from nearly flat (every token a candidate) to peaked (a long cut tail).
            let row_logits = logits(&mut data, 4096, [1.0, 30.0, 200.0][row % 3]);
            let seed = (s * 1000 + row) as u64;
            let (mut fast, mut full) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
            for _ in 0..25 {
                let got = pick(&row_logits, params, fast.random()).unwrap();
                assert_eq!(got, pick_by_full_sort(&row_logits, params, &mut full), "{params:?}, row {row}");
                draws += 1;
            }
        }
    }
    assert_eq!(draws, 6 * 40 * 25);
}

#[test]
fn without_top_k_or_top_p_tokens_come_at_their_probabilities() {
    // Four tokens with probabilities 0.1, 0.2, 0.3, 0.4: frequencies over 40,000 draws.
    let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
    let params = SamplingParams::default();
    let mut rng = StdRng::seed_from_u64(3);
    let mut counts = [0usize; 4];
    for _ in 0..40_000 {
        let (token, logprob) = pick(&logits, &params, rng.random()).unwrap();
        assert!((logprob - logits[token as usize]).abs() < 1e-6);
        counts[token as usize] += 1;
    }
    for (count, p) in counts.iter().zip([0.1f64, 0.2, 0.3, 0.4]) {
        // Three standard deviations of a binomial count.
        let sd = (40_000.0 * p * (1.0 - p)).sqrt();
        assert!((*count as f64 - 40_000.0 * p).abs() < 3.0 * sd, "{counts:?}");
    }
}

/// Rows picked on several threads get what one thread picks row by row, finished rows nothing.
#[test]
fn rows_picked_side_by_side_get_what_each_row_gets_alone() {
    let mut data = StdRng::seed_from_u64(11);
    let rows: Vec<Vec<f32>> = (0..16).map(|r| logits(&mut data, 4096, [1.0, 30.0][r % 2])).collect();
    assert!(rows.len() * 4096 >= PARALLEL_PICK_LOGITS, "the rows are enough to be shared");
    let draws: Vec<Option<f64>> = (0..16).map(|r| (r % 5 != 3).then(|| data.random())).collect();
    for params in [
        SamplingParams { temperature: 0.8, top_p: 0.9, ..Default::default() },
        SamplingParams { temperature: 1.0, top_p: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.0, ..Default::default() },
    ] {
        let alone: Vec<Option<(u32, f32)>> =
            rows.iter().zip(&draws).map(|(row, d)| d.map(|u| pick(row, &params, u).unwrap())).collect();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let shared = pool.install(|| pick_rows(&rows, &draws, &params).unwrap());
            assert_eq!(shared, alone, "{threads} threads, {params:?}");
        }
    }
}
