//! GFLOP/s of the sampler's packed projection (`rlhf_model::decode_matmul`) at SmolLM2-135M's
//! weight shapes, for a decode step's rows (8, one shard of batch 16 on two threads) and a
//! prefill's (8 × 32 prompt tokens): the best of many runs, so a noisy machine still shows what
//! the kernel can do. `RAYON_NUM_THREADS=1 cargo run --release -p rlhf-model --example packed_matmul`
//! (one thread: each shard of the sampler runs on one).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rlhf_model::decode_matmul::PackedWeight;

fn main() -> candle_core::Result<()> {
    // (in, out) of SmolLM2-135M's projections: q/o, k/v, gate/up, down, the LM head.
    let shapes = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)];
    for rows in [8, 256] {
        for (k, n) in shapes {
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
            let packed = PackedWeight::pack(&w)?;
            let x: Vec<f32> = (0..rows * k).map(|i| (i * 7 % 13) as f32 * 0.1).collect();
            // Enough runs for about 2 GFLOP, at least 20.
            let runs = (2e9 / (2.0 * (rows * k * n) as f64)).ceil().max(20.0) as usize;
            let mut best = f64::INFINITY;
            for _ in 0..runs {
                let start = Instant::now();
                std::hint::black_box(packed.matmul_rows(&x, rows));
                best = best.min(start.elapsed().as_secs_f64());
            }
            let gflops = 2.0 * (rows * k * n) as f64 / best / 1e9;
            let gbs = (k * n * 4) as f64 / best / 1e9;
            println!("rows {rows:>3}  {k:>4} → {n:>5}: {gflops:6.1} GFLOP/s, weights at {gbs:5.1} GB/s ({runs} runs)");
        }
    }
    Ok(())
}
