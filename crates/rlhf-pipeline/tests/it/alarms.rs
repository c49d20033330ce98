//! The alarm as a function of the evaluation history.

use std::collections::BTreeMap;

use rlhf_pipeline::config::MonitorConfig;
use rlhf_pipeline::eval::{EvalPoint, check_alarms};

fn point(step: u64, win: f64, proxy: f64, kl: f64, length: f64) -> EvalPoint {
    EvalPoint {
        step,
        gold_win_rate: win,
        proxy_reward: proxy,
        kl_to_sft: kl,
        mean_length: length,
        answer_types: BTreeMap::new(),
        samples: vec![],
    }
}

fn monitor() -> MonitorConfig {
    MonitorConfig { max_length_ratio: 1.5, kl_band: [0.25, 6.0], window: 3, min_reward_rise: 0.3 }
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
fn proxy_rising_while_gold_stalls_fires() {
    let evals = vec![
        point(0, 0.5, 0.0, 0.0, 10.0),
        point(5, 0.70, 0.2, 1.0, 10.0),
        point(10, 0.70, 0.35, 1.0, 10.0),
        point(15, 0.69, 0.45, 1.0, 10.0),
        point(20, 0.68, 0.6, 1.0, 10.0),
    ];
    let alarms = check_alarms(&monitor(), &evals);
    assert!(alarms.len() == 1 && alarms[0].contains("proxy reward rose by 0.40"), "{alarms:?}");
    // The same rise with the gold win rate rising too is progress, not hacking.
    let mut healthy = evals.clone();
    healthy[4].gold_win_rate = 0.75;
    assert!(check_alarms(&monitor(), &healthy).is_empty());
}
