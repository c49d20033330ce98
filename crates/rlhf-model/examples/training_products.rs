//! The products of one reward-model step at the bench model's shape (16 pairs of 128 tokens), alone,
//! as candle runs them (the training graph's layouts: forward, input gradient, weight gradient),
//! beside the 1024³ yardstick and the multiply-add ceiling: how fast the step's products go when
//! nothing else runs, to set against the step itself (`rlhf bench --only rm`).
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p rlhf-model --example training_products`
use std::time::Instant;

use candle_core::{Device, Tensor};

/// The median and best GFLOP/s of 15 runs of the product `f`, on rayon's pool as the training
/// step's products run.
fn rate(name: &str, flops: f64, f: impl Fn() -> candle_core::Result<Tensor> + Sync) -> candle_core::Result<()> {
    let f = || rlhf_model::on_compute_pool(&f);
    f()?;
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("{name:<36} median {:>6.1} best {:>6.1} GFLOP/s", flops / times[7] / 1e9, flops / times[0] / 1e9);
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let ceiling = rlhf_model::on_compute_pool(|| rlhf_model::multiply_add_peak::multiply_add_peak(20));
    println!("multiply-add ceiling on {} threads: {ceiling:.1} GFLOP/s", rayon::current_num_threads());
    let d = Device::Cpu;
    let t = 4096;
    let big = Tensor::randn(0f32, 1.0, (1024, 1024), &d)?;
    rate("1024³ (the yardstick)", 2.0 * 1024f64.powi(3), || big.matmul(&big))?;
    for (k, n) in [(256usize, 256usize), (256, 688), (688, 256)] {
        let x = Tensor::randn(0f32, 1.0, (t, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let dy = Tensor::randn(0f32, 1.0, (t, n), &d)?;
        let fl = 2.0 * (t * k * n) as f64;
        rate(&format!("x[{t},{k}] · wᵀ[{k},{n}]"), fl, || x.matmul(&w.t()?))?;
        rate(&format!("dy[{t},{n}] · w[{n},{k}]"), fl, || dy.matmul(&w))?;
        rate(&format!("dyᵀ[{n},{t}] · x[{t},{k}]"), fl, || dy.t()?.matmul(&x))?;
    }
    Ok(())
}
