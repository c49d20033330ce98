//! Decoding's attention scores sixteen keys at a time on AVX-512, to the same bits as
//! [`simd_math::dot`] key by key.
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
//! of it there is reading the cache from memory.
//!
//! [`simd_math::dot`]: crate::simd_math::dot

use core::arch::x86_64::__m512;
use pulp::x86::V4;

/// Keys per pass: one per lane of an AVX-512 vector.
pub(super) const KEYS: usize = 16;

/// `scores[t] = dot(q, key(t))·scale + bias[t]` for `t` in `0..KEYS`, where `dot` is
/// [`crate::simd_math::dot`]'s sum and `q` and every key hold a multiple of [`KEYS`] values.
/// The product is rounded, then the sum, as the scalar path's two roundings are.
#[inline(always)]
pub(super) fn scores<'k>(
    simd: V4,
    q: &[f32],
    key: impl Fn(usize) -> &'k [f32],
    scale: f32,
    bias: &[f32; KEYS],
    scores: &mut [f32; KEYS],
) {
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
    *scores = pulp::cast(avx._mm512_add_ps(scaled, pulp::cast(*bias)));
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
        for (i, row) in out.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(x, rows[j][i], "output {i}, lane {j}");
            }
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
