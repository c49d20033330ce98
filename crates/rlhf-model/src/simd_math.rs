//! `exp` and the row reductions around it, written so that the compiler vectorises them.
//!
//! glibc's `expf` is a scalar call: in a profile of the reward-model step on a 2-core Xeon it was
//! 8% of the CPU time (attention's softmax, SwiGLU's sigmoid), and 7% of SmolLM2's training step
//! (the log-softmax over 49,152 logits, forward and backward). [`exp`] is branch-free, so a loop
//! of it run through [`vectorized`] compiles to AVX-512 (or AVX2) instructions, 16 (8) values at a
//! time.
//! Sums and maxima are kept in [`LANES`] partial results for the same reason (a float sum in one
//! accumulator is a chain the compiler may not reorder); the order is fixed, so results do not
//! depend on the machine or the thread count.

/// Partial results per reduction: one AVX-512 vector.
pub(crate) const LANES: usize = 16;

/// Runs `kernel` compiled for the best instruction set this CPU has (pulp's dispatch: AVX-512,
/// AVX2+FMA, or plain x86-64), where everything its `with_simd` inlines is compiled for that set.
///
/// `kernel` is a struct holding a loop's arguments whose `with_simd` is `#[inline(always)]`, as
/// `decode_matmul`'s `Band` is. A closure or a function item does not do: the compiler declined
/// to inline a closure with a loop of [`exp`] (or a function item's `FnOnce` shim) into the
/// dispatch, and the loop then called `fmaf` and `roundf` from libm, slower than glibc's `expf`.
#[inline(always)]
pub(crate) fn vectorized<K: pulp::WithSimd>(kernel: K) -> K::Output {
    pulp::Arch::new().dispatch(kernel)
}

/// Below this e^x rounds to +0 in f32 (e⁻¹⁰⁴ is under half the smallest subnormal).
pub(crate) const EXP_UNDERFLOW: f32 = -104.0;
/// Above this e^x rounds to +∞ (ln of the largest f32, rounded up).
const EXP_OVERFLOW: f32 = 88.722_84;

/// e^x within 1 ulp of the correctly rounded value (the test sweeps every 97th f32 against f64): Cephes'
/// `expf` — x = n·ln 2 + r with |r| ≤ ln 2 / 2, a degree-5 polynomial for e^r — with fused
/// multiply-adds, and 2ⁿ applied in two halves so that subnormal results come out right. +0 below
/// [`EXP_UNDERFLOW`], +∞ above the overflow threshold, NaN for NaN. Branch-free: loop over it in a
/// kernel run through [`vectorized`].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // f32::clamp keeps a NaN, which then runs through as a NaN.
    let c = x.clamp(EXP_UNDERFLOW, EXP_OVERFLOW);
    let n = (c * std::f32::consts::LOG2_E).round();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, c));
    let mut p = 1.987_569_2e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let er = p.mul_add(r * r, r) + 1.0;
    // n is within [-151, 129]: each half of it is a normal power of two.
    let n = whole(n);
    let (half, rest) = (n >> 1, n.wrapping_sub(n >> 1));
    let pow2 = |k: i32| f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = er * pow2(half) * pow2(rest);
    if x < EXP_UNDERFLOW {
        0.0
    } else if x > EXP_OVERFLOW {
        f32::INFINITY
    } else {
        y
    }
}

/// The integer of a whole `n` of magnitude below 2²², read off the bits of `n + 1.5·2²³` (whose
/// mantissa holds it exactly) rather than by `n as i32`: Rust's cast saturates and maps NaN to 0,
/// and the compiler did that lane by lane in scalar code (a conversion, two compares and
/// conditional moves per value), which made [`exp`] loops half scalar. For a NaN the bits are
/// arbitrary; [`exp`] then returns NaN whatever they are.
#[inline(always)]
fn whole(n: f32) -> i32 {
    const SHIFTER: f32 = 12_582_912.0;
    ((n + SHIFTER).to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32)
}

/// The largest value of `xs` (−∞ for none); NaNs are skipped, as `f32::max` skips them.
#[inline(always)]
pub(crate) fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Σ xs, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().chain(tail).sum()
}

/// Σ a·b, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((s, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *s = x.mul_add(y, *s);
        }
    }
    let tail = n - n % LANES;
    lanes.iter().sum::<f32>() + a[tail..].iter().zip(&b[tail..]).map(|(x, y)| x * y).sum::<f32>()
}

/// Σ a·b·c, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut lanes = [0f32; LANES];
    for ((ca, cb), cc) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)).zip(c.chunks_exact(LANES)) {
        for (((s, &x), &y), &z) in lanes.iter_mut().zip(ca).zip(cb).zip(cc) {
            *s = (x * y).mul_add(z, *s);
        }
    }
    let tail = n - n % LANES;
    let rest = a[tail..].iter().zip(&b[tail..]).zip(&c[tail..]).map(|((x, y), z)| x * y * z);
    lanes.iter().sum::<f32>() + rest.sum::<f32>()
}

