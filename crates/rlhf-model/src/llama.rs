//! A Llama-family causal language model that trains: every op on the forward path has a backward.
//!
//! Architecture (Touvron et al. 2023; the same as SmolLM2, Mistral without a sliding window, and
//! Qwen2, whose q/k/v projections carry biases):
//! `h = embed(ids)`, then per layer `h += o(attn(rope(q(n1(h))), rope(k(n1(h))), v(n1(h))))`
//! and `h += down(silu(gate(n2(h))) * up(n2(h)))` with RMSNorm `n1`, `n2`, then a final RMSNorm.
//! Weight names are those of Hugging Face safetensors (`model.layers.0.self_attn.q_proj.weight`, …).
//!
//! candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward and silently cut the
//! gradient, so they are used only under [`Kernels::Fused`], the no-grad path of sampling and
//! scoring. [`Kernels::Differentiable`] composes plain ops; tests prove both agree and that every
//! parameter receives a gradient.

use candle_core::{D, Device, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use crate::config::Config;
use crate::decode_matmul::Projection;
use crate::embedding::TokenEmbedding;
use crate::padding;

mod last_token;
mod rotary;

use rotary::Rotary;

/// Which implementation of the normalisation, softmax and rotary ops a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Fused kernels with hand-written backward passes ([`crate::fused`]): training and
    /// anything that needs gradients (f32 on the CPU; elsewhere the composite ops).
    Differentiable,
    /// Composite candle ops with candle's own backward: the reference the fused kernels are
    /// tested against.
    Composite,
    /// candle's fused CPU kernels: faster, but the result has no autograd parents.
    Fused,
}

/// Keys and values of every layer for the tokens seen so far, `[B, n_kv, T, head_dim]` each.
///
/// Preallocated (candle-nn's cache writes each step's keys in place): concatenating a step onto
/// the cache copied all of it every step, a tenth of SmolLM2's decode time.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl KvCache {
    /// A cache with room for `capacity` positions per layer (it grows if more come).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        let layer = candle_nn::kv_cache::KvCache::new(2, capacity.max(1));
        KvCache { layers: vec![layer; num_layers] }
    }

    /// Number of cached positions (0 before the first forward pass).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.current_seq_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        self.layers[layer].append(&k, &v)
    }

    /// A cache holding this (one-row) cache's keys and values once for each of `rows` rows, with
    /// room for `capacity` positions.
    fn repeat_rows(&self, rows: usize, capacity: usize) -> Result<KvCache> {
        let mut out = KvCache::new(self.layers.len(), capacity);
        for (layer, cached) in self.layers.iter().enumerate() {
            if let (Some(k), Some(v)) = (cached.k()?, cached.v()?) {
                out.append(layer, k.repeat((rows, 1, 1, 1))?, v.repeat((rows, 1, 1, 1))?)?;
            }
        }
        Ok(out)
    }
}

/// Root-mean-square normalisation with a learned scale, `x / sqrt(mean(x²) + eps) · w`.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(RmsNorm { weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?, eps })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match kernels {
            Kernels::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32),
            Kernels::Differentiable if crate::fused::supported(x) => {
                crate::fused::rms_norm(x, &self.weight, self.eps as f32)
            }
            Kernels::Differentiable | Kernels::Composite => {
                candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps as f32)
            }
        }
    }
}

fn softmax(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(x),
        Kernels::Differentiable if crate::fused::supported(x) => crate::fused::softmax_last_dim(x),
        Kernels::Differentiable | Kernels::Composite => candle_nn::ops::softmax(x, D::Minus1),
    }
}

fn linear(in_dim: usize, out_dim: usize, cfg: &Config, vb: VarBuilder<'_>) -> Result<Linear> {
    linear_b(in_dim, out_dim, false, cfg, vb)
}

