//! The f32 multiply-add rate of this machine's vector units, with nothing to read from memory:
//! the ceiling no product can pass, against which the 1024³ matmul yardstick, and the training
//! work beside it, can be placed.
//!
//! Every thread of rayon's pool runs [`CHAINS`] independent chains of fused multiply-adds on the
//! widest vectors it has (AVX-512 or AVX2 through `pulp`), in registers. A chain waits on its
//! own last result, so it takes enough of them to keep every unit busy over the instruction's
//! latency: 4 cycles on Zen 3 and on recent Xeons, with two units, is 8 in flight.

use std::time::Instant;

use pulp::{Simd, WithSimd};

/// Independent accumulators per thread: past the 8 two units of 4 cycles' latency keep busy,
/// and within AVX2's 16 registers beside the two constants.
const CHAINS: usize = 12;

/// Multiply-adds per chain in one timed pass (60 million a thread over the 12 chains: about
/// 10 ms at two a cycle).
const STEPS: usize = 5_000_000;

/// The best GFLOP/s (2 per multiply-add per lane) of `passes` passes, each on every thread of the
/// current rayon pool at once (a broadcast: one pass per thread, none left to steal).
pub fn multiply_add_peak(passes: usize) -> f64 {
    let pass = || {
        let start = Instant::now();
        let flops: usize = rayon::broadcast(|_| {
            let chains = pulp::Arch::new().dispatch(Chains { steps: STEPS });
            std::hint::black_box(chains.sum);
            chains.flops
        })
        .into_iter()
        .sum();
        flops as f64 / start.elapsed().as_secs_f64() / 1e9
    };
    (0..passes.max(1)).map(|_| pass()).fold(0.0, f64::max)
}

/// [`CHAINS`] chains of `steps` multiply-adds, `a ← a·b + c`, with `b` just under 1 so that every
/// value stays near 1 (no overflow, no subnormals).
struct Chains {
    steps: usize,
}

/// What the chains did: FLOPs, and a sum of their results that the caller keeps, so that the
/// work cannot be dropped.
struct ChainsDone {
    flops: usize,
    sum: f32,
}

impl WithSimd for Chains {
    type Output = ChainsDone;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> ChainsDone {
        // Opaque to the compiler: with known values it folds the chains into their result.
        let [one, b, c] = std::hint::black_box([1.0f32, 0.999_999_9, 1e-7]);
        let (b, c) = (simd.splat_f32s(b), simd.splat_f32s(c));
        let mut acc = [simd.splat_f32s(one); CHAINS];
        for _ in 0..self.steps {
            for a in &mut acc {
                *a = simd.mul_add_f32s(*a, b, c);
            }
        }
        let total = acc.iter().fold(simd.splat_f32s(0.0), |s, &a| simd.add_f32s(s, a));
        ChainsDone { flops: 2 * S::F32_LANES * CHAINS * self.steps, sum: simd.reduce_sum_f32s(total) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chains run to the values the arithmetic gives: each starts at 1, and `a·b + c` with
    /// `c` within a fifth of `1 − b` moves it by less than half an f32 step below 1, so it stays
    /// there and the lanes sum to their count.
    #[test]
    fn the_chains_compute_what_they_count() {
        let done = pulp::Arch::new().dispatch(Chains { steps: 1000 });
        let lanes = done.flops / (2 * CHAINS * 1000);
        assert!(lanes == 4 || lanes == 8 || lanes == 16, "{lanes} lanes");
        assert!((done.sum - (lanes * CHAINS) as f32).abs() < 1e-2 * (lanes * CHAINS) as f32, "{}", done.sum);
    }
}
