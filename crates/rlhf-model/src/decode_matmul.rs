//! The projections of a model that only samples or scores ([`crate::Llama::into_decode_layout`]):
//! each weight packed once into tiles of `TILE` output columns, every tile's `in` rows
//! contiguous, and multiplied by a kernel that streams each tile once per step.
//!
//! A decode step multiplies a handful of rows (one per sequence) by every weight of the model.
//! With `W` stored `[in, out]`, a tile of output columns is `in` short pieces a whole weight row
//! apart, each on a page of its own: a profile of SmolLM2-135M's shape at batch 16 put 55% of the
//! projection's time on the loads of those pieces, and gemm (which reads `[in, out]` the same
//! way) did no better. Packed, the same tile is one contiguous run that the prefetcher follows.
//! One pass over a tile serves `ROW_BLOCK` rows (6 on AVX2) from registers, and bands of tiles go to
//! different threads when the weight is large enough to share.
//!
//! No backward pass: these weights are for sampling. f32 on the CPU; on another device
//! [`Projection::for_decoding`] keeps candle's matmul.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::Linear;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Output columns per tile: two AVX-512 vectors, four AVX2 ones.
const TILE: usize = 32;
/// Rows whose sums one pass over a tile keeps in registers: 8 rows × 2 vectors is 16 of
/// AVX-512's 32 registers. AVX2 has 16: 8 × 2 sums there left the compiler keeping some on the
/// stack (a store and a reload around multiply-adds of the inner loop), so AVX2 takes 6 rows at a
/// time (12 sums, two weight vectors and a broadcast value: 15 registers): a prefill's products
/// ran at up to 80 GFLOP/s on a Zen 3 core against 49 (`examples/packed_matmul.rs`; README, "The
/// benchmark").
const ROW_BLOCK: usize = 8;
const ROW_BLOCK_AVX2: usize = 6;
/// Tiles per task, at most about, when the work is shared between threads ([`band_tiles`]).
const TILES_PER_BAND: usize = 8;
/// Weights smaller than this are multiplied on the calling thread: handing a band to another
/// thread would cost more than it saves (a small model's sampler shares rows out instead),
/// unless the weight was packed to be split ([`PackedWeight::split_between_threads`]).
const PARALLEL_WEIGHT_BYTES: usize = 1 << 20;
/// Projection weights (LM head included) past which a decode step reads them from memory, not
/// from cache: more than a 2-core machine's share of its last-level cache (Zen 4: 32 MB in all).
/// A model this big decodes as one shard whose every product is split between the threads
/// ([`streams_weights`]); one shard per thread would read every weight once per thread. The
/// bench model (14 MB) fits; SmolLM2-135M (540 MB) does not.
const STREAMED_WEIGHT_BYTES: usize = 64 << 20;

/// Whether a decode step of a model of `config` streams its weights from memory
/// ([`STREAMED_WEIGHT_BYTES`]). On SmolLM2-135M's shape at batch 16, one shard of 16 rows with
/// every product split decoded 281–286 new tokens/s against two shards' 264–265 (Emerald Rapids).
pub(crate) fn streams_weights(config: &crate::Config) -> bool {
    let projections: usize = config
        .expected_shapes()
        .iter()
        .filter(|(name, shape)| name.ends_with("proj.weight") && shape.len() == 2)
        .map(|(_, shape)| shape[0] * shape[1])
        .sum();
    let head = config.vocab_size * config.hidden_size;
    (projections + head) * std::mem::size_of::<f32>() > STREAMED_WEIGHT_BYTES
}

/// Tiles per band when `tiles` tiles are split between `threads`: a multiple of `threads`
/// bands, as even as the tiles allow, of about [`TILES_PER_BAND`]. Bands of a fixed 8 tiles left
/// SmolLM2's 18-tile projections (576 columns) as 8 + 8 + 2, one thread doing 10 while the
/// other did 8.
fn band_tiles(tiles: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let bands = threads * (tiles / (threads * TILES_PER_BAND)).max(1);
    tiles.div_ceil(bands).max(1)
}

