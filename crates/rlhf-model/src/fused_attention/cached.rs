//! Attention over the KV cache, as decoding runs it: `softmax(q·kᵀ·scale + bias)·v` in one op,
//! reading the keys and values where the cache holds them. No gradient (sampling only).
//!
//! The composite path ran two of candle's batched matmuls, a scale, a bias add and a softmax for
//! every layer of every decode step. With one query per row (a few for a prompt), each product is
//! a few thousand multiply-adds, and gemm packed its operands first, among them the cached keys
//! and values (a strided view of the preallocated cache), the whole cache again every step: a
//! `perf` profile of SmolLM2's shape sampling 256 new tokens at batch 16 put 12.6% of the time in
//! gemm, most of it in that packing. Here each (row, key/value head) item reads its keys in place,
//! takes dot products in [`simd_math::dot`]'s fixed order, the softmax of [`softmax_in_place`],
//! and sums the values weighted by the probabilities, position by position (keys of probability
//! exactly 0, masked or underflowed, add nothing and are skipped).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::sixteen_keys;
use super::{bias_values, shapes};
use crate::decode_matmul::prefetch;
use crate::fused::softmax_in_place;
use crate::simd_math;

/// Multiply-adds (queries × keys × head dimension, over all items) from which the items are
/// shared between rayon's threads: a prompt's pass. A decode step stays on its calling thread,
/// which is already one of the sampler's shards, one per thread (unless asked to split).
const PARALLEL_WORK: usize = 1 << 21;

/// `softmax(q·kᵀ·scale + bias)·v` for `q: [B, Hkv, G·Tq, D]` (the `G` query heads sharing a
/// key/value head stacked along time, as [`super::attention`] takes them), `k, v: [B, Hkv, Tk, D]`
/// (any strides with each key's `D` values contiguous, as a view of the cache is) and
/// `bias: [B, 1, Tq, Tk]`; returns `[B, Hkv, G·Tq, D]`, with no autograd parents. f32 on the CPU:
/// callers check [`crate::fused::supported`]. `split` shares the items between rayon's threads
/// however little work they are: for a model decoded as one shard ([`crate::Llama::streams_weights`]),
/// where the other threads would otherwise wait (7% of SmolLM2-135M's decode step at batch 16).
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64, split: bool) -> Result<Tensor> {
    let bias = bias_values(bias)?;
    q.contiguous()?.apply_op3_no_bwd(k, v, &CachedAttention { bias, scale: scale as f32, split, wide: Wide::new() })
}

struct CachedAttention {
    bias: Vec<f32>,
    scale: f32,
    split: bool,
    wide: Wide,
}

/// Where a `[B, Hkv, Tk, D]` operand's values are: item `(b, h)`'s key `t` starts at
/// `start + b·s0 + h·s1 + t·s2`, its `D` values contiguous.
struct Strided<'a> {
    data: &'a [f32],
    start: usize,
    strides: [usize; 3],
    heads: usize,
    d: usize,
}

impl<'a> Strided<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, name: &str) -> Result<Self> {
        let (&[_, heads, _, d], &[s0, s1, s2, s3]) = (layout.dims(), layout.stride()) else {
            candle_core::bail!("cached-attention: {name} must be 4-d, got {:?}", layout.dims())
        };
        if s3 != 1 && d > 1 {
            candle_core::bail!("cached-attention: {name}'s last dimension must be contiguous (stride {s3})");
        }
        Ok(Strided { data: storage.as_slice::<f32>()?, start: layout.start_offset(), strides: [s0, s1, s2], heads, d })
    }

    /// The keys (or values) of item `item` (`b · Hkv + h`).
    fn item(&self, item: usize) -> Rows<'a> {
        let (b, h) = (item / self.heads, item % self.heads);
        let first = self.start + b * self.strides[0] + h * self.strides[1];
        Rows { data: self.data, first, step: self.strides[2], d: self.d }
    }
}

/// One item's keys (or values): key `t` is `data[first + t·step..][..d]`.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    first: usize,
    step: usize,
    d: usize,
}

