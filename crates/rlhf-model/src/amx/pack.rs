//! f32 matrices into AMX's packed bf16 tiles, rounded to nearest even.
//!
//! Two bf16 values share a u32 (the first in the low half, as the kernel's loads read them).
//! A tiles hold 16 rows × 32 consecutive K values. B tiles hold 16 K-pairs × 16 columns, each
//! entry the pair `(B[2r][c], B[2r + 1][c])` side by side (the "VNNI" layout `tdpbf16ps` reads).
//! Tiles of one 16-row (A) or 16-column (B) strip are stored one K-chunk after another, so the
//! kernel walks K through consecutive memory. Padding (rows, columns, K past the matrix) is zero.
//!
//! Whole tiles are converted 16 lanes at a time with AVX-512 (every AMX machine has it); a tile
//! whose source is read across rows (`Wᵀ`, `∂yᵀ`) goes through a 16 × 16 transpose of bf16 pairs
//! in L1. The scalar path packed a reward-model step's operands at a tenth of that speed and took
//! a third of the step. Tiles at the matrix's edges take the scalar path.
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::MatrixRef;
use super::kernel::TILE_PAIRS;

/// `x` rounded to the nearest bf16 (ties to even), as its bits; NaN stays NaN.
#[inline(always)]
pub(super) fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() { ((bits >> 16) as u16) | 0x40 } else { rounded }
}

/// `bf16` of 16 floats, each in the high half of its 32-bit lane (low half zero).
#[target_feature(enable = "avx512f")]
fn round16_high(x: __m512) -> __m512i {
    let bits = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
    _mm512_and_si512(_mm512_mask_blend_epi32(nan, rounded, quiet), _mm512_set1_epi32(-65536))
}

/// 16 bf16 pairs `(lo[c], hi[c])` as u32 (lo in the low half), from 16 floats at each pointer.
///
/// # Safety
/// 16 floats readable at `lo` and at `hi`.
#[target_feature(enable = "avx512f")]
unsafe fn pairs(lo: *const f32, hi: *const f32) -> __m512i {
    // SAFETY: per the contract.
    let (lo, hi) = unsafe { (_mm512_loadu_ps(lo), _mm512_loadu_ps(hi)) };
    _mm512_or_si512(_mm512_srli_epi32::<16>(round16_high(lo)), round16_high(hi))
}

/// 32 consecutive floats as 32 bf16, i.e. 16 pairs of neighbours as u32.
///
/// # Safety
/// 32 floats readable at `src`.
#[target_feature(enable = "avx512f")]
unsafe fn neighbour_pairs(src: *const f32) -> __m512i {
    // SAFETY: per the contract.
    let (a, b) = unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16))) };
    let (a, b) = (_mm512_srli_epi32::<16>(round16_high(a)), _mm512_srli_epi32::<16>(round16_high(b)));
    // Lanes 2q and 2q + 1 of (a, b) into lane q: even lanes low, odd lanes high.
    let even = _mm512_permutex2var_epi32(a, EVEN, b);
    let odd = _mm512_permutex2var_epi32(a, ODD, b);
    _mm512_or_si512(even, _mm512_slli_epi32::<16>(odd))
}

const EVEN: __m512i = unsafe { std::mem::transmute([0i32, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]) };
const ODD: __m512i = unsafe { std::mem::transmute([1i32, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]) };

/// The transpose of the 16 × 16 u32 matrix whose rows are `r`, in registers: pairs of rows
/// interleaved by 32 bits, then by 64, then 128-bit lanes exchanged twice. Written as a loop over
/// memory, the compiler made it sixteen scatters, which Zen 4 runs an element at a time: 10–16%
/// of all packing time (`perf annotate`, bf16 PPO bench).
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = r;
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], 128-bit lane l: rows 4g..4g + 4 of column 4l + c.
    let mut u = t;
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // v[c] and v[8 + c]: columns c, 8 + c (lanes 0, 1) of rows 0..8 (v[c]) or 8..16; v[4 + c] and
    // v[12 + c] the same for columns 4 + c, 12 + c.
    let mut v = u;
    for c in 0..4 {
        v[c] = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
        v[4 + c] = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
        v[8 + c] = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
        v[12 + c] = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
    }
    let mut out = v;
    for c in 0..4 {
        out[c] = _mm512_shuffle_i32x4::<0x88>(v[c], v[8 + c]);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v[c], v[8 + c]);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(v[4 + c], v[12 + c]);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(v[4 + c], v[12 + c]);
    }
    out
}

