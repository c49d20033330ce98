//! Scores and reference log-probs, and what happens when the reward model misbehaves.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rlhf_model::{Config, Kernels, Llama, RewardHead, next_token_logprobs, seeded_var_builder};
use rlhf_proto::judges::{Judges, ModelWeights};
use rlhf_queue::{InProcessQueue, Queue};
use rlhf_types::{Rollout, ScoringRequest};

use crate::*;

fn model(seed: u64, with_head: bool) -> (Config, HashMap<String, Tensor>) {
    let cfg = Config::tiny(20, 16, 1, 2, 1);
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
    Llama::new(&cfg, vb.clone()).unwrap();
    if with_head {
        RewardHead::new(cfg.hidden_size, vb).unwrap();
    }
    let tensors = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    (cfg, tensors)
}

fn rollout(id: &str, prompt: Vec<u32>, response: Vec<u32>) -> Rollout {
    Rollout {
        rollout_id: id.into(),
        prompt_id: "p".into(),
        behaviour_logprobs: vec![0.0; response.len()],
        prompt_tokens: prompt,
        response_tokens: response,
        policy_version: 0,
        finished: true,
        generator_id: "g".into(),
    }
}

fn request(id: &str, judges_version: u64) -> ScoringRequest {
    ScoringRequest { rollout: rollout(id, vec![1, 2], vec![3, 4]), judges_version }
}

fn judges(seed: u64) -> Judges {
    let (rm_config, rm) = model(seed, true);
    let (ref_config, reference) = model(seed + 1, false);
    Judges {
        reward_model: ModelWeights { config: rm_config, tensors: rm },
        reference: ModelWeights { config: ref_config, tensors: reference },
        pad_id: 0,
        score_mean: 0.0,
        score_std: 1.0,
        temperature: 1.0,
        bf16_reward_model: false,
    }
}

/// A learner that has announced judges version 7 only.
struct Learner {
    asked: std::sync::Mutex<Vec<u64>>,
}

impl FetchJudges for Learner {
    fn fetch(&self, version: u64) -> std::result::Result<Option<(u64, Judges)>, String> {
        self.asked.lock().unwrap().push(version);
        Ok(matches!(version, 0 | 7).then(|| (7, judges(1))))
    }
}

#[test]
fn requests_are_scored_by_the_judges_version_they_ask_for_and_unknown_versions_are_dropped() {
    let learner = Learner { asked: Default::default() };
    let raw: InProcessQueue<ScoringRequest> = InProcessQueue::new("raw");
    let scored: InProcessQueue<ScoredRollout> = InProcessQueue::new("scored");
    let config = ScorerServiceConfig::default();
    let current = Default::default();
    let worker = service::Worker { current: &current, fetch: &learner, config: &config, raw: &raw, scored: &scored };
    // A rollout of a dead learner (version 5) and two of the live one (version 7).
    raw.push(vec![request("old", 5), request("a", 7), request("b", 7)]).unwrap();
    let moved = worker.handle(raw.pop("scorer", 10, std::time::Duration::ZERO).unwrap()).unwrap();
    assert_eq!(moved, 2);
    let out = scored.pop("learner", 10, std::time::Duration::ZERO).unwrap();
    let ids: Vec<(&str, u64)> =
        out.iter().map(|d| (d.item.rollout.rollout_id.as_str(), d.item.judges_version)).collect();
    assert_eq!(ids, [("a", 7), ("b", 7)], "stamped with the version that scored them");
    assert_eq!(raw.pending().unwrap(), 0, "the unknown version's entry is acknowledged, not retried forever");
    assert_eq!(*learner.asked.lock().unwrap(), [5, 7], "each version fetched once");
    // A scorer refuses to score a request for other judges than its own.
    let scorer = RewardScorer::from_judges(&Device::Cpu, 7, judges(1)).unwrap();
    raw.push(vec![request("c", 8)]).unwrap();
    assert!(matches!(scorer.drain("scorer", &raw, &scored, 10), Err(Error::WrongJudges { wanted: 8, loaded: 7, .. })));
    assert_eq!(scored.ready().unwrap(), 0);
}

#[test]
fn reference_logprobs_match_the_reference_model_and_scores_are_normalised() {
    let (rm_cfg, rm) = model(1, true);
    let (ref_cfg, reference) = model(2, false);
    let mut scorer = RewardScorer::new(&Device::Cpu, &rm_cfg, rm, &ref_cfg, reference.clone(), 0).unwrap();
    let rollouts = vec![rollout("a", vec![1, 2, 3], vec![4, 5]), rollout("b", vec![6], vec![7, 8, 9])];
    let raw = scorer.score(&rollouts).unwrap();
    scorer.set_normaliser(0.5, 2.0);
    let normalised = scorer.score(&rollouts).unwrap();
    for (r, n) in raw.iter().zip(&normalised) {
        assert!((n.score - (r.score - 0.5) / 2.0).abs() < 1e-6);
    }
    // Row b alone through the reference model gives the same log-probs.
    let ref_model =
        Llama::new(&ref_cfg, candle_nn::VarBuilder::from_tensors(reference, DType::F32, &Device::Cpu)).unwrap();
    let ids = Tensor::new(&[[6u32, 7, 8, 9]], &Device::Cpu).unwrap();
    let logits = ref_model.forward(&ids, &ids.ones_like().unwrap(), Kernels::Fused).unwrap();
    let expected: Vec<f32> = next_token_logprobs(&logits, &ids).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (got, want) in raw[1].reference_logprobs.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    assert_eq!(raw[0].reference_logprobs.len(), 2);
}

