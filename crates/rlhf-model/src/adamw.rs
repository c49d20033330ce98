//! AdamW as one pass over each parameter, in place: the same arithmetic as `candle_nn::AdamW`,
//! in the same order, so every step gives the same bits.
//!
//! candle's AdamW composes each update of ~14 tensor ops (scale the moments, add, square, sqrt,
//! divide, …), each a full pass over the parameter into a freshly allocated buffer, on one thread
//! (element-wise ops run on the calling thread). On the bench model that was 20 ms of a 330 ms
//! training step (timed alone), with the other core idle; this takes 2 ms. Here each element's update is done while it is in a
//! register, and the parameter's elements are shared between rayon's threads. Anything that is
//! not f32 on the CPU (a GPU, bf16) takes candle's optimizer unchanged.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rayon::prelude::*;

/// Elements per rayon task: small parameters (norms, biases) stay on the calling thread.
const CHUNK: usize = 1 << 14;

/// AdamW with decoupled weight decay (Loshchilov & Hutter), `candle_nn::AdamW`'s update.
#[derive(Debug)]
pub enum AdamW {
    /// Every parameter f32 on the CPU: fused, in place.
    Fused(FusedAdamW),
    /// Anything else: candle's composite optimizer.
    Composite(candle_nn::AdamW),
}

/// The fused optimizer's state: each parameter with its first and second moments.
#[derive(Debug)]
pub struct FusedAdamW {
    vars: Vec<Moments>,
    params: ParamsAdamW,
    step_t: usize,
}

#[derive(Debug)]
struct Moments {
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let vars: Vec<Var> = vars.into_iter().filter(|var| var.dtype().is_float()).collect();
        if !vars.iter().all(|var| crate::fused::supported(var.as_tensor())) {
            return Ok(AdamW::Composite(candle_nn::AdamW::new(vars, params)?));
        }
        let vars = vars
            .into_iter()
            .map(|var| {
                let n = var.elem_count();
                Moments { var, m: vec![0.0; n], v: vec![0.0; n] }
            })
            .collect();
        Ok(AdamW::Fused(FusedAdamW { vars, params, step_t: 0 }))
    }

    fn learning_rate(&self) -> f64 {
        match self {
            AdamW::Fused(f) => f.params.lr,
            AdamW::Composite(c) => c.learning_rate(),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match self {
            AdamW::Fused(f) => f.params.lr = lr,
            AdamW::Composite(c) => c.set_learning_rate(lr),
        }
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        match self {
            AdamW::Fused(f) => f.step(grads),
            AdamW::Composite(c) => c.step(grads),
        }
    }
}

impl FusedAdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let p = &self.params;
        let t = self.step_t as i32;
        // The scalars exactly as candle_nn::AdamW computes them in f64; its tensor ops then round
        // each to f32 (`T::from_f64`) before use.
        let c = Constants {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: (1f64 / (1f64 - p.beta1.powi(t))) as f32,
            scale_v: (1f64 / (1f64 - p.beta2.powi(t))) as f32,
            decay: (1f64 - p.lr * p.weight_decay) as f32,
            eps: p.eps as f32,
            lr: p.lr as f32,
        };
        for Moments { var, m, v } in self.vars.iter_mut() {
            let Some(g) = grads.get(var) else { continue };
            let g = if g.is_contiguous() { g.clone() } else { g.contiguous()? };
            let op = Update { c, moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())) };
            var.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Constants {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

impl Constants {
    /// One element's update, op for op as candle_nn::AdamW's tensor expression evaluates it:
    /// `x * s` there is `affine(s, 0)`, i.e. `x * s + 0` (which turns −0 into +0), `x + e` is
    /// `affine(1, e)`, and no two ops are fused into one rounding.
    #[inline(always)]
    fn update(&self, theta: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let next_m = (*m * self.beta1 + 0.0) + (g * self.one_minus_beta1 + 0.0);
        let next_v = (*v * self.beta2 + 0.0) + ((g * g) * self.one_minus_beta2 + 0.0);
        let m_hat = next_m * self.scale_m + 0.0;
        let v_hat = next_v * self.scale_v + 0.0;
        let decayed = *theta * self.decay + 0.0;
        let adjusted = m_hat / (v_hat.sqrt() * 1.0 + self.eps);
        *theta = decayed - (adjusted * self.lr + 0.0);
        *m = next_m;
        *v = next_v;
    }
}

/// [`Constants::update`] over slices, run through [`crate::simd_math::vectorized`]: as a plain
/// closure the loop compiled to 4-wide SSE. The ops are the same and none is fused, so the bits
/// are too.
struct Elements<'a> {
    c: Constants,
    theta: &'a mut [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    g: &'a [f32],
}

