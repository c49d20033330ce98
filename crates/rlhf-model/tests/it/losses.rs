//! Every RLHF function against values computed by hand (the PyTorch that computes the same
//! numbers is in each test's comment).

use candle_core::{Device, Tensor};
use rlhf_model::*;

use crate::helpers::*;

#[test]
fn token_logprobs_and_entropy() {
    // logits = torch.tensor([[[1., 2., 3.], [0., 0., 0.]]]); t = torch.tensor([[2, 1]])
    // F.log_softmax(logits, -1).gather(-1, t[..., None])[..., 0]  -> [-0.40760596, -1.09861229]
    // -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1) -> [0.83239558, 1.09861229]
    let logits = Tensor::new(&[[[1f32, 2., 3.], [0., 0., 0.]]], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[[2u32, 1]], &Device::Cpu).unwrap();
    assert_close(&vec1(&token_logprobs(&logits, &targets).unwrap()), &[-0.40760596, -1.09861229], 1e-6);
    assert_close(&vec1(&entropy(&logits).unwrap()), &[0.83239558, 1.09861229], 1e-6);
}

#[test]
fn next_token_logprobs_shift_by_one() {
    // Position t's logits score token t + 1: here logits[0] = [1, 2, 3] scores ids[1] = 0.
    let logits = Tensor::new(&[[[1f32, 2., 3.], [0., 0., 0.]]], &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 0]], &Device::Cpu).unwrap();
    assert_close(&vec1(&next_token_logprobs(&logits, &ids).unwrap()), &[-2.40760596], 1e-6);
}

#[test]
fn kl_estimators() {
    // log_ratio = logp - ref = [0.5, -1.0]
    // k1 = log_ratio; k2 = log_ratio**2 / 2; k3 = (-log_ratio).exp() - 1 + log_ratio
    let logp = t1(&[-1.0, -2.0]);
    let reference = t1(&[-1.5, -1.0]);
    let kl = |e| vec1(&kl_estimate(&logp, &reference, e).unwrap());
    assert_close(&kl(KlEstimator::K1), &[0.5, -1.0], 1e-6);
    assert_close(&kl(KlEstimator::K2), &[0.125, 0.5], 1e-6);
    assert_close(&kl(KlEstimator::K3), &[0.10653066, 0.71828183], 1e-6);
}

#[test]
fn masked_statistics_and_whitening() {
    // x = [1, 2, 3, 4], mask = [1, 1, 1, 0]: mean 2, unbiased var 1, biased var 2/3.
    let x = t2(&[&[1., 2., 3., 4.]]);
    let mask = t2(&[&[1., 1., 1., 0.]]);
    assert_close(&[scalar(&masked_mean(&x, &mask).unwrap())], &[2.0], 1e-6);
    assert_close(&[scalar(&masked_var(&x, &mask, true).unwrap())], &[1.0], 1e-6);
    assert_close(&[scalar(&masked_var(&x, &mask, false).unwrap())], &[2.0 / 3.0], 1e-6);
    assert_close(&vec1(&whiten(&x, &mask, true).unwrap()), &[-1.0, 0.0, 1.0, 0.0], 1e-5);
    assert_close(&vec1(&whiten(&x, &mask, false).unwrap()), &[1.0, 2.0, 3.0, 0.0], 1e-5);
    // Per-row means, and an all-zero mask gives 0 rather than NaN.
    let rows = t2(&[&[1., 2., 3., 4.], &[5., 6., 7., 8.]]);
    let row_mask = t2(&[&[1., 1., 0., 0.], &[0., 0., 0., 0.]]);
    assert_close(&vec1(&masked_mean_rows(&rows, &row_mask).unwrap()), &[1.5, 0.0], 1e-6);
    assert_close(&[scalar(&masked_mean(&rows, &t2(&[&[0.; 4], &[0.; 4]])).unwrap())], &[0.0], 0.0);
}

#[test]
fn gae_matches_hand_computation() {
    // gamma 0.9, lambda 0.8; the masked 4th position (value 9) must not leak in.
    // t=2: d = 1 - 0.3 = 0.7, A = 0.7
    // t=1: d = 0 + 0.9*0.3 - 0.4 = -0.13, A = -0.13 + 0.72*0.7 = 0.374
    // t=0: d = 0 + 0.9*0.4 - 0.5 = -0.14, A = -0.14 + 0.72*0.374 = 0.12928
    let out = gae(&t2(&[&[0., 0., 1., 0.]]), &t2(&[&[0.5, 0.4, 0.3, 9.0]]), &t2(&[&[1., 1., 1., 0.]]), 0.9, 0.8, None)
        .unwrap();
    assert_close(&vec1(&out.advantages), &[0.12928, 0.374, 0.7, 0.0], 1e-6);
    assert_close(&vec1(&out.returns), &[0.62928, 0.774, 1.0, 0.0], 1e-6);
}

