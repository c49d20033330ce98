//! Stage 3, the reward model: the SFT network with a scalar head, trained on whole rankings with
//! the K-way loss (each prompt's C(K,2) pairs averaged, as InstructGPT did).
//!
//! Its held-out pairwise accuracy is reported beside the annotators' noise ceiling: how often
//! the gold utility itself agrees with the same noisy labels (ties count half in both).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use ppo_learner::grad::GradSum;
use preference_store::PreferenceStore;
use preference_store::quality::{self, Exclusion};
use preference_store::tasks::TaskBoard;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use reward_scorer::RewardScorer;
use rlhf_data::{ModelKind, SaveOptions, ScoreNormalizer, varmap_tensors};
use rlhf_model::{AdamW, Kernels, Llama, RewardHead, SequenceBatch, ranking_loss, seeded_var_builder};
use rlhf_types::Ranking;
use rlhf_world::{Split, gold};

use crate::collect::open_store;
use crate::config::{MIN_GOLD_PAIRS, PipelineConfig};
use crate::metric::Metric;
use crate::progress::bar;
use crate::run_dir::{RewardModelResult, RunDir};
use crate::task::Task;
use crate::{Error, Result};

/// Prompt tokens of every prompt in the store, world prompts and imported ones alike, and the
/// rankings ready to train on: responses stored as text only (imported from a file) are encoded
/// here with the run's chat template, and a ranking whose prompt and longest response exceed
/// `context` tokens is dropped (TRL's reward trainer drops them the same way) and counted.
fn encode_store(
    task: &Task,
    store: &dyn PreferenceStore,
    rankings: Vec<Ranking>,
    context: usize,
) -> Result<(PromptTokens, Vec<Ranking>, usize)> {
    let mut prompts = prompt_tokens(task)?;
    let mut conversations = HashMap::new();
    for (id, text) in store.prompts()? {
        if !prompts.contains_key(&id) {
            let conversation = rlhf_data::datasets::prompt_from_text(&text);
            prompts.insert(id.clone(), task.tokenizer.encode_chat_prompt(&conversation)?);
            conversations.insert(id, conversation);
        }
    }
    let mut kept = Vec::with_capacity(rankings.len());
    let mut dropped = 0;
    for mut ranking in rankings {
        if let Some(conversation) = conversations.get(&ranking.prompt_id) {
            for response in ranking.responses.iter_mut().filter(|r| r.tokens.is_empty()) {
                response.tokens = task.tokenizer.encode_completion(conversation, &response.text)?;
            }
        }
        let longest = ranking.responses.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
        if prompts[&ranking.prompt_id].len() + longest <= context {
            kept.push(ranking);
        } else {
            dropped += 1;
        }
    }
    Ok((prompts, kept, dropped))
}

/// Prompt tokens by prompt id, for every prompt of the world.
pub type PromptTokens = HashMap<String, Vec<u32>>;

pub fn prompt_tokens(task: &Task) -> Result<PromptTokens> {
    task.world.prompts.iter().map(|p| Ok((p.id.clone(), task.encode_prompt(p)?))).collect()
}

/// The (prompt, response) rows of some rankings, all responses of each in order.
fn rows<'a>(rankings: &[&'a Ranking], prompts: &'a PromptTokens) -> Vec<(&'a [u32], &'a [u32])> {
    rankings
        .iter()
        .flat_map(|r| r.responses.iter().map(move |x| (prompts[&r.prompt_id].as_slice(), x.tokens.as_slice())))
        .collect()
}

/// Raw scores of every response of `rankings`, one `Vec` per ranking.
pub fn score_rankings(scorer: &RewardScorer, rankings: &[&Ranking], prompts: &PromptTokens) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rankings.len());
    for chunk in rankings.chunks(16) {
        let scores = scorer.raw_scores(&rows(chunk, prompts))?;
        let mut at = 0;
        for r in chunk {
            out.push(scores[at..at + r.responses.len()].to_vec());
            at += r.responses.len();
        }
    }
    Ok(out)
}

