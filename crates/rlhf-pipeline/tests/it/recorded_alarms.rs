//! The alarm replayed on the evaluation histories of real bundled runs (recorded with
//! `scripts/sweep.sh` and `rlhf run --length-bias 0.75`, default settings otherwise; the
//! `-4samples` ones under the earlier defaults of 60 steps and 4 answers per question, the
//! `-unwhitened` ones at 120 steps with advantages not whitened and the k1 KL estimator, the
//! `-k3` ones under today's defaults): with annotators who mildly like length it must fire
//! before the run ends, while the harm is happening; without a bias, or where the bias did no
//! harm (seed 1 with k3: the policy never took to padding), it must stay quiet at every
//! evaluation of every run.

use std::collections::BTreeMap;

use rlhf_pipeline::config::MonitorConfig;
use rlhf_pipeline::eval::{EvalPoint, check_alarms};
use serde::Deserialize;

#[derive(Deserialize)]
struct Trace {
    run: String,
    length_bias: f64,
    evals: Vec<Point>,
}

#[derive(Deserialize)]
struct Point {
    step: u64,
    gold_win_rate: f64,
    proxy_reward: f64,
    kl_to_sft: f64,
    mean_length: f64,
}

fn traces() -> Vec<Trace> {
    serde_json::from_str(include_str!("../data/eval_traces.json")).unwrap()
}

fn points(trace: &Trace) -> Vec<EvalPoint> {
    trace
        .evals
        .iter()
        .map(|p| EvalPoint {
            step: p.step,
            gold_win_rate: p.gold_win_rate,
            gold_win_se: 0.0,
            validation_win_rate: None,
            validation_win_se: None,
            proxy_reward: p.proxy_reward,
            kl_to_sft: p.kl_to_sft,
            mean_length: p.mean_length,
            answer_types: BTreeMap::new(),
            samples: vec![],
        })
        .collect()
}

/// The step of the first evaluation at which the alarm fires, as the run would check it.
fn first_alarm(evals: &[EvalPoint]) -> Option<(u64, Vec<String>)> {
    let monitor = MonitorConfig::default();
    (1..=evals.len()).find_map(|n| {
        let alarms = check_alarms(&monitor, &evals[..n]);
        (!alarms.is_empty()).then(|| (evals[n - 1].step, alarms))
    })
}

/// Whether the run ended with its gold win rate fallen from its best by at least what the
/// monitor calls a drop.
fn harmed(trace: &Trace) -> bool {
    let best = trace.evals.iter().map(|p| p.gold_win_rate).fold(f64::NEG_INFINITY, f64::max);
    let last = trace.evals.last().map_or(best, |p| p.gold_win_rate);
    best - last >= MonitorConfig::default().min_gold_drop
}

#[test]
fn a_mild_length_bias_raises_the_alarm_while_it_happens() {
    let biased: Vec<Trace> = traces().into_iter().filter(|t| t.length_bias > 0.0 && harmed(t)).collect();
    assert!(biased.len() >= 4, "{} harmed biased runs", biased.len());
    for trace in &biased {
        let evals = points(trace);
        let last = evals.last().unwrap().step;
        let (step, alarms) = first_alarm(&evals).unwrap_or_else(|| panic!("{}: the alarm never fired", trace.run));
        assert!(step < last, "{}: the alarm fired only at the last evaluation ({step}): {alarms:?}", trace.run);
        // The old rule (proxy up by 0.3 over three evaluations, gold not up; length above 1.5x)
        // fired only at the end of the recorded 0.75 run, if at all.
        assert!(alarms.iter().any(|a| a.contains("gold win rate fell") || a.contains("as long")), "{alarms:?}");
    }
}

#[test]
fn unbiased_runs_stay_quiet_at_every_evaluation() {
    let unbiased: Vec<Trace> = traces().into_iter().filter(|t| t.length_bias == 0.0 || !harmed(t)).collect();
    assert!(unbiased.iter().any(|t| t.length_bias > 0.0), "a biased run the bias did not harm is among them");
    for trace in &unbiased {
        if let Some((step, alarms)) = first_alarm(&points(trace)) {
            panic!("{}: alarm at step {step}: {alarms:?}", trace.run);
        }
    }
}
