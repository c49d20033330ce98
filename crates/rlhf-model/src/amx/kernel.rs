//! The AMX micro-kernel: a 32 × 32 block of `C = A · B` from packed bf16 tiles, accumulated in
//! f32 in four tile registers (`tdpbf16ps`), written out with `tilestored`.
//!
//! Inline assembly, because Rust's AMX intrinsics are not stable; every instruction here only
//! touches tile registers and the memory the pointers name.
#![allow(unsafe_code)]

use std::arch::asm;

/// Bytes in one packed tile row: 32 bf16 values (A) or 16 pairs (B).
pub(super) const TILE_ROW_BYTES: usize = 64;
/// bf16 pairs (u32) in one packed tile: 16 rows × 16.
pub(super) const TILE_PAIRS: usize = 256;

/// AMX's tile configuration (palette 1): eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Palette 1 has eight tiles; the entries of the other eight must be zero.
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Loads the tile configuration on this thread. Tile state is per thread, so every task that
/// runs the kernel configures first.
///
/// # Safety
/// The process must hold AMX permission (`super::available()` returned true).
pub(super) unsafe fn configure() {
    // SAFETY: CONFIG is a valid palette-1 configuration, 64-byte aligned as ldtilecfg requires.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly)) };
}

/// Releases the tile state so the OS need not save it on context switches.
///
/// # Safety
/// As `configure`.
pub(super) unsafe fn release() {
    // SAFETY: tilerelease only resets tile state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `C[32 × 32] = Σ_kk A_kk · B_kk` over `chunks` K-chunks of 32.
///
/// `a0`/`a1`: the packed A tiles of the block's two 16-row halves, `chunks` consecutive tiles each;
/// `b0`/`b1`: the packed B tiles of its two 16-column halves. `c` is written at rows of `ldc`
/// bytes: rows 0..32, columns 0..32 from `c`.
///
/// # Safety
/// `configure` ran on this thread; each of `a0, a1, b0, b1` points to `chunks` packed tiles;
/// `c` to 32 rows of `ldc` bytes with at least 32 f32 each.
pub(super) unsafe fn block_32x32(
    a0: *const u32,
    a1: *const u32,
    b0: *const u32,
    b1: *const u32,
    chunks: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: per the contract above; tile registers are not used by compiled code.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        for kk in 0..chunks {
            let at = kk * TILE_PAIRS;
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(at),
                a1 = in(reg) a1.add(at),
                b0 = in(reg) b0.add(at),
                b1 = in(reg) b1.add(at),
                s = in(reg) TILE_ROW_BYTES,
                options(nostack, readonly),
            );
        }
        let c_lo = c.cast::<u8>().add(16 * ldc).cast::<f32>();
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c_lo,
            c3 = in(reg) c_lo.add(16),
            s = in(reg) ldc,
            options(nostack),
        );
    }
}
