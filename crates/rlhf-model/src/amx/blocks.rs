//! Products small enough for one thread, block by block, summing only the K-chunks a block needs.
//!
//! Attention multiplies a batch of small matrices (one per sequence and head: 96 × 96 × 64 on the
//! bench model) whose causal mask zeroes whole blocks: probabilities of keys after the query are
//! exactly 0. [`matmul_here`] runs one such product on the calling thread (the batch is split
//! among the threads instead, as candle patch 5 does for f32) and lets the caller name, for each
//! 32 × 32 output block, the K-chunks of 32 whose terms can be non-zero. Dropping terms that are
//! exactly zero leaves every f32 sum as it was, so the result is the full product's bit for bit.
#![allow(unsafe_code)]

use std::ops::Range;

use super::kernel::TILE_PAIRS;
use super::{MatrixRef, Unit, kernel, pack};

/// Rows and columns of an output block, and K values per chunk.
pub const BLOCK: usize = 32;

/// `A · B` (`m × k` by `k × n`, rounded to bf16, summed in f32) into `out` (row-major `m × n`),
/// on the calling thread. Output block `(band, column)` (rows `32·band..`, columns `32·column..`)
/// sums over the K-chunks `chunks(band, column)` only (clamped to the matrix); the caller promises
/// every term outside them is zero. A block with no chunk is written as zeros.
///
/// # Panics
/// When `a.cols != b.rows`, `out.len() != m · n`, or no bf16 unit is available.
pub fn matmul_here(a: MatrixRef<'_>, b: MatrixRef<'_>, chunks: impl Fn(usize, usize) -> Range<usize>, out: &mut [f32]) {
    let unit = super::unit().expect("amx::matmul_here without a bf16 unit");
    assert_eq!(a.cols, b.rows, "amx::matmul_here: {}×{} by {}×{}", a.rows, a.cols, b.rows, b.cols);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(out.len(), m * n, "amx::matmul_here: {m}×{n} into {} values", out.len());
    if m == 0 || n == 0 {
        return;
    }
    let block = super::block_kernel(unit);
    let total = k.div_ceil(BLOCK);
    let pa = pack::pack_a(&a, 2 * m.div_ceil(BLOCK), total, pack::Threads::Here);
    let pb = pack::pack_b(&b, 2 * n.div_ceil(BLOCK), total, pack::Threads::Here);
    let strip = total * TILE_PAIRS;
    let mut scratch = [0f32; BLOCK * BLOCK];
    // SAFETY: the CPU has `unit`. A block's A and B pointers start `range.start` tiles into their
    // strips and the kernel reads `range.len()` tiles, all inside `total` (clamped below); full
    // blocks are written inside `out` (32 rows of `n` from a column at most `n - 32`), the rest
    // through `scratch`.
    unsafe {
        if unit == Unit::Amx {
            kernel::configure();
        }
        for band in 0..m.div_ceil(BLOCK) {
            let rows = BLOCK.min(m - band * BLOCK);
            for column in 0..n.div_ceil(BLOCK) {
                let cols = BLOCK.min(n - column * BLOCK);
                let range = chunks(band, column);
                let range = range.start.min(total)..range.end.min(total);
                let first = band * BLOCK * n + column * BLOCK;
                if range.is_empty() {
                    for r in 0..rows {
                        out[first + r * n..][..cols].fill(0.0);
                    }
                    continue;
                }
                let a0 = pa.as_ptr().add(2 * band * strip + range.start * TILE_PAIRS);
                let b0 = pb.as_ptr().add(2 * column * strip + range.start * TILE_PAIRS);
                let (a1, b1) = (a0.add(strip), b0.add(strip));
                if rows == BLOCK && cols == BLOCK {
                    block(a0, a1, b0, b1, range.len(), out.as_mut_ptr().add(first), 4 * n);
                } else {
                    block(a0, a1, b0, b1, range.len(), scratch.as_mut_ptr(), 4 * BLOCK);
                    for r in 0..rows {
                        out[first + r * n..][..cols].copy_from_slice(&scratch[r * BLOCK..][..cols]);
                    }
                }
            }
        }
        if unit == Unit::Amx {
            kernel::release();
        }
    }
}