/// The tile, zeroed: the edge path fills only what the matrix covers.
fn zeroed(tile: &mut [MaybeUninit<u32>]) -> &mut [u32] {
    tile.fill(MaybeUninit::new(0));
    // SAFETY: every element was just written.
    unsafe { &mut *(tile as *mut [MaybeUninit<u32>] as *mut [u32]) }
}

/// Whether packing splits its strips among rayon's threads or runs on the calling thread (a
/// product that is itself one of many running side by side, as attention's per-head ones).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Threads {
    Pool,
    Here,
}

/// `strips` strips of `chunks` tiles, each written by `tile(strip, chunk, tile)`. Not zeroed
/// first: every tile function writes all of its tile (the zero fill was 3% of a training step).
fn packed(
    strips: usize,
    chunks: usize,
    threads: Threads,
    tile: impl Fn(usize, usize, &mut [MaybeUninit<u32>]) + Sync,
) -> Vec<u32> {
    if strips == 0 || chunks == 0 {
        return vec![];
    }
    let mut out = Box::<[u32]>::new_uninit_slice(strips * chunks * TILE_PAIRS);
    let fill = |(strip, dst): (usize, &mut [MaybeUninit<u32>])| {
        for (kk, t) in dst.chunks_mut(TILE_PAIRS).enumerate() {
            tile(strip, kk, t);
        }
    };
    match threads {
        Threads::Pool => out.par_chunks_mut(chunks * TILE_PAIRS).enumerate().for_each(fill),
        Threads::Here => out.chunks_mut(chunks * TILE_PAIRS).enumerate().for_each(fill),
    }
    // SAFETY: the chunks cover `out`, and every tile function writes its whole tile.
    unsafe { out.assume_init() }.into_vec()
}

/// A's rows as `strips` strips of 16 rows, `chunks` K-chunks of 32 each.
pub(super) fn pack_a(a: &MatrixRef<'_>, strips: usize, chunks: usize, threads: Threads) -> Vec<u32> {
    // SAFETY: every machine with AMX has AVX-512 F (checked in `available`).
    packed(strips, chunks, threads, |strip, kk, tile| unsafe { tile_of_pairs(a, strip * 16, kk * 32, false, tile) })
}

/// B's columns as `strips` strips of 16 columns, `chunks` K-chunks of 32 (16 pairs) each.
pub(super) fn pack_b(b: &MatrixRef<'_>, strips: usize, chunks: usize, threads: Threads) -> Vec<u32> {
    // SAFETY: as in `pack_a`.
    packed(strips, chunks, threads, |strip, kk, tile| unsafe { tile_of_pairs(&b.t(), strip * 16, kk * 32, true, tile) })
}

/// The 16 × 16 pairs `P[x][q] = (M[x0 + x][k0 + 2q], M[x0 + x][k0 + 2q + 1])`, or their transpose
/// when `transposed`: A's tile is `P` of `M = A`, B's is `Pᵀ` of `M = Bᵀ`.
///
/// A whole tile is read 16 lanes at a time along whichever of M's axes is contiguous: by rows of
/// `P` (`neighbour_pairs`) or by rows of `Pᵀ` (`pairs`), then stored as it is or through a 16 × 16
/// transpose. A tile at the matrix's edge is filled element by element, zeros beyond.
#[target_feature(enable = "avx512f")]
unsafe fn tile_of_pairs(m: &MatrixRef<'_>, x0: usize, k0: usize, transposed: bool, tile: &mut [MaybeUninit<u32>]) {
    let full = x0 + 16 <= m.rows && k0 + 32 <= m.cols;
    let at = |x: usize, k: usize| x * m.row_stride + k * m.col_stride;
    if full && (m.col_stride == 1 || m.row_stride == 1) {
        let by_rows_of_p = m.col_stride == 1;
        // Not zeroed first: the sixteen stores of zeros were 13–35% of this function's samples.
        let mut rows = [MaybeUninit::<__m512i>::uninit(); 16];
        for (y, row) in rows.iter_mut().enumerate() {
            row.write(if by_rows_of_p {
                let src = &m.data[at(x0 + y, k0)..at(x0 + y, k0 + 31) + 1];
                // SAFETY: 32 floats in `src`.
                unsafe { neighbour_pairs(src.as_ptr()) }
            } else {
                let (lo, hi) = (&m.data[at(x0, k0 + 2 * y)..], &m.data[at(x0, k0 + 2 * y + 1)..]);
                assert!(lo.len() >= 16 && hi.len() >= 16);
                // SAFETY: 16 floats at each (asserted).
                unsafe { pairs(lo.as_ptr(), hi.as_ptr()) }
            });
        }
        // SAFETY: the loop wrote all sixteen.
        let rows = unsafe { std::mem::transmute::<[MaybeUninit<__m512i>; 16], [__m512i; 16]>(rows) };
        let rows = if by_rows_of_p == transposed { transpose16(rows) } else { rows };
        for (dst, row) in tile.chunks_exact_mut(16).zip(rows) {
            // SAFETY: 16 u32 in `dst`, a row of the tile.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), row) };
        }
    } else {
        let tile = zeroed(tile);
        for x in 0..16.min(m.rows.saturating_sub(x0)) {
            for e in 0..32.min(m.cols.saturating_sub(k0)) {
                let v = bf16(m.data[at(x0 + x, k0 + e)]) as u32;
                let slot = if transposed { (e / 2) * 16 + x } else { x * 16 + e / 2 };
                tile[slot] |= v << (16 * (e % 2));
            }
        }
    }
}

