//! Fuzzing of the pipeline's config file: the default config with one or two settings replaced
//! by hostile values (zero, negative, huge, the wrong type). Loading either refuses it with an
//! error that names the setting, or accepts a config every stage can run with: the invariants
//! below are restated here, independently of `validate`.
//!
//! `PROPTEST_CASES` sets how many configs are tried (256 in `make test`); failing inputs are kept
//! in `tests/it/fuzz.proptest-regressions` and tried first from then on.

use proptest::prelude::*;
use rlhf_pipeline::PipelineConfig;
use serde_json::{Value, json};

/// Every leaf of `v` as a JSON pointer.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => map.iter().for_each(|(k, v)| leaves(v, format!("{at}/{k}"), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| leaves(v, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

fn hostile() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(-0.5)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        Just(json!(u64::MAX)),
        Just(json!(7)),
        Just(json!(null)),
        Just(json!("x")),
        Just(json!(true)),
        Just(json!([])),
    ]
}

/// What a config that loads must satisfy for every stage to run.
fn runnable(c: &PipelineConfig) -> Result<(), String> {
    let a = &c.ppo.algorithm;
    let m = &c.model;
    let checks: [(bool, &str); 12] = [
        (m.hidden_size > 0 && m.num_attention_heads > 0 && m.num_key_value_heads > 0, "model sizes"),
        (
            m.hidden_size.is_multiple_of(m.num_attention_heads)
                && m.num_attention_heads.is_multiple_of(m.num_key_value_heads),
            "heads",
        ),
        (m.num_hidden_layers > 0 && m.intermediate_size > 0, "layers"),
        (c.collect.k >= 2 && c.collect.annotators > 0 && c.world.sft_responses_per_prompt > 0, "collection counts"),
        (c.collect.temperature > 0.0 && c.collect.annotator_temperature > 0.0, "collection temperatures"),
        (a.temperature > 0.0 && a.learning_rate > 0.0 && a.clip > 0.0, "ppo temperature, rate, clip"),
        ((0.0..=1.0).contains(&a.gamma) && (0.0..=1.0).contains(&a.lambda), "gamma, lambda"),
        (a.epochs > 0 && a.minibatch_size > 0 && c.ppo.prompts_per_step > 0 && c.ppo.max_new_tokens > 0, "ppo sizes"),
        (a.kl.coef() >= 0.0 && a.max_grad_norm.is_none_or(|g| g > 0.0), "kl, grad norm"),
        (c.sft.batch_size > 0 && c.reward_model.batch_rankings > 0, "batch sizes"),
        (c.ppo.top_p > 0.0 && c.ppo.top_p <= 1.0 && c.collect.top_p > 0.0 && c.collect.top_p <= 1.0, "top_p"),
        (c.monitor.window > 0 && c.monitor.kl_band[0] <= c.monitor.kl_band[1], "monitor"),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(format!("accepted a config that cannot run: {what}")),
        None => Ok(()),
    }
}

/// Whether `said` names the setting at JSON pointer `path`, or a section of two or more levels
/// around it.
fn names(said: &str, path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && s.parse::<usize>().is_err()).collect();
    let shortest = segments.len().min(2);
    (shortest..=segments.len()).rev().any(|n| n > 0 && said.contains(&segments[..n].join(".")))
}

proptest! {
    #![proptest_config(rlhf_harness::fuzzing("tests/it/fuzz.proptest-regressions"))]

    #[test]
    fn a_config_with_hostile_settings_is_refused_by_name_or_runnable(
        picks in prop::collection::vec((any::<prop::sample::Index>(), hostile()), 1..3)
    ) {
        let mut value = serde_json::to_value(PipelineConfig::default()).unwrap();
        let mut paths = vec![];
        leaves(&value, String::new(), &mut paths);
        let mut changed = vec![];
        for (index, hostile) in &picks {
            let path = index.get(&paths).clone();
            *value.pointer_mut(&path).unwrap() = hostile.clone();
            changed.push(path);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, serde_json::to_string(&value).unwrap()).unwrap();
        match PipelineConfig::load(&file) {
            Ok(config) => prop_assert!(runnable(&config).is_ok(), "{changed:?}: {:?}", runnable(&config)),
            Err(e) => {
                // The error names a setting that was changed, or the section it belongs to
                // (`world.style_mix` for `world.style_mix.concise`).
                let said = e.to_string();
                prop_assert!(changed.iter().any(|p| names(&said, p)), "{changed:?}: {said}");
            }
        }
    }
}
