//! The shortcuts that skip the last layer's work where nothing reads it: the reward model's
//! `last_hidden_states` (each row's last real token) and the PPO learner's `hidden_states_in` (a
//! band of columns). Each must equal `hidden_states` read there, forward and backward, with
//! padding on either side and grouped-query attention.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::*;

use crate::helpers::*;

/// `hidden: [B, T, C]` at each row's last real token → `[B, C]`.
fn at_last_real_token(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let (b, t, _) = hidden.dims3().unwrap();
    let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
    let index: Vec<u32> =
        rows.iter().enumerate().map(|(i, row)| (i * t + row.iter().rposition(|&m| m > 0.0).unwrap()) as u32).collect();
    let index = Tensor::from_vec(index, b, &Device::Cpu).unwrap();
    hidden.flatten_to(1).unwrap().index_select(&index, 0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    if a.elem_count() == 0 {
        return 0.0;
    }
    scalar(&(a - b).unwrap().abs().unwrap().max_all().unwrap())
}

/// Every variable of `varmap` has a nonzero gradient in `whole`, and `shortcut`'s equals it.
fn assert_same_gradients(varmap: &VarMap, whole: &GradStore, shortcut: &GradStore) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let (g_whole, g_short) = (whole.get(var.as_tensor()).unwrap(), shortcut.get(var.as_tensor()).unwrap());
        let scale = scalar(&g_whole.abs().unwrap().max_all().unwrap());
        let diff = max_abs_diff(g_whole, g_short);
        assert!(scale > 0.0, "{name} got a zero gradient");
        assert!(diff <= 1e-5 * (1.0 + scale), "{name}: gradients differ by {diff} (largest {scale})");
    }
}

const ROWS: [&[u32]; 4] = [&[3, 1, 4, 1, 5, 9], &[2, 6, 5], &[8], &[5, 3, 5, 8, 9]];

#[test]
fn last_hidden_states_are_hidden_states_at_the_last_real_token() {
    let cfg = tiny_config(17);
    let (_vars, model) = tiny_model(&cfg, 4, DType::F32);
    let rows: Vec<Vec<u32>> = ROWS.iter().map(|r| r.to_vec()).collect();
    for left in [true, false] {
        let (ids, mask) = padded(&rows, 0, left);
        for kernels in [Kernels::Differentiable, Kernels::Composite, Kernels::Fused] {
            let whole = at_last_real_token(&model.hidden_states(&ids, &mask, kernels).unwrap(), &mask);
            let last = model.last_hidden_states(&ids, &mask, kernels).unwrap();
            let diff = max_abs_diff(&whole, &last);
            assert!(diff < 1e-5, "left padding {left}, {kernels:?}: differs by {diff}");
            // Over the cached output of frozen layers, from every split point.
            for from in 0..=cfg.num_hidden_layers {
                let lower = model.lower_hidden_states(&ids, &mask, from, kernels).unwrap();
                let upper = model.upper_hidden_states(&lower, &mask, from, kernels).unwrap();
                let upper_last = model.upper_last_hidden_states(&lower, &mask, from, kernels).unwrap();
                let diff = max_abs_diff(&at_last_real_token(&upper, &mask), &upper_last);
                assert!(diff < 1e-5, "left padding {left}, {kernels:?}, from layer {from}: differs by {diff}");
            }
        }
    }
    let no_real_token = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let ids = Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(model.last_hidden_states(&ids, &no_real_token, Kernels::Fused).is_err());
}

/// The training path (fused f32 kernels): every parameter's gradient of a Bradley–Terry loss on
/// the shortcut's scores equals the one through the whole forward pass.
#[test]
fn the_reward_gradients_equal_the_whole_forward_passes() {
    let cfg = tiny_config(17);
    let (varmap, model, head) = tiny_reward_model(&cfg, 8, DType::F32);
    let rows: Vec<Vec<u32>> = ROWS.iter().map(|r| r.to_vec()).collect();
    for left in [true, false] {
        let (ids, mask) = padded(&rows, 0, left);
        let loss = |scores: Tensor| {
            let (chosen, rejected) = (scores.narrow(0, 0, 2).unwrap(), scores.narrow(0, 2, 2).unwrap());
            bradley_terry_loss(&chosen, &rejected, None).unwrap()
        };
        let whole =
            loss(head.forward(&model.hidden_states(&ids, &mask, Kernels::Differentiable).unwrap(), &mask).unwrap())
                .backward()
                .unwrap();
        let last = loss(head.score(&model.last_hidden_states(&ids, &mask, Kernels::Differentiable).unwrap()).unwrap())
            .backward()
            .unwrap();
        assert_same_gradients(&varmap, &whole, &last);
    }
}

