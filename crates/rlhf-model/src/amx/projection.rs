//! A projection's three products (`y = x Wᵀ`, `∂x = ∂y W`, `∂W = ∂yᵀ x`) with each operand read
//! from memory once per pass: every activation and weight is packed into both layouts its products
//! need in one go ([`pack::pack_twice`]), and what the backward pass needs of the forward's
//! operands (`x` and `W`, each as a B operand) is kept from the forward pass instead of packed
//! again from f32. Packing was a fifth of a mixed-precision PPO update, most of it reading
//! activations that fit in no core's L2 a second time.

use super::pack::{self, Operand};
use super::{MatrixRef, multiply, unit};

/// The forward pass's packings that its backward pass reads: `x` as B (for `∂W = ∂yᵀ x`) and `W`
/// as B (for `∂x = ∂y W`). Half the size of `x` and `W` in f32.
pub struct Kept {
    x: Vec<u32>,
    w: Vec<u32>,
}

/// `x Wᵀ` (`x` rows × in, `w` out × in), and what its backward pass will read.
///
/// # Panics
/// When the inner dimensions differ or no bf16 unit is available.
pub fn forward(x: MatrixRef<'_>, w: MatrixRef<'_>) -> (Vec<f32>, Kept) {
    let unit = unit().expect("amx projection without a bf16 unit");
    assert_eq!(x.cols, w.cols, "amx projection: x {}×{}, W {}×{}", x.rows, x.cols, w.rows, w.cols);
    let ((x_as_a, x_as_b), (wt_as_b, w_as_b)) =
        rayon::join(|| pack::pack_twice(&x, Operand::A, Operand::B), || pack::pack_twice(&w, Operand::B, Operand::B));
    let y = multiply(unit, &x_as_a, &wt_as_b, x.rows, w.rows, x.cols.div_ceil(32));
    (y, Kept { x: x_as_b, w: w_as_b })
}

/// `(∂x, ∂W)` from `∂y` (rows × out), with the forward pass's `x` and `w`; `kept` when the forward
/// pass kept its packings (otherwise they are packed here).
///
/// # Panics
/// When the shapes disagree or no bf16 unit is available.
pub fn backward(dy: MatrixRef<'_>, x: MatrixRef<'_>, w: MatrixRef<'_>, kept: Option<Kept>) -> (Vec<f32>, Vec<f32>) {
    let unit = unit().expect("amx projection without a bf16 unit");
    let (rows, out, inputs) = (x.rows, w.rows, x.cols);
    assert!(
        dy.rows == rows && dy.cols == out && w.cols == inputs,
        "amx projection backward: ∂y {}×{}, x {rows}×{inputs}, W {out}×{}",
        dy.rows,
        dy.cols,
        w.cols
    );
    let pack_kept = || Kept {
        x: pack::pack_b(&x, 2 * inputs.div_ceil(32), rows.div_ceil(32), pack::Threads::Pool),
        w: pack::pack_b(&w, 2 * inputs.div_ceil(32), out.div_ceil(32), pack::Threads::Pool),
    };
    let ((dy_as_a, dyt_as_a), kept) =
        rayon::join(|| pack::pack_twice(&dy, Operand::A, Operand::A), || kept.unwrap_or_else(pack_kept));
    let dx = multiply(unit, &dy_as_a, &kept.w, rows, inputs, out.div_ceil(32));
    let dw = multiply(unit, &dyt_as_a, &kept.x, out, inputs, rows.div_ceil(32));
    (dx, dw)
}