impl<'a> Rows<'a> {
    #[inline(always)]
    fn row(&self, t: usize) -> &'a [f32] {
        let at = self.first + t * self.step;
        &self.data[at..at + self.d]
    }
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "cached-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, super::mixed::Dims { heads, rows, tq, tk, d }) = shapes(self.name(), lq, lk, lv, self.bias.len())?;
        if d == 0 {
            candle_core::bail!("cached-attention: a head dimension of 0");
        }
        let q = crate::fused::slice(sq, lq, self.name())?;
        let (k, v) = (Strided::new(sk, lk, "k")?, Strided::new(sv, lv, "v")?);
        let mut out = vec![0f32; q.len()];
        let wide = self.wide;
        let item = |(item, out): (usize, &mut [f32])| {
            let sequence = item / heads;
            let bias = &self.bias[sequence * tq * tk..][..tq * tk];
            let q = &q[item * rows * d..][..rows * d];
            let (k, v) = (k.item(item), v.item(item));
            simd_math::vectorized(Item { q, k, v, bias, tk, d, scale: self.scale, wide, out });
        };
        let per_item = (rows * d).max(1);
        if self.split || out.len() * tk >= PARALLEL_WORK {
            out.par_chunks_mut(per_item).enumerate().for_each(item);
        } else {
            out.chunks_mut(per_item).enumerate().for_each(item);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, heads, rows, d))))
    }
}

/// How many keys ahead the scores' pass asks for the keys it will read (and for the values, which
/// the weighted sum reads next).
const PREFETCH_KEYS: usize = 8;

/// Output columns summed in registers at a time: four AVX-512 vectors, a head of 64 in one pass.
const BLOCK: usize = 64;

/// One (sequence, key/value head) item: all its query rows against all its keys.
struct Item<'a> {
    q: &'a [f32],
    k: Rows<'a>,
    v: Rows<'a>,
    /// The sequence's `[Tq, Tk]` bias; query row `j` takes row `j % Tq` (its position).
    bias: &'a [f32],
    tk: usize,
    d: usize,
    scale: f32,
    wide: Wide,
    out: &'a mut [f32],
}

/// The widest vectors the CPU has: the scores pass then takes sixteen keys at a time (AVX-512)
/// or eight (AVX2), otherwise key by key.
#[derive(Clone, Copy)]
enum Wide {
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    KeyByKey,
}

impl Wide {
    fn new() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V4::try_new() {
            return Wide::Avx512(simd);
        } else if let Some(simd) = pulp::x86::V3::try_new() {
            return Wide::Avx2(simd);
        }
        Wide::KeyByKey
    }

    /// Scores keys from the first on in passes of several keys where the CPU has AVX-512 or
    /// AVX2 and the head is a multiple of sixteen values; returns where it stopped, for the
    /// key-by-key loop.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn scores(
        self,
        q: &[f32],
        k: Rows<'_>,
        v: Rows<'_>,
        bias: &[f32],
        tk: usize,
        scale: f32,
        scores: &mut [f32],
    ) -> usize {
        let keys = match self {
            #[cfg(target_arch = "x86_64")]
            Wide::Avx512(_) => sixteen_keys::KEYS,
            #[cfg(target_arch = "x86_64")]
            Wide::Avx2(_) => sixteen_keys::KEYS_AVX2,
            Wide::KeyByKey => return 0,
        };
        if !k.d.is_multiple_of(sixteen_keys::KEYS) {
            return 0;
        }
        let (d, tq) = (k.d, bias.len() / tk);
        let mut first = 0;
        while first + keys <= tk {
            for t in first..first + keys {
                if t + keys < tk {
                    prefetch(k.row(t + keys));
                }
                prefetch(v.row(t));
            }
            for (j, q) in q.chunks_exact(d).enumerate() {
                let bias = &bias[(j % tq) * tk + first..][..keys];
                let scores = &mut scores[j * tk + first..][..keys];
                let key = |t| k.row(first + t);
                match self {
                    #[cfg(target_arch = "x86_64")]
                    Wide::Avx512(simd) => sixteen_keys::scores(simd, q, key, scale, bias, scores),
                    #[cfg(target_arch = "x86_64")]
                    Wide::Avx2(simd) => sixteen_keys::scores_avx2(simd, q, key, scale, bias, scores),
                    Wide::KeyByKey => {}
                }
            }
            first += keys;
        }
        first
    }
}

