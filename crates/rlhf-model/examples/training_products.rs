//! The products of one reward-model step at the bench model's shape, alone, as candle runs them
//! (same layouts as the training graph): which of them run below the 1024³ yardstick.
//!
//! `cargo run --release -p rlhf-model --example training_products`
use std::time::Instant;

use candle_core::{Device, Tensor};

fn rate(name: &str, flops: f64, f: impl Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
    f()?;
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!("{name:<44} median {:>6.1} best {:>6.1} GFLOP/s", flops / times[7] / 1e9, flops / times[0] / 1e9);
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let t = 4096;
    let big = Tensor::randn(0f32, 1.0, (1024, 1024), &d)?;
    rate("1024^3", 2.0 * 1024f64.powi(3), || big.matmul(&big))?;
    for (k, n) in [(256usize, 256usize), (256, 688), (688, 256)] {
        let x = Tensor::randn(0f32, 1.0, (t, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let dy = Tensor::randn(0f32, 1.0, (t, n), &d)?;
        let fl = 2.0 * (t * k * n) as f64;
        rate(&format!("fwd x[{t},{k}] . w^T[{k},{n}]"), fl, || x.matmul(&w.t()?))?;
        rate(&format!("dx dy[{t},{n}] . w[{n},{k}]"), fl, || dy.matmul(&w))?;
        rate(&format!("dw dy^T[{n},{t}] . x[{t},{k}]"), fl, || dy.t()?.matmul(&x))?;
    }
    Ok(())
}