/// A `[in, out]` weight packed by tiles of output columns; the last tile is padded with zeros.
#[derive(Clone)]
pub struct PackedWeight {
    tiles: Arc<Vec<f32>>,
    k: usize,
    n: usize,
    /// Shared between threads whatever its size (a model that streams its weights).
    split: bool,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight[in {}, out {}]", self.k, self.n)
    }
}

impl PackedWeight {
    /// Packs a linear layer's weight, stored `[out, in]` as candle and Hugging Face keep it.
    pub fn pack(w_out_in: &Tensor) -> Result<Self> {
        let (n, k) = w_out_in.dims2()?;
        let values: Vec<f32> = w_out_in.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let tiles_n = n.div_ceil(TILE);
        let mut tiles = vec![0f32; tiles_n * k * TILE];
        for (c, row) in values.chunks_exact(k.max(1)).enumerate() {
            let (tile, j) = (c / TILE, c % TILE);
            for (kk, &v) in row.iter().enumerate() {
                tiles[(tile * k + kk) * TILE + j] = v;
            }
        }
        Ok(PackedWeight { tiles: Arc::new(tiles), k, n, split: false })
    }

    /// The same weight, its products split between rayon's threads even below
    /// [`PARALLEL_WEIGHT_BYTES`]: for a model decoded as one shard ([`streams_weights`]), whose
    /// k and v projections (442 KB in SmolLM2-135M) would otherwise leave a thread idle.
    pub fn split_between_threads(self) -> Self {
        Self { split: true, ..self }
    }

    /// `x [m, in] · W → [m, out]`, row-major.
    pub fn matmul_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        let arch = pulp::Arch::new();
        self.matmul_rows_by(arch, arch.dispatch(RowBlock), x, m)
    }

    /// [`Self::matmul_rows`] with `row_block` rows (1 to [`ROW_BLOCK`]) per pass over a tile.
    /// Every output is the same sum in the same order whatever the block, so the bits do not
    /// depend on it (tested).
    fn matmul_rows_by(&self, arch: pulp::Arch, row_block: usize, x: &[f32], m: usize) -> Vec<f32> {
        assert!((1..=ROW_BLOCK).contains(&row_block), "packed-matmul: a row block of {row_block}");
        let (k, n) = (self.k, self.n);
        // x by columns, in blocks of at most `row_block` rows: one step of the inner loop reads
        // its rows' k-th values side by side.
        let blocks: Vec<(usize, Vec<f32>)> = row_blocks(m, row_block)
            .into_iter()
            .map(|rows| {
                let mut t = vec![0f32; k * rows.len()];
                for (r, row) in rows.clone().enumerate() {
                    for (kk, &v) in x[row * k..(row + 1) * k].iter().enumerate() {
                        t[kk * rows.len() + r] = v;
                    }
                }
                (rows.start, t)
            })
            .collect();
        let tiles_n = n.div_ceil(TILE);
        let threads = rayon::current_num_threads();
        let parallel = threads > 1 && (self.split || k * n * 4 >= PARALLEL_WEIGHT_BYTES);
        let per_band = if parallel { band_tiles(tiles_n, threads) } else { TILES_PER_BAND };
        let band = |first: usize| -> Vec<f32> {
            let tiles = first..(first + per_band).min(tiles_n);
            arch.dispatch(Band { blocks: &blocks, packed: &self.tiles, m, k, tiles })
        };
        let firsts: Vec<usize> = (0..tiles_n).step_by(per_band).collect();
        let bands: Vec<Vec<f32>> =
            if parallel { firsts.into_par_iter().map(band).collect() } else { firsts.into_iter().map(band).collect() };
        // Each band is [m, its tiles × TILE]; the padding past `n` is dropped here. One band as
        // wide as the output is the output; otherwise rows are put together band by band, each
        // value written once (a zeroed output and copies into it were 2–4% of a decode step).
        if let [band] = bands.as_slice()
            && band.len() == m * n
        {
            return bands.into_iter().next().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(m * n);
        for r in 0..m {
            for (b, band) in bands.iter().enumerate() {
                let width = band.len() / m.max(1);
                let keep = width.min(n - b * per_band * TILE);
                out.extend_from_slice(&band[r * width..r * width + keep]);
            }
        }
        out
    }
}