/// Which product a packing of `m` serves, as its A or its B operand.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Operand {
    A,
    B,
}

/// Tiles written by several threads at once, each to tiles no other writes.
struct SharedTiles(*mut MaybeUninit<u32>);

// SAFETY: `pack_twice`'s tasks write disjoint tiles through it (see there).
unsafe impl Send for SharedTiles {}
// SAFETY: as above.
unsafe impl Sync for SharedTiles {}

/// Two packings of `m` in one pass, for the two products of a backward pass (or a forward and
/// its backward) that both read it. `first`: strips over `m`'s rows, chunks over its columns: `m`
/// as A (`Operand::A`, [`pack_a`]`(m)`) or `mᵀ` as B ([`pack_b`]`(mᵀ)`). `second`: strips over
/// `m`'s columns, chunks over its rows: `mᵀ` as A or `m` as B. Returns `(first, second)`.
///
/// Packing the two separately read an activation from L3 twice (neither fits in L2 at the
/// bench's 1,536 tokens); here each 32-row block is read once, and each 32 × 32 square of it is
/// packed both ways while it is in L1.
pub(super) fn pack_twice(m: &MatrixRef<'_>, first: Operand, second: Operand) -> (Vec<u32>, Vec<u32>) {
    let (blocks, column_chunks) = (m.rows.div_ceil(32), m.cols.div_ceil(32));
    if blocks == 0 || column_chunks == 0 {
        return (vec![], vec![]);
    }
    let mut one = Box::<[u32]>::new_uninit_slice(2 * blocks * column_chunks * TILE_PAIRS);
    let mut two = Box::<[u32]>::new_uninit_slice(2 * column_chunks * blocks * TILE_PAIRS);
    let shared = SharedTiles(two.as_mut_ptr());
    let transposed = m.t();
    let fill = |(block, dst): (usize, &mut [MaybeUninit<u32>])| {
        let shared = &shared;
        for kk in 0..column_chunks {
            for half in 0..2 {
                let tile = &mut dst[(half * column_chunks + kk) * TILE_PAIRS..][..TILE_PAIRS];
                // SAFETY: `available` (which every caller checks first) requires AVX-512 F.
                unsafe { tile_of_pairs(m, (2 * block + half) * 16, kk * 32, first == Operand::B, tile) };
                let strip = 2 * kk + half;
                // SAFETY: tile (strip, block) of the second packing lies inside it (strips
                // `2 · column_chunks`, chunks `blocks`), and only this block's task writes chunk
                // `block` of any strip.
                let tile = unsafe {
                    std::slice::from_raw_parts_mut(shared.0.add((strip * blocks + block) * TILE_PAIRS), TILE_PAIRS)
                };
                // SAFETY: as above.
                unsafe { tile_of_pairs(&transposed, strip * 16, block * 32, second == Operand::B, tile) };
            }
        }
    };
    one.par_chunks_mut(2 * column_chunks * TILE_PAIRS).enumerate().for_each(fill);
    // SAFETY: the blocks' tasks wrote every tile of both: all of their strips of the first, and
    // chunk `block` of every strip of the second.
    unsafe { (one.assume_init().into_vec(), two.assume_init().into_vec()) }
}