impl WithSimd for Item<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _: S) {
        let Item { q, k, v, bias, tk, d, scale, wide, out } = self;
        let tq = bias.len() / tk.max(1);
        // The scores of every query row, key by key: each key is read once for all the rows of
        // its key/value head (a grouped-query model's query heads, a prompt's positions).
        let mut scores = vec![0f32; q.len() / d.max(1) * tk];
        let first = if tk == 0 { 0 } else { wide.scores(q, k, v, bias, tk, scale, &mut scores) };
        for t in first..tk {
            if t + PREFETCH_KEYS < tk {
                prefetch(k.row(t + PREFETCH_KEYS));
            }
            prefetch(v.row(t));
            let key = k.row(t);
            for (j, q) in q.chunks_exact(d).enumerate() {
                // Scaled, then biased: the composite path's two roundings.
                scores[j * tk + t] = simd_math::dot(q, key) * scale + bias[(j % tq) * tk + t];
            }
        }
        for (p, out) in scores.chunks_exact_mut(tk.max(1)).zip(out.chunks_exact_mut(d)) {
            softmax_in_place(p);
            // Σ_t p_t·v_t, position by position, [`BLOCK`] columns at a time held in registers
            // (summed through memory, each key's multiply-add waited on the last one's store).
            let mut start = 0;
            while start < d {
                let width = BLOCK.min(d - start);
                let out = &mut out[start..start + width];
                if width == BLOCK {
                    let mut acc = [0f32; BLOCK];
                    for (t, &w) in p.iter().enumerate() {
                        if w != 0.0 {
                            let x: &[f32; BLOCK] = v.row(t)[start..start + BLOCK].try_into().expect("BLOCK values");
                            for (a, &x) in acc.iter_mut().zip(x) {
                                *a = w.mul_add(x, *a);
                            }
                        }
                    }
                    out.copy_from_slice(&acc);
                } else {
                    for (t, &w) in p.iter().enumerate() {
                        if w != 0.0 {
                            for (o, &x) in out.iter_mut().zip(&v.row(t)[start..]) {
                                *o = w.mul_add(x, *o);
                            }
                        }
                    }
                }
                start += width;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Tensor};

    use super::{CachedAttention, Wide, cached_attention};
    use crate::fused_attention::bias_values;

    /// The composite expression `attend` runs without the op: two batched matmuls, the scale, the
    /// bias broadcast over the query heads, candle's softmax.
    fn composite(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, heads: usize, scale: f64) -> Tensor {
        let (b, kv, rows, d) = q.dims4().unwrap();
        let (tq, tk) = (rows * kv / heads, k.dim(2).unwrap());
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let scores = scores.reshape((b, heads, tq, tk)).unwrap().broadcast_add(bias).unwrap();
        let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap().reshape((b, kv, rows, tk)).unwrap();
        p.matmul(&v.contiguous().unwrap()).unwrap().reshape((b, kv, rows, d)).unwrap()
    }

    /// Keys and values as decoding sees them: the first `tk` positions of a cache with room for
    /// more (a strided view), grouped-query heads, a left-padded row, `tq` queries per row, heads
    /// of `d` values.
    fn case(tq: usize, tk: usize, d: usize) -> (Tensor, Tensor, Tensor, Tensor, usize) {
        let dev = Device::Cpu;
        let (b, heads, kv, capacity) = (3, 6, 2, tk + 5);
        let q = Tensor::randn(0f32, 1.0, (b, kv, heads / kv * tq, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kv, capacity, d), &dev).unwrap().narrow(2, 0, tk).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kv, capacity, d), &dev).unwrap().narrow(2, 0, tk).unwrap();
        assert!(!k.is_contiguous());
        // Row 1 is left-padded by 2 positions; every query sees the keys up to its own position.
        let mut bias = vec![0f32; b * tq * tk];
        for row in 0..b {
            for r in 0..tq {
                for t in 0..tk {
                    let masked = t > tk - tq + r || (row == 1 && t < 2);
                    bias[(row * tq + r) * tk + t] = if masked { f32::MIN } else { 0.0 };
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, tq, tk), &dev).unwrap();
        (q, k, v, bias, heads)
    }

