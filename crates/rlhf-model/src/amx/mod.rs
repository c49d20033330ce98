//! Mixed-precision matrix products on Intel AMX: inputs rounded to bf16, products summed in f32.
//!
//! A Sapphire Rapids core does 512 bf16 multiply-adds a cycle in its tile unit (`tdpbf16ps`),
//! sixteen times the 32 of its two AVX-512 f32 FMA ports (a 2-core Xeon here: about 1 TFLOP/s a
//! core measured on one tile loop, against an fp32 gemm peak near 150). This is what `torch.autocast("cpu", bf16)` runs
//! through oneDNN on such a machine: the same rounding of the operands, f32 sums. AMD's Zen 4
//! and later have no tile unit but multiply bf16 pairs (`vdpbf16ps`) at twice the rate of f32
//! FMAs; there the same packed operands go through that instruction ([`Unit::Avx512Bf16`]).
//! Elsewhere (`available()` false) callers keep the f32 path.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod blocks;
#[cfg(target_arch = "x86_64")]
mod dpbf16;
#[cfg(target_arch = "x86_64")]
mod kernel;
mod linear;
#[cfg(target_arch = "x86_64")]
mod pack;
#[cfg(target_arch = "x86_64")]
mod projection;

#[cfg(target_arch = "x86_64")]
pub use blocks::{BLOCK, matmul_here};
pub use linear::linear;

use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// A read-only f32 matrix: element (i, j) at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatrixRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatrixRef<'a> {
    /// None when an element would fall outside `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<Self> {
        let last = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * row_stride + (cols - 1) * col_stride + 1 };
        (last <= data.len()).then_some(Self { data, rows, cols, row_stride, col_stride })
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// What multiplies the bf16 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Intel's tile unit (`tdpbf16ps`), Xeon 4th generation (Sapphire Rapids) and later.
    Amx,
    /// AVX512-BF16's `vdpbf16ps` on AMD (Zen 4 and later). Intel's cores run it at half the f32
    /// FMA's multiply-adds (measured on an Emerald Rapids without AMX), so there it is not used.
    Avx512Bf16,
}

/// The unit mixed-precision products run on here, if any: AMX where the CPU has it and the OS
/// lets this process use it, otherwise AVX512-BF16 on an AMD CPU.
pub fn unit() -> Option<Unit> {
    static UNIT: OnceLock<Option<Unit>> = OnceLock::new();
    *UNIT.get_or_init(|| {
        if amx_usable() {
            Some(Unit::Amx)
        } else if avx512_bf16() && amd() {
            Some(Unit::Avx512Bf16)
        } else {
            None
        }
    })
}