/// Share of the ranked pairs whose winner `score(ranking, response)` puts strictly higher
/// (ties count half).
pub fn agreement(rankings: &[&Ranking], score: impl Fn(usize, usize) -> f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, r) in rankings.iter().enumerate() {
        for (a, &w) in r.order.iter().enumerate() {
            for &l in &r.order[a + 1..] {
                let (sw, sl) = (score(i, w), score(i, l));
                sum += if sw > sl {
                    1.0
                } else if sw == sl {
                    0.5
                } else {
                    0.0
                };
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// A scorer serving the run's reward model (and the SFT model as reference).
pub fn load_scorer(run: &RunDir) -> Result<RewardScorer> {
    for (stage, dir) in [("sft", "sft"), ("rm", "rm")] {
        if !run.path(dir).exists() {
            return Err(Error::MissingStage { stage: "ppo", missing: stage });
        }
    }
    let rm = rlhf_data::load_checkpoint(&run.path("rm"))?;
    let sft = rlhf_data::load_checkpoint(&run.path("sft"))?;
    let mut scorer =
        RewardScorer::new(run.device(), &rm.config, rm.tensors, &sft.config, sft.tensors, sft.tokenizer.pad_id)?;
    if let Some(n) = rm.score_normalizer {
        scorer.set_normaliser(n.mean, n.std);
    }
    Ok(scorer)
}

/// Leaves out the rankings of annotators who agree too little with the gold tasks in the run's
/// preference database (none without gold tasks: simulated or imported rankings).
fn exclude_below_gold(
    run: &RunDir,
    config: &PipelineConfig,
    rankings: Vec<Ranking>,
) -> Result<(Vec<Ranking>, Vec<Exclusion>)> {
    let db = run.path("preferences.sqlite");
    let bar = config.reward_model.min_gold_agreement;
    if bar <= 0.0 || !db.exists() {
        return Ok((rankings, Vec::new()));
    }
    let gold = TaskBoard::open(&db, preference_store::tasks::DEFAULT_LEASE_MS)?.gold_orders()?;
    if gold.is_empty() {
        return Ok((rankings, Vec::new()));
    }
    let excluded = quality::below_gold(&quality::report(&rankings, &gold), bar, MIN_GOLD_PAIRS);
    for e in &excluded {
        tracing::warn!(
            annotator = %e.annotator,
            rankings = e.rankings,
            gold_agreement = e.gold.rate().unwrap_or(0.0),
            gold_pairs = e.gold.pairs,
            "rm: left out an annotator below reward_model.min_gold_agreement"
        );
    }
    let out: HashSet<&str> = excluded.iter().map(|e| e.annotator.as_str()).collect();
    let kept = rankings.into_iter().filter(|r| !out.contains(r.annotator_id.as_str())).collect();
    Ok((kept, excluded))
}

/// How many decoder layers stay frozen when only the top `train_top` of `layers` train.
fn frozen_layers(layers: usize, train_top: Option<usize>) -> usize {
    train_top.map_or(0, |top| layers.saturating_sub(top))
}

/// The variables a reward model trains when its bottom `frozen` layers are frozen: the layers
/// above, the final norm and the score head (the embeddings freeze with any frozen layer).
fn trainable_vars(varmap: &VarMap, frozen: usize) -> Vec<Var> {
    if frozen == 0 {
        return varmap.all_vars();
    }
    let data = varmap.data().lock().expect("VarMap lock");
    let mut names: Vec<&String> = data
        .keys()
        .filter(|name| {
            if name.starts_with("model.embed_tokens.") {
                return false;
            }
            match name.strip_prefix("model.layers.").and_then(|rest| rest.split('.').next()) {
                Some(layer) => layer.parse::<usize>().is_ok_and(|layer| layer >= frozen),
                None => true,
            }
        })
        .collect();
    // A fixed order, so AdamW's state lines up the same on every run.
    names.sort();
    names.into_iter().map(|name| data[name].clone()).collect()
}

/// Raw scores of every response of `rankings` from their cached frozen-layer output, which
/// every training ranking has once an epoch has passed (one missing is computed here).
fn scores_from_cache(
    model: &Llama,
    head: &RewardHead,
    lower_cache: &[Option<Tensor>],
    rankings: &[&Ranking],
    prompts: &PromptTokens,
    pad_id: u32,
    frozen: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rankings.len());
    for (ranking, lower) in rankings.iter().zip(lower_cache) {
        let batch = SequenceBatch::new(&rows(&[ranking], prompts), pad_id, model.device())?;
        let lower = match lower {
            Some(lower) => lower.clone(),
            None => model.lower_hidden_states_shared_prefix(
                &batch.ids,
                &batch.attention_mask,
                prompts[&ranking.prompt_id].len(),
                frozen,
            )?,
        };
        let last = model.upper_last_hidden_states(&lower, &batch.attention_mask, frozen, Kernels::Fused)?;
        out.push(head.score(&last)?.detach().to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Trains the reward model on the rankings in the run's SQLite store.
pub fn run(run: &RunDir, config: &PipelineConfig) -> Result<RewardModelResult> {
    let task = Task::load(run, config)?;
    let store = open_store(run, &task)?;
    run_with(run, config, &store)
}

/// Trains the reward model on the rankings in `store`.
pub fn run_with(run: &RunDir, config: &PipelineConfig, store: &dyn PreferenceStore) -> Result<RewardModelResult> {
    let start = Instant::now();
    // An interrupted reward model starts over; so do its records.
    run.forget_metrics_after(&["rm", "rm_eval"], None)?;
    let task = Task::load(run, config)?;
    if !run.path("sft").exists() {
        return Err(Error::MissingStage { stage: "rm", missing: "sft" });
    }
    let rankings = store.rankings(None)?;
    if rankings.is_empty() {
        return Err(Error::NoRankings("the preference store holds none".into()));
    }
    let (rankings, excluded) = exclude_below_gold(run, config, rankings)?;
    let excluded_rankings: usize = excluded.iter().map(|e| e.rankings).sum();
    if rankings.is_empty() {
        let who: Vec<String> = excluded
            .iter()
            .map(|e| format!("{} ({:.2} over {} gold pairs)", e.annotator, e.gold.rate().unwrap_or(0.0), e.gold.pairs))
            .collect();
        return Err(Error::NoRankings(format!(
            "all {excluded_rankings} were left out, by annotators who agree with the gold tasks on less than \
             reward_model.min_gold_agreement = {} of response pairs: {}; check them on the dashboard, or lower the \
             setting (0 keeps everyone)",
            config.reward_model.min_gold_agreement,
            who.join(", ")
        )));
    }
    let (sft_config, _, _) = rlhf_data::checkpoint::inspect(&run.path("sft"))?;
    let (prompts, rankings, too_long) = encode_store(&task, store, rankings, sft_config.max_position_embeddings)?;
    let split_of = |r: &Ranking| match task.world.prompt(&r.prompt_id) {
        Some(p) => p.split,
        // Imported prompts: one in ten held out, by a hash of the prompt (all its rankings go together).
        None if crate::collect::fnv(&r.prompt_id).is_multiple_of(10) => Split::HeldOut,
        None => Split::Train,
    };
    let train: Vec<&Ranking> = rankings.iter().filter(|r| split_of(r) == Split::Train).collect();
    let held: Vec<&Ranking> = rankings.iter().filter(|r| split_of(r) == Split::HeldOut).collect();
    let imported = rankings.iter().filter(|r| task.world.prompt(&r.prompt_id).is_none()).count();
    if train.is_empty() || held.is_empty() {
        return Err(Error::NoRankings(format!(
            "it trains on some and judges itself on held-out ones, and has {} to train on and {} held out \
             ({} of {} left out as longer than the model's context of {} tokens)",
            train.len(),
            held.len(),
            too_long,
            rankings.len() + too_long,
            sft_config.max_position_embeddings
        )));
    }

    // Initialise from SFT's decoder; the score head is the only new weight (the LM head is not
    // part of a reward model).
    let sft = rlhf_data::load_checkpoint(&run.path("sft"))?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("fresh VarMap");
        for (name, t) in sft.tensors.into_iter().filter(|(n, _)| n != "lm_head.weight") {
            data.insert(name, Var::from_tensor(&t.to_device(run.device())?)?);
        }
    }
    let vb = seeded_var_builder(&varmap, config.seed ^ 0x4e3, DType::F32, run.device());
    let mut model = Llama::backbone(&sft.config, vb.clone())?;
    if config.model.bf16_matmuls {
        model = model.with_bf16_matmuls()?;
    }
    let head = RewardHead::new(sft.config.hidden_size, vb)?;
    let lr = config.reward_model.learning_rate;
    let frozen = frozen_layers(sft.config.num_hidden_layers, config.reward_model.train_top_layers);
    let vars = trainable_vars(&varmap, frozen);
    let mut optimizer = AdamW::new(vars.clone(), ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })?;
    // The frozen layers' output of each training ranking, computed the first time it is met.
    let mut lower_cache: Vec<Option<Tensor>> = vec![None; train.len()];

    let per_step = config.reward_model.batch_rankings;
    let total = train.len().div_ceil(per_step) * config.reward_model.epochs;
    let progress = bar(total as u64, "rm");
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x7e3);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0;
    for _ in 0..config.reward_model.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(per_step) {
            let group: Vec<&Ranking> = chunk.iter().map(|&i| train[i]).collect();
            // The whole group's loss is the mean over its rankings: each micro-batch's share is
            // weighted by its size and the gradients summed, the same update in less memory.
            let width = rows(&group, &prompts).iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(1);
            let answers = group.iter().map(|r| r.responses.len()).max().unwrap_or(1);
            // The cache holds each ranking at its own width, so frozen layers go one ranking at a time.
            let per_micro = if frozen > 0 {
                1
            } else {
                crate::memory::items_per_micro_batch(&sft.config, group.len(), answers * width, width)
            };
            // Pure compute: on the pool its matrix products fork there instead of handing off to it.
            let loss = rlhf_model::on_compute_pool(|| -> Result<f64> {
                let (mut grads, mut loss) = (GradSum::default(), 0.0);
                for (indices, micro) in chunk.chunks(per_micro).zip(group.chunks(per_micro)) {
                    let batch = SequenceBatch::new(&rows(micro, &prompts), task.tokenizer.pad_id, run.device())?;
                    let last_hidden = if frozen > 0 {
                        let lower = match &lower_cache[indices[0]] {
                            Some(lower) => lower.clone(),
                            None => {
                                // The ranking's K answers share its prompt, which goes through once.
                                let lower = model
                                    .lower_hidden_states_shared_prefix(
                                        &batch.ids,
                                        &batch.attention_mask,
                                        prompts[&micro[0].prompt_id].len(),
                                        frozen,
                                    )?
                                    .detach();
                                lower_cache[indices[0]] = Some(lower.clone());
                                lower
                            }
                        };
                        model.upper_last_hidden_states(
                            &lower,
                            &batch.attention_mask,
                            frozen,
                            Kernels::Differentiable,
                        )?
                    } else {
                        model.last_hidden_states(&batch.ids, &batch.attention_mask, Kernels::Differentiable)?
                    };
                    let rewards = head.score(&last_hidden)?;
                    let mut offset = 0;
                    let orders: Vec<Vec<usize>> = micro
                        .iter()
                        .map(|r| {
                            let o = r.order.iter().map(|&i| i + offset).collect();
                            offset += r.responses.len();
                            o
                        })
                        .collect();
                    let share = ranking_loss(&rewards, &orders)?;
                    let share = if micro.len() == group.len() {
                        share
                    } else {
                        (share * (micro.len() as f64 / group.len() as f64))?
                    };
                    loss += share.to_scalar::<f32>()? as f64;
                    grads.add(&share, &vars)?;
                }
                optimizer.set_learning_rate(crate::sft::learning_rate(lr, step, total));
                optimizer.step(&grads.into_store())?;
                Ok(loss)
            })?;
            step += 1;
            run.metric(&Metric::Rm { step: step as u64, loss })?;
            progress.set_message(format!("loss {loss:.3}"));
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    // With frozen layers the training rankings' scores come from the cached lower layers: the
    // saved scorer's numbers (to float rounding; with `save_dtype` bf16, those of the f32 weights
    // the checkpoint is rounded from) at the cost of the top layers only.
    let cached_train_scores = if frozen > 0 {
        Some(scores_from_cache(&model, &head, &lower_cache, &train, &prompts, task.tokenizer.pad_id, frozen)?)
    } else {
        None
    };
    drop(lower_cache);
    let save = SaveOptions { dtype: config.model.save_dtype, ..SaveOptions::default() };
    let tensors = varmap_tensors(&varmap);
    rlhf_data::save_checkpoint(&run.path("rm"), &tensors, &sft.config, &task.tokenizer, ModelKind::RewardModel, save)?;

    // Evaluate through the same scorer PPO will use.
    let scorer = load_scorer(run)?;
    let held_scores = score_rankings(&scorer, &held, &prompts)?;
    let train_scores = match cached_train_scores {
        Some(scores) => scores,
        None => score_rankings(&scorer, &train, &prompts)?,
    };
    let heldout_accuracy = agreement(&held, |i, j| held_scores[i][j] as f64);
    let train_accuracy = agreement(&train, |i, j| train_scores[i][j] as f64);
    // The ceiling needs the hidden gold preference, which only the bundled world's prompts have.
    let gold_known = !held.is_empty() && held.iter().all(|r| task.world.prompt(&r.prompt_id).is_some());
    let noise_ceiling = gold_known.then(|| {
        agreement(&held, |i, j| {
            let fact = task.world.fact_of(task.world.prompt(&held[i].prompt_id).expect("world prompt"));
            gold::utility(gold::classify(&task.world, fact, &held[i].responses[j].text))
        })
    });
    let (gold_pairs, best_of_k) = if gold_known {
        (
            crate::gold_pairs::gold_pair_accuracy(&task.world, &held, &held_scores),
            crate::gold_pairs::best_of_k(&task.world, &held, &held_scores),
        )
    } else {
        (vec![], None)
    };
    let all: Vec<f64> = train_scores.iter().flatten().map(|&s| s as f64).collect();
    let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
    let std = (all.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / all.len().max(1) as f64).sqrt();
    // The normaliser goes with the checkpoint, so anyone loading the reward model computes the
    // same reward PPO trained on.
    rlhf_data::checkpoint::set_score_normalizer(
        &run.path("rm"),
        ScoreNormalizer { mean: mean as f32, std: std as f32 },
    )?;
    run.metric(&Metric::RmEval {
        heldout_accuracy,
        noise_ceiling,
        train_accuracy,
        gold_pairs: &gold_pairs,
        best_of_k: best_of_k.as_ref(),
    })?;
    Ok(RewardModelResult {
        heldout_accuracy,
        noise_ceiling,
        train_accuracy,
        imported_rankings: imported,
        dropped_too_long: too_long,
        excluded,
        excluded_rankings,
        gold_pairs,
        best_of_k,
        score_mean: mean as f32,
        score_std: std as f32,
        seconds: start.elapsed().as_secs_f64(),
    })
}
