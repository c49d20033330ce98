//! Microseconds a call of decoding's cached attention (`rlhf_model::fused_attention::cached_attention`)
//! at a decode step of batch 16: the bench model's shape (4 heads, 4 key/value heads) and
//! SmolLM2-135M's (9 heads, 3 key/value heads), heads of 64 values, 32 to 95 keys of a 128-slot
//! cache, one query per row. The median and the best of 60 passes over the 64 key counts, so a
//! noisy machine still shows what the op can do; the op alone moves by less than end-to-end
//! sampling's noise. `RAYON_NUM_THREADS=1 cargo run --release -p rlhf-model --example
//! cached_attention` (one thread: each shard of the sampler runs its own attention).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rlhf_model::fused_attention::cached_attention;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (batch, head_dim, capacity) = (16, 64, 128);
    for (name, heads, kv_heads) in [("bench model", 4, 4), ("SmolLM2-135M", 9, 3)] {
        let k = Tensor::randn(0f32, 1.0, (batch, kv_heads, capacity, head_dim), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (batch, kv_heads, capacity, head_dim), &dev)?;
        // The query heads sharing a key/value head stacked along time, as `attend` passes them.
        let q = Tensor::randn(0f32, 1.0, (batch, kv_heads, heads / kv_heads, head_dim), &dev)?;
        let steps: Vec<(Tensor, Tensor, Tensor)> = (32..96)
            .map(|keys| {
                let bias = Tensor::zeros((batch, 1, 1, keys), DType::F32, &dev)?;
                Ok((k.narrow(2, 0, keys)?, v.narrow(2, 0, keys)?, bias))
            })
            .collect::<candle_core::Result<_>>()?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut per_call: Vec<f64> = Vec::new();
        for _ in 0..60 {
            let start = Instant::now();
            for (k, v, bias) in &steps {
                std::hint::black_box(cached_attention(&q, k, v, bias, scale, false)?);
            }
            per_call.push(start.elapsed().as_secs_f64() / steps.len() as f64);
        }
        per_call.sort_by(f64::total_cmp);
        let (median, best) = (per_call[per_call.len() / 2] * 1e6, per_call[0] * 1e6);
        println!("{name:<13} {median:6.1} µs a call (median), {best:6.1} (best)");
    }
    Ok(())
}
