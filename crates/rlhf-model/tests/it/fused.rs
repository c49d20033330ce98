//! The fused kernels against the composite path they replace, in f32: values and gradients of
//! each kernel alone, then of the whole model (every weight's gradient). The composite path is
//! itself checked against finite differences in `gradients.rs`.

use candle_core::{D, DType, Device, Tensor, Var};
use rlhf_model::*;

use crate::helpers::*;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    // A fixed, irregular sequence in [-2, 2): no RNG needed for a reproducible input.
    let values: Vec<f32> = (0..n).map(|i| ((i as u64 * 7919 + seed * 104729) % 4001) as f32 / 1000.25 - 2.0).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let (a, b) =
        (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (diff, scale)
}

/// `fused` and `composite` of the same inputs agree, and so do their gradients with respect to
/// every input (through a loss that weights each output differently).
fn same_values_and_gradients(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composite: impl Fn(&[Tensor]) -> Tensor,
) {
    let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors);
        let weights = random(out.dims(), 99);
        let grads = (&out * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).expect("a gradient").clone()).collect();
        (out, grads)
    };
    let (out_f, grads_f) = run(&fused);
    let (out_c, grads_c) = run(&composite);
    let (diff, scale) = max_abs_diff(&out_f, &out_c);
    assert!(diff <= 1e-5 * scale.max(1.0), "values differ by {diff} (scale {scale})");
    for (i, (gf, gc)) in grads_f.iter().zip(&grads_c).enumerate() {
        let (diff, scale) = max_abs_diff(gf, gc);
        assert!(diff <= 1e-5 * scale.max(1.0), "gradient {i} differs by {diff} (scale {scale})");
    }
}

#[test]
fn fused_rms_norm_matches_the_composite_path() {
    // 40 rows of 48 and 700 rows of 64: below and above the size the kernel hands to threads.
    for (rows, width) in [(40, 48), (700, 64)] {
        let (x, w) = (random(&[rows / 10, 10, width], 1), (random(&[width], 2) + 1.5).unwrap());
        same_values_and_gradients(
            &[x, w],
            |t| fused::rms_norm(&t[0], &t[1], 1e-5).unwrap(),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5).unwrap(),
        );
    }
}

#[test]
fn fused_softmax_matches_the_composite_path() {
    for shape in [[2, 3, 5, 5], [4, 4, 48, 48]] {
        let x = (random(&shape, 3) * 3.0).unwrap();
        same_values_and_gradients(
            &[x],
            |t| fused::softmax_last_dim(&t[0]).unwrap(),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
        );
    }
}

#[test]
fn fused_rope_matches_the_composite_path() {
    let (b, h, t, d) = (2, 3, 7, 8);
    let angles = random(&[b, t, d / 2], 4);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    let composite = |x: &Tensor| {
        let c = Tensor::cat(&[&cos, &cos], D::Minus1).unwrap().unsqueeze(1).unwrap();
        let s = Tensor::cat(&[&sin, &sin], D::Minus1).unwrap().unsqueeze(1).unwrap();
        let rotated = Tensor::cat(
            &[&x.narrow(D::Minus1, d / 2, d / 2).unwrap().neg().unwrap(), &x.narrow(D::Minus1, 0, d / 2).unwrap()],
            D::Minus1,
        )
        .unwrap();
        (x.broadcast_mul(&c).unwrap() + rotated.broadcast_mul(&s).unwrap()).unwrap()
    };
    same_values_and_gradients(
        &[random(&[b, h, t, d], 5)],
        |x| fused::rope(&x[0], &cos, &sin).unwrap(),
        |x| composite(&x[0]),
    );
}

