//! `rlhf bench`: throughput of the three hot paths of RLHF on a Llama-style model.
//!
//! - training: differentiable forward + next-token cross-entropy + backward + AdamW step;
//! - sampling: batched KV-cache generation with behaviour log-probs;
//! - scoring: a no-grad forward with the fused kernels plus token log-probs, as for reference
//!   or old-policy log-probs;
//! - ppo (only with `--only ppo`): one PPO iteration with its phases (`bench_ppo`);
//! - rm: one reward-model step, `--batch` preference pairs of `--seq-len` tokens (both responses
//!   through the backbone and the scalar head, Bradley–Terry loss, backward, AdamW), in pairs/s.
//!
//! Training, the reward-model step and the PPO update also print the FLOP/s they achieve (counted
//! as rlhf runs them, `bench_flops`) and that as a fraction of the fp32 matmul peak the bench
//! measures first on this machine (a 1024³ matmul), so figures from machines with other SIMD
//! (AVX2, AVX-512) compare as fractions; on a CPU also as a fraction of the multiply-add ceiling
//! (`rlhf_model::multiply_add_peak`), the rate no kernel can pass.
//!
//! With `--model PATH` the model is a real checkpoint (Hugging Face folder, GGUF or run stage)
//! instead of a random one of the given size: the bench then also reports the load time and
//! resident memory, and a differentiable forward pass alone (`forward`), to set beside
//! PyTorch's forward with autograd on.
//!
//! `--device cuda` runs it on a GPU (a build with the `cuda` feature; `deploy/gpu-check.sh`),
//! with `--bf16` for the bf16 weights and activations PyTorch's GPU figures use; every timed step
//! waits for the GPU to finish. The PPO iteration runs on the CPU only for now. On a CPU, `--bf16`
//! trains in mixed precision on AMX or AMD's AVX512-BF16 (`rlhf_model::amx`): f32 weights, every projection's operands
//! rounded to bf16 with f32 sums, as `torch.autocast` does; the FLOP fractions stay against the
//! fp32 peak (`peak_fraction`), and a second yardstick, the mixed-precision product's own peak,
//! gives `mixed_peak_fraction`; sampling stays f32. In the PPO iteration that covers the learner and the
//! reward model's scoring; the reference's log-probs stay f32.
//!
//! Figures are tokens per second of wall time, the median of the timed repetitions after one
//! warm-up. The thread count is `RAYON_NUM_THREADS` (set to the physical core count at start-up
//! when unset, see `threads`); sampling splits its batch into one shard per thread, so
//! `RAYON_NUM_THREADS=1 rlhf bench --only sample` shows what the second core adds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rlhf_model::{
    AdamW, Config, DeviceChoice, Kernels, Llama, RewardHead, SamplingParams, bradley_terry_loss, compute_dtype,
    generate, masked_mean, next_token_logprobs, seeded_var_builder,
};
use serde::Serialize;

use crate::bench_flops::{self, FlopRate, Peaks};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Bench a real model instead of a random one (Hugging Face folder, .gguf file or a run's
    /// checkpoint); the size flags are then ignored. Try --repeats 2 on a 100M+ model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (grouped-query attention when fewer than --heads).
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// MLP intermediate size.
    #[arg(long, default_value_t = 688)]
    intermediate: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 512)]
    vocab: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per sequence for training and scoring.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Prompt tokens per sequence for sampling.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// New tokens per sequence for sampling.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Timed repetitions of each measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Run only one measurement.
    #[arg(long, value_enum)]
    only: Option<Workload>,
    /// The PPO iteration's critic: `head` (rlhf's default, a value head on the policy's
    /// detached features) or `separate` (a second backbone trained every epoch, TRL's work).
    #[arg(long, value_enum, default_value = "head")]
    critic: CriticArg,
    /// Also print the results as one JSON line.
    #[arg(long)]
    json: bool,
    /// Seed of the weights and the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: cpu, or cuda / cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// bf16: on a GPU, weights and activations; on a CPU with AMX (Intel Xeon 4th generation or
    /// later) or AVX512-BF16 on AMD (Zen 4 or later), the projections' products in mixed precision
    /// (bf16 operands, f32 sums).
    #[arg(long)]
    bf16: bool,
}

/// Where the bench runs and in what precision.
#[derive(Debug, Clone)]
struct Place {
    device: Device,
    dtype: DType,
    /// f32 weights whose projections multiply in mixed precision (`--bf16` on a CPU).
    mixed_bf16: bool,
}