/// Rows under which a block keeps too few sums (two per row) for the multiply-adds in flight to
/// hide the instruction's latency: 4 rows are 8 independent sums.
const MIN_ROW_BLOCK: usize = 4;

/// `0..m` in blocks of `most` rows, except that a short last block (under [`MIN_ROW_BLOCK`] rows)
/// shares rows with the one before it: a decode shard's 8 rows go as 4 + 4, not 6 + 2 (a block
/// of 2 keeps 4 sums, and their chains of multiply-adds wait on each other). 4 + 4 multiplied
/// SmolLM2-135M's projections 4-7% faster than 6 + 2 on a Zen 3 core (`examples/packed_matmul.rs`).
fn row_blocks(m: usize, most: usize) -> Vec<std::ops::Range<usize>> {
    let mut blocks: Vec<std::ops::Range<usize>> = (0..m).step_by(most.max(1)).map(|r| r..(r + most).min(m)).collect();
    if let [.., before, last] = blocks.as_mut_slice()
        && last.len() < MIN_ROW_BLOCK.min(most)
    {
        let middle = (before.start + last.end).div_ceil(2);
        (before.end, last.start) = (middle, middle);
    }
    blocks
}

/// The rows per pass over a tile with this instruction set.
struct RowBlock;

impl WithSimd for RowBlock {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) -> usize {
        if S::F32_LANES >= 16 { ROW_BLOCK } else { ROW_BLOCK_AVX2 }
    }
}

/// Tiles `tiles` of the product, as `[m, tiles × TILE]`.
struct Band<'a> {
    blocks: &'a [(usize, Vec<f32>)],
    packed: &'a [f32],
    m: usize,
    k: usize,
    tiles: std::ops::Range<usize>,
}

impl WithSimd for Band<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<f32> {
        let Band { blocks, packed, m, k, tiles } = self;
        let width = tiles.len() * TILE;
        let mut out = vec![0f32; m * width];
        // Two vectors per pass: 32 columns in one pass with AVX-512, two passes with AVX2.
        let step = (2 * S::F32_LANES).min(TILE);
        for (t, tile) in tiles.enumerate() {
            let data = &packed[tile * k * TILE..(tile + 1) * k * TILE];
            for part in (0..TILE).step_by(step) {
                for (row, block) in blocks {
                    let at = Place { row: *row, col: t * TILE + part, width };
                    match block.len() / k.max(1) {
                        1 => tile_rows::<S, 1>(simd, block, data, part, at, &mut out),
                        2 => tile_rows::<S, 2>(simd, block, data, part, at, &mut out),
                        3 => tile_rows::<S, 3>(simd, block, data, part, at, &mut out),
                        4 => tile_rows::<S, 4>(simd, block, data, part, at, &mut out),
                        5 => tile_rows::<S, 5>(simd, block, data, part, at, &mut out),
                        6 => tile_rows::<S, 6>(simd, block, data, part, at, &mut out),
                        7 => tile_rows::<S, 7>(simd, block, data, part, at, &mut out),
                        _ => tile_rows::<S, 8>(simd, block, data, part, at, &mut out),
                    }
                }
            }
        }
        out
    }
}

/// Where a tile's sums go in a band's output (`[m, width]`).
#[derive(Clone, Copy)]
struct Place {
    row: usize,
    col: usize,
    width: usize,
}

