//! `summary.json` (the figures people check) and `report.html` (the plots people look at).

use serde::Serialize;
use serde_json::Value;

use crate::Result;
use crate::run_dir::RunDir;

mod svg;

use svg::Guide;

/// The headline figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rm_heldout_accuracy: Option<f64>,
    pub rm_noise_ceiling: Option<f64>,
    pub rm_accuracy_vs_ceiling: Option<f64>,
    /// The chosen policy's (see `ppo_selected_step`).
    pub gold_win_rate_vs_sft: Option<f64>,
    /// The step PPO's result was chosen at, by the validation win rate.
    pub ppo_selected_step: Option<u64>,
    /// The policy after the last step, for comparison with the chosen one.
    pub gold_win_rate_last_step: Option<f64>,
    pub kl_to_sft: Option<f64>,
    pub kl_band: [f64; 2],
    pub kl_within_band: Option<bool>,
    pub hacking_alarm: bool,
    pub alarms: Vec<String>,
    pub answer_types_sft: Option<std::collections::BTreeMap<String, f64>>,
    pub answer_types_ppo: Option<std::collections::BTreeMap<String, f64>>,
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
}

pub fn summary(run: &RunDir) -> Result<Summary> {
    let config = run.config()?;
    let state = run.state()?;
    let rm = state.reward_model.as_ref();
    let ppo = state.ppo.as_ref();
    let mut stage_seconds = std::collections::BTreeMap::new();
    if let Some(s) = &state.sft {
        stage_seconds.insert("sft".into(), s.seconds);
    }
    if let Some(s) = &state.collect {
        stage_seconds.insert("collect".into(), s.seconds);
    }
    if let Some(s) = rm {
        stage_seconds.insert("rm".into(), s.seconds);
    }
    if let Some(s) = ppo {
        stage_seconds.insert("ppo".into(), s.seconds);
    }
    let band = config.monitor.kl_band;
    Ok(Summary {
        rm_heldout_accuracy: rm.map(|r| r.heldout_accuracy),
        rm_noise_ceiling: rm.and_then(|r| r.noise_ceiling),
        rm_accuracy_vs_ceiling: rm.and_then(|r| Some(r.heldout_accuracy / r.noise_ceiling?)),
        gold_win_rate_vs_sft: ppo.map(|p| p.final_eval.gold_win_rate),
        ppo_selected_step: ppo.and_then(|p| p.selected_step),
        gold_win_rate_last_step: ppo.and_then(|p| Some(p.last_eval.as_ref()?.gold_win_rate)),
        kl_to_sft: ppo.map(|p| p.kl_to_sft),
        kl_band: band,
        kl_within_band: ppo.map(|p| p.kl_to_sft >= band[0] && p.kl_to_sft <= band[1]),
        hacking_alarm: ppo.is_some_and(|p| !p.alarms.is_empty())
            || state.ppo_progress.as_ref().is_some_and(|p| !p.alarms.is_empty()),
        alarms: ppo.map(|p| p.alarms.clone()).unwrap_or_default(),
        answer_types_sft: ppo.map(|p| p.baseline_eval.answer_types.clone()),
        answer_types_ppo: ppo.map(|p| p.final_eval.answer_types.clone()),
        stage_seconds,
    })
}

/// Writes `summary.json` and `report.html` for whatever stages have finished.
pub fn write(run: &RunDir) -> Result<()> {
    let summary = summary(run)?;
    run.write_json("summary.json", &summary)?;
    let html = html(run, &summary)?;
    std::fs::write(run.path("report.html"), html).map_err(|e| crate::Error::Io(e.to_string()))
}

/// The gold win rate the bundled run is held to (issue bar; 0.80 is the goal for its median).
const WIN_RATE_BAR: f64 = 0.75;

/// The summary's terms in plain words, with a comment where a figure needs one.
fn terms(summary: &Summary) -> String {
    let mut out = String::from(
        "<p><small><b>Noise ceiling</b>: how often the simulated annotators' own choices agree with the hidden \
         gold preference on held-out pairs. A reward model that learned the annotators exactly would agree \
         with gold that often; one that averages away their noise can do better. <b>Gold win rate</b>: how \
         often the PPO policy's answer beats the SFT model's on held-out questions under the gold preference \
         (ties count half; 0.5 means no better). The policy reported is the one chosen among PPO's \
         evaluations by the same win rate on separate validation questions; the held-out questions never \
         choose. <b>KL to SFT</b>: how far the policy's answers have moved \
         from the SFT model's, in nats per answer.</small></p>",
    );
    if let Some(ratio) = summary.rm_accuracy_vs_ceiling.filter(|r| *r > 1.0) {
        out.push_str(&format!(
            "<p>The reward model agrees with the gold preference more often than the annotators do \
             (accuracy / ceiling = {ratio:.3}): it learned their consensus, which is less noisy than any one \
             of them. With biased annotators, check the answer types as well: the reward model may have \
             learned the bias.</p>"
        ));
    }
    out
}