/// Whether mixed-precision products can run here ([`unit`]).
pub fn available() -> bool {
    unit().is_some()
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_bf16() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn amd() -> bool {
    let leaf0 = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
    vendor == b"AuthenticAMD"
}

#[cfg(not(target_arch = "x86_64"))]
fn amd() -> bool {
    false
}

/// Whether this CPU has AMX-BF16 and the OS lets this process use it (Linux asks each process to
/// request the tile state first: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_usable() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
    // The packing (`pack`) is AVX-512 F code; every AMX machine has it, but say so.
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    // SAFETY: arch_prctl with these arguments only asks the kernel for a permission.
    amx_bf16
        && amx_tile
        && avx512
        && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_usable() -> bool {
    false
}

/// Where there is no AMX (`available()` is false, so nothing calls it).
#[cfg(not(target_arch = "x86_64"))]
pub fn matmul(a: MatrixRef<'_>, b: MatrixRef<'_>) -> Vec<f32> {
    panic!("amx::matmul without AMX ({}×{} by {}×{})", a.rows, a.cols, b.rows, b.cols)
}

/// Rows and columns of [`matmul_here`]'s output blocks.
#[cfg(not(target_arch = "x86_64"))]
pub const BLOCK: usize = 32;

/// Where there is no AMX (`available()` is false, so nothing calls it).
#[cfg(not(target_arch = "x86_64"))]
pub fn matmul_here(
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    _chunks: impl Fn(usize, usize) -> std::ops::Range<usize>,
    _out: &mut [f32],
) {
    panic!("amx::matmul_here without AMX ({}×{} by {}×{})", a.rows, a.cols, b.rows, b.cols)
}

/// Output columns one pass of the kernel keeps hot: their packed B (16 tiles of 1 KiB per
/// K-chunk) stays in L2 while every row band streams past it.
#[cfg(target_arch = "x86_64")]
const COLUMNS_PER_PASS: usize = 256;

/// `A · B` (`m × k` by `k × n`) with both rounded to bf16 and the sums in f32, row-major `m × n`.
///
/// # Panics
/// When `a.cols != b.rows`, or when `available()` is false.
#[cfg(target_arch = "x86_64")]
pub fn matmul(a: MatrixRef<'_>, b: MatrixRef<'_>) -> Vec<f32> {
    matmul_on(unit().expect("amx::matmul without a bf16 unit"), a, b)
}

/// A 32 × 32 block kernel: `(a0, a1, b0, b1, chunks, c, ldc)` as [`kernel::block_32x32`].
#[cfg(target_arch = "x86_64")]
type BlockKernel = unsafe fn(*const u32, *const u32, *const u32, *const u32, usize, *mut f32, usize);

/// The block kernel of `unit`.
#[cfg(target_arch = "x86_64")]
fn block_kernel(unit: Unit) -> BlockKernel {
    match unit {
        Unit::Amx => kernel::block_32x32,
        Unit::Avx512Bf16 => dpbf16::block_32x32,
    }
}

/// [`matmul`] on `unit`, which the CPU must have.
#[cfg(target_arch = "x86_64")]
fn matmul_on(unit: Unit, a: MatrixRef<'_>, b: MatrixRef<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "amx::matmul: {}×{} by {}×{}", a.rows, a.cols, b.rows, b.cols);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let chunks = k.div_ceil(32);
    let (pa, pb) = rayon::join(
        || pack::pack_a(&a, 2 * m.div_ceil(32), chunks, pack::Threads::Pool),
        || pack::pack_b(&b, 2 * n.div_ceil(32), chunks, pack::Threads::Pool),
    );
    multiply(unit, &pa, &pb, m, n, chunks)
}

/// The `m × n` product of packed operands of `chunks` K-chunks each (A: `2·⌈m/32⌉` strips, B:
/// `2·⌈n/32⌉`), on `unit`, which the CPU must have.
#[cfg(target_arch = "x86_64")]
fn multiply(unit: Unit, pa: &[u32], pb: &[u32], m: usize, n: usize, chunks: usize) -> Vec<f32> {
    let block = block_kernel(unit);
    let strip = chunks * kernel::TILE_PAIRS;
    assert!(
        pa.len() == 2 * m.div_ceil(32) * strip && pb.len() == 2 * n.div_ceil(32) * strip,
        "amx: packed operands of {} and {} values for {m} × {n} over {chunks} chunks",
        pa.len(),
        pb.len()
    );
    if m == 0 || n == 0 || chunks == 0 {
        return vec![0f32; m * n];
    }
    // Not zeroed: every element is stored below (a full block's tiles, or an edge's copy).
    let mut c = Box::<[f32]>::new_uninit_slice(m * n);
    for first_col in (0..n).step_by(COLUMNS_PER_PASS) {
        let cols = COLUMNS_PER_PASS.min(n - first_col);
        c.par_chunks_mut(32 * n).enumerate().for_each(|(band, out)| {
            let rows = out.len() / n;
            let mut scratch = [0f32; 32 * 32];
            // SAFETY: the CPU has `unit`; the A and B pointers each start `chunks` tiles inside
            // their packed buffers (strips are padded to pairs); full blocks are written inside
            // `out` (32 rows of `n`, columns below `n`), the rest through `scratch`.
            unsafe {
                if unit == Unit::Amx {
                    kernel::configure();
                }
                let a0 = pa.as_ptr().add(2 * band * strip);
                for j in (first_col..first_col + cols).step_by(32) {
                    let b0 = pb.as_ptr().add(j / 16 * strip);
                    if rows == 32 && j + 32 <= n {
                        let at = out.as_mut_ptr().add(j).cast::<f32>();
                        block(a0, a0.add(strip), b0, b0.add(strip), chunks, at, 4 * n);
                    } else {
                        block(a0, a0.add(strip), b0, b0.add(strip), chunks, scratch.as_mut_ptr(), 128);
                        let w = 32.min(n - j);
                        for r in 0..rows {
                            for (o, &v) in out[r * n + j..r * n + j + w].iter_mut().zip(&scratch[r * 32..]) {
                                o.write(v);
                            }
                        }
                    }
                }
                if unit == Unit::Amx {
                    kernel::release();
                }
            }
        });
    }
    // SAFETY: the bands cover `c`, and each band's column passes cover its columns.
    unsafe { c.assume_init() }.into_vec()
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
