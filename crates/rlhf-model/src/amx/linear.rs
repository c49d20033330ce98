//! `x · Wᵀ` on AMX as a candle op with its backward, for training in mixed precision: every
//! product (`y = x Wᵀ`, `∂x = ∂y W`, `∂W = ∂yᵀ x`) rounds its operands to bf16 and sums in
//! f32, as `torch.autocast` does; everything between the products stays f32.

#[cfg(target_arch = "x86_64")]
pub use x86::linear;

/// `x [.., in] · wᵀ` for `w [out, in]`: refused where there is no AMX (`available()` is false).
#[cfg(not(target_arch = "x86_64"))]
pub fn linear(_x: &candle_core::Tensor, _w: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    candle_core::bail!("amx-matmul: this CPU or OS gives no AMX-BF16")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, Weak};

    use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, TensorId};

    use super::super::MatrixRef;
    use super::super::projection::{self, PackedInput, PackedWeight};

    /// `x [.., in] · wᵀ` for `w [out, in]`, differentiable in both (f32 on the CPU, `available()`).
    pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if !super::super::available() {
            candle_core::bail!("amx-matmul: this CPU or OS gives no AMX-BF16");
        }
        let (out, k) = w.dims2()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / k.max(1);
        let (flat, w) = (x.reshape((rows, k))?.contiguous()?, w.contiguous()?);
        // Only a product a backward pass can reach packs its operands for it.
        let y = if flat.track_op() || w.track_op() {
            let op = Projection { input: packed_input(x, &flat)?, weight: Mutex::default() };
            flat.apply_op2(&w, op)?
        } else {
            flat.apply_op2_no_bwd(&w, &Product)?
        };
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        y.reshape(dims)
    }

    thread_local! {
        /// The last input packed on this thread: q, k and v (gate and up) read the same activation
        /// one after another. Weak: the packing lives only as long as a graph holds it.
        static LAST_INPUT: RefCell<Option<(TensorId, Weak<PackedInput>)>> = const { RefCell::new(None) };
    }

    /// `flat` (`x` as rows × in, contiguous) packed, or the packing of `x` made for an earlier
    /// projection. Only results of ops are looked up: candle never reuses an id, and nothing
    /// writes into such a tensor once it is made (this crate's in-place writes are the
    /// optimizer's, into variables, whose values do change and are never looked up).
    fn packed_input(x: &Tensor, flat: &Tensor) -> Result<Arc<PackedInput>> {
        let (rows, cols) = flat.dims2()?;
        let key = (x.track_op() && !x.is_variable()).then(|| x.id());
        if let Some(key) = key {
            let hit = LAST_INPUT.with_borrow(|last| match last {
                Some((id, packed)) if *id == key => packed.upgrade(),
                _ => None,
            });
            if let Some(hit) = hit.filter(|hit| hit.fits(rows, cols)) {
                return Ok(hit);
            }
        }
        let packed = {
            let (storage, layout) = flat.storage_and_layout();
            Arc::new(PackedInput::new(matrix(cpu(&storage)?, layout)?))
        };
        if let Some(key) = key {
            LAST_INPUT.with_borrow_mut(|last| *last = Some((key, Arc::downgrade(&packed))));
        }
        Ok(packed)
    }

    /// The forward product `x · Wᵀ` (2-D, contiguous) of a graph a backward pass can reach, with
    /// `x` packed for both of its products and `W` packed for `∂x` while the forward ran.
    struct Projection {
        input: Arc<PackedInput>,
        weight: Mutex<Option<PackedWeight>>,
    }

    /// `x · Wᵀ` with no backward pass (constants, as a frozen model's scoring).
    struct Product;

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

    /// `x` and `w` as matrices whose product `x · Wᵀ` is defined.
    fn operands<'a>(
        s1: &'a CpuStorage,
        l1: &Layout,
        s2: &'a CpuStorage,
        l2: &Layout,
    ) -> Result<(MatrixRef<'a>, MatrixRef<'a>)> {
        let (x, w) = (matrix(s1, l1)?, matrix(s2, l2)?);
        if x.cols != w.cols {
            candle_core::bail!("amx-matmul: x {}×{} by Wᵀ of {}×{}", x.rows, x.cols, w.rows, w.cols);
        }
        Ok((x, w))
    }

    impl CustomOp2 for Product {
        fn name(&self) -> &'static str {
            "amx-matmul"
        }

        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let (x, w) = operands(s1, l1, s2, l2)?;
            Ok((CpuStorage::F32(super::super::matmul(x, w.t())), Shape::from((x.rows, w.rows))))
        }
    }

    impl CustomOp2 for Projection {
        fn name(&self) -> &'static str {
            "amx-matmul"
        }

        fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
            let (x, w) = operands(s1, l1, s2, l2)?;
            if !self.input.fits(x.rows, x.cols) {
                candle_core::bail!("amx-matmul: x is {}×{}, not the packed input's shape", x.rows, x.cols);
            }
            let (y, weight) = projection::forward(&self.input, w);
            *self.weight.lock().expect("no panic holds this lock") = Some(weight);
            Ok((CpuStorage::F32(y), Shape::from((x.rows, w.rows))))
        }

        /// A second backward pass through the same graph finds `W`'s packing taken and packs it afresh.
        fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let dy = dy.contiguous()?;
            let weight = self.weight.lock().expect("no panic holds this lock").take();
            let (dx, dw) = {
                let ((sw, lw), (sd, ld)) = (w.storage_and_layout(), dy.storage_and_layout());
                let (w_m, dy_m) = (matrix(cpu(&sw)?, lw)?, matrix(cpu(&sd)?, ld)?);
                if (dy_m.rows, dy_m.cols) != (x.dim(0)?, w_m.rows) {
                    candle_core::bail!(
                        "amx-matmul: ∂y {}×{} for x {:?} and W {:?}",
                        dy_m.rows,
                        dy_m.cols,
                        x.dims(),
                        w.dims()
                    );
                }
                projection::backward(dy_m, &self.input, w_m, weight)
            };
            Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, w.shape(), w.device())?)))
        }
    }
}
