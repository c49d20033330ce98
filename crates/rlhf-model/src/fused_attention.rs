//! Attention as one differentiable op: `softmax(Q·Kᵀ·scale + bias)·V`, grouped-query.
//!
//! The composite path puts five `[B, H, Tq, Tk]` tensors into the autograd graph (the scores,
//! their scaled copy, the biased copy, the probabilities and a reshape of them). candle's backward
//! pass accumulates every node's gradient as zeros + add, so each of them costs an allocation, a
//! memset and an add on top of its own backward kernel. Here the graph holds one node; the
//! probabilities it needs for its backward pass are kept by the op itself, and the backward pass
//! runs the same four matmuls the composite one does, in the same layouts, so the result is the
//! composite path's to the last bit.
//!
//! f32 on the CPU only; callers check [`crate::fused::supported`] and keep the composite path
//! otherwise (decoding, whose keys come from the KV cache, takes [`cached_attention`], without a
//! gradient). [`attention_mixed`] runs the four products of the backward pass and the two of the
//! forward in mixed precision ([`mixed`]).

mod cached;
mod mixed;
#[cfg(target_arch = "x86_64")]
mod sixteen_keys;
mod visible;

pub use cached::cached_attention;

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use crate::fused::{SoftmaxBackward, rows_mut, softmax_in_place};

/// `softmax(q·kᵀ·scale + bias)·v` for `q: [B, Hkv, G·Tq, D]` (the `G` query heads sharing a
/// key/value head stacked along time), `k, v: [B, Hkv, Tk, D]` and `bias: [B, 1, Tq, Tk]`;
/// returns `[B, Hkv, G·Tq, D]`, differentiable in `q`, `k` and `v`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    apply(q, k, v, bias, scale, false)
}

/// [`attention`] with its products in mixed precision: operands rounded to bf16, sums in f32
/// (the scale, bias and softmax stay f32). Needs the CPU's bf16 unit ([`crate::amx::available`]).
pub fn attention_mixed(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if !crate::amx::available() {
        candle_core::bail!("fused-attention: mixed precision needs AMX-BF16 or AVX512-BF16 on AMD");
    }
    apply(q, k, v, bias, scale, true)
}

fn apply(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64, mixed: bool) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let bias = bias_values(bias)?;
    let op = Attention { bias, scale: scale as f32, mixed, dims: Mutex::new(None), probs: Mutex::new(None) };
    if q.track_op() || k.track_op() || v.track_op() { q.apply_op3(&k, &v, op) } else { q.apply_op3_no_bwd(&k, &v, &op) }
}

/// The shapes of `q: [B, Hkv, G·Tq, D]`, `k, v: [B, Hkv, Tk, D]` and a `[B, 1, Tq, Tk]` bias of
/// `bias` values, checked to fit one another: `B` and the rest.
fn shapes(op: &str, lq: &Layout, lk: &Layout, lv: &Layout, bias: usize) -> Result<(usize, mixed::Dims)> {
    let (&[b, heads, rows, d], &[_, _, tk, _]) = (lq.dims(), lk.dims()) else {
        candle_core::bail!("{op}: q and k must be 4-d, got {:?} and {:?}", lq.dims(), lk.dims())
    };
    if lk.dims() != lv.dims() || lk.dims()[..2] != [b, heads] || lk.dims()[3] != d {
        candle_core::bail!("{op}: q {:?}, k {:?}, v {:?} do not fit", lq.dims(), lk.dims(), lv.dims());
    }
    let tq = bias / (b * tk).max(1);
    if bias != b * tq * tk || tq == 0 || rows % tq != 0 {
        candle_core::bail!("{op}: a bias of {bias} values for q {:?}, k {:?}", lq.dims(), lk.dims());
    }
    Ok((b, mixed::Dims { heads, rows, tq, tk, d }))
}

