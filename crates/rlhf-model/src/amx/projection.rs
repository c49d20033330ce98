//! A projection's three products (`y = x Wᵀ`, `∂x = ∂y W`, `∂W = ∂yᵀ x`) with each operand read
//! from memory once per pass: every activation and weight is packed into both layouts its products
//! need in one go ([`pack::pack_twice`]), and what the backward pass needs of the forward's
//! operands (`x` and `W`, each as a B operand) is kept from the forward pass instead of packed
//! again from f32. Packing was 12–15% of a mixed-precision PPO update's samples, much of it
//! reading activations that fit in no core's L2 a second time. An input packed once also serves every
//! projection that reads it (q, k and v; gate and up).

use super::pack::{self, Operand};
use super::{MatrixRef, multiply, unit};

/// An input `x` (rows × in) packed for both of its products: as A for `y = x Wᵀ`, as B for
/// `∂W = ∂yᵀ x`.
pub struct PackedInput {
    rows: usize,
    cols: usize,
    as_a: Vec<u32>,
    as_b: Vec<u32>,
}

impl PackedInput {
    /// # Panics
    /// When no bf16 unit is available.
    pub fn new(x: MatrixRef<'_>) -> Self {
        assert!(unit().is_some(), "amx projection without a bf16 unit");
        let (as_a, as_b) = pack::pack_twice(&x, Operand::A, Operand::B);
        Self { rows: x.rows, cols: x.cols, as_a, as_b }
    }

    /// Whether this is the packing of a `rows × cols` input.
    pub fn fits(&self, rows: usize, cols: usize) -> bool {
        (self.rows, self.cols) == (rows, cols)
    }
}

/// `W` (out × in) as B for `∂x = ∂y W`, packed while the forward pass packed `Wᵀ`.
pub struct PackedWeight(Vec<u32>);

/// `x Wᵀ` for the packed `x` and `w` (out × in), and `w` packed for the backward pass.
///
/// # Panics
/// When the inner dimensions differ or no bf16 unit is available.
pub fn forward(x: &PackedInput, w: MatrixRef<'_>) -> (Vec<f32>, PackedWeight) {
    let unit = unit().expect("amx projection without a bf16 unit");
    assert_eq!(x.cols, w.cols, "amx projection: x {}×{}, W {}×{}", x.rows, x.cols, w.rows, w.cols);
    let (wt_as_b, w_as_b) = pack::pack_twice(&w, Operand::B, Operand::B);
    let y = multiply(unit, &x.as_a, &wt_as_b, x.rows, w.rows, x.cols.div_ceil(32));
    (y, PackedWeight(w_as_b))
}

/// `(∂x, ∂W)` from `∂y` (rows × out), with the forward pass's `x` packed and `w`; `w_packed` when
/// the forward pass kept it (otherwise it is packed here).
///
/// # Panics
/// When the shapes disagree or no bf16 unit is available.
pub fn backward(
    dy: MatrixRef<'_>,
    x: &PackedInput,
    w: MatrixRef<'_>,
    w_packed: Option<PackedWeight>,
) -> (Vec<f32>, Vec<f32>) {
    let unit = unit().expect("amx projection without a bf16 unit");
    let (rows, out, inputs) = (x.rows, w.rows, x.cols);
    assert!(
        dy.rows == rows && dy.cols == out && w.cols == inputs,
        "amx projection backward: ∂y {}×{}, x {rows}×{inputs}, W {out}×{}",
        dy.rows,
        dy.cols,
        w.cols
    );
    let pack_w = || PackedWeight(pack::pack_b(&w, 2 * inputs.div_ceil(32), out.div_ceil(32), pack::Threads::Pool));
    let ((dy_as_a, dyt_as_a), w_packed) =
        rayon::join(|| pack::pack_twice(&dy, Operand::A, Operand::A), || w_packed.unwrap_or_else(pack_w));
    let dx = multiply(unit, &dy_as_a, &w_packed.0, rows, inputs, out.div_ceil(32));
    let dw = multiply(unit, &dyt_as_a, &x.as_b, out, inputs, rows.div_ceil(32));
    (dx, dw)
}