/// Σ e^(x − shift) over `xs`, in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += exp(x - shift);
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().map(|&x| exp(x - shift)).sum::<f32>()
}

/// 1 / (1 + e^−x).
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulp::{Simd, WithSimd};

    struct ExpAll<'a>(&'a mut [f32]);

    impl WithSimd for ExpAll<'_> {
        type Output = ();

        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) {
            self.0.iter_mut().for_each(|x| *x = exp(*x));
        }
    }

    struct Reductions<'a>(&'a [f32]);

    impl WithSimd for Reductions<'_> {
        type Output = [f32; 5];

        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> [f32; 5] {
            let (xs, half) = (self.0, &self.0[self.0.len() / 2..]);
            [max(xs), sum(xs), sum_exp(xs, 1.5), dot(xs, half), dot3(xs, half, xs)]
        }
    }

    /// Distance in representable f32 values between `got` and the correctly rounded `want`.
    fn ulps(got: f32, want: f64) -> u64 {
        let want = want as f32;
        if got == want {
            return 0;
        }
        (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn exp_is_within_one_ulp_of_f64_over_the_whole_range() {
        // Every 97th f32 from the smallest normal to the overflow threshold, both signs (down to
        // the underflow threshold): ~20 million values, through the vectorised loop.
        let xs: Vec<f32> = (0x0080_0000u32..EXP_OVERFLOW.to_bits())
            .step_by(97)
            .flat_map(|bits| [f32::from_bits(bits), -f32::from_bits(bits)])
            .filter(|&x| x >= EXP_UNDERFLOW)
            .collect();
        let mut ys = xs.clone();
        vectorized(ExpAll(&mut ys));
        let (worst, at) =
            xs.iter().zip(&ys).map(|(&x, &y)| (ulps(y, (x as f64).exp()), x)).max_by_key(|w| w.0).unwrap();
        assert!(worst <= 1, "{worst} ulp at {at}");
    }

    #[test]
    fn whole_numbers_are_read_exactly() {
        // Every n `exp` can meet, and the edges of the range the trick holds for.
        for n in (-151..=129).chain([-(1 << 22) + 1, -4096, 4096, (1 << 22) - 1]) {
            assert_eq!(whole(n as f32), n, "at {n}");
        }
        assert_eq!(whole(-0.0), 0);
    }

    #[test]
    fn exp_of_special_values() {
        let at = |x: f32| {
            let mut one = [x];
            vectorized(ExpAll(&mut one));
            one[0]
        };
        assert_eq!(at(0.0), 1.0);
        assert_eq!(at(-0.0), 1.0);
        assert_eq!(at(f32::NEG_INFINITY).to_bits(), 0f32.to_bits());
        assert_eq!(at(crate::padding::MASKED).to_bits(), 0f32.to_bits());
        assert_eq!(at(-104.0).to_bits(), 0f32.to_bits());
        assert_eq!(at(f32::INFINITY), f32::INFINITY);
        assert_eq!(at(89.0), f32::INFINITY);
        assert!(at(f32::NAN).is_nan());
        // Subnormal results: e^-100 ≈ 3.7e-44, a handful of representable values.
        assert!(ulps(at(-100.0), (-100f64).exp()) <= 1);
        assert!(ulps(at(-88.0), (-88f64).exp()) <= 2);
        assert!(ulps(at(88.7), (88.7f32 as f64).exp()) <= 2);
    }

    #[test]
    fn a_slice_loop_gives_what_single_calls_give() {
        // The vectorised loop and the scalar call must agree bit for bit (fused multiply-adds in
        // both), or results would depend on where a value falls in a row.
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.173).collect();
        let mut looped = xs.clone();
        vectorized(ExpAll(&mut looped));
        for (x, y) in xs.iter().zip(&looped) {
            assert_eq!(exp(*x).to_bits(), y.to_bits(), "at {x}");
        }
    }

    #[test]
    fn reductions_match_plain_folds() {
        let xs: Vec<f32> = (0..1003).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 3.0).collect();
        for n in [0, 1, 15, 16, 17, 1003] {
            let part = &xs[..n];
            let [most, total, total_exp, products, triples] = vectorized(Reductions(part));
            assert_eq!(most, part.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let want: f64 = part.iter().map(|&x| x as f64).sum();
            assert!((total as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "n {n}");
            let want: f64 = part.iter().map(|&x| (x as f64 - 1.5).exp()).sum();
            assert!((total_exp as f64 - want).abs() <= 1e-5 * (1.0 + want), "n {n}");
            let half = &part[n / 2..];
            let want: f64 = part.iter().zip(half).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((products as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "n {n}");
            let want: f64 = part.iter().zip(half).map(|(&x, &y)| x as f64 * y as f64 * x as f64).sum();
            assert!((triples as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "n {n}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7 && sigmoid(-200.0) == 0.0 && sigmoid(200.0) == 1.0);
    }
}