/// The whole model: every weight's gradient through the fused kernels against the composite
/// path, on left-padded rows (the padding bias and the positions it shifts).
#[test]
fn model_gradients_through_fused_kernels_match_the_composite_path() {
    let cfg = tiny_config(17);
    let (varmap, model) = tiny_model(&cfg, 7, DType::F32);
    let (ids, mask) = padded(&[vec![1, 5, 9, 3, 2], vec![4, 8, 16]], 0, true);
    let targets = {
        let m = mask.to_dtype(DType::F32).unwrap();
        (m.narrow(1, 0, 4).unwrap() * m.narrow(1, 1, 4).unwrap()).unwrap()
    };
    let grads = |kernels: Kernels| {
        let logits = model.forward(&ids, &mask, kernels).unwrap();
        let loss = masked_mean(&next_token_logprobs(&logits, &ids).unwrap(), &targets).unwrap();
        (scalar(&loss.to_dtype(DType::F64).unwrap()), loss.backward().unwrap())
    };
    let (loss_f, grads_f) = grads(Kernels::Differentiable);
    let (loss_c, grads_c) = grads(Kernels::Composite);
    assert!((loss_f - loss_c).abs() < 1e-5, "loss {loss_f} vs {loss_c}");
    let vars = varmap.data().lock().unwrap().clone();
    assert!(vars.len() > 10);
    for (name, var) in &vars {
        let (gf, gc) = (grads_f.get(var.as_tensor()), grads_c.get(var.as_tensor()));
        let (gf, gc) = (gf.unwrap_or_else(|| panic!("{name}: no fused gradient")), gc.expect("a composite gradient"));
        let (diff, scale) = max_abs_diff(gf, gc);
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: gradients differ by {diff} (scale {scale})");
    }
}

#[test]
fn fused_token_logprobs_match_the_composite_path() {
    // 6 positions over a vocabulary of 7, then 96 over 700 (enough to go to the thread pool).
    for (b, t, v) in [(2, 3, 7), (4, 24, 700)] {
        let logits = (random(&[b, t, v], 6) * 4.0).unwrap();
        let ids: Vec<u32> = (0..b * t).map(|i| ((i * 37 + 5) % v) as u32).collect();
        let targets = Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap();
        same_values_and_gradients(
            &[logits],
            |l| fused_logprobs::token_logprobs(&l[0], &targets).unwrap(),
            |l| composite_token_logprobs(&l[0], &targets).unwrap(),
        );
    }
    // A target outside the vocabulary is an error, not a read past the row.
    let logits = random(&[1, 2, 5], 7);
    let bad = Tensor::new(&[[1u32, 5]], &Device::Cpu).unwrap();
    assert!(fused_logprobs::token_logprobs(&logits, &bad).is_err());
}

#[test]
fn fused_swiglu_matches_the_composite_path() {
    // 60 values, then 48k (enough to go to the thread pool).
    for shape in [[2, 3, 10], [4, 16, 750]] {
        let (gate, up) = ((random(&shape, 8) * 2.0).unwrap(), random(&shape, 9));
        same_values_and_gradients(
            &[gate, up],
            |t| fused_swiglu::swiglu(&t[0], &t[1]).unwrap(),
            |t| (t[0].silu().unwrap() * &t[1]).unwrap(),
        );
    }
}

/// The attention op against the composite expression it replaces (the differentiable path's own
/// softmax), grouped-query (two query heads per key/value head), with a causal and padding bias:
/// values and every gradient agree to the last bit, small and large enough for the thread pool.
#[test]
fn fused_attention_matches_the_composite_path_bit_for_bit() {
    for (b, kv_heads, group, t, d) in [(2, 2, 2, 5, 4), (4, 2, 2, 48, 16)] {
        let key_mask: Vec<Vec<bool>> = (0..b).map(|row| (0..t).map(|j| j >= row).collect()).collect();
        let bias = padding::attention_bias(&key_mask, t, &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let q = random(&[b, kv_heads, group * t, d], 11);
        let (k, v) = (random(&[b, kv_heads, t, d], 12), random(&[b, kv_heads, t, d], 13));
        let composite = |x: &[Tensor]| {
            let scores = (x[0].matmul(&x[1].t().unwrap()).unwrap() * scale).unwrap();
            let scores = scores.reshape((b, kv_heads * group, t, t)).unwrap().broadcast_add(&bias).unwrap();
            let probs = fused::softmax_last_dim(&scores).unwrap().reshape((b, kv_heads, group * t, t)).unwrap();
            probs.matmul(&x[2]).unwrap()
        };
        let fused = |x: &[Tensor]| fused_attention::attention(&x[0], &x[1], &x[2], &bias, scale).unwrap();
        same_values_and_gradients(&[q.clone(), k.clone(), v.clone()], fused, composite);
        let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
            let vars: Vec<Var> = [&q, &k, &v].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let out = f(&vars.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>());
            let grads = (&out * random(out.dims(), 98)).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![out.flatten_all().unwrap().to_vec1::<f32>().unwrap()];
            all.extend(
                vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()),
            );
            all
        };
        assert_eq!(run(&fused), run(&composite), "B {b}, T {t}: not bit for bit");
    }
    // Without anything to differentiate, the op keeps nothing and gives the same values.
    let (q, k) = (random(&[1, 1, 4, 4], 14), random(&[1, 1, 4, 4], 15));
    let bias = padding::attention_bias(&[vec![true; 4]], 4, &Device::Cpu).unwrap();
    let out = fused_attention::attention(&q, &k, &k, &bias, 0.5).unwrap();
    assert!(!out.track_op());
    assert_eq!(out.dims(), &[1, 1, 4, 4]);
    // A bias that fits no query count is an error, not a read past its end.
    let wrong = padding::attention_bias(&[vec![true; 3]], 3, &Device::Cpu).unwrap();
    assert!(fused_attention::attention(&q, &k, &k, &wrong, 0.5).is_err());
}