#[test]
fn a_non_finite_score_publishes_nothing_and_keeps_the_rollouts_pending() {
    let (rm_cfg, mut rm) = model(1, true);
    let nan = Tensor::full(f32::NAN, rm["score.weight"].shape(), &Device::Cpu).unwrap();
    rm.insert("score.weight".into(), nan);
    let (ref_cfg, reference) = model(2, false);
    let scorer = RewardScorer::new(&Device::Cpu, &rm_cfg, rm, &ref_cfg, reference, 0).unwrap();
    let raw: InProcessQueue<ScoringRequest> = InProcessQueue::new("raw");
    let scored = InProcessQueue::new("scored");
    raw.push(vec![request("a", 0)]).unwrap();
    let err = scorer.drain("scorer", &raw, &scored, 10).unwrap_err();
    assert!(matches!(err, Error::NonFinite(ref id) if id == "a"), "{err}");
    assert_eq!(scored.ready().unwrap(), 0);
    assert_eq!(raw.pending().unwrap(), 1, "the rollout is not acknowledged, so another scorer can retry it");
}

#[test]
fn every_row_of_a_large_batch_gets_its_own_reference_logprobs_and_score() {
    let (rm_cfg, rm) = model(1, true);
    let (ref_cfg, reference) = model(2, false);
    let scorer = RewardScorer::new(&Device::Cpu, &rm_cfg, rm, &ref_cfg, reference.clone(), 0).unwrap();
    // More rows than one part, prompts of 2 to 5 tokens (none of 1: the reference's logits start
    // past column 0), responses of 1 to 4.
    let rollouts: Vec<Rollout> = (0..SCORE_ROWS as u32 + 5)
        .map(|i| {
            let prompt = (0..2 + i % 4).map(|t| 1 + (t + i) % 19).collect();
            let response = (0..1 + (i * 7) % 4).map(|t| 1 + (3 * t + i) % 19).collect();
            rollout(&format!("r{i}"), prompt, response)
        })
        .collect();
    let scored = scorer.score(&rollouts).unwrap();
    let ref_model =
        Llama::new(&ref_cfg, candle_nn::VarBuilder::from_tensors(reference, DType::F32, &Device::Cpu)).unwrap();
    for (r, s) in rollouts.iter().zip(&scored) {
        let ids: Vec<u32> = r.prompt_tokens.iter().chain(&r.response_tokens).copied().collect();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = ref_model.forward(&ids, &ids.ones_like().unwrap(), Kernels::Fused).unwrap();
        let all: Vec<f32> = next_token_logprobs(&logits, &ids).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = &all[r.prompt_tokens.len() - 1..];
        assert_eq!(s.reference_logprobs.len(), want.len(), "{}", r.rollout_id);
        for (got, want) in s.reference_logprobs.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{}: {got} vs {want}", r.rollout_id);
        }
        let alone = scorer.score(std::slice::from_ref(r)).unwrap();
        assert!((alone[0].score - s.score).abs() < 1e-5, "{}", r.rollout_id);
    }
}

#[test]
fn a_batch_kept_alive_is_not_taken_over_however_long_it_takes() {
    use std::time::Duration;
    let queue = InProcessQueue::<u32>::new("raw");
    queue.push(vec![1, 2]).unwrap();
    let ids: Vec<String> = queue.pop("scorer-a", 2, Duration::ZERO).unwrap().into_iter().map(|d| d.id).collect();
    let idle = Duration::from_millis(1_000);
    // A batch that takes longer than the claim threshold, with another scorer trying to claim.
    let stolen = crate::service::kept_alive(&queue, "scorer-a", &ids, Duration::from_millis(50), || {
        std::thread::sleep(Duration::from_millis(1_500));
        queue.claim_stale("scorer-b", idle, 10).unwrap().len()
    });
    assert_eq!(stolen, 0, "a live batch was taken over");
    // Once nobody keeps them alive, they are taken over after the threshold.
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(queue.claim_stale("scorer-b", idle, 10).unwrap().len(), 2);
}

#[test]
fn a_mixed_precision_reward_model_scores_within_bf16_rounding_and_leaves_the_reference_alone() {
    if !rlhf_model::amx::available() {
        eprintln!("skipped: this CPU has no bf16 unit (AMX, or AVX512-BF16 on AMD)");
        return;
    }
    let (rm_cfg, rm) = model(1, true);
    let (ref_cfg, reference) = model(2, false);
    let full = RewardScorer::new(&Device::Cpu, &rm_cfg, rm.clone(), &ref_cfg, reference.clone(), 0).unwrap();
    let mixed =
        RewardScorer::new(&Device::Cpu, &rm_cfg, rm, &ref_cfg, reference, 0).unwrap().with_bf16_reward_model().unwrap();
    let rollouts: Vec<Rollout> = (0..6u32)
        .map(|i| rollout(&format!("r{i}"), (1..3 + i % 3).collect(), (4..6 + i % 4).map(|t| t % 20).collect()))
        .collect();
    let (f, m) = (full.score(&rollouts).unwrap(), mixed.score(&rollouts).unwrap());
    for (f, m) in f.iter().zip(&m) {
        assert_eq!(f.reference_logprobs, m.reference_logprobs, "the reference's log-probs stay f32");
        assert!((f.score - m.score).abs() <= 0.05 * f.score.abs().max(1.0), "{} vs {}", f.score, m.score);
    }
    assert!(f.iter().zip(&m).any(|(f, m)| f.score != m.score), "the reward model's products were not rounded");
    // Judges that ask for it (a bf16 run's learner sends them so) give the same scorer.
    let asked = Judges { bf16_reward_model: true, ..judges(1) };
    let via_judges = RewardScorer::from_judges(&Device::Cpu, 0, asked).unwrap().score(&rollouts).unwrap();
    let scores = |s: &[ScoredRollout]| s.iter().map(|r| r.score).collect::<Vec<_>>();
    assert_eq!(scores(&via_judges), scores(&m));
}
