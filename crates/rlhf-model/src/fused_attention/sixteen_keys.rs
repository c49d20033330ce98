//! Decoding's attention scores sixteen keys at a time on AVX-512 (eight with AVX2), to the same
//! bits as [`simd_math::dot`] key by key.
//!
//! `dot` keeps sixteen partial sums, one per lane, and adds them in lane order, one after
//! another: a fixed order, so that results do not depend on the machine. Taken key by key, that
//! last sum is fifteen dependent scalar additions behind as many lane extractions, against four
//! multiply-adds for a head of 64 values: on a Zen 4 a `perf` profile of the bench model's
//! sampling put most of decoding's attention (18% of the samples) there. Here sixteen keys'
//! partial sums are transposed in registers (64 shuffles), so that vector `i` holds lane `i` of
//! every key, and the lane-order sum becomes fifteen vector additions for all sixteen keys: every
//! score is the same sum in the same order as before. On a 2-core Xeon the op ran 10% faster at
//! the bench model's shape and 22% at SmolLM2's (three query heads to a key/value head); the rest
//! of it there is reading the cache from memory. With AVX2 each key's sixteen sums are two
//! vectors, and eight keys go at a time through two 8 × 8 transposes: compiled for AVX2 on the
//! same Xeon, 76 → 70 µs a call at the bench model's shape and 125 → 103 at SmolLM2's; on a Zen 3
//! (AVX2 only), 106 → 88 and 157 → 128 (`examples/cached_attention.rs`, best of 60).
//!
//! [`simd_math::dot`]: crate::simd_math::dot

use core::arch::x86_64::{__m256, __m512};
use pulp::x86::{V3, V4};

/// Keys per pass: one per lane of an AVX-512 vector; also the partial sums `dot` keeps, so a
/// head must be a multiple of it.
pub(super) const KEYS: usize = 16;
/// Keys per pass with AVX2: one per lane of its vectors, each key's sixteen partial sums in two.
pub(super) const KEYS_AVX2: usize = 8;

/// `scores[t] = dot(q, key(t))·scale + bias[t]` for `t` in `0..KEYS`, where `dot` is
/// [`crate::simd_math::dot`]'s sum and `q` and every key hold a multiple of [`KEYS`] values.
/// The product is rounded, then the sum, as the scalar path's two roundings are.
#[inline(always)]
pub(super) fn scores<'k>(
    simd: V4,
    q: &[f32],
    key: impl Fn(usize) -> &'k [f32],
    scale: f32,
    bias: &[f32],
    scores: &mut [f32],
) {
    let bias: [f32; KEYS] = bias.try_into().expect("KEYS biases");
    // Plain loops, no closures around the intrinsics: a closure is compiled without AVX-512,
    // and the intrinsics in it became calls (the first version ran decoding 30% slower).
    let avx = simd.avx512f;
    let mut partial = [avx._mm512_setzero_ps(); KEYS];
    for (t, sum) in partial.iter_mut().enumerate() {
        for (q, k) in q.chunks_exact(KEYS).zip(key(t).chunks_exact(KEYS)) {
            *sum = avx._mm512_fmadd_ps(load(q), load(k), *sum);
        }
    }
    let lanes = transpose(simd, partial);
    let mut sum = lanes[0];
    for &lane in &lanes[1..] {
        sum = avx._mm512_add_ps(sum, lane);
    }
    let scaled = avx._mm512_mul_ps(sum, avx._mm512_set1_ps(scale));
    let out: [f32; KEYS] = pulp::cast(avx._mm512_add_ps(scaled, pulp::cast(bias)));
    scores.copy_from_slice(&out);
}

/// [`scores`] for [`KEYS_AVX2`] keys with AVX2: each key's sixteen partial sums are two vectors
/// (lanes 0–7 and 8–15), each set of eight transposed, then added in lane order.
#[inline(always)]
pub(super) fn scores_avx2<'k>(
    simd: V3,
    q: &[f32],
    key: impl Fn(usize) -> &'k [f32],
    scale: f32,
    bias: &[f32],
    scores: &mut [f32],
) {
    let (avx, fma) = (simd.avx, simd.fma);
    let zero = avx._mm256_setzero_ps();
    let (mut low, mut high) = ([zero; KEYS_AVX2], [zero; KEYS_AVX2]);
    for t in 0..KEYS_AVX2 {
        for (q, k) in q.chunks_exact(KEYS).zip(key(t).chunks_exact(KEYS)) {
            low[t] = fma._mm256_fmadd_ps(load8(&q[..8]), load8(&k[..8]), low[t]);
            high[t] = fma._mm256_fmadd_ps(load8(&q[8..]), load8(&k[8..]), high[t]);
        }
    }
    let (low, high) = (transpose8(simd, low), transpose8(simd, high));
    let mut sum = low[0];
    for &lane in low[1..].iter().chain(&high) {
        sum = avx._mm256_add_ps(sum, lane);
    }
    let scaled = avx._mm256_mul_ps(sum, avx._mm256_set1_ps(scale));
    let bias: [f32; KEYS_AVX2] = bias.try_into().expect("KEYS_AVX2 biases");
    let out: [f32; KEYS_AVX2] = pulp::cast(avx._mm256_add_ps(scaled, pulp::cast(bias)));
    scores.copy_from_slice(&out);
}

#[inline(always)]
fn load8(values: &[f32]) -> __m256 {
    let values: [f32; KEYS_AVX2] = values.try_into().expect("eight values");
    pulp::cast(values)
}