impl Place {
    fn open(args: &BenchArgs) -> Result<Place> {
        let device = args.device.open()?;
        let mixed_bf16 = args.bf16 && device.is_cpu();
        anyhow::ensure!(
            !mixed_bf16 || rlhf_model::amx::available(),
            "--bf16 on the CPU needs AMX-BF16 (Intel Xeon 4th generation or later) or AVX512-BF16 on AMD (Zen 4 or later); elsewhere it needs --device cuda"
        );
        let dtype = compute_dtype(&device, args.bf16);
        Ok(Place { device, dtype, mixed_bf16 })
    }

    /// `model` as this place trains it: with mixed-precision projections under `--bf16` on a CPU.
    fn trainable(&self, model: Llama) -> Result<Llama> {
        Ok(if self.mixed_bf16 { model.with_bf16_matmuls()? } else { model })
    }

    /// A `[rows, cols]` mask of ones in the compute dtype.
    fn ones(&self, rows: usize, cols: usize) -> Result<Tensor> {
        Ok(Tensor::ones((rows, cols), self.dtype, &self.device)?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CriticArg {
    Head,
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    Train,
    Forward,
    Sample,
    Score,
    Rm,
    Ppo,
}

/// One `--json` record: a throughput, or the PPO iteration with its phases.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Record {
    Throughput(Measurement),
    Ppo(crate::bench_ppo::PpoMeasurement),
}

#[derive(Debug, Serialize)]
struct Measurement {
    workload: Workload,
    tokens_per_s: f64,
    seconds_per_batch: f64,
    tokens_per_batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pairs_per_s: Option<f64>,
    /// Training and the reward-model step only.
    #[serde(flatten)]
    flops: FlopRate,
    /// Whether the measured work multiplied its projections in mixed precision (`--bf16`
    /// on a CPU; sampling stays f32 regardless).
    bf16_matmuls: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let place = Place::open(args)?;
    let (cfg, varmap) = match &args.model {
        Some(path) => load_model(path, &place)?,
        None => random_model(args, &place)?,
    };
    let model = place.trainable(Llama::new(&cfg, VarBuilder::from_varmap(&varmap, place.dtype, &place.device))?)?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let threads = candle_core::utils::get_num_threads();
    println!(
        "model: {} layers, hidden {}, {} heads ({} kv), intermediate {}, vocab {}: {:.2}M parameters, {:?}{} on {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_kv_heads(),
        cfg.intermediate_size,
        cfg.vocab_size,
        params as f64 / 1e6,
        place.dtype,
        if place.mixed_bf16 { bf16_unit_note() } else { String::new() },
        args.device
    );
    let elementwise = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    println!(
        "threads: RAYON_NUM_THREADS={threads}, CANDLE_NUM_THREADS={elementwise}; repeats: {} after 1 warm-up",
        args.repeats
    );

    let vocab = cfg.vocab_size;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut results: Vec<Record> = vec![];
    // The forward alone is for real models; the PPO iteration only when asked for.
    let wanted = |w: Workload| {
        args.only.map_or(!matches!(w, Workload::Ppo) && (w != Workload::Forward || args.model.is_some()), |o| o == w)
    };
    let peaks = if wanted(Workload::Train) || wanted(Workload::Rm) || wanted(Workload::Ppo) {
        let fp32 = matmul_peak(args, &place)?;
        let mixed = if place.mixed_bf16 { Some(mixed_matmul_peak(args)?) } else { None };
        let ceiling = place.device.is_cpu().then(|| multiply_add_ceiling(fp32));
        Some(Peaks { fp32, mixed, ceiling })
    } else {
        None
    };
    if wanted(Workload::Train) {
        let mut m = bench_train(args, &place, vocab, &model, &varmap, &mut rng)?;
        let flops = bench_flops::training_per_token(&cfg, args.seq_len, true) * m.tokens_per_batch as f64;
        m.flops = FlopRate::reported(flops, m.seconds_per_batch, peaks, "");
        results.push(Record::Throughput(m));
    }
    if wanted(Workload::Rm) {
        let mut m = bench_rm(args, &place, &cfg, &mut rng)?;
        let flops = bench_flops::reward_per_sequence(&cfg, args.seq_len) * (m.tokens_per_batch / args.seq_len) as f64;
        m.flops = FlopRate::reported(flops, m.seconds_per_batch, peaks, "");
        results.push(Record::Throughput(m));
    }
    if wanted(Workload::Forward) {
        results.push(Record::Throughput(bench_forward(args, &place, vocab, &model, &mut rng)?));
    }
    if wanted(Workload::Sample) {
        results.push(Record::Throughput(bench_sample(args, &place, vocab, &model, &mut rng)?));
    }
    if wanted(Workload::Score) {
        results.push(Record::Throughput(bench_score(args, &place, vocab, &model, &mut rng)?));
    }
    if wanted(Workload::Ppo) {
        let shape = (args.batch, args.prompt_len, args.new_tokens, args.repeats, args.seed);
        let critic = match args.critic {
            CriticArg::Head => ppo_learner::Critic::Head,
            CriticArg::Separate => ppo_learner::Critic::Separate,
        };
        let learner = (critic, place.mixed_bf16);
        results.push(Record::Ppo(crate::bench_ppo::bench_ppo(
            &place.device,
            &cfg,
            &varmap,
            shape,
            learner,
            peaks,
            &mut rng,
        )?));
    }
    if let Some(peak) = memory_kib("VmHWM") {
        println!("peak resident memory: {:.0} MiB", peak as f64 / 1024.0);
    }
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(())
}

/// The model line's note under `--bf16` on a CPU: which unit multiplies.
fn bf16_unit_note() -> String {
    bf16_unit().map_or(String::new(), |unit| format!(" (bf16 matmuls on {unit})"))
}

/// The CPU's bf16 unit, by name.
fn bf16_unit() -> Option<&'static str> {
    rlhf_model::amx::unit().map(|unit| match unit {
        rlhf_model::amx::Unit::Amx => "AMX",
        rlhf_model::amx::Unit::Avx512Bf16 => "AVX512-BF16",
    })
}

fn random_model(args: &BenchArgs, place: &Place) -> Result<(Config, VarMap)> {
    let mut cfg = Config::tiny(args.vocab, args.hidden, args.layers, args.heads, args.kv_heads);
    cfg.intermediate_size = args.intermediate;
    cfg.validate()?;
    let varmap = VarMap::new();
    Llama::new(&cfg, seeded_var_builder(&varmap, args.seed, place.dtype, &place.device))?;
    Ok((cfg, varmap))
}

/// Loads a checkpoint as trainable variables, reporting how long it took and what it holds in memory.
fn load_model(path: &std::path::Path, place: &Place) -> Result<(Config, VarMap)> {
    let start = Instant::now();
    let ckpt = rlhf_data::load_checkpoint(path).with_context(|| format!("loading {}", path.display()))?;
    let loaded = start.elapsed().as_secs_f64();
    let rss = memory_kib("VmRSS").unwrap_or(0) as f64 / 1024.0;
    println!("loaded {} in {loaded:.2} s; resident memory {rss:.0} MiB", path.display());
    let varmap = VarMap::new();
    {
        let mut vars = varmap.data().lock().expect("fresh VarMap");
        for (name, tensor) in ckpt.tensors {
            vars.insert(name, candle_core::Var::from_tensor(&tensor.to_device(&place.device)?.to_dtype(place.dtype)?)?);
        }
    }
    Ok((ckpt.config, varmap))
}

/// A field of /proc/self/status in KiB (Linux only; None elsewhere).
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn random_ids(place: &Place, rng: &mut StdRng, batch: usize, len: usize, vocab: usize) -> Result<Tensor> {
    let ids: Vec<u32> = (0..batch * len).map(|_| rng.random_range(0..vocab as u32)).collect();
    Ok(Tensor::from_vec(ids, (batch, len), &place.device)?)
}

/// Runs `step` once to warm up, then `repeats` times, and reports the median.
fn measure(
    args: &BenchArgs,
    place: &Place,
    workload: Workload,
    tokens_per_batch: usize,
    mut work: impl FnMut() -> Result<()> + Send,
) -> Result<Measurement> {
    // As the stages train and sample: each step on rayon's pool (`rlhf_model::compute_pool`).
    let mut step = || rlhf_model::on_compute_pool(&mut work);
    step().with_context(|| format!("{workload:?} warm-up"))?;
    place.device.synchronize()?;
    let mut times: Vec<f64> = (0..args.repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            step()?;
            // A GPU queues the work: the step is done when the device says so.
            place.device.synchronize()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let m = Measurement {
        workload,
        tokens_per_s: tokens_per_batch as f64 / seconds,
        seconds_per_batch: seconds,
        tokens_per_batch,
        pairs_per_s: None,
        flops: FlopRate::default(),
        bf16_matmuls: place.mixed_bf16 && workload != Workload::Sample,
    };
    println!(
        "{:<8} {:>9.0} tokens/s   ({:.3} s per batch of {} tokens)",
        format!("{workload:?}").to_lowercase(),
        m.tokens_per_s,
        m.seconds_per_batch,
        m.tokens_per_batch
    );
    Ok(m)
}

fn bench_train(
    args: &BenchArgs,
    place: &Place,
    vocab: usize,
    model: &Llama,
    varmap: &VarMap,
    rng: &mut StdRng,
) -> Result<Measurement> {
    let ids = random_ids(place, rng, args.batch, args.seq_len, vocab)?;
    let mask = place.ones(args.batch, args.seq_len)?;
    let targets = mask.narrow(1, 1, args.seq_len - 1)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-4, ..Default::default() })?;
    measure(args, place, Workload::Train, args.batch * args.seq_len, || {
        let logits = model.forward(&ids, &mask, Kernels::Differentiable)?;
        let loss = masked_mean(&next_token_logprobs(&logits, &ids)?, &targets)?.neg()?;
        opt.backward_step(&loss)?;
        Ok(())
    })
}