#[test]
fn gae_bootstraps_and_skips_masked_holes() {
    // Truncated row bootstrapped with V = 3 (gamma 1, lambda 0.95):
    // t=1: d = 0.2 + 3 - 2 = 1.2; t=0: d = 0.1 + 2 - 1 = 1.1, A = 1.1 + 0.95*1.2 = 2.24
    let out = gae(&t2(&[&[0.1, 0.2]]), &t2(&[&[1.0, 2.0]]), &t2(&[&[1., 1.]]), 1.0, 0.95, Some(&t1(&[3.0]))).unwrap();
    assert_close(&vec1(&out.advantages), &[2.24, 1.2], 1e-6);
    assert_close(&vec1(&out.returns), &[3.24, 3.2], 1e-6);
    // A masked position in the middle is skipped: t=0's next position is t=2.
    // t=2: A = 2 - 0.25 = 1.75; t=0: d = 1 + 0.5*0.25 - 0.5 = 0.625, A = 0.625 + 0.5*1.75 = 1.5
    let out = gae(&t2(&[&[1., 5., 2.]]), &t2(&[&[0.5, 7., 0.25]]), &t2(&[&[1., 0., 1.]]), 0.5, 1.0, None).unwrap();
    assert_close(&vec1(&out.advantages), &[1.5, 0.0, 1.75], 1e-6);
}

#[test]
fn ppo_policy_loss_clips() {
    // ratio = exp(logp - old) = [e^0.2, e^0.5, e^-1, (masked)]; all three real tokens are clipped:
    // losses = [-1.2*1, -1.2*2, -(0.8*-1.5)] = [-1.2, -2.4, 1.2]; mean = -0.8
    // approx_kl = 0.5 * mean([0.04, 0.25, 1.0]) = 0.215
    let out = policy_loss(
        &t2(&[&[-1.0, -0.5, -2.0, -0.3]]),
        &t2(&[&[-1.2, -1.0, -1.0, -0.35]]),
        &t2(&[&[1.0, 2.0, -1.5, -0.5]]),
        &t2(&[&[1., 1., 1., 0.]]),
        PolicyClip::default(),
    )
    .unwrap();
    assert_close(&[scalar(&out.loss)], &[-0.8], 1e-6);
    assert_close(&[out.clip_fraction as f64, out.approx_kl as f64], &[1.0, 0.215], 1e-6);
}

#[test]
fn ppo_dual_clip_bounds_negative_advantages() {
    // Token 0: ratio e^2 = 7.389, A = -1: the plain loss is 7.389, dual clip c = 3 caps it at 3.
    // Token 1: ratio e^0.1 (inside the clip range), A = 2: loss -2.21034184.
    let args = (t2(&[&[-1.0, -0.2]]), t2(&[&[-3.0, -0.3]]), t2(&[&[-1.0, 2.0]]), t2(&[&[1., 1.]]));
    let plain = policy_loss(&args.0, &args.1, &args.2, &args.3, PolicyClip::default()).unwrap();
    let dual =
        policy_loss(&args.0, &args.1, &args.2, &args.3, PolicyClip { dual: Some(3.0), ..Default::default() }).unwrap();
    assert_close(&[scalar(&plain.loss)], &[2.58935713], 1e-5);
    assert_close(&[scalar(&dual.loss)], &[0.39482908], 1e-5);
    assert_close(&[dual.clip_fraction as f64, dual.approx_kl as f64], &[0.0, 1.0025], 1e-6);
}

#[test]
fn value_loss_clips_around_old_values() {
    // V = [1, 2], V_old = [0.5, 2.1], R = [2, 1], clip 0.2:
    // token 0: unclipped (1-2)^2 = 1, clipped V = 0.5 + 0.2 = 0.7 -> 1.69, the active term;
    // token 1: unclipped 1, clipped V = 2.1 - 0.1 = 2.0 -> 1, not larger; the 3rd token is masked.
    // loss = 0.5 * mean([1.69, 1]) = 0.6725, clip fraction 1/2.
    let (v, old, ret, mask) =
        (t2(&[&[1.0, 2.0, 0.0]]), t2(&[&[0.5, 2.1, 0.0]]), t2(&[&[2.0, 1.0, 5.0]]), t2(&[&[1., 1., 0.]]));
    let clipped = value_loss(&v, &old, &ret, &mask, Some(0.2)).unwrap();
    assert_close(&[scalar(&clipped.loss), clipped.clip_fraction as f64], &[0.6725, 0.5], 1e-6);
    let plain = value_loss(&v, &old, &ret, &mask, None).unwrap();
    assert_close(&[scalar(&plain.loss)], &[0.5], 1e-6);
}

