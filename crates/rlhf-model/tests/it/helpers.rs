//! Small shared helpers: tensors from literals, approximate comparison, finite differences,
//! and a tiny seeded model.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use rlhf_model::{Config, Llama, RewardHead, seeded_var_builder};

pub fn t1(values: &[f64]) -> Tensor {
    Tensor::new(values, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
}

pub fn t2(rows: &[&[f64]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().map(|&v| v as f32)).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

pub fn vec1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[track_caller]
pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "length: {actual:?} vs {expected:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "entry {i}: {a} vs expected {e} (tol {tol})\n{actual:?}\n{expected:?}");
    }
}

/// Compares the autograd gradient of `f` at `x0` (f64) with central differences; returns the
/// largest absolute error so a caller can also report it.
#[track_caller]
pub fn check_gradient(x0: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>, tol: f64) {
    let x0 = x0.to_dtype(DType::F64).unwrap();
    let var = Var::from_tensor(&x0).unwrap();
    let loss = f(var.as_tensor()).unwrap();
    let grads = loss.backward().unwrap();
    let analytic = vec1(grads.get(var.as_tensor()).expect("no gradient reached the input"));
    let base = vec1(&x0);
    let eps = 1e-6;
    for i in 0..base.len() {
        let eval = |delta: f64| {
            let mut shifted = base.clone();
            shifted[i] += delta;
            let t = Tensor::from_vec(shifted, x0.shape(), &Device::Cpu).unwrap();
            scalar(&f(&t).unwrap())
        };
        let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= tol * (1.0 + numeric.abs()),
            "d/dx[{i}]: autograd {} vs finite difference {numeric}",
            analytic[i]
        );
    }
}

/// A tiny GQA model: 2 layers, 4 query heads sharing 2 key/value heads.
pub fn tiny_config(vocab: usize) -> Config {
    let mut cfg = Config::tiny(vocab, 32, 2, 4, 2);
    // Larger than HF's 0.02, so that the random model's distributions are peaked enough for
    // top-k / top-p to matter in sampling tests.
    cfg.initializer_range = 0.3;
    cfg
}

pub fn tiny_model(cfg: &Config, seed: u64, dtype: DType) -> (VarMap, Llama) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, dtype, &Device::Cpu);
    let model = Llama::new(cfg, vb).unwrap();
    (varmap, model)
}

/// A reward model: a seeded backbone and its score head.
pub fn tiny_reward_model(cfg: &Config, seed: u64, dtype: DType) -> (VarMap, Llama, RewardHead) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, dtype, &Device::Cpu);
    let model = Llama::backbone(cfg, vb.clone()).unwrap();
    let head = RewardHead::new(cfg.hidden_size, vb).unwrap();
    (varmap, model, head)
}

/// `[B, T]` ids and mask for rows padded on the left (`left = true`) or the right.
pub fn padded(rows: &[Vec<u32>], pad: u32, left: bool) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap();
    let (mut ids, mut mask): (Vec<u32>, Vec<f32>) = (vec![], vec![]);
    for row in rows {
        let fill = width - row.len();
        let (pads, real) = (vec![pad; fill], row.clone());
        let (pm, rm) = (vec![0f32; fill], vec![1f32; row.len()]);
        if left {
            ids.extend(pads.iter().chain(&real));
            mask.extend(pm.iter().chain(&rm));
        } else {
            ids.extend(real.iter().chain(&pads));
            mask.extend(rm.iter().chain(&pm));
        }
    }
    let dev = &Device::Cpu;
    (
        Tensor::from_vec(ids, (rows.len(), width), dev).unwrap(),
        Tensor::from_vec(mask, (rows.len(), width), dev).unwrap(),
    )
}