/// The training forward alone: differentiable kernels and the loss, no backward.
fn bench_forward(
    args: &BenchArgs,
    place: &Place,
    vocab: usize,
    model: &Llama,
    rng: &mut StdRng,
) -> Result<Measurement> {
    let ids = random_ids(place, rng, args.batch, args.seq_len, vocab)?;
    let mask = place.ones(args.batch, args.seq_len)?;
    let targets = mask.narrow(1, 1, args.seq_len - 1)?;
    measure(args, place, Workload::Forward, args.batch * args.seq_len, || {
        let logits = model.forward(&ids, &mask, Kernels::Differentiable)?;
        masked_mean(&next_token_logprobs(&logits, &ids)?, &targets)?;
        Ok(())
    })
}

fn bench_sample(args: &BenchArgs, place: &Place, vocab: usize, model: &Llama, rng: &mut StdRng) -> Result<Measurement> {
    let prompts: Vec<Vec<u32>> =
        (0..args.batch).map(|_| (0..args.prompt_len).map(|_| rng.random_range(0..vocab as u32)).collect()).collect();
    // As the generators sample: from a copy in the decode layout.
    let model = &model.clone().into_decode_layout()?;
    let mut seed = 0;
    measure(args, place, Workload::Sample, args.batch * args.new_tokens, || {
        seed += 1;
        let params = SamplingParams { max_new_tokens: args.new_tokens, seed, ..Default::default() };
        let out = generate(model, &prompts, &params, 0)?;
        anyhow::ensure!(out.iter().all(|g| g.tokens.len() == args.new_tokens), "a sequence stopped early");
        Ok(())
    })
}