/// A `[B, 1, Tq, Tk]` bias as the ops keep it, its values in order.
fn bias_values(bias: &Tensor) -> Result<Vec<f32>> {
    bias.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

struct Attention {
    bias: Vec<f32>,
    scale: f32,
    /// Products in mixed precision ([`mixed`]) rather than candle's f32 matmul.
    mixed: bool,
    /// The shapes of the last forward pass, for the mixed backward pass.
    dims: Mutex<Option<mixed::Dims>>,
    /// The softmax probabilities of the last forward pass, for the backward pass.
    probs: Mutex<Option<Tensor>>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, dims) = shapes(self.name(), lq, lk, lv, self.bias.len())?;
        let mixed::Dims { heads, rows, tq, tk, d } = dims;
        if self.mixed {
            if d == 0 {
                candle_core::bail!("fused-attention: a head dimension of 0");
            }
            let slice = |s, l| crate::fused::slice(s, l, "fused-attention");
            let (out, p) = mixed::forward(slice(sq, lq)?, slice(sk, lk)?, slice(sv, lv)?, &self.bias, dims, self.scale);
            *self.dims.lock().expect("no panic holds this lock") = Some(dims);
            *self.probs.lock().expect("no panic holds this lock") =
                Some(Tensor::from_vec(p, (b, heads, rows, tk), &Device::Cpu)?);
            return Ok((CpuStorage::F32(out), Shape::from((b, heads, rows, d))));
        }
        // The same batched matmuls the composite path runs, on the raw storages.
        let mut scores = sq.matmul(sk, (b * heads, rows, tk, d), lq, &lk.transpose(2, 3)?)?;
        let CpuStorage::F32(s) = &mut scores else { candle_core::bail!("fused-attention: f32 only") };
        // Row i is batch i / (heads·rows), query (i % rows) % tq: composite order, s·scale + bias.
        rows_mut(s, tk, |row, i| {
            let (batch, query) = (i / (heads * rows), (i % rows) % tq);
            let bias = &self.bias[(batch * tq + query) * tk..][..tk];
            for (x, &m) in row.iter_mut().zip(bias) {
                *x = *x * self.scale + m;
            }
            softmax_in_place(row);
        });
        let probs_layout = Layout::contiguous((b, heads, rows, tk));
        let out = scores.matmul(sv, (b * heads, rows, d, tk), &probs_layout, lv)?;
        let CpuStorage::F32(p) = scores else { unreachable!("matched as f32 above") };
        *self.probs.lock().expect("no panic holds this lock") =
            Some(Tensor::from_vec(p, (b, heads, rows, tk), &Device::Cpu)?);
        Ok((out, Shape::from((b, heads, rows, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().expect("no panic holds this lock").clone();
        let Some(p) = probs else { candle_core::bail!("fused-attention: backward before forward") };
        let (q, k, v, dout) = (q.detach(), k.detach(), v.detach(), dout.detach());
        if self.mixed {
            return self.mixed_backward(&q, &k, &v, &p, &dout.contiguous()?);
        }
        // As candle differentiates the composite path: out = p·v, s = (q·kᵀ)·scale + bias.
        let dp = dout.matmul(&v.t()?)?;
        let ds = p.apply_op2_no_bwd(&dp, &SoftmaxBackward { scale: self.scale })?;
        let dq = ds.matmul(&k)?;
        let dk = q.t()?.matmul(&ds)?.t()?;
        let dv = p.t()?.matmul(&dout)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// The mixed backward pass as an op on `(q, k, v)`: candle hands it their storage, and it reads
/// the probabilities and `∂out` it holds. Its one output is `∂q`, `∂k` and `∂v` back to back.
struct MixedBackward<'a> {
    attention: &'a Attention,
    dims: mixed::Dims,
    probs: Tensor,
    dout: Tensor,
}

impl CustomOp3 for MixedBackward<'_> {
    fn name(&self) -> &'static str {
        "fused-attention-mixed-backward"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let ((probs, lp), (dout, ld)) = (self.probs.storage_and_layout(), self.dout.storage_and_layout());
        let (candle_core::Storage::Cpu(probs), candle_core::Storage::Cpu(dout)) = (&*probs, &*dout) else {
            candle_core::bail!("{name}: CPU tensors only")
        };
        let saved = mixed::Saved {
            q: crate::fused::slice(sq, lq, name)?,
            k: crate::fused::slice(sk, lk, name)?,
            v: crate::fused::slice(sv, lv, name)?,
            probs: crate::fused::slice(probs, lp, name)?,
            dout: crate::fused::slice(dout, ld, name)?,
        };
        let grads = mixed::backward(saved, &self.attention.bias, self.dims, self.attention.scale);
        let len = grads.len();
        Ok((CpuStorage::F32(grads), Shape::from(len)))
    }
}

impl Attention {
    /// [`mixed::backward`] through [`MixedBackward`], split into `(∂q, ∂k, ∂v)`.
    fn mixed_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(dims) = *self.dims.lock().expect("no panic holds this lock") else {
            candle_core::bail!("fused-attention: backward before forward")
        };
        let op = MixedBackward { attention: self, dims, probs: probs.clone(), dout: dout.clone() };
        let grads = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let dq = grads.narrow(0, 0, nq)?.reshape(q.shape())?;
        let dk = grads.narrow(0, nq, nk)?.reshape(k.shape())?;
        let dv = grads.narrow(0, nq + nk, v.elem_count())?.reshape(v.shape())?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
