//! Autograd against central finite differences, in f64, for every loss and for the model.
//! Inputs sit away from the kinks of clip/max/min, where a finite difference is ill-defined.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rlhf_model::*;

use crate::helpers::*;

fn f64_2(rows: &[&[f64]]) -> Tensor {
    t2(rows).to_dtype(DType::F64).unwrap()
}

#[test]
fn policy_loss_gradient() {
    let old = f64_2(&[&[-1.2, -1.0, -1.0, -0.35], &[-3.0, -0.3, -0.7, -2.0]]);
    let adv = f64_2(&[&[1.0, 2.0, -1.5, -0.5], &[-1.0, 2.0, 0.3, 0.8]]);
    let mask = f64_2(&[&[1., 1., 1., 0.], &[1., 1., 1., 1.]]);
    let logp0 = f64_2(&[&[-1.0, -0.5, -2.0, -0.3], &[-1.0, -0.2, -0.72, -1.9]]);
    for clip in [PolicyClip::default(), PolicyClip { low: 0.2, high: 0.28, dual: Some(3.0) }] {
        check_gradient(&logp0, |logp| policy_loss(logp, &old, &adv, &mask, clip).map(|o| o.loss), 1e-6);
    }
}

#[test]
fn value_loss_gradient() {
    let old = f64_2(&[&[0.5, 2.1, 0.0, 1.0]]);
    let ret = f64_2(&[&[2.0, 1.0, 5.0, 1.05]]);
    let mask = f64_2(&[&[1., 1., 0., 1.]]);
    let v0 = f64_2(&[&[1.0, 1.7, 0.0, 1.1]]);
    for clip in [Some(0.2), None] {
        check_gradient(&v0, |v| value_loss(v, &old, &ret, &mask, clip).map(|o| o.loss), 1e-6);
    }
}

#[test]
fn logprob_entropy_and_kl_gradients() {
    let targets = Tensor::new(&[[2u32, 0], [1, 1]], &Device::Cpu).unwrap();
    let logits0 =
        Tensor::new(&[[[1.0f64, 2.0, 3.0], [0.5, -0.5, 0.0]], [[0.1, 0.2, -0.3], [2.0, 0.0, -1.0]]], &Device::Cpu)
            .unwrap();
    let reference = f64_2(&[&[-0.7, -1.2], &[-1.0, -0.9]]);
    let mask = f64_2(&[&[1., 1.], &[1., 0.]]);
    check_gradient(
        &logits0,
        |logits| {
            let logp = token_logprobs(logits, &targets)?;
            let kl = kl_estimate(&logp, &reference, KlEstimator::K3)?;
            let h = entropy(logits)?;
            masked_mean(&((kl * 0.5)? - (h * 0.01)? + logp)?, &mask)
        },
        1e-6,
    );
}

#[test]
fn preference_loss_gradients() {
    let rejected = Tensor::new(&[0.3f64, 1.2, -0.4], &Device::Cpu).unwrap();
    let margin = Tensor::new(&[0.5f64, 0.0, 1.0], &Device::Cpu).unwrap();
    let chosen0 = Tensor::new(&[1.0f64, 0.1, 2.0], &Device::Cpu).unwrap();
    check_gradient(&chosen0, |c| bradley_terry_loss(c, &rejected, Some(&margin)), 1e-6);
    let rewards0 = Tensor::new(&[3.0f64, 1.0, 2.0, -0.5, 0.25], &Device::Cpu).unwrap();
    check_gradient(&rewards0, |r| ranking_loss(r, &[vec![0, 2, 1], vec![4, 3], vec![3, 1, 4, 0]]), 1e-6);
}

/// The model itself, end to end through attention, rotary embeddings, RMSNorm and SwiGLU: a few
/// weights of each kind, perturbed one at a time, against the autograd gradient.
#[test]
fn model_gradient_matches_finite_differences() {
    let cfg = tiny_config(17);
    let (varmap, model) = tiny_model(&cfg, 7, DType::F64);
    let (ids, mask) = padded(&[vec![1, 5, 9, 3, 2], vec![4, 8, 16]], 0, true);
    // A target counts when it and the token predicting it are both real.
    let mask64 = mask.to_dtype(DType::F64).unwrap();
    let targets = (mask64.narrow(1, 0, 4).unwrap() * mask64.narrow(1, 1, 4).unwrap()).unwrap();
    let loss_of = |model: &Llama| -> f64 {
        let logits = model.forward(&ids, &mask, Kernels::Differentiable).unwrap();
        let logp = next_token_logprobs(&logits, &ids).unwrap();
        scalar(&masked_mean(&logp, &targets).unwrap())
    };
    let logits = model.forward(&ids, &mask, Kernels::Differentiable).unwrap();
    let logp = next_token_logprobs(&logits, &ids).unwrap();
    let grads = masked_mean(&logp, &targets).unwrap().backward().unwrap();

    let vars = varmap.data().lock().unwrap().clone();
    let names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.1.self_attn.v_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ];
    for name in names {
        let var: &Var = &vars[name];
        let analytic = vec1(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} got no gradient")));
        let original = vec1(var.as_tensor());
        for index in [1, original.len() / 2 + 1, original.len() - 2] {
            let eval = |delta: f64| {
                let mut shifted = original.clone();
                shifted[index] += delta;
                var.set(&Tensor::from_vec(shifted, var.shape(), &Device::Cpu).unwrap()).unwrap();
                loss_of(&model)
            };
            let eps = 1e-5;
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(original.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
            let err = (numeric - analytic[index]).abs();
            assert!(
                err < 1e-7 + 1e-5 * numeric.abs(),
                "{name}[{index}]: autograd {} vs numeric {numeric}",
                analytic[index]
            );
        }
    }
}

/// The reward head reads the last real token of each row, wherever the padding is: the gradient
/// with respect to the hidden states must match finite differences (and so be 0 elsewhere).
#[test]
fn reward_head_gradient_matches_finite_differences() {
    let varmap = VarMap::new();
    let head = RewardHead::new(8, seeded_var_builder(&varmap, 3, DType::F64, &Device::Cpu)).unwrap();
    let mask = f64_2(&[&[1., 1., 0.], &[0., 1., 1.], &[1., 1., 1.]]);
    let hidden0 =
        (Tensor::arange(0f64, 72.0, &Device::Cpu).unwrap() * 1.7).unwrap().sin().unwrap().reshape((3, 3, 8)).unwrap();
    check_gradient(&hidden0, |h| ranking_loss(&head.forward(h, &mask)?, &[vec![2, 0, 1]]), 1e-6);
}