/// `R` rows (`block`, by columns) times columns `part..part + 2 lanes` of one packed tile
/// (`data`, `[in, TILE]`). The sums stay in registers through all of `in`.
#[inline(always)]
fn tile_rows<S: Simd, const R: usize>(simd: S, block: &[f32], data: &[f32], part: usize, at: Place, out: &mut [f32]) {
    let lanes = S::F32_LANES;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; 2]; R];
    for (i, (xs, w)) in block.chunks_exact(R).zip(data.chunks_exact(TILE)).enumerate() {
        // Every pass asks for the rows it will read next; after the first, they are in cache
        // and the hint costs next to nothing. (Asking for the next tile during a tile's last
        // pass instead was slower: measured.)
        if let Some(later) = data.get((i + PREFETCH_ROWS) * TILE..(i + PREFETCH_ROWS + 1) * TILE) {
            prefetch(later);
        }
        let (v, _) = S::as_simd_f32s(&w[part..part + 2 * lanes]);
        let (w0, w1) = (v[0], v[1]);
        for r in 0..R {
            let xv = simd.splat_f32s(xs[r]);
            acc[r][0] = simd.mul_add_f32s(xv, w0, acc[r][0]);
            acc[r][1] = simd.mul_add_f32s(xv, w1, acc[r][1]);
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        let start = (at.row + r) * at.width + at.col;
        let (v, _) = S::as_mut_simd_f32s(&mut out[start..start + 2 * lanes]);
        v[0] = sums[0];
        v[1] = sums[1];
    }
}

/// How far ahead (in tile rows of 128 bytes) a pass asks for the tile it reads. The hardware's
/// prefetcher alone left a Xeon core streaming weights at 7.7 GB/s where it can read 11.6
/// (measured on a `[576, 1536]` weight at 8 rows: 16 rows ahead gave 11.8–12.4 GB/s, 8 gave
/// 9.9, 24 gave 10.7, 32 gave 8.4).
const PREFETCH_ROWS: usize = 16;

/// Asks for the cache lines of `row`: a hint, which reads nothing into the program and cannot
/// fault on any address. The intrinsic is unsafe to call, hence one of the workspace's few
/// `allow(unsafe_code)` exceptions (the others: mimalloc's option setter, `set_var` at start-up,
/// the safetensors mmap).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: `_mm_prefetch` only hints the cache; the pointer is never dereferenced.
        unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

struct PackedMatmul<'a>(&'a PackedWeight);

impl CustomOp1 for PackedMatmul<'_> {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::fused::slice(storage, layout, "packed-matmul")?;
        let (m, k) = layout.shape().dims2()?;
        if k != self.0.k {
            candle_core::bail!("packed-matmul: x has {k} columns, the weight {} rows", self.0.k);
        }
        Ok((CpuStorage::F32(self.0.matmul_rows(x, m)), Shape::from((m, self.0.n))))
    }
}

/// A projection `y = x Wᵀ (+ b)`: candle's `Linear` for training, packed for sampling on the CPU,
/// or in mixed precision ([`crate::amx`]: AMX or AVX512-BF16) when the model was asked to train that way.
#[derive(Debug, Clone)]
pub(crate) enum Projection {
    Plain(Linear),
    Packed { weight: PackedWeight, bias: Option<Tensor> },
    MixedBf16(Linear),
}

