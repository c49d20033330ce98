//! `x · Wᵀ` on AMX as a candle op with its backward, for training in mixed precision: every
//! product (`y = x Wᵀ`, `∂x = ∂y W`, `∂W = ∂yᵀ x`) rounds its operands to bf16 and sums in
//! f32, as `torch.autocast` does; everything between the products stays f32.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};

use super::MatrixRef;

/// `x [.., in] · wᵀ` for `w [out, in]`, differentiable in both (f32 on the CPU, `available()`).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / k.max(1);
    let (x, w) = (x.reshape((rows, k))?.contiguous()?, w.contiguous()?);
    // Only a product a backward pass can reach keeps its packed operands for it.
    let op = Projection { keep: x.track_op() || w.track_op(), kept: Mutex::default() };
    let y = x.apply_op2(&w, op)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    y.reshape(dims)
}

/// The forward product `x · Wᵀ` (2-D, contiguous), holding what its backward pass will read.
struct Projection {
    keep: bool,
    #[cfg(target_arch = "x86_64")]
    kept: Mutex<Option<super::projection::Kept>>,
    #[cfg(not(target_arch = "x86_64"))]
    kept: Mutex<Option<()>>,
}

fn matrix<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<MatrixRef<'a>> {
    let data = crate::fused::slice(storage, layout, "amx-matmul")?;
    let (rows, cols) = layout.shape().dims2()?;
    MatrixRef::new(data, rows, cols, cols, 1)
        .ok_or_else(|| candle_core::Error::Msg(format!("amx-matmul: {rows}×{cols} over {} values", data.len())))
}

fn cpu(storage: &Storage) -> Result<&CpuStorage> {
    match storage {
        Storage::Cpu(storage) => Ok(storage),
        _ => candle_core::bail!("amx-matmul: CPU tensors only"),
    }
}

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "amx-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if !super::available() {
            candle_core::bail!("amx-matmul: this CPU or OS gives no AMX-BF16");
        }
        let (x, w) = (matrix(s1, l1)?, matrix(s2, l2)?);
        if x.cols != w.cols {
            candle_core::bail!("amx-matmul: x {}×{} by Wᵀ of {}×{}", x.rows, x.cols, w.rows, w.cols);
        }
        let y = if self.keep { self.forward_keeping(x, w) } else { super::matmul(x, w.t()) };
        Ok((CpuStorage::F32(y), Shape::from((x.rows, w.rows))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dx, dw) = {
            let ((sx, lx), (sw, lw), (sd, ld)) =
                (x.storage_and_layout(), w.storage_and_layout(), dy.storage_and_layout());
            let (x_m, w_m, dy_m) = (matrix(cpu(&sx)?, lx)?, matrix(cpu(&sw)?, lw)?, matrix(cpu(&sd)?, ld)?);
            if (dy_m.rows, dy_m.cols) != (x_m.rows, w_m.rows) {
                candle_core::bail!("amx-matmul: ∂y {}×{} for y {}×{}", dy_m.rows, dy_m.cols, x_m.rows, w_m.rows);
            }
            self.backward(dy_m, x_m, w_m)
        };
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
    }
}

#[cfg(target_arch = "x86_64")]
impl Projection {
    fn forward_keeping(&self, x: MatrixRef<'_>, w: MatrixRef<'_>) -> Vec<f32> {
        let (y, kept) = super::projection::forward(x, w);
        *self.kept.lock().expect("no panic holds this lock") = Some(kept);
        y
    }

    /// A second backward pass through the same graph finds nothing kept and packs afresh.
    fn backward(&self, dy: MatrixRef<'_>, x: MatrixRef<'_>, w: MatrixRef<'_>) -> (Vec<f32>, Vec<f32>) {
        let kept = self.kept.lock().expect("no panic holds this lock").take();
        super::projection::backward(dy, x, w, kept)
    }
}

/// Where there is no AMX (`available()` is false, so the forward refuses and nothing reaches these).
#[cfg(not(target_arch = "x86_64"))]
impl Projection {
    fn forward_keeping(&self, x: MatrixRef<'_>, w: MatrixRef<'_>) -> Vec<f32> {
        super::matmul(x, w.t())
    }

    fn backward(&self, dy: MatrixRef<'_>, x: MatrixRef<'_>, w: MatrixRef<'_>) -> (Vec<f32>, Vec<f32>) {
        (super::matmul(dy, w), super::matmul(dy.t(), x))
    }
}