fn bench_score(args: &BenchArgs, place: &Place, vocab: usize, model: &Llama, rng: &mut StdRng) -> Result<Measurement> {
    let ids = random_ids(place, rng, args.batch, args.seq_len, vocab)?;
    let mask = place.ones(args.batch, args.seq_len)?;
    measure(args, place, Workload::Score, args.batch * args.seq_len, || {
        let logits = model.forward(&ids, &mask, Kernels::Fused)?;
        next_token_logprobs(&logits, &ids)?;
        Ok(())
    })
}

/// Products the yardstick takes the best of, at least: the best of three was still up to a third
/// below the machine's best on a noisy one; twenty cost about a quarter of a second on the CPU.
const PEAK_PRODUCTS: usize = 20;

/// The fp32 matmul FLOP/s of this machine as candle reaches it: a 1024 × 1024 by 1024 × 1024
/// product, the fastest of `PEAK_PRODUCTS` or more (a peak, so the best seen; the median moved
/// by a third between runs on a busy machine). The yardstick for the training figures.
///
/// The products run on rayon's pool, as the training steps do (`measure`): from the main thread
/// every split of a product is a hand-off to the pool and back. On a 2-core Zen 3 the old way
/// (main thread, best of three) read 89–131 GFLOP/s over a sitting, less than training itself
/// reached; alternating with it, this one read 134–166 where it read 113–125.
fn matmul_peak(args: &BenchArgs, place: &Place) -> Result<f64> {
    // A GPU needs a larger product to reach its peak.
    let n: usize = if place.device.is_cpu() { 1024 } else { 8192 };
    let a = Tensor::randn(0f32, 1.0, (n, n), &place.device)?.to_dtype(place.dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &place.device)?.to_dtype(place.dtype)?;
    let gflops = square_product_peak(args, n, || {
        rlhf_model::on_compute_pool(|| a.matmul(&b))?;
        place.device.synchronize()
    })?;
    let precision = if place.dtype == DType::BF16 { "bf16" } else { "fp32" };
    println!(
        "peak     {gflops:>9.1} GFLOP/s {precision} matmul ({n}³, the yardstick for train, rm and the PPO update)"
    );
    Ok(gflops)
}