impl Projection {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Projection::Plain(linear) => linear.forward(x),
            Projection::MixedBf16(linear) if crate::fused::supported(x) => {
                let y = crate::amx::linear(x, linear.weight())?;
                match linear.bias() {
                    Some(bias) => y.broadcast_add(bias),
                    None => Ok(y),
                }
            }
            Projection::MixedBf16(linear) => linear.forward(x),
            Projection::Packed { weight, bias } => {
                let mut dims = x.dims().to_vec();
                let rows = x.elem_count() / weight.k.max(1);
                let y = x.reshape((rows, weight.k))?.contiguous()?.apply_op1_no_bwd(&PackedMatmul(weight))?;
                if let Some(last) = dims.last_mut() {
                    *last = weight.n;
                }
                let y = y.reshape(dims)?;
                match bias {
                    Some(bias) => y.broadcast_add(bias),
                    None => Ok(y),
                }
            }
        }
    }

    /// The same projection for a model that only samples or scores, in storage of its own
    /// (detached from any gradient graph): packed where the kernel runs (f32 on the CPU), its
    /// products split between threads when `split` ([`PackedWeight::split_between_threads`]);
    /// otherwise `W` stored transposed, the operand gemm or cuBLAS reads in place.
    pub(crate) fn for_decoding(&self, split: bool) -> Result<Projection> {
        let (Projection::Plain(linear) | Projection::MixedBf16(linear)) = self else { return Ok(self.clone()) };
        let bias = linear.bias().map(|b| Ok::<_, candle_core::Error>(b.copy()?.detach())).transpose()?;
        let w = linear.weight();
        if crate::fused::supported(w) {
            let weight = PackedWeight::pack(w)?;
            let weight = if split { weight.split_between_threads() } else { weight };
            return Ok(Projection::Packed { weight, bias });
        }
        let transposed = crate::embedding::fresh_contiguous(&w.t()?)?.t()?;
        Ok(Projection::Plain(Linear::new(transposed, bias)))
    }

    /// The same projection (same weight tensors) multiplied in mixed precision.
    pub(crate) fn mixed_bf16(&self) -> Projection {
        match self {
            Projection::Plain(linear) => Projection::MixedBf16(linear.clone()),
            other => other.clone(),
        }
    }
}