/// Through the gather and the last layer's shortcut, the gradient with respect to the residual
/// stream entering the last layer matches finite differences (f64, composite kernels).
#[test]
fn the_last_layer_shortcut_gradient_matches_finite_differences() {
    let (_vars, model, head) = tiny_reward_model(&Config::tiny(11, 8, 2, 2, 1), 6, DType::F64);
    let (_ids, mask) = padded(&[vec![1, 2, 3], vec![4, 5], vec![6]], 0, false);
    let lower0 =
        (Tensor::arange(0f64, 72.0, &Device::Cpu).unwrap() * 0.37).unwrap().sin().unwrap().reshape((3, 3, 8)).unwrap();
    check_gradient(
        &lower0,
        |lower| {
            let scores = head.score(&model.upper_last_hidden_states(lower, &mask, 1, Kernels::Differentiable)?)?;
            ranking_loss(&scores, &[vec![2, 0, 1]])
        },
        1e-6,
    );
}

/// The PPO learner's shortcut, `hidden_states_in`: the final hidden states in a band of grid
/// columns equal `hidden_states` narrowed to it, for bands at either end, in the middle and the
/// whole grid, with padding on either side and every kernel set.
#[test]
fn hidden_states_in_a_band_are_hidden_states_narrowed_to_it() {
    let cfg = tiny_config(17);
    let (_vars, model) = tiny_model(&cfg, 5, DType::F32);
    let rows: Vec<Vec<u32>> = ROWS.iter().map(|r| r.to_vec()).collect();
    for left in [true, false] {
        let (ids, mask) = padded(&rows, 0, left);
        for kernels in [Kernels::Differentiable, Kernels::Composite, Kernels::Fused] {
            let whole = model.hidden_states(&ids, &mask, kernels).unwrap();
            for band in [0..6, 2..5, 5..6, 0..1, 3..3] {
                let part = model.hidden_states_in(&ids, &mask, band.clone(), kernels).unwrap();
                let diff = max_abs_diff(&whole.narrow(1, band.start, band.len()).unwrap(), &part);
                assert!(diff < 1e-5, "left padding {left}, {kernels:?}, columns {band:?}: differs by {diff}");
            }
        }
    }
    let (ids, mask) = padded(&rows, 0, true);
    assert!(model.hidden_states_in(&ids, &mask, 4..7, Kernels::Fused).is_err());
}

/// Every parameter's gradient of a loss on the band's hidden states (the policy's log-probs and
/// a value read of them, as the PPO learner's loss reads them) equals the one through the whole
/// forward pass narrowed (fused f32 kernels).
#[test]
fn the_band_gradients_equal_the_whole_forward_passes() {
    let cfg = tiny_config(17);
    let (varmap, model) = tiny_model(&cfg, 9, DType::F32);
    let rows: Vec<Vec<u32>> = ROWS.iter().map(|r| r.to_vec()).collect();
    let band = 2..5;
    for left in [true, false] {
        let (ids, mask) = padded(&rows, 0, left);
        let targets = ids.narrow(1, band.start + 1, band.len()).unwrap();
        let loss = |hidden: Tensor| {
            let logp = tempered_logprobs(&model.lm_head(&hidden).unwrap(), &targets, 0.7).unwrap();
            let read = hidden.sin().unwrap().sum_all().unwrap();
            (logp.sum_all().unwrap() + read).unwrap()
        };
        let whole = model.hidden_states(&ids, &mask, Kernels::Differentiable).unwrap();
        let whole = loss(whole.narrow(1, band.start, band.len()).unwrap()).backward().unwrap();
        let part = loss(model.hidden_states_in(&ids, &mask, band.clone(), Kernels::Differentiable).unwrap())
            .backward()
            .unwrap();
        assert_same_gradients(&varmap, &whole, &part);
    }
}
