//! Stage 1, supervised fine-tuning: next-token cross-entropy on the responses of the SFT data
//! (prompt tokens are context, not targets).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rlhf_data::{ModelKind, SaveOptions, varmap_tensors};
use rlhf_model::{
    AdamW, Config, Kernels, Llama, SamplingParams, SequenceBatch, generate, masked_mean, next_token_logprobs,
    seeded_var_builder,
};
use rlhf_world::Split;
use rlhf_world::gold::{self, AnswerType};
use rlhf_world::responses::sft_data;

use crate::config::PipelineConfig;
use crate::metric::Metric;
use crate::progress::bar;
use crate::run_dir::{RunDir, SftResult};
use crate::task::Task;
use crate::{Error, Result};

/// Learning rate at `step` of `total`: linear warm-up over the first 5%, then cosine decay to 10%.
pub fn learning_rate(base: f64, step: usize, total: usize) -> f64 {
    let warmup = (total / 20).max(1);
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

pub fn run(run: &RunDir, config: &PipelineConfig) -> Result<SftResult> {
    let start = Instant::now();
    // An interrupted SFT starts over; so do its records.
    run.forget_metrics_after(&["sft", "sft_eval"], None)?;
    let task = Task::load(run, config)?;
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5f7);
    let (model_config, varmap) = initial_policy(&task, config, run.device())?;
    let mut model = Llama::new(&model_config, seeded_var_builder(&varmap, config.seed, DType::F32, run.device()))?;
    if config.model.bf16_matmuls {
        model = model.with_bf16_matmuls()?;
    }
    let (examples, dropped_too_long, final_loss) = if config.sft.skip {
        (0, 0, None)
    } else {
        let (examples, dropped) = examples(&task, config, model_config.max_position_embeddings, &mut rng)?;
        if examples.is_empty() {
            return Err(Error::Config(format!(
                "no SFT example fits the model's context of {} tokens",
                model_config.max_position_embeddings
            )));
        }
        // Pure compute (no waiting on other threads): on the pool, every matrix product forks
        // there instead of handing off to it.
        let loss = rlhf_model::on_compute_pool(|| train(run, config, &task, &model, &varmap, &examples, &mut rng))?;
        (examples.len(), dropped, Some(loss))
    };
    let save = SaveOptions { dtype: config.model.save_dtype, ..SaveOptions::default() };
    rlhf_data::save_checkpoint(
        &run.path("sft"),
        &varmap_tensors(&varmap),
        &model_config,
        &task.tokenizer,
        ModelKind::CausalLm,
        save,
    )?;
    // Sampling from the trainable model would record every decode step's activations for a
    // backward pass that never comes (5 GB for SmolLM2, measured): sample from detached weights.
    drop(model);
    let frozen: HashMap<String, Tensor> =
        varmap_tensors(&varmap).into_iter().map(|(name, t)| (name, t.detach())).collect();
    let model = Llama::new(&model_config, VarBuilder::from_tensors(frozen, DType::F32, run.device()))?;
    let greedy_train = greedy_answer_types(&task, &model, Split::Train, config.ppo.max_new_tokens)?;
    let greedy_heldout = greedy_answer_types(&task, &model, Split::HeldOut, config.ppo.max_new_tokens)?;
    run.metric(&Metric::SftEval { greedy_train: &greedy_train, greedy_heldout: &greedy_heldout })?;
    Ok(SftResult {
        final_loss,
        examples,
        dropped_too_long,
        skipped: config.sft.skip,
        greedy_train,
        greedy_heldout,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The training loop: next-token cross-entropy on the responses, AdamW with warm-up and cosine
/// decay. Returns the mean loss of the last logged steps.
fn train(
    run: &RunDir,
    config: &PipelineConfig,
    task: &Task,
    model: &Llama,
    varmap: &VarMap,
    examples: &[Example],
    rng: &mut StdRng,
) -> Result<f64> {
    let mut optimizer = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW { lr: config.sft.learning_rate, weight_decay: 0.01, ..Default::default() },
    )?;
    let batches_per_epoch = examples.len().div_ceil(config.sft.batch_size);
    let total = batches_per_epoch * config.sft.epochs;
    let progress = bar(total as u64, "sft");
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let (mut step, mut recent, mut last) = (0usize, vec![], f64::NAN);
    for _ in 0..config.sft.epochs {
        order.shuffle(rng);
        for chunk in order.chunks(config.sft.batch_size) {
            let rows: Vec<(&[u32], &[u32])> =
                chunk.iter().map(|&i| (examples[i].0.as_slice(), examples[i].1.as_slice())).collect();
            let batch = SequenceBatch::new(&rows, task.tokenizer.pad_id, run.device())?;
            let logits = model.forward(&batch.ids, &batch.attention_mask, Kernels::Differentiable)?;
            let loss = masked_mean(&next_token_logprobs(&logits, &batch.ids)?, &batch.response_mask)?.neg()?;
            optimizer.set_learning_rate(learning_rate(config.sft.learning_rate, step, total));
            optimizer.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()? as f64;
            recent.push(loss);
            step += 1;
            if step % 10 == 0 || step == total {
                last = recent.iter().sum::<f64>() / recent.len() as f64;
                run.metric(&Metric::Sft { step: step as u64, loss: last })?;
                progress.set_message(format!("loss {last:.3}"));
                recent.clear();
            }
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    Ok(last)
}

/// One SFT example: (prompt ids, response ids).
type Example = (Vec<u32>, Vec<u32>);

/// The SFT examples: the file of `sft.data` or the bundled
/// world's, each formatted by the run's chat template. Examples longer than the model's context
/// are dropped and counted, as TRL truncates at `max_length` (a cut reply would teach the model
/// to stop mid-sentence).
fn examples(task: &Task, config: &PipelineConfig, context: usize, rng: &mut StdRng) -> Result<(Vec<Example>, usize)> {
    let encoded: Vec<Example> = match &config.sft.data {
        Some(path) => rlhf_data::datasets::read_sft(path)?
            .iter()
            .map(|e| {
                let prompt = task.tokenizer.encode_chat_prompt(&e.prompt)?;
                Ok((prompt, task.tokenizer.encode_completion(&e.prompt, &e.completion)?))
            })
            .collect::<Result<_>>()?,
        None => sft_data(&task.world, &config.world.style_mix, config.world.sft_responses_per_prompt, rng)
            .iter()
            .map(|e| Ok(task.tokenizer.encode_exchange(&e.prompt, &e.response)?))
            .collect::<Result<_>>()?,
    };
    let total = encoded.len();
    let fitting: Vec<_> = encoded.into_iter().filter(|(p, r)| p.len() + r.len() <= context).collect();
    let dropped = total - fitting.len();
    Ok((fitting, dropped))
}

/// The policy SFT starts from: the pretrained model of `model.path`, or (without one) an empty
/// `VarMap` that `seeded_var_builder` fills with fresh weights of the configured size.
fn initial_policy(task: &Task, config: &PipelineConfig, device: &Device) -> Result<(Config, VarMap)> {
    let varmap = VarMap::new();
    let Some(path) = &config.model.path else { return Ok((task.model_config(config), varmap)) };
    let ckpt = rlhf_data::load_checkpoint(path)?;
    if ckpt.kind != ModelKind::CausalLm {
        return Err(Error::Config(format!("{} is a reward model; SFT starts from a causal LM", path.display())));
    }
    {
        let mut data = varmap.data().lock().expect("fresh VarMap");
        for (name, _) in ckpt.config.expected_shapes() {
            data.insert(name.clone(), Var::from_tensor(&ckpt.tensors[&name].to_device(device)?)?);
        }
    }
    Ok((ckpt.config, varmap))
}

/// Shares of answer types when the model answers every prompt of `split` greedily: its most
/// likely answer, which tells whether it learned the facts at all.
fn greedy_answer_types(
    task: &Task,
    model: &Llama,
    split: Split,
    max_new_tokens: usize,
) -> Result<BTreeMap<String, f64>> {
    let prompts = task.prompts(split);
    let mut types: BTreeMap<String, f64> = AnswerType::ALL.iter().map(|t| (t.name().to_string(), 0.0)).collect();
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens,
        stop_tokens: task.tokenizer.stop_ids.clone(),
        ..SamplingParams::default()
    };
    for chunk in prompts.chunks(64) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| task.encode_prompt(p)).collect::<Result<_>>()?;
        for (prompt, g) in chunk.iter().zip(generate(model, &ids, &params, task.tokenizer.pad_id)?) {
            let answer = gold::classify(&task.world, task.world.fact_of(prompt), &task.decode(&g.tokens)?);
            *types.get_mut(answer.name()).expect("listed") += 1.0 / prompts.len() as f64;
        }
    }
    Ok(types)
}
