//! `x · Wᵀ` on AMX as a candle op with its backward, for training in mixed precision: every
//! product (`y = x Wᵀ`, `∂x = ∂y W`, `∂W = ∂yᵀ x`) rounds its operands to bf16 and sums in
//! f32, as `torch.autocast` does; everything between the products stays f32.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::MatrixRef;

/// `x [.., in] · wᵀ` for `w [out, in]`, differentiable in both (f32 on the CPU, `available()`).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / k.max(1);
    let y = x.reshape((rows, k))?.contiguous()?.apply_op2(&w.contiguous()?, Product::X_WT)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    y.reshape(dims)
}

/// `op(a) · op(b)` for 2-D contiguous `a`, `b`, where `op` transposes when asked.
#[derive(Clone, Copy)]
struct Product {
    a_transposed: bool,
    b_transposed: bool,
}

impl Product {
    /// The forward product, the only one with a backward pass.
    const X_WT: Product = Product { a_transposed: false, b_transposed: true };
    /// `∂x = ∂y · W`.
    const DY_W: Product = Product { a_transposed: false, b_transposed: false };
    /// `∂W = ∂yᵀ · x`.
    const DYT_X: Product = Product { a_transposed: true, b_transposed: false };
}

fn matrix<'a>(storage: &'a CpuStorage, layout: &Layout, transposed: bool) -> Result<MatrixRef<'a>> {
    let data = crate::fused::slice(storage, layout, "amx-matmul")?;
    let (rows, cols) = layout.shape().dims2()?;
    let m = MatrixRef::new(data, rows, cols, cols, 1)
        .ok_or_else(|| candle_core::Error::Msg(format!("amx-matmul: {rows}×{cols} over {} values", data.len())))?;
    Ok(if transposed { m.t() } else { m })
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "amx-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if !super::available() {
            candle_core::bail!("amx-matmul: this CPU or OS gives no AMX-BF16");
        }
        let (a, b) = (matrix(s1, l1, self.a_transposed)?, matrix(s2, l2, self.b_transposed)?);
        if a.cols != b.rows {
            candle_core::bail!("amx-matmul: {}×{} by {}×{}", a.rows, a.cols, b.rows, b.cols);
        }
        Ok((CpuStorage::F32(super::matmul(a, b)), Shape::from((a.rows, b.cols))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if (self.a_transposed, self.b_transposed) != (false, true) {
            candle_core::bail!("amx-matmul: a gradient's product has no backward");
        }
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &Product::DY_W)?;
        let dw = dy.apply_op2_no_bwd(x, &Product::DYT_X)?;
        Ok((Some(dx), Some(dw)))
    }
}