/// The 8 × 8 transpose: pairs of single values, of pairs, then the 128-bit halves.
#[inline(always)]
fn transpose8(simd: V3, rows: [__m256; KEYS_AVX2]) -> [__m256; KEYS_AVX2] {
    let avx = simd.avx;
    let mut a = rows;
    for m in 0..KEYS_AVX2 / 2 {
        a[2 * m] = avx._mm256_unpacklo_ps(rows[2 * m], rows[2 * m + 1]);
        a[2 * m + 1] = avx._mm256_unpackhi_ps(rows[2 * m], rows[2 * m + 1]);
    }
    // b[4h + c]: column c (and c + 4) of rows 4h..4h+4, in its two halves.
    let mut b = rows;
    for h in 0..2 {
        for half in 0..2 {
            let (x, y) = (a[4 * h + half], a[4 * h + 2 + half]);
            b[4 * h + 2 * half] = avx._mm256_shuffle_ps::<0x44>(x, y);
            b[4 * h + 2 * half + 1] = avx._mm256_shuffle_ps::<0xee>(x, y);
        }
    }
    let mut out = rows;
    for c in 0..4 {
        out[c] = avx._mm256_permute2f128_ps::<0x20>(b[c], b[4 + c]);
        out[4 + c] = avx._mm256_permute2f128_ps::<0x31>(b[c], b[4 + c]);
    }
    out
}

#[inline(always)]
fn load(values: &[f32]) -> __m512 {
    let values: [f32; KEYS] = values.try_into().expect("a chunk of KEYS values");
    pulp::cast(values)
}

/// The 16 × 16 transpose: lane `j` of output `i` is lane `i` of input `j`. Four rounds of
/// sixteen shuffles: pairs of single values, of pairs, of 128-bit quarters, of halves.
#[inline(always)]
fn transpose(simd: V4, rows: [__m512; KEYS]) -> [__m512; KEYS] {
    let avx = simd.avx512f;
    // Round 1: within each 128-bit quarter, rows 2m and 2m+1 interleaved.
    let mut a = rows;
    for m in 0..KEYS / 2 {
        let (r0, r1) = (rows[2 * m], rows[2 * m + 1]);
        a[2 * m] = avx._mm512_unpacklo_ps(r0, r1);
        a[2 * m + 1] = avx._mm512_unpackhi_ps(r0, r1);
    }
    // Round 2: quarter q of b[4m + c] is column 4q + c of rows 4m..4m+4.
    let mut b = rows;
    for m in 0..KEYS / 4 {
        for half in 0..2 {
            let x = avx._mm512_castps_pd(a[4 * m + half]);
            let y = avx._mm512_castps_pd(a[4 * m + 2 + half]);
            b[4 * m + 2 * half] = avx._mm512_castpd_ps(avx._mm512_unpacklo_pd(x, y));
            b[4 * m + 2 * half + 1] = avx._mm512_castpd_ps(avx._mm512_unpackhi_pd(x, y));
        }
    }
    // Round 3: c[8m + j] holds columns j and j + 8 (j < 8) of rows 8m..8m+8, quarters taken
    // 0 and 2 (or 1 and 3) from rows 8m..8m+4 and 8m+4..8m+8.
    let mut c = rows;
    for m in 0..2 {
        for j in 0..4 {
            let (x, y) = (b[8 * m + j], b[8 * m + 4 + j]);
            c[8 * m + j] = avx._mm512_shuffle_f32x4::<0x88>(x, y);
            c[8 * m + 4 + j] = avx._mm512_shuffle_f32x4::<0xdd>(x, y);
        }
    }
    // Round 4: the halves of rows 0..8 and 8..16 joined: column i whole.
    let mut out = rows;
    for i in 0..KEYS / 2 {
        out[i] = avx._mm512_shuffle_f32x4::<0x88>(c[i], c[8 + i]);
        out[8 + i] = avx._mm512_shuffle_f32x4::<0xdd>(c[i], c[8 + i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every lane of every row lands where a plain transpose puts it.
    #[test]
    fn the_transpose_is_a_transpose() {
        let Some(simd) = V4::try_new() else {
            eprintln!("no AVX-512 on this CPU: nothing to check");
            return;
        };
        let rows: [[f32; KEYS]; KEYS] = std::array::from_fn(|r| std::array::from_fn(|c| (r * KEYS + c) as f32));
        let out: [[f32; KEYS]; KEYS] = pulp::Simd::vectorize(simd, Transpose(rows.map(pulp::cast))).map(pulp::cast);
        assert_transposed(&rows, &out);
    }

    #[test]
    fn the_avx2_transpose_is_a_transpose() {
        let Some(simd) = V3::try_new() else {
            eprintln!("no AVX2 on this CPU: nothing to check");
            return;
        };
        let rows: [[f32; KEYS_AVX2]; KEYS_AVX2] =
            std::array::from_fn(|r| std::array::from_fn(|c| (r * KEYS_AVX2 + c) as f32));
        let out: [[f32; KEYS_AVX2]; KEYS_AVX2] =
            pulp::Simd::vectorize(simd, Transpose8(rows.map(pulp::cast))).map(pulp::cast);
        assert_transposed(&rows, &out);
    }

    /// Lane `j` of output `i` is lane `i` of input `j`, for every lane.
    fn assert_transposed<const N: usize>(rows: &[[f32; N]; N], out: &[[f32; N]; N]) {
        for (i, row) in out.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(x, rows[j][i], "output {i}, lane {j}");
            }
        }
    }

    struct Transpose8([__m256; KEYS_AVX2]);

    impl pulp::WithSimd for Transpose8 {
        type Output = [__m256; KEYS_AVX2];

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
            transpose8(V3::try_new().expect("checked"), self.0)
        }
    }

    struct Transpose([__m512; KEYS]);

    impl pulp::WithSimd for Transpose {
        type Output = [__m512; KEYS];

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Self::Output {
            transpose(V4::try_new().expect("checked"), self.0)
        }
    }
}
