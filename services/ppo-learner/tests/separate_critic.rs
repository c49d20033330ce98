//! `critic: separate`: a value model of its own beside the policy, as TRL trains it. It starts as
//! a copy of the policy's backbone, the value loss trains it (and only it), the generators never
//! see it, and a resumed learner gets it back as it was.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use ppo_learner::{Critic, PpoConfig, PpoLearner};
use rlhf_model::Config;
use rlhf_types::{Rollout, ScoredRollout};

fn weights() -> (Config, HashMap<String, Tensor>) {
    common::tiny_policy(5)
}

fn batch(tag: &str) -> Vec<ScoredRollout> {
    (0..4u32)
        .map(|i| {
            let response: Vec<u32> = (0..3 + i % 2).map(|t| 4 + (t * 3 + i) % 19).collect();
            let n = response.len();
            ScoredRollout {
                rollout: Rollout {
                    rollout_id: format!("{tag}{i}").into(),
                    prompt_id: format!("p{i}"),
                    prompt_tokens: vec![1, 2 + i],
                    response_tokens: response,
                    behaviour_logprobs: vec![-3.0; n],
                    policy_version: 0,
                    finished: true,
                    generator_id: "g".into(),
                },
                score: i as f32 - 1.5,
                reference_logprobs: vec![-3.1; n],
                judges_version: 0,
            }
        })
        .collect()
}

fn snapshot(learner: &PpoLearner) -> HashMap<String, Vec<f32>> {
    let data = learner.varmap().data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())).collect()
}

fn moved(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).any(|(x, y)| x != y)
}

fn separate(value_coef: f64) -> PpoConfig {
    PpoConfig { critic: Critic::Separate, value_coef, minibatch_size: 4, epochs: 2, ..PpoConfig::default() }
}

#[test]
fn a_separate_critic_starts_as_the_policy_and_only_the_value_loss_trains_it() {
    let (cfg, tensors) = weights();
    let mut learner = PpoLearner::new(&Device::Cpu, separate(0.5), cfg.clone(), tensors.clone(), 0, 0, 9).unwrap();
    let before = snapshot(&learner);
    let critic_names: Vec<&String> = before.keys().filter(|n| n.starts_with("critic.")).collect();
    assert_eq!(critic_names.len(), tensors.keys().filter(|n| n.starts_with("model.")).count(), "every backbone weight");
    for name in &critic_names {
        assert_eq!(before[*name], before[name.trim_start_matches("critic.")], "{name} starts as the policy's");
    }
    assert!(
        learner.policy_weights().unwrap().keys().all(|n| !n.starts_with("critic.") && !n.starts_with("value_head"))
    );

    learner.train_step(batch("a")).unwrap();
    let after = snapshot(&learner);
    let critic_moved = critic_names.iter().filter(|n| moved(&before[**n], &after[**n])).count();
    assert!(critic_moved > critic_names.len() / 2, "the value loss trains the critic ({critic_moved} moved)");
    assert!(moved(&before["model.layers.1.mlp.up_proj.weight"], &after["model.layers.1.mlp.up_proj.weight"]));

    // Without a value loss the critic's backbone gets no gradient and stays where it was.
    let (cfg, tensors) = weights();
    let mut still = PpoLearner::new(&Device::Cpu, separate(0.0), cfg, tensors, 0, 0, 9).unwrap();
    let before = snapshot(&still);
    still.train_step(batch("a")).unwrap();
    let after = snapshot(&still);
    for name in before.keys().filter(|n| n.starts_with("critic.")) {
        assert!(!moved(&before[name], &after[name]), "{name} moved with value_coef 0");
    }
}

#[test]
fn a_resumed_learner_keeps_its_separate_critic() {
    let (cfg, tensors) = weights();
    let mut learner = PpoLearner::new(&Device::Cpu, separate(0.5), cfg.clone(), tensors, 0, 0, 9).unwrap();
    learner.train_step(batch("a")).unwrap();
    let trained = snapshot(&learner);

    // What a checkpoint of the learner holds (rlhf-data puts the critic beside the policy).
    let saved: HashMap<String, Tensor> = learner
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    let resumed = PpoLearner::new(&Device::Cpu, separate(0.5), cfg.clone(), saved.clone(), 0, 1, 9).unwrap();
    let back = snapshot(&resumed);
    for (name, values) in trained.iter().filter(|(n, _)| n.starts_with("critic.") || n.starts_with("value_head")) {
        assert_eq!(&back[name], values, "{name} comes back as trained, not copied from the policy again");
    }
    // The head critic leaves a separate critic's weights out instead of training nothing with them.
    let head = PpoLearner::new(&Device::Cpu, PpoConfig::default(), cfg, saved, 0, 1, 9).unwrap();
    assert!(snapshot(&head).keys().all(|n| !n.starts_with("critic.")));
}