/// The reward model's held-out accuracy by kind of answer pair: which distinctions it learnt.
fn gold_pairs_table(pairs: &[crate::gold_pairs::GoldPairAccuracy]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<p>Held-out answer pairs of different kinds, and how often the reward model orders them as the hidden \
         gold preference does (0.5 is a coin): a kind it cannot tell apart is one PPO cannot improve.</p>\
         <table><tr><th>better</th><th>worse</th><th>pairs</th><th>reward model agrees</th></tr>",
    );
    for p in pairs {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
            p.better.name(),
            p.worse.name(),
            p.pairs,
            p.accuracy
        ));
    }
    out.push_str("</table>");
    out
}

fn series(metrics: &[Value], stage: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    metrics.iter().filter(|m| m["stage"] == stage).filter_map(|m| Some((m[x].as_f64()?, m[y].as_f64()?))).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn html(run: &RunDir, summary: &Summary) -> Result<String> {
    let metrics = run.metrics()?;
    let state = run.state()?;
    let config = run.config()?;
    let mut body = String::new();
    body.push_str("<h1>RLHF run report</h1>");
    body.push_str(&format!("<p>Run directory: <code>{}</code></p>", escape(&run.root().display().to_string())));
    let fmt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
    body.push_str("<h2>Summary</h2><table>");
    for (k, v) in [
        ("reward-model held-out accuracy", fmt(summary.rm_heldout_accuracy)),
        ("annotator noise ceiling", fmt(summary.rm_noise_ceiling)),
        ("accuracy / ceiling", fmt(summary.rm_accuracy_vs_ceiling)),
        ("gold win rate of PPO vs SFT", fmt(summary.gold_win_rate_vs_sft)),
        (
            "chosen at step (latest within one s.e. of the best validation win rate)",
            summary.ppo_selected_step.map_or("—".into(), |s| s.to_string()),
        ),
        ("gold win rate after the last step", fmt(summary.gold_win_rate_last_step)),
        ("KL to SFT (nats / sequence)", fmt(summary.kl_to_sft)),
        ("KL band", format!("[{}, {}]", summary.kl_band[0], summary.kl_band[1])),
        ("reward-hacking alarm", if summary.hacking_alarm { "FIRED".into() } else { "quiet".into() }),
    ] {
        body.push_str(&format!("<tr><th>{k}</th><td>{v}</td></tr>"));
    }
    for (stage, secs) in &summary.stage_seconds {
        body.push_str(&format!("<tr><th>{stage} wall time</th><td>{secs:.1} s</td></tr>"));
    }
    body.push_str("</table>");
    body.push_str(&terms(summary));
    for alarm in &summary.alarms {
        body.push_str(&format!("<p class=alarm>⚠ {}</p>", escape(alarm)));
    }
    let settings = serde_json::to_string_pretty(&config).map_err(|e| crate::Error::Io(e.to_string()))?;
    body.push_str(&format!(
        "<details><summary>Settings of this run</summary><pre>{}</pre></details>",
        escape(&settings)
    ));

    body.push_str("<h2>Training losses</h2><div class=row>");
    body.push_str(&svg::line_chart("SFT loss", "step", &[("loss", series(&metrics, "sft", "step", "loss"))], None));
    body.push_str(&svg::line_chart(
        "Reward-model loss",
        "step",
        &[("loss", series(&metrics, "rm", "step", "loss"))],
        None,
    ));
    body.push_str("</div>");
    if let Some(rm) = &state.reward_model {
        let mut bars = vec![("train".into(), rm.train_accuracy), ("held-out".into(), rm.heldout_accuracy)];
        bars.extend(rm.noise_ceiling.map(|c| ("noise ceiling".into(), c)));
        body.push_str(&svg::bar_chart("Reward-model pairwise accuracy", &bars, 1.0));
        body.push_str(&gold_pairs_table(&rm.gold_pairs));
        if let Some(best) = &rm.best_of_k {
            body.push_str(&format!(
                "<p>Best of K: the answer the reward model picks from each held-out prompt's {:.1} wins against one \
                 of them at random {:.2} of the time under the gold preference (0.5 is chance; the gold preference's \
                 own pick: {:.2}). PPO moves the policy toward the reward model's picks, so this is about the win rate \
                 it can hope for.</p>",
                best.k, best.by_reward_model, best.by_gold
            ));
        }
        if rm.imported_rankings > 0 || rm.dropped_too_long > 0 {
            body.push_str(&format!(
                "<p>{} rankings came from imported files (no gold preference: no noise ceiling for them); \
                 {} rankings were left out because they did not fit the model's context.</p>",
                rm.imported_rankings, rm.dropped_too_long
            ));
        }
        if !rm.excluded.is_empty() {
            let who: Vec<String> = rm
                .excluded
                .iter()
                .map(|e| {
                    let rate = e.gold.rate().unwrap_or(0.0);
                    format!(
                        "{} ({} rankings; gold agreement {rate:.2} over {} pairs)",
                        escape(&e.annotator),
                        e.rankings,
                        e.gold.pairs
                    )
                })
                .collect();
            body.push_str(&format!(
                "<p>{} rankings were left out of training: their annotators agreed with the gold tasks on less than \
                 {:.2} of response pairs (<code>reward_model.min_gold_agreement</code>): {}.</p>",
                rm.excluded_rankings,
                config.reward_model.min_gold_agreement,
                who.join(", ")
            ));
        }
    }
    if let Some(human) = state.collect.as_ref().and_then(|c| c.human.as_ref()) {
        body.push_str(&format!(
            "<p>People ranked the responses: {} tasks ({} gold), {} rankings still missing when collection ended, \
             {} tasks flagged as unsafe.</p>",
            human.tasks, human.gold_tasks, human.missing_rankings, human.flagged
        ));
    }
    body.push_str("<h2>PPO</h2><div class=row>");
    body.push_str(&svg::line_chart(
        "Proxy reward (normalised RM score)",
        "step",
        &[
            ("train", series(&metrics, "ppo", "step", "reward")),
            ("held-out", series(&metrics, "eval", "step", "proxy_reward")),
        ],
        None,
    ));
    body.push_str(&svg::line_chart_with_guides(
        "Gold win rate vs SFT",
        "step",
        &[
            ("held-out", series(&metrics, "eval", "step", "gold_win_rate")),
            ("validation (chooses)", series(&metrics, "eval", "step", "validation_win_rate")),
        ],
        Some((0.0, 1.0)),
        &[Guide { label: "bar 0.75", y: WIN_RATE_BAR }, Guide { label: "no better 0.5", y: 0.5 }],
    ));
    let [low, high] = config.monitor.kl_band;
    let (band_low, band_high) = (format!("band {low}"), format!("band {high}"));
    body.push_str(&svg::line_chart_with_guides(
        "KL to SFT (nats / sequence)",
        "step",
        &[("kl", series(&metrics, "ppo", "step", "kl"))],
        None,
        &[Guide { label: &band_low, y: low }, Guide { label: &band_high, y: high }],
    ));
    let held_out_lengths = series(&metrics, "eval", "step", "mean_length");
    let length_bound = held_out_lengths.first().map_or(f64::NAN, |(_, l)| l * config.monitor.max_length_ratio);
    let bound_label = format!("alarm {}× SFT", config.monitor.max_length_ratio);
    body.push_str(&svg::line_chart_with_guides(
        "Response length (tokens)",
        "step",
        &[("train", series(&metrics, "ppo", "step", "response_length")), ("held-out", held_out_lengths)],
        None,
        &[Guide { label: &bound_label, y: length_bound }],
    ));
    body.push_str(&svg::line_chart(
        "Policy entropy (nats / token)",
        "step",
        &[("entropy", series(&metrics, "ppo", "step", "entropy"))],
        None,
    ));
    body.push_str(&svg::line_chart(
        "Clip fraction and approx. KL per PPO step",
        "step",
        &[
            ("clip fraction", series(&metrics, "ppo", "step", "clip_fraction")),
            ("approx KL", series(&metrics, "ppo", "step", "approx_kl")),
        ],
        None,
    ));
    let types: Vec<(&str, Vec<(f64, f64)>)> = ["correct", "verbose", "refusal", "wrong", "off_topic"]
        .iter()
        .map(|t| {
            let points = metrics
                .iter()
                .filter(|m| m["stage"] == "eval")
                .filter_map(|m| Some((m["step"].as_f64()?, m["answer_types"][*t].as_f64()?)))
                .collect();
            (*t, points)
        })
        .collect();
    body.push_str(&svg::line_chart("Answer types on held-out prompts", "step", &types, Some((0.0, 1.0))));
    body.push_str(&svg::line_chart(
        "Value loss",
        "step",
        &[("value loss", series(&metrics, "ppo", "step", "value_loss"))],
        None,
    ));
    body.push_str("</div>");
    if let Some(ppo) = &state.ppo {
        body.push_str("<h2>Answer types on held-out prompts</h2>");
        let groups: Vec<(String, Vec<(String, f64)>)> = ppo
            .baseline_eval
            .answer_types
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    vec![
                        ("SFT".into(), ppo.baseline_eval.answer_types[k]),
                        ("PPO".into(), ppo.final_eval.answer_types[k]),
                    ],
                )
            })
            .collect();
        body.push_str(&svg::grouped_bars("Share of responses", &groups));
        body.push_str("<h2>Sample responses (held-out)</h2><table><tr><th>prompt</th><th>SFT</th><th>PPO</th></tr>");
        for (a, b) in ppo.baseline_eval.samples.iter().zip(&ppo.final_eval.samples) {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{} <small>({})</small></td><td>{} <small>({})</small></td></tr>",
                escape(&a.prompt),
                escape(&a.response),
                a.answer_type,
                escape(&b.response),
                b.answer_type
            ));
        }
        body.push_str("</table>");
    }
    Ok(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>RLHF report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
.row{{display:flex;flex-wrap:wrap;gap:12px}}.alarm{{color:#b00;font-weight:bold}}svg{{background:#fff;border:1px solid #ddd}}
</style></head><body>{body}</body></html>"
    ))
}