#[test]
fn kl_penalised_rewards_put_the_score_on_the_last_response_token() {
    // Row 0 finished with score 2; row 1 never stopped: 5 - penalty 1 = 4, clipped to 3.
    // Row 1's response is padded on the left, so its last token is the last column.
    // k1 KL = logp - ref, beta = 0.1, masked.
    let logp = t2(&[&[-1.0, -2.0, -0.5], &[-1.0, -1.0, -1.0]]);
    let reference = t2(&[&[-1.5, -1.0, -9.0], &[-2.0, -1.0, -0.5]]);
    let mask = t2(&[&[1., 1., 0.], &[0., 1., 1.]]);
    let shaping = RewardShaping {
        kl_coef: 0.1,
        estimator: KlEstimator::K1,
        score_clip: Some(3.0),
        missing_stop_penalty: Some(1.0),
    };
    let out = kl_penalized_rewards(&t1(&[2.0, 5.0]), &logp, &reference, &mask, &[true, false], shaping).unwrap();
    assert_close(&vec1(&out.kl), &[0.5, -1.0, 0.0, 0.0, 0.0, -0.5], 1e-6);
    assert_close(&vec1(&out.rewards), &[-0.05, 2.1, 0.0, 0.0, 0.0, 3.05], 1e-6);
    let nan = kl_penalized_rewards(&t1(&[f64::NAN, 0.0]), &logp, &reference, &mask, &[true, true], shaping);
    assert!(nan.unwrap_err().to_string().contains("non-finite"));
}

#[test]
fn bradley_terry_loss_with_and_without_margin() {
    // -F.logsigmoid(torch.tensor([1., -1.])).mean() = 0.81326169
    // -F.logsigmoid(torch.tensor([1., -1.]) - 0.5).mean() = 1.08774513
    let (chosen, rejected) = (t1(&[1.0, 0.0]), t1(&[0.0, 1.0]));
    assert_close(&[scalar(&bradley_terry_loss(&chosen, &rejected, None).unwrap())], &[0.81326169], 1e-6);
    let margin = t1(&[0.5, 0.5]);
    assert_close(&[scalar(&bradley_terry_loss(&chosen, &rejected, Some(&margin)).unwrap())], &[1.08774513], 1e-6);
    // Stable far into the tails, where a naive log(sigmoid(x)) gives -inf.
    assert_close(&vec1(&log_sigmoid(&t1(&[-100.0, 100.0])).unwrap()), &[-100.0, 0.0], 1e-4);
}

#[test]
fn ranking_loss_weighs_each_prompt_equally() {
    // rewards = [3, 1, 2]; ranking A = [0, 2, 1] has pairs (0,2), (0,1), (2,1) with margins 1, 2, 1;
    // ranking B = [1, 0] has one pair with margin -2.
    // loss = mean([-(ls(1) + ls(2) + ls(1)) / 3, -ls(-2)]) = 1.18903924
    let rewards = t1(&[3.0, 1.0, 2.0]);
    let loss = ranking_loss(&rewards, &[vec![0, 2, 1], vec![1, 0]]).unwrap();
    assert_close(&[scalar(&loss)], &[1.18903924], 1e-6);
    // With K = 2 it is exactly Bradley–Terry.
    let pair = ranking_loss(&t1(&[1.0, 0.0]), &[vec![0, 1]]).unwrap();
    assert_close(&[scalar(&pair)], &[0.31326169], 1e-6);
    assert_eq!(ranking_pairs(&[2, 0, 1]), vec![(2, 0), (2, 1), (0, 1)]);
    assert_eq!(pairwise_accuracy(&[3.0, 1.0, 2.0], &[vec![0, 2, 1], vec![1, 0]]), 0.75);
}

#[test]
fn invalid_rankings_are_refused() {
    assert_eq!(validate_ranking(&[0], 3), Err(RankingError::TooFew(1)));
    assert_eq!(validate_ranking(&[0, 0, 1], 3), Err(RankingError::Duplicate(0)));
    assert_eq!(validate_ranking(&[0, 3], 3), Err(RankingError::OutOfRange { index: 3, len: 3 }));
    assert_eq!(validate_ranking(&[2, 0, 1], 3), Ok(()));
    assert!(ranking_loss(&t1(&[1.0, 2.0]), &[vec![0, 0]]).is_err());
}

#[test]
fn kl_controllers() {
    let mut fixed = KlController::Fixed { coef: 0.05 };
    fixed.update(100.0, 256);
    assert_eq!(fixed.coef(), 0.05);
    // Legacy TRL defaults: init 0.2, target 6, horizon 10000; the error is clipped to ±0.2.
    let adaptive = KlController::Adaptive { coef: 0.2, target: 6.0, horizon: 10_000.0 };
    let (mut high, mut low, mut near) = (adaptive.clone(), adaptive.clone(), adaptive);
    high.update(12.0, 256);
    low.update(3.0, 256);
    near.update(6.3, 256);
    assert_close(&[high.coef(), low.coef(), near.coef()], &[0.201024, 0.198976, 0.2 * (1.0 + 0.05 * 0.0256)], 1e-12);
    let parsed: KlController =
        serde_json::from_str(r#"{"kind":"adaptive","coef":0.1,"target":6,"horizon":10000}"#).unwrap();
    assert_eq!(parsed.coef(), 0.1);
}