    /// Heads of 40 values (all in the partial column block), 64 (one whole block), 80 and 128.
    #[test]
    fn cached_attention_matches_the_composite_path() {
        for d in [40, 64, 80, 128] {
            for (tq, tk) in [(1, 1), (1, 37), (4, 9), (16, 16)] {
                let (q, k, v, bias, heads) = case(tq, tk, d);
                let scale = 1.0 / (d as f64).sqrt();
                let fused = cached_attention(&q, &k, &v, &bias, scale, false).unwrap();
                let reference = composite(&q, &k, &v, &bias, heads, scale);
                assert_eq!(fused.dims(), reference.dims());
                // Split between threads, every item is the same sum in the same order.
                let split = cached_attention(&q, &k, &v, &bias, scale, true).unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&split), bits(&fused), "d {d}, tq {tq}, tk {tk}: split between threads");
                let diff = (fused - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "d {d}, tq {tq}, tk {tk}: off by {diff}");
            }
        }
    }

    /// On a CPU with AVX-512 the scores are taken sixteen keys at a time, with AVX2 eight: the
    /// same sums in the same order as key by key, so the same bits, whole passes and a remainder
    /// alike.
    #[test]
    fn sixteen_keys_at_a_time_give_the_key_by_key_bits() {
        for (tq, tk, d) in [(1, 16, 64), (1, 37, 64), (1, 96, 64), (4, 50, 128), (16, 33, 80), (2, 700, 64)] {
            let (q, k, v, bias, _) = case(tq, tk, d);
            let run = |wide: Wide| {
                let op = CachedAttention { bias: bias_values(&bias).unwrap(), scale: 0.125, split: false, wide };
                let out = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                out.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let want = run(Wide::KeyByKey);
            assert_eq!(run(Wide::new()), want, "tq {tq}, tk {tk}, d {d}");
            // Eight keys at a time, as a CPU with AVX2 and no AVX-512 takes them.
            #[cfg(target_arch = "x86_64")]
            if let Some(simd) = pulp::x86::V3::try_new() {
                assert_eq!(run(Wide::Avx2(simd)), want, "tq {tq}, tk {tk}, d {d}: AVX2");
            }
        }
    }

    #[test]
    fn a_long_cache_takes_the_parallel_path_with_the_same_result() {
        // 3 × 2 items of 3 × 16 rows over 700 keys: past the threshold for rayon's threads.
        let (q, k, v, bias, heads) = case(16, 700, 64);
        let scale = 0.125;
        let fused = cached_attention(&q, &k, &v, &bias, scale, false).unwrap();
        let reference = composite(&q, &k, &v, &bias, heads, scale);
        let diff = (fused - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let (q, k, v, bias, _) = case(1, 8, 40);
        let short_bias = bias.narrow(3, 0, 7).unwrap();
        let err = cached_attention(&q, &k, &v, &short_bias, 1.0, false).unwrap_err().to_string();
        assert!(err.contains("bias"), "{err}");
        let err = cached_attention(&q, &k, &v.narrow(3, 0, 39).unwrap(), &bias, 1.0, false).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let empty = |t: &Tensor| t.narrow(3, 0, 0).unwrap();
        let err = cached_attention(&empty(&q), &empty(&k), &empty(&v), &bias, 1.0, false).unwrap_err().to_string();
        assert!(err.contains("head dimension of 0"), "{err}");
    }
}