/// The mixed-precision attention op against the composite expression with every product's
/// operands rounded to bf16 where the op rounds them (q, k, p, v forward; ∂out, v, ∂s, k, q, p
/// backward): values and gradients agree to f32 rounding, apart from the rare probability or
/// ∂s that the sums' different order carries across a bf16 rounding boundary. Grouped-query,
/// causal with left padding (rows of 0, 5 and 40 padding keys), lengths on and off the 32-blocks
/// the op skips, and queries that are only the last of the keys (the learner's last-layer band).
#[test]
fn mixed_attention_matches_the_composite_path_on_bf16_operands() {
    if !amx::available() {
        eprintln!("mixed_attention_matches_the_composite_path_on_bf16_operands: skipped, no bf16 unit");
        return;
    }
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    for (b, kv_heads, group, tq, t, d) in [(3, 2, 2, 70, 70, 16), (2, 1, 1, 96, 96, 64), (3, 1, 3, 20, 70, 32)] {
        let key_mask: Vec<Vec<bool>> = [0, 5, 40][..b].iter().map(|&pad| (0..t).map(|j| j >= pad).collect()).collect();
        let bias = padding::attention_bias(&key_mask, tq, &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let q = Var::from_tensor(&random(&[b, kv_heads, group * tq, d], 21)).unwrap();
        let k = Var::from_tensor(&random(&[b, kv_heads, t, d], 22)).unwrap();
        let v = Var::from_tensor(&random(&[b, kv_heads, t, d], 23)).unwrap();
        let dout = random(&[b, kv_heads, group * tq, d], 24);
        let out = fused_attention::attention_mixed(&q, &k, &v, &bias, scale).unwrap();
        let grads = (&out * &dout).unwrap().sum_all().unwrap().backward().unwrap();
        let got = [&out, grads.get(&q).unwrap(), grads.get(&k).unwrap(), grads.get(&v).unwrap()];

        let (q, k, v) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let scores = (round(q).matmul(&round(k).t().unwrap()).unwrap() * scale).unwrap();
        let scores = scores.reshape((b, kv_heads * group, tq, t)).unwrap().broadcast_add(&bias).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&scores).unwrap().reshape((b, kv_heads, group * tq, t)).unwrap();
        let want_out = round(&p).matmul(&round(v)).unwrap();
        let dp = round(&dout).matmul(&round(v).t().unwrap()).unwrap();
        let dot = (&p * &dp).unwrap().sum_keepdim(D::Minus1).unwrap();
        let ds = ((&p * dp.broadcast_sub(&dot).unwrap()).unwrap() * scale).unwrap();
        let want_dq = round(&ds).matmul(&round(k)).unwrap();
        let want_dk = round(&ds).t().unwrap().matmul(&round(q)).unwrap();
        let want_dv = round(&p).t().unwrap().matmul(&round(&dout)).unwrap();
        let want = [&want_out, &want_dq, &want_dk, &want_dv];
        for ((name, got), want) in ["out", "dq", "dk", "dv"].iter().zip(got).zip(want) {
            let (got, want) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diffs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| (g - w).abs() / scale).collect();
            let worst = diffs.iter().fold(0f32, |m, &x| m.max(x));
            let close = diffs.iter().filter(|&&x| x < 1e-5).count();
            eprintln!("{name} B {b} Tq {tq} T {t}: worst {worst:e}, {close} of {} within 1e-5", diffs.len());
            assert!(worst < 1e-3, "{name}, B {b}, T {t}: off by {worst} of the largest value");
            assert!(
                close * 100 >= diffs.len() * 99,
                "{name}, B {b}, T {t}: only {close} of {} within f32 rounding",
                diffs.len()
            );
        }
    }
}