/// The CPU's own f32 multiply-add rate, from registers on every thread (the best of
/// [`PEAK_PRODUCTS`] passes): what no product can pass, printed beside the yardstick `peak`.
fn multiply_add_ceiling(peak: f64) -> f64 {
    let ceiling = rlhf_model::on_compute_pool(|| rlhf_model::multiply_add_peak::multiply_add_peak(PEAK_PRODUCTS));
    println!(
        "ceiling  {ceiling:>9.1} GFLOP/s fp32 multiply-adds in registers (every thread; the peak is {:.0}% of it)",
        100.0 * peak / ceiling
    );
    ceiling
}

/// The mixed-precision product's GFLOP/s on this CPU's bf16 unit (`rlhf_model::amx::matmul`,
/// packing included, as every projection under `--bf16` runs it): a 1024³ product, the fastest of
/// [`PEAK_PRODUCTS`] or more, on rayon's pool. On a Zen 4 the unit multiplies at twice fp32's
/// rate, so shares of the fp32 peak read past 100%; this is the yardstick those kernels can reach.
fn mixed_matmul_peak(args: &BenchArgs) -> Result<f64> {
    use rlhf_model::amx::{MatrixRef, matmul};
    let n = 1024;
    let a: Vec<f32> = (0..n * n).map(|i| (i * 7 % 13) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i * 5 % 11) as f32 * 0.1).collect();
    let square = |data| MatrixRef::new(data, n, n, n, 1).expect("n × n values");
    let (a, b) = (square(&a), square(&b));
    let gflops = square_product_peak(args, n, || {
        rlhf_model::on_compute_pool(|| std::hint::black_box(matmul(a, b)));
        Ok(())
    })?;
    let unit = bf16_unit().map_or(String::new(), |unit| format!(" on {unit}"));
    println!("peak     {gflops:>9.1} GFLOP/s bf16 × bf16 → f32 matmul ({n}³{unit}, the yardstick for --bf16)");
    Ok(gflops)
}

/// GFLOP/s of `product`, an `n × n` by `n × n` matmul that has finished when it returns: the
/// fastest of [`PEAK_PRODUCTS`] or more, after one untimed.
fn square_product_peak(args: &BenchArgs, n: usize, product: impl Fn() -> candle_core::Result<()>) -> Result<f64> {
    product()?;
    let mut times: Vec<f64> = (0..args.repeats.max(PEAK_PRODUCTS))
        .map(|_| {
            let start = Instant::now();
            product()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect::<candle_core::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (n * n * n) as f64 / times[0] / 1e9)
}

/// One reward-model step on `--batch` pairs: chosen and rejected through a backbone and the
/// scalar head, Bradley–Terry loss, backward, AdamW.
fn bench_rm(args: &BenchArgs, place: &Place, cfg: &Config, rng: &mut StdRng) -> Result<Measurement> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, args.seed, place.dtype, &place.device);
    let backbone = place.trainable(Llama::backbone(cfg, vb.clone())?)?;
    let head = RewardHead::new(cfg.hidden_size, vb)?;
    let ids = random_ids(place, rng, 2 * args.batch, args.seq_len, cfg.vocab_size)?;
    let mask = place.ones(2 * args.batch, args.seq_len)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-5, ..Default::default() })?;
    let mut m = measure(args, place, Workload::Rm, 2 * args.batch * args.seq_len, || {
        let scores = head.score(&backbone.last_hidden_states(&ids, &mask, Kernels::Differentiable)?)?;
        let (chosen, rejected) = (scores.narrow(0, 0, args.batch)?, scores.narrow(0, args.batch, args.batch)?);
        opt.backward_step(&bradley_terry_loss(&chosen, &rejected, None)?)?;
        Ok(())
    })?;
    let pairs = args.batch as f64 / m.seconds_per_batch;
    m.pairs_per_s = Some(pairs);
    println!("         {pairs:>9.1} pairs/s ({} pairs of {} tokens)", args.batch, args.seq_len);
    Ok(m)
}