impl From<Linear> for Projection {
    fn from(linear: Linear) -> Self {
        Projection::Plain(linear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain triple loop, in f64, of `x [m, k]` and `w [n, k]` (candle's `[out, in]`).
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] =
                    (0..k).map(|kk| f64::from(x[r * k + kk]) * f64::from(w[c * k + kk])).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn every_row_count_and_ragged_width_matches_the_plain_product() {
        let value = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0;
        let dev = candle_core::Device::Cpu;
        // Widths with and without a partial last tile, past a band, and a weight big enough to
        // be shared between threads; row counts around the row block, and a prefill's.
        for (k, n) in [(5, 3), (64, 32), (96, 688), (33, 300), (576, 1536)] {
            let w: Vec<f32> = (0..n * k).map(|i| value(i, 2)).collect();
            let packed = PackedWeight::pack(&Tensor::from_vec(w.clone(), (n, k), &dev).unwrap()).unwrap();
            for m in [1, 2, 3, 7, 8, 9, 16, 17, 64] {
                let x: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
                let got = packed.matmul_rows(&x, m);
                let want = reference(&x, &w, m, k, n);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "m {m} k {k} n {n} at {i}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn the_row_block_does_not_change_a_bit() {
        let dev = candle_core::Device::Cpu;
        let (k, n) = (300, 200);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let packed = PackedWeight::pack(&w).unwrap();
        let arch = pulp::Arch::new();
        for m in [1, 5, 8, 13, 40] {
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &dev).unwrap().to_vec1().unwrap();
            let want = packed.matmul_rows_by(arch, ROW_BLOCK, &x, m);
            for row_block in 1..ROW_BLOCK {
                let got = packed.matmul_rows_by(arch, row_block, &x, m);
                let same = got.iter().zip(&want).all(|(g, e)| g.to_bits() == e.to_bits());
                assert!(same, "m {m}: a block of {row_block} rows gave other bits than {ROW_BLOCK}");
            }
        }
    }

    #[test]
    fn splitting_a_product_between_threads_does_not_change_a_bit() {
        let dev = candle_core::Device::Cpu;
        // 18 tiles (SmolLM2's 576 columns), 6 (its k and v), a ragged one, and one past a band.
        for (k, n) in [(64, 576), (48, 192), (33, 300), (40, 1100)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let whole = PackedWeight::pack(&w).unwrap();
            let split = whole.clone().split_between_threads();
            for threads in [2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                for m in [1, 8, 16, 21] {
                    let x: Vec<f32> = Tensor::randn(0f32, 1.0, m * k, &dev).unwrap().to_vec1().unwrap();
                    let want = whole.matmul_rows(&x, m);
                    let got = pool.install(|| split.matmul_rows(&x, m));
                    let same =
                        got.len() == want.len() && got.iter().zip(&want).all(|(g, e)| g.to_bits() == e.to_bits());
                    assert!(same, "{k} → {n}, {m} rows on {threads} threads: other bits than on one");
                }
            }
        }
    }

    #[test]
    fn bands_share_the_tiles_evenly_between_threads() {
        // (tiles, threads) → tiles per band.
        for ((tiles, threads), want) in
            [((18, 2), 9), ((48, 2), 8), ((6, 2), 3), ((1536, 2), 8), ((1, 2), 1), ((18, 1), 9)]
        {
            assert_eq!(band_tiles(tiles, threads), want, "{tiles} tiles on {threads} threads");
        }
        for threads in 1..5 {
            for tiles in 1..100 {
                let per = band_tiles(tiles, threads);
                let bands = tiles.div_ceil(per);
                assert!(per >= 1 && per <= TILES_PER_BAND.max(tiles.div_ceil(threads)), "{tiles} on {threads}: {per}");
                // The bands cover every tile, and the last of them is not empty.
                assert!(bands * per >= tiles && (bands - 1) * per < tiles, "{tiles} on {threads}: {bands} × {per}");
            }
        }
    }

    #[test]
    fn a_model_streams_its_weights_past_the_cache() {
        let bench = crate::Config::tiny(512, 256, 4, 4, 4);
        assert!(!streams_weights(&bench), "the bench model's 14 MB fit in cache");
        let mut smollm2 = crate::Config::tiny(49152, 576, 30, 9, 3);
        smollm2.intermediate_size = 1536;
        assert!(streams_weights(&smollm2), "SmolLM2-135M's 540 MB do not");
    }

    #[test]
    fn a_short_last_row_block_shares_rows_with_the_one_before() {
        assert_eq!(row_blocks(8, 6), [0..4, 4..8]);
        assert_eq!(row_blocks(7, 6), [0..4, 4..7]);
        assert_eq!(row_blocks(16, 6), [0..6, 6..12, 12..16]);
        assert_eq!(row_blocks(14, 6), [0..6, 6..10, 10..14]);
        assert_eq!(row_blocks(2, 6).len(), 1, "2 rows are one block");
        assert_eq!(row_blocks(40, 8), [0..8, 8..16, 16..24, 24..32, 32..40]);
        assert_eq!(row_blocks(0, 6), Vec::<std::ops::Range<usize>>::new());
        // Whatever the sizes, the blocks cover every row once, in order, none empty or too big.
        for most in 1..=ROW_BLOCK {
            for m in 0..50 {
                let got = row_blocks(m, most);
                let mut next = 0;
                for b in &got {
                    assert!(b.start == next && !b.is_empty() && b.len() <= most, "m {m} most {most}: {got:?}");
                    next = b.end;
                }
                assert_eq!(next, m, "m {m} most {most}: {got:?}");
            }
        }
    }

    #[test]
    fn a_packed_projection_agrees_with_the_linear_it_came_from() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 64), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (100, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 100, &dev).unwrap();
        let plain = Projection::Plain(Linear::new(w, Some(b)));
        let packed = plain.for_decoding(false).unwrap();
        assert!(matches!(packed, Projection::Packed { .. }));
        let (want, got) = (plain.forward(&x).unwrap(), packed.forward(&x).unwrap());
        assert_eq!(got.dims(), &[4, 3, 100]);
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}
