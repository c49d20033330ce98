//! The alarm as a function of the evaluation history.

use std::collections::BTreeMap;

use rlhf_pipeline::config::MonitorConfig;
use rlhf_pipeline::eval::{EvalPoint, check_alarms, final_alarms};
use rlhf_pipeline::ppo::selected;

fn point(step: u64, win: f64, proxy: f64, kl: f64, length: f64) -> EvalPoint {
    EvalPoint {
        step,
        gold_win_rate: win,
        gold_win_se: 0.0,
        validation_win_rate: None,
        validation_win_se: None,
        proxy_reward: proxy,
        kl_to_sft: kl,
        mean_length: length,
        answer_types: BTreeMap::new(),
        samples: vec![],
    }
}

fn monitor() -> MonitorConfig {
    MonitorConfig { max_length_ratio: 1.5, kl_band: [0.25, 6.0], window: 3, min_reward_rise: 0.08, min_gold_drop: 0.03 }
}

#[test]
fn a_healthy_run_is_quiet() {
    let evals = vec![
        point(0, 0.5, -0.1, 0.0, 10.0),
        point(5, 0.7, 0.4, 0.8, 7.5),
        point(10, 0.75, 0.5, 1.0, 7.2),
        point(15, 0.78, 0.55, 1.2, 7.0),
        point(20, 0.79, 0.6, 1.3, 7.1),
    ];
    assert!(check_alarms(&monitor(), &evals).is_empty());
}

#[test]
fn length_drift_fires() {
    let evals = vec![point(0, 0.5, 0.0, 0.0, 10.0), point(5, 0.6, 0.5, 1.0, 15.5)];
    let alarms = check_alarms(&monitor(), &evals);
    assert_eq!(alarms.len(), 1);
    assert!(alarms[0].contains("1.55x as long"), "{alarms:?}");
}

#[test]
fn kl_above_the_band_fires() {
    let evals = vec![point(0, 0.5, 0.0, 0.0, 10.0), point(5, 0.6, 0.5, 6.5, 10.0)];
    let alarms = check_alarms(&monitor(), &evals);
    assert!(alarms.len() == 1 && alarms[0].contains("KL"), "{alarms:?}");
}

#[test]
fn proxy_rising_while_gold_falls_from_its_best_fires() {
    let evals = vec![
        point(0, 0.5, 0.0, 0.0, 10.0),
        point(5, 0.70, 0.2, 1.0, 10.0),
        point(10, 0.72, 0.35, 1.0, 10.0),
        point(15, 0.70, 0.40, 1.0, 10.0),
        point(20, 0.68, 0.45, 1.0, 10.0),
    ];
    let alarms = check_alarms(&monitor(), &evals);
    assert!(alarms.len() == 1 && alarms[0].contains("proxy reward rose by 0.10 since step 10"), "{alarms:?}");
    // Gold and proxy falling together is a noisy evaluation or a worse policy, not hacking.
    let mut together = evals.clone();
    together[4].proxy_reward = 0.3;
    assert!(check_alarms(&monitor(), &together).is_empty());
    // A gold win rate that saturates while the proxy climbs is not an alarm either.
    let mut saturated = evals.clone();
    saturated[4].gold_win_rate = 0.71;
    assert!(check_alarms(&monitor(), &saturated).is_empty());
    // A best outside the window is forgotten (inside it, its proxy of 0.5 would silence the alarm).
    let mut old_best = evals.clone();
    old_best.insert(1, point(2, 0.9, 0.5, 1.0, 10.0));
    old_best.insert(2, point(3, 0.6, 0.0, 1.0, 10.0));
    assert_eq!(check_alarms(&monitor(), &old_best).len(), 1);
    assert!(check_alarms(&monitor(), &evals[..2]).is_empty());
}

#[test]
fn ending_below_the_kl_band_or_on_the_sft_policy_fires() {
    assert!(final_alarms(&monitor(), &point(60, 0.7, 0.5, 1.0, 10.0)).is_empty());
    let low = final_alarms(&monitor(), &point(60, 0.55, 0.1, 0.1, 10.0));
    assert!(low.len() == 1 && low[0].contains("below the band's 0.25"), "{low:?}");
    let sft = final_alarms(&monitor(), &point(0, 0.5, 0.0, 0.0, 10.0));
    assert!(sft.len() == 1 && sft[0].contains("SFT policy"), "{sft:?}");
}

#[test]
fn the_chosen_evaluation_is_the_latest_within_a_standard_error_of_the_best_on_validation_inside_the_kl_band() {
    let band = monitor().kl_band;
    let with = |win: f64, validation: Option<f64>, kl: f64| EvalPoint {
        validation_win_rate: validation,
        ..point(0, win, 0.0, kl, 1.0)
    };
    // The held-out win rate never chooses.
    let evals = vec![
        with(0.5, Some(0.5), 0.0),
        with(0.9, Some(0.7), 1.0),
        with(0.6, Some(0.8), 2.0),
        with(0.95, Some(0.8), 3.0),
    ];
    assert_eq!(selected(&evals, band), 3, "the latest of equals");
    // One standard error below the best still counts; further below does not.
    let with_se =
        |validation: f64, se: f64| EvalPoint { validation_win_se: Some(se), ..with(0.7, Some(validation), 1.0) };
    let plateau = vec![with_se(0.5, 0.05), with_se(0.81, 0.02), with_se(0.80, 0.02), with_se(0.79, 0.03)];
    assert_eq!(selected(&plateau, band), 3, "0.79 is within 0.02 of 0.81");
    let sagging = vec![with_se(0.5, 0.05), with_se(0.81, 0.02), with_se(0.80, 0.02), with_se(0.78, 0.01)];
    assert_eq!(selected(&sagging, band), 2, "0.78 is more than the best's 0.02 below it");
    let peak_then_sag = vec![with_se(0.5, 0.05), with_se(0.70, 0.02), with_se(0.81, 0.01), with_se(0.75, 0.02)];
    assert_eq!(selected(&peak_then_sag, band), 2);
    // A checkpoint below the band (PPO barely moved it) or above it is passed over while one
    // inside it exists: the SFT model's own 0.5 too.
    let evals = vec![
        with(0.5, Some(0.5), 0.0),
        with(0.53, Some(0.62), 0.1),
        with(0.55, Some(0.5), 0.6),
        with(0.56, Some(0.54), 1.1),
        with(0.4, Some(0.9), 7.0),
    ];
    assert_eq!(selected(&evals, band), 3);
    // With none inside it, the best of all.
    let evals = vec![with(0.5, Some(0.5), 0.0), with(0.53, Some(0.62), 0.1), with(0.55, Some(0.4), 0.2)];
    assert_eq!(selected(&evals, band), 1);
    // Without validation prompts the run ends where it ends.
    let evals = vec![with(0.5, None, 0.0), with(0.9, None, 1.0), with(0.6, None, 1.0)];
    assert_eq!(selected(&evals, band), 2);
    assert_eq!(selected(&[], band), 0);
}