/// A projection `y = x Wᵀ (+ b)`; fresh biases start at zero, as in `transformers`.
fn linear_b(in_dim: usize, out_dim: usize, bias: bool, cfg: &Config, vb: VarBuilder<'_>) -> Result<Linear> {
    let init = Init::Randn { mean: 0.0, stdev: cfg.initializer_range };
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?) } else { None };
    Ok(Linear::new(weight, bias))
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Projection,
    k_proj: Projection,
    v_proj: Projection,
    o_proj: Projection,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    /// Whether attention's products run in mixed precision, as the projections do.
    mixed_bf16: bool,
    /// Whether decoding shares even one step's attention between threads: a model decoded as one
    /// shard ([`Llama::streams_weights`]).
    split_decode: bool,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, d, kv) = (cfg.hidden_size, cfg.head_dim(), cfg.num_kv_heads());
        let (qkv_bias, o_bias) = (cfg.qkv_bias(), cfg.o_bias());
        Ok(Attention {
            q_proj: linear_b(h, cfg.num_attention_heads * d, qkv_bias, cfg, vb.pp("q_proj"))?.into(),
            k_proj: linear_b(h, kv * d, qkv_bias, cfg, vb.pp("k_proj"))?.into(),
            v_proj: linear_b(h, kv * d, qkv_bias, cfg, vb.pp("v_proj"))?.into(),
            o_proj: linear_b(cfg.num_attention_heads * d, h, o_bias, cfg, vb.pp("o_proj"))?.into(),
            num_heads: cfg.num_attention_heads,
            num_kv_heads: kv,
            head_dim: d,
            mixed_bf16: false,
            split_decode: false,
        })
    }

    /// `x: [B, Tq, hidden]`, `bias: [B, 1, Tq, Tk]` → `[B, Tq, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        bias: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (k, v) = self.keys_values(x, rotary, kernels)?;
        let cached = cache.is_some();
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v)?,
            None => (k, v),
        };
        self.attend(x, rotary, &k, &v, bias, cached, kernels)
    }

    /// `[B, T, hidden]` → `[B, heads, T, head_dim]`.
    fn split_heads(&self, t: Tensor, heads: usize) -> Result<Tensor> {
        let (b, len, _) = t.dims3()?;
        t.reshape((b, len, heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// The rotated keys and the values of `x: [B, T, hidden]`, `[B, n_kv, T, head_dim]` each.
    fn keys_values(&self, x: &Tensor, rotary: &Rotary, kernels: Kernels) -> Result<(Tensor, Tensor)> {
        let k = rotary.apply(&self.split_heads(self.k_proj.forward(x)?, self.num_kv_heads)?, kernels)?;
        let v = self.split_heads(self.v_proj.forward(x)?, self.num_kv_heads)?;
        Ok((k, v))
    }

    /// The queries of `x: [B, Tq, hidden]` (at `rotary`'s positions) over keys and values
    /// `[B, n_kv, Tk, head_dim]` with `bias: [B, 1, Tq, Tk]`, through `o_proj`: `[B, Tq, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        x: &Tensor,
        rotary: &Rotary,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        cached: bool,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, tq, _) = x.dims3()?;
        let q = rotary.apply(&self.split_heads(self.q_proj.forward(x)?, self.num_heads)?, kernels)?;
        let tk = k.dim(2)?;
        // Grouped-query attention without copying K/V: the `group` query heads that share one
        // key/value head are stacked along the time axis, so one batched matmul serves them all.
        let group = self.num_heads / self.num_kv_heads;
        let q = q.reshape((b, self.num_kv_heads, group * tq, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let fused = !cached && crate::fused::supported(&q);
        let out = if fused && self.mixed_bf16 && kernels != Kernels::Composite {
            crate::fused_attention::attention_mixed(&q, k, v, bias, scale)?
        } else if fused && kernels == Kernels::Differentiable {
            crate::fused_attention::attention(&q, k, v, bias, scale)?
        } else if cached && kernels == Kernels::Fused && crate::fused::supported(&q) {
            crate::fused_attention::cached_attention(&q, k, v, bias, scale, self.split_decode)?
        } else {
            let scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, self.num_heads, tq, tk))?.broadcast_add(bias)?;
            softmax(&scores, kernels)?.reshape((b, self.num_kv_heads, group * tq, tk))?.matmul(v)?
        };
        let out = out.reshape((b, self.num_heads, tq, self.head_dim))?;
        let out = out.transpose(1, 2)?.reshape((b, tq, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Projection,
    up_proj: Projection,
    down_proj: Projection,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Mlp {
            gate_proj: linear_b(h, i, b, cfg, vb.pp("gate_proj"))?.into(),
            up_proj: linear_b(h, i, b, cfg, vb.pp("up_proj"))?.into(),
            down_proj: linear_b(i, h, b, cfg, vb.pp("down_proj"))?.into(),
        })
    }

    fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let hidden = match kernels {
            Kernels::Differentiable | Kernels::Fused if crate::fused::supported(&gate) => {
                crate::fused_swiglu::swiglu(&gate, &up)?
            }
            _ => (gate.silu()? * up)?,
        };
        self.down_proj.forward(&hidden)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// The layer's second half on the residual stream `h`: `h + mlp(norm(h))`.
    fn mlp_block(&self, h: &Tensor, kernels: Kernels) -> Result<Tensor> {
        h + self.mlp.forward(&self.post_attention_layernorm.forward(h, kernels)?, kernels)?
    }
}

/// The causal LM: decoder stack plus LM head. Value and reward heads live in [`crate::heads`].
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: TokenEmbedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` for a reward model's backbone.
    lm_head: Option<Projection>,
    config: Config,
}

impl Llama {
    /// Builds the model from `vb`: from a `VarMap` it creates fresh trainable weights, from
    /// safetensors it loads them. The weight names are Hugging Face's.
    pub fn new(config: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        Self::build(config, vb, true)
    }

    /// The decoder without its LM head, as a reward model (`*ForSequenceClassification`) holds
    /// it: the score head reads the final hidden states and `lm_head.weight` is not needed.
    pub fn backbone(config: &Config, vb: VarBuilder<'_>) -> Result<Self> {
        Self::build(config, vb, false)
    }

    fn build(config: &Config, vb: VarBuilder<'_>, with_head: bool) -> Result<Self> {
        config.validate()?;
        let init = Init::Randn { mean: 0.0, stdev: config.initializer_range };
        let embeddings =
            vb.pp("model.embed_tokens").get_with_hints((config.vocab_size, config.hidden_size), "weight", init)?;
        let embed_tokens = TokenEmbedding::rows(embeddings.clone(), config.hidden_size);
        let lm_head = match (with_head, config.tie_word_embeddings) {
            (false, _) => None,
            (true, true) => Some(Linear::new(embeddings, None).into()),
            (true, false) => Some(linear(config.hidden_size, config.vocab_size, config, vb.pp("lm_head"))?.into()),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(config, vb.pp(format!("model.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(config.hidden_size, config.rms_norm_eps, vb.pp("model.norm"))?;
        Ok(Llama { embed_tokens, layers, norm, lm_head, config: config.clone() })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether a decode step reads this model's weights from memory rather than cache (past
    /// 64 MiB of projections): the sampler then decodes it as one shard whose products are split
    /// between threads, so each weight is read once a step, not once per thread.
    pub fn streams_weights(&self) -> bool {
        crate::decode_matmul::streams_weights(&self.config)
    }

    /// The same model for a copy that only samples or scores: on the CPU every projection is
    /// packed by tiles of output columns ([`crate::decode_matmul`]); on a GPU its weight is stored
    /// transposed (`[in, out]` row-major behind the same `[out, in]` shape).
    ///
    /// `x Wᵀ` with `W` row-major makes gemm repack (transpose) the whole of `W` on every call;
    /// a decode step multiplies only B rows, so that copy of all the weights cost more than the
    /// arithmetic (SmolLM2-135M: 40% of sampling time). Transposed, `W` is read in place but by
    /// pieces a weight row apart; packed, by one contiguous run per tile. The values are the same
    /// bits, so outputs agree up to summation order. Takes `self` so the row-major weights are
    /// freed as each is replaced. The result shares no storage with `self`'s tensors, so a
    /// generator may build it from weights its sender goes on training, and it is detached from
    /// the sender's gradient graph: built from a trainable model (the bench, a learner's published
    /// weights), it used to record every op of every decode step for a backward pass that never
    /// comes.
    pub fn into_decode_layout(mut self) -> Result<Self> {
        let split = self.streams_weights();
        let own = |norm: &mut RmsNorm| -> Result<()> {
            norm.weight = norm.weight.copy()?.detach();
            Ok(())
        };
        own(&mut self.norm)?;
        for layer in &mut self.layers {
            own(&mut layer.input_layernorm)?;
            own(&mut layer.post_attention_layernorm)?;
            let attn = &mut layer.self_attn;
            attn.mixed_bf16 = false;
            attn.split_decode = split;
            for proj in [&mut attn.q_proj, &mut attn.k_proj, &mut attn.v_proj, &mut attn.o_proj] {
                *proj = proj.for_decoding(split)?;
            }
            let mlp = &mut layer.mlp;
            for proj in [&mut mlp.gate_proj, &mut mlp.up_proj, &mut mlp.down_proj] {
                *proj = proj.for_decoding(split)?;
            }
        }
        if self.config.tie_word_embeddings && !crate::fused::supported(&self.norm.weight) {
            // Off the CPU, one table by columns serves the lookup and, as a transposed view, the head.
            self.embed_tokens = self.embed_tokens.into_columns()?;
            if self.lm_head.is_some() {
                self.lm_head = Some(Linear::new(self.embed_tokens.table()?, None).into());
            }
        } else {
            // On the CPU a tied head is packed apart from the lookup's rows: one more copy of the
            // table (113 MB for SmolLM2-135M) for a head that streams like every other weight.
            self.embed_tokens = self.embed_tokens.copy()?;
            if let Some(head) = &self.lm_head {
                self.lm_head = Some(head.for_decoding(split)?);
            }
        }
        Ok(self)
    }

    /// The same model (the same weights and gradients) with every projection, the LM head's too,
    /// multiplied in mixed precision ([`crate::amx`]: on AMX, or AVX512-BF16 on AMD): operands rounded to bf16 and sums in
    /// f32, forward and backward, as `torch.autocast` trains; so are attention's products over a
    /// whole sequence ([`crate::fused_attention::attention_mixed`]). Norms, softmax, losses and the
    /// optimizer stay f32. Sampling copies ([`Llama::into_decode_layout`]) and decoding steps over
    /// the KV cache stay f32.
    pub fn with_bf16_matmuls(mut self) -> Result<Self> {
        if !crate::fused::supported(&self.norm.weight) {
            candle_core::bail!("bf16 matmuls run on the CPU's bf16 unit: they need f32 weights on the CPU");
        }
        if !crate::amx::available() {
            candle_core::bail!(
                "bf16 matmuls on the CPU need AMX-BF16 (Intel Xeon 4th generation or later) or AVX512-BF16 on AMD (Zen 4 or later)"
            );
        }
        for layer in &mut self.layers {
            let attn = &mut layer.self_attn;
            attn.mixed_bf16 = true;
            for proj in [&mut attn.q_proj, &mut attn.k_proj, &mut attn.v_proj, &mut attn.o_proj] {
                *proj = proj.mixed_bf16();
            }
            let mlp = &mut layer.mlp;
            for proj in [&mut mlp.gate_proj, &mut mlp.up_proj, &mut mlp.down_proj] {
                *proj = proj.mixed_bf16();
            }
        }
        self.lm_head = self.lm_head.as_ref().map(Projection::mixed_bf16);
        Ok(self)
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Final hidden states `[B, T, hidden]` of a padded batch.
    /// `input_ids: [B, T]` (u32), `attention_mask: [B, T]` with 1 for real tokens and 0 for padding,
    /// on either side.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let (positions, bias) = Self::padding(attention_mask, input_ids.dim(1)?)?;
        self.forward_positions(input_ids, &positions, &bias, None, kernels)
    }

    /// The residual stream after the first `layers` decoder layers (the embeddings when 0), before
    /// the final norm: the cacheable lower part of a model whose bottom layers are frozen.
    pub fn lower_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        layers: usize,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (positions, bias) = Self::padding(attention_mask, input_ids.dim(1)?)?;
        let h = self.embed_tokens.forward(input_ids)?;
        self.run_layers(h, &positions, &bias, 0..layers.min(self.layers.len()), None, kernels)
    }

    /// [`Llama::lower_hidden_states`] (no-grad kernels) of rows that all begin with the same
    /// `prefix` real tokens, as the K responses of one ranking share their prompt: the prefix
    /// goes through the layers once and its keys and values serve every row. Rows that do not
    /// share it go through whole.
    pub fn lower_hidden_states_shared_prefix(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: usize,
        layers: usize,
    ) -> Result<Tensor> {
        let (rows, width) = input_ids.dims2()?;
        let mask = padding::mask_rows(attention_mask)?;
        let ids = input_ids.to_vec2::<u32>()?;
        let shared = rows > 1
            && prefix > 0
            && prefix < width
            && mask.iter().all(|row| row[..prefix].iter().all(|&real| real))
            && ids.iter().all(|row| row[..prefix] == ids[0][..prefix]);
        if !shared {
            return self.lower_hidden_states(input_ids, attention_mask, layers, Kernels::Fused);
        }
        let layers = layers.min(self.layers.len());
        let device = input_ids.device();
        let mut cache = KvCache::new(layers, prefix);
        let prefix_hidden = self.run_layers(
            self.embed_tokens.forward(&input_ids.narrow(0, 0, 1)?.narrow(1, 0, prefix)?)?,
            &[(0..prefix as u32).collect()],
            &padding::attention_bias(&[mask[0][..prefix].to_vec()], prefix, device)?,
            0..layers,
            Some(&mut cache),
            Kernels::Fused,
        )?;
        let mut cache = cache.repeat_rows(rows, width)?;
        let rest = width - prefix;
        let positions: Vec<Vec<u32>> =
            padding::positions(&mask).into_iter().map(|row| row[prefix..].to_vec()).collect();
        let rest_hidden = self.run_layers(
            self.embed_tokens.forward(&input_ids.narrow(1, prefix, rest)?)?,
            &positions,
            &padding::attention_bias(&mask, rest, device)?,
            0..layers,
            Some(&mut cache),
            Kernels::Fused,
        )?;
        Tensor::cat(&[prefix_hidden.repeat((rows, 1, 1))?, rest_hidden], 1)
    }

    /// Continues [`Llama::lower_hidden_states`] from layer `from` through the remaining layers and
    /// the final norm: `hidden_states(x) == upper_hidden_states(lower_hidden_states(x, n), n)`.
    pub fn upper_hidden_states(
        &self,
        lower: &Tensor,
        attention_mask: &Tensor,
        from: usize,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (positions, bias) = Self::padding(attention_mask, lower.dim(1)?)?;
        let h = self.run_layers(
            lower.clone(),
            &positions,
            &bias,
            from.min(self.layers.len())..self.layers.len(),
            None,
            kernels,
        )?;
        self.norm.forward(&h, kernels)
    }

    fn padding(attention_mask: &Tensor, width: usize) -> Result<(Vec<Vec<u32>>, Tensor)> {
        let mask = padding::mask_rows(attention_mask)?;
        let positions = padding::positions(&mask);
        let bias = padding::attention_bias(&mask, width, attention_mask.device())?;
        Ok((positions, bias))
    }

    /// Logits `[B, T, vocab]` of a padded batch; see [`Llama::hidden_states`].
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, kernels: Kernels) -> Result<Tensor> {
        self.lm_head(&self.hidden_states(input_ids, attention_mask, kernels)?)
    }

    /// Projects hidden states to logits.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => candle_core::bail!("this model was built without an LM head (a reward model's backbone)"),
        }
    }

    /// The general forward pass: `input_ids: [B, Tq]` at `positions`, with an attention `bias`
    /// `[B, 1, Tq, Tk]` over the cached keys plus the new ones. Appends to `cache` when given.
    pub fn forward_positions(
        &self,
        input_ids: &Tensor,
        positions: &[Vec<u32>],
        bias: &Tensor,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let h = self.embed_tokens.forward(input_ids)?;
        let h = self.run_layers(h, positions, bias, 0..self.layers.len(), cache, kernels)?;
        self.norm.forward(&h, kernels)
    }

    /// The decoder layers `range` over the residual stream `h`, on the compute pool
    /// ([`crate::compute_pool`]): a forward pass is hundreds of matrix products.
    fn run_layers(
        &self,
        h: Tensor,
        positions: &[Vec<u32>],
        bias: &Tensor,
        range: std::ops::Range<usize>,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        crate::compute_pool::on_compute_pool(|| self.run_layers_here(h, positions, bias, range, cache, kernels))
    }

    fn run_layers_here(
        &self,
        h: Tensor,
        positions: &[Vec<u32>],
        bias: &Tensor,
        range: std::ops::Range<usize>,
        cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let rotary = Rotary::new(&self.config, positions, h.dtype(), h.device())?;
        let bias = bias.to_dtype(h.dtype())?;
        self.layers_with(h, &rotary, &bias, range, cache, kernels)
    }

    /// The decoder layers `range` with the rotary tables and attention bias already built.
    fn layers_with(
        &self,
        mut h: Tensor,
        rotary: &Rotary,
        bias: &Tensor,
        range: std::ops::Range<usize>,
        mut cache: Option<&mut KvCache>,
        kernels: Kernels,
    ) -> Result<Tensor> {
        for i in range {
            let layer = &self.layers[i];
            let attn_in = layer.input_layernorm.forward(&h, kernels)?;
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            h = (&h + layer.self_attn.forward(&attn_in, rotary, bias, layer_cache, kernels)?)?;
            h = layer.mlp_block(&h, kernels)?;
        }
        Ok(h)
    }
}
