//! The same 32 × 32 block as [`super::kernel`], from the same packed tiles, on AVX512-BF16's
//! `vdpbf16ps` instead of the tile unit: for CPUs that have the instruction at twice the f32
//! FMA's rate but no AMX (AMD Zen 4 and later: 117 G bf16 multiply-adds a second on one core in
//! a loop of independent ones, against 58 G f32).
//!
//! An A tile is 16 rows × 16 bf16 pairs and a B tile 16 pairs × 16 columns, both as u32, so one
//! step of K (a pair) is one broadcast A pair per row times one B tile row per 16 columns. The
//! block goes through in four bands of 8 rows: 16 accumulators and two B rows in registers, each
//! A pair broadcast by the product's own memory operand.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::kernel::TILE_PAIRS;

/// Rows of one band: 8 rows × 2 vectors of 16 columns = 16 accumulators.
const BAND: usize = 8;

/// `C[32 × 32] = Σ_kk A_kk · B_kk` over `chunks` K-chunks of 32, as
/// [`super::kernel::block_32x32`] (same arguments; `ldc` in bytes).
///
/// # Safety
/// The CPU has AVX-512 F and AVX512-BF16; each of `a0, a1, b0, b1` points to `chunks` packed
/// tiles; `c` to 32 rows of `ldc` bytes with at least 32 f32 each.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn block_32x32(
    a0: *const u32,
    a1: *const u32,
    b0: *const u32,
    b1: *const u32,
    chunks: usize,
    c: *mut f32,
    ldc: usize,
) {
    for band in 0..32 / BAND {
        let strip = if band < 2 { a0 } else { a1 };
        let first_row = band * BAND;
        // SAFETY: per the contract: the band's A rows lie inside its strip's tiles, its C rows
        // inside the block.
        unsafe {
            let a = strip.add((first_row % 16) * 16);
            band_8x32(a, b0, b1, chunks, c.cast::<u8>().add(first_row * ldc).cast::<f32>(), ldc);
        }
    }
}

/// Rows `0..8` of the tiles from `a` (row `r`, pair `q` at `a[kk * TILE_PAIRS + r * 16 + q]`)
/// times the B strips `b0`, `b1`, written to 8 rows of `c`.
///
/// # Safety
/// As [`block_32x32`], for 8 rows.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn band_8x32(a: *const u32, b0: *const u32, b1: *const u32, chunks: usize, c: *mut f32, ldc: usize) {
    let mut acc = [[_mm512_setzero_ps(); 2]; BAND];
    // SAFETY: every read is inside the `chunks` tiles the contract names; `__m512i` and
    // `__m512bh` are both 64 bytes of lanes, so the transmutes only rename them.
    unsafe {
        for kk in 0..chunks {
            let (a, b0, b1) = (a.add(kk * TILE_PAIRS), b0.add(kk * TILE_PAIRS), b1.add(kk * TILE_PAIRS));
            for q in 0..16 {
                let x0 = _mm512_loadu_ps(b0.add(q * 16).cast());
                let x1 = _mm512_loadu_ps(b1.add(q * 16).cast());
                // Row r's pair q is 64·r bytes past row 0's, broadcast by the load itself
                // (`{1to16}`): written as a broadcast then a product, it took a shuffle µop that
                // competed with the products for the FP pipes.
                std::arch::asm!(
                    "vdpbf16ps {c00}, {x0}, dword ptr [{a}]{{1to16}}",
                    "vdpbf16ps {c01}, {x1}, dword ptr [{a}]{{1to16}}",
                    "vdpbf16ps {c10}, {x0}, dword ptr [{a} + 64]{{1to16}}",
                    "vdpbf16ps {c11}, {x1}, dword ptr [{a} + 64]{{1to16}}",
                    "vdpbf16ps {c20}, {x0}, dword ptr [{a} + 128]{{1to16}}",
                    "vdpbf16ps {c21}, {x1}, dword ptr [{a} + 128]{{1to16}}",
                    "vdpbf16ps {c30}, {x0}, dword ptr [{a} + 192]{{1to16}}",
                    "vdpbf16ps {c31}, {x1}, dword ptr [{a} + 192]{{1to16}}",
                    "vdpbf16ps {c40}, {x0}, dword ptr [{a} + 256]{{1to16}}",
                    "vdpbf16ps {c41}, {x1}, dword ptr [{a} + 256]{{1to16}}",
                    "vdpbf16ps {c50}, {x0}, dword ptr [{a} + 320]{{1to16}}",
                    "vdpbf16ps {c51}, {x1}, dword ptr [{a} + 320]{{1to16}}",
                    "vdpbf16ps {c60}, {x0}, dword ptr [{a} + 384]{{1to16}}",
                    "vdpbf16ps {c61}, {x1}, dword ptr [{a} + 384]{{1to16}}",
                    "vdpbf16ps {c70}, {x0}, dword ptr [{a} + 448]{{1to16}}",
                    "vdpbf16ps {c71}, {x1}, dword ptr [{a} + 448]{{1to16}}",
                    a = in(reg) a.add(q),
                    x0 = in(zmm_reg) x0,
                    x1 = in(zmm_reg) x1,
                    c00 = inout(zmm_reg) acc[0][0],
                    c01 = inout(zmm_reg) acc[0][1],
                    c10 = inout(zmm_reg) acc[1][0],
                    c11 = inout(zmm_reg) acc[1][1],
                    c20 = inout(zmm_reg) acc[2][0],
                    c21 = inout(zmm_reg) acc[2][1],
                    c30 = inout(zmm_reg) acc[3][0],
                    c31 = inout(zmm_reg) acc[3][1],
                    c40 = inout(zmm_reg) acc[4][0],
                    c41 = inout(zmm_reg) acc[4][1],
                    c50 = inout(zmm_reg) acc[5][0],
                    c51 = inout(zmm_reg) acc[5][1],
                    c60 = inout(zmm_reg) acc[6][0],
                    c61 = inout(zmm_reg) acc[6][1],
                    c70 = inout(zmm_reg) acc[7][0],
                    c71 = inout(zmm_reg) acc[7][1],
                    options(nostack, readonly, preserves_flags),
                );
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = c.cast::<u8>().add(r * ldc).cast::<f32>();
            _mm512_storeu_ps(row, acc[0]);
            _mm512_storeu_ps(row.add(16), acc[1]);
        }
    }
}