impl pulp::WithSimd for Elements<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Elements { c, theta, m, v, g } = self;
        for (((t, m), v), &g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            c.update(t, m, v, g);
        }
    }
}

/// The in-place update of one parameter from its gradient; the moments travel in the op.
struct Update<'a> {
    c: Constants,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let g = crate::fused::slice(s2, l2, "adamw")?;
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("adamw: the parameter must be contiguous")
        };
        let CpuStorage::F32(theta) = s1 else { candle_core::bail!("adamw: the parameter must be f32") };
        let theta = &mut theta[start..end];
        let mut moments = self.moments.lock().map_err(|_| candle_core::Error::Msg("adamw: poisoned".into()))?;
        let (m, v) = &mut *moments;
        if theta.len() != g.len() || m.len() != g.len() || v.len() != g.len() {
            candle_core::bail!("adamw: parameter {} and gradient {} differ in size", theta.len(), g.len());
        }
        let c = self.c;
        let run = |theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            crate::simd_math::vectorized(Elements { c, theta, m, v, g });
        };
        if theta.len() > CHUNK {
            theta
                .par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((theta, m), v), g)| run(theta, m, v, g));
        } else {
            run(theta, m, v, g);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Several steps of both optimizers on the same parameters and gradients (with −0, tiny and
    /// large values, weight decay, a parameter without a gradient, sizes on both sides of
    /// `CHUNK`): the parameters must agree bit for bit.
    #[test]
    fn every_step_matches_candles_adamw_bit_for_bit() {
        let dev = Device::Cpu;
        let sizes = [7usize, 300, CHUNK + 5, 3 * CHUNK];
        let value = |i: usize, salt: usize| {
            let x = (((i * 7919 + salt * 104_729) % 2001) as f32 - 1000.0) / 250.0;
            match i % 11 {
                0 => -0.0,
                1 => x * 1e-20,
                2 => x * 1e6,
                _ => x,
            }
        };
        let make = |salt: usize| -> Vec<Var> {
            sizes
                .iter()
                .map(|&n| {
                    Var::from_tensor(&Tensor::from_vec((0..n).map(|i| value(i, salt)).collect(), n, &dev).unwrap())
                })
                .collect::<Result<_>>()
                .unwrap()
        };
        let (ours, theirs) = (make(1), make(1));
        let params = ParamsAdamW { lr: 3e-3, weight_decay: 0.01, ..Default::default() };
        let mut fused = AdamW::new(ours.clone(), params.clone()).unwrap();
        assert!(matches!(fused, AdamW::Fused(_)));
        let mut composite = candle_nn::AdamW::new(theirs.clone(), params).unwrap();
        for step in 0..4 {
            // A loss whose gradient is `w ⊙ x` for fixed x; the second parameter gets none on odd steps.
            let grads = |vars: &[Var]| {
                let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
                for (k, var) in vars.iter().enumerate() {
                    if k == 1 && step % 2 == 1 {
                        continue;
                    }
                    let n = var.elem_count();
                    let x = Tensor::from_vec((0..n).map(|i| value(i, 7 + k + step)).collect(), n, &dev).unwrap();
                    loss = (loss + (var.as_tensor().sqr().unwrap() * x).unwrap().sum_all().unwrap()).unwrap();
                }
                loss.backward().unwrap()
            };
            fused.step(&grads(&ours)).unwrap();
            composite.step(&grads(&theirs)).unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                let (a, b) = (a.as_tensor().to_vec1::<f32>().unwrap(), b.as_tensor().to_vec1::<f32>().unwrap());
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "step {step}, element {i}: {x} vs {y}");
                }
            }
        }
        fused.set_learning_rate(0.5);
        assert_eq!(fused.learning_rate(), 0.5);
    }

    #[test]
    fn other_dtypes_take_candles_optimizer() {
        let w = Var::from_tensor(&Tensor::zeros(4, candle_core::DType::F64, &Device::Cpu).unwrap()).unwrap();
        assert!(matches!(AdamW::new(vec![w], ParamsAdamW::default()).unwrap(), AdamW::Composite(_)));
    }
}
