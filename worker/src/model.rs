//! The decoder-only transformer shared by Llama, Qwen2 and Qwen3, as a pipeline stage: a range of
//! decoder layers; the first stage also embeds tokens, the last also norms and projects to logits.
//! Parameter names follow Hugging Face checkpoints so loading needs no renaming map.
//!
//! Variable-length batches: every sequence brings a chunk of new tokens (a whole prompt when it
//! joins, one token per decode step) on top of its own KV cache. The chunks are right-padded to
//! the longest, the caches left-aligned and padded to the longest, and one mask hides both paddings.

use std::ops::Range;

use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::quantization::{QuantLevel, QuantParam, QuantScheme, QuantStore, QuantValue};
use burn::tensor::{Int, Tensor, TensorData};
use ibench_shared::hf::ModelConfig;
use ibench_shared::Quantization;

use crate::error::{EngineError, Result};
use crate::loading::WeightFiles;

/// The weights of a linear layer: dense `[in, out]` (so `x.matmul(w)` needs no transpose per call),
/// or quantized `[out, in]` with per-block scales along `in`, dequantized one layer at a time.
enum LinearWeight<B: Backend> {
    Dense(Tensor<B, 2>),
    Quantized(Tensor<B, 2>),
}

pub struct Linear<B: Backend> {
    weight: LinearWeight<B>,
    out_features: usize,
    bias: Option<Tensor<B, 1>>,
}

/// Symmetric integer weights with one f32 scale per block of 32 inputs: about 8.5 bits a weight
/// for 8-bit, 4.5 for 4-bit (bitsandbytes' int8 and NF4 land at the same sizes). burn's CPU backend
/// stores quantized values as one i8 each and has no 4-bit kind, so there 4-bit becomes 8-bit
/// (with a warning at load time); CUDA packs 4-bit values eight to a u32.
pub fn quant_scheme(q: Quantization, cpu: bool) -> Option<QuantScheme> {
    let (value, store) = match (q, cpu) {
        (Quantization::None, _) => return None,
        (_, true) => (QuantValue::Q8S, QuantStore::Native),
        (Quantization::Int8, false) => (QuantValue::Q8S, QuantStore::PackedU32(0)),
        (Quantization::Int4, false) => (QuantValue::Q4S, QuantStore::PackedU32(0)),
    };
    Some(
        QuantScheme::default()
            .with_value(value)
            .with_level(QuantLevel::block([32]))
            .with_store(store)
            .with_param(QuantParam::F32),
    )
}

impl<B: Backend> Linear<B> {
    fn load(
        w: &WeightFiles,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        q: Quantization,
        dev: &B::Device,
    ) -> Result<Self> {
        let weight = tensor2::<B>(w, &format!("{prefix}.weight"), out, inp, dev)?;
        let bias = if bias {
            Some(tensor1::<B>(w, &format!("{prefix}.bias"), out, dev)?)
        } else {
            None
        };
        let weight = match quant_scheme(q, dev_is_cpu::<B>(dev)) {
            Some(scheme) if inp % 32 == 0 => {
                LinearWeight::Quantized(weight.quantize_dynamic(&scheme))
            }
            _ => LinearWeight::Dense(weight.transpose()),
        };
        Ok(Self {
            weight,
            out_features: out,
            bias,
        })
    }

    /// # Shapes
    /// x: `[batch, seq, in]` -> `[batch, seq, out]`
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, i] = x.dims();
        let out = self.out_features;
        let w = match &self.weight {
            LinearWeight::Dense(w) => w.clone(),
            LinearWeight::Quantized(q) => q.clone().dequantize().transpose(),
        };
        let y = x.reshape([b * t, i]).matmul(w);
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze_dim(0),
            None => y,
        };
        y.reshape([b, t, out])
    }
}

fn dev_is_cpu<B: Backend>(dev: &B::Device) -> bool {
    format!("{dev:?}").to_ascii_lowercase().contains("cpu")
}

fn tensor1<B: Backend>(
    w: &WeightFiles,
    name: &str,
    n: usize,
    dev: &B::Device,
) -> Result<Tensor<B, 1>> {
    let h = w.read(name, &[n])?;
    Ok(Tensor::from_data(TensorData::new(h.data, [n]), dev))
}

fn tensor2<B: Backend>(
    w: &WeightFiles,
    name: &str,
    r: usize,
    c: usize,
    dev: &B::Device,
) -> Result<Tensor<B, 2>> {
    let h = w.read(name, &[r, c])?;
    Ok(Tensor::from_data(TensorData::new(h.data, [r, c]), dev))
}

/// RMSNorm over the last dimension, computed like transformers (in the activation dtype).
fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let var = x.clone().powi_scalar(2).mean_dim(D - 1);
    let normed = x * (var + eps).sqrt().recip();
    let mut shape = [1usize; D];
    shape[D - 1] = weight.dims()[0];
    normed * weight.clone().reshape(shape)
}

pub struct DecoderLayer<B: Backend> {
    input_layernorm: Tensor<B, 1>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    q_norm: Option<Tensor<B, 1>>,
    k_norm: Option<Tensor<B, 1>>,
    post_attention_layernorm: Tensor<B, 1>,
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn new(
        cfg: &ModelConfig,
        w: &WeightFiles,
        i: usize,
        quant: Quantization,
        dev: &B::Device,
    ) -> Result<Self> {
        let p = format!("model.layers.{i}");
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let qk_norm = |n: &str| -> Result<Option<Tensor<B, 1>>> {
            if cfg.qk_norm {
                Ok(Some(tensor1::<B>(
                    w,
                    &format!("{p}.self_attn.{n}.weight"),
                    hd,
                    dev,
                )?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            input_layernorm: tensor1::<B>(w, &format!("{p}.input_layernorm.weight"), h, dev)?,
            q_proj: Linear::load(
                w,
                &format!("{p}.self_attn.q_proj"),
                q,
                h,
                cfg.qkv_bias,
                quant,
                dev,
            )?,
            k_proj: Linear::load(
                w,
                &format!("{p}.self_attn.k_proj"),
                kv,
                h,
                cfg.qkv_bias,
                quant,
                dev,
            )?,
            v_proj: Linear::load(
                w,
                &format!("{p}.self_attn.v_proj"),
                kv,
                h,
                cfg.qkv_bias,
                quant,
                dev,
            )?,
            o_proj: Linear::load(w, &format!("{p}.self_attn.o_proj"), h, q, false, quant, dev)?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            post_attention_layernorm: tensor1::<B>(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                dev,
            )?,
            gate_proj: Linear::load(
                w,
                &format!("{p}.mlp.gate_proj"),
                cfg.intermediate_size,
                h,
                false,
                quant,
                dev,
            )?,
            up_proj: Linear::load(
                w,
                &format!("{p}.mlp.up_proj"),
                cfg.intermediate_size,
                h,
                false,
                quant,
                dev,
            )?,
            down_proj: Linear::load(
                w,
                &format!("{p}.mlp.down_proj"),
                h,
                cfg.intermediate_size,
                false,
                quant,
                dev,
            )?,
        })
    }
}

/// The KV cache of one sequence in one stage: per layer `[1, kv_heads, len, head_dim]`.
pub struct StageCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> StageCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What flows into a stage.
pub enum StageIn<B: Backend> {
    /// Token ids per sequence (first stage).
    Tokens(Vec<Vec<u32>>),
    /// Hidden states `[batch, max_chunk, hidden]` with the chunk length of each sequence.
    Hidden(Tensor<B, 3>, Vec<usize>),
}

/// What flows out of a stage.
pub enum StageOut<B: Backend> {
    Hidden(Tensor<B, 3>, Vec<usize>),
    /// `[batch, vocab]` at each sequence's last new position, or `[batch, max_chunk, vocab]` flattened
    /// to `[batch * max_chunk, vocab]` when all positions were asked for.
    Logits(Tensor<B, 2>),
}

/// A contiguous range of decoder layers of one model on one device.
pub struct Stage<B: Backend> {
    pub cfg: ModelConfig,
    pub layers_range: Range<usize>,
    embed_tokens: Option<Tensor<B, 2>>,
    layers: Vec<DecoderLayer<B>>,
    norm: Option<Tensor<B, 1>>,
    /// `[hidden, vocab]`
    lm_head_t: Option<Tensor<B, 2>>,
    /// `[max_pos, head_dim]` each, the halves repeated as transformers' rotate_half expects.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    device: B::Device,
}

impl<B: Backend> Stage<B> {
    /// Loads layers `range` of the model in `w` onto `device`.
    pub fn load(
        cfg: &ModelConfig,
        w: &WeightFiles,
        range: Range<usize>,
        q: Quantization,
        device: &B::Device,
    ) -> Result<Self> {
        if range.start >= range.end || range.end > cfg.num_layers {
            return Err(EngineError::StageInput(format!(
                "layer range {}..{} is not within the model's {} layers",
                range.start, range.end, cfg.num_layers
            )));
        }
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let first = range.start == 0;
        let last = range.end == cfg.num_layers;
        let embed = if first || (last && cfg.tie_word_embeddings) {
            Some(tensor2::<B>(w, "model.embed_tokens.weight", v, h, device)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(range.len());
        for i in range.clone() {
            layers.push(DecoderLayer::new(cfg, w, i, q, device)?);
        }
        let (norm, lm_head_t) = if last {
            let norm = tensor1::<B>(w, "model.norm.weight", h, device)?;
            let head = if cfg.tie_word_embeddings {
                embed.clone().expect("loaded above when tied").transpose()
            } else {
                if !w.contains("lm_head.weight") {
                    return Err(EngineError::MissingTensor {
                        name: "lm_head.weight (config.json says tie_word_embeddings = false)"
                            .into(),
                        folder: w.folder().to_path_buf(),
                    });
                }
                tensor2::<B>(w, "lm_head.weight", v, h, device)?.transpose()
            };
            (Some(norm), Some(head))
        } else {
            (None, None)
        };
        let (cos, sin) = rope_tables::<B>(cfg, device);
        Ok(Self {
            cfg: cfg.clone(),
            layers_range: range,
            embed_tokens: if first { embed } else { None },
            layers,
            norm,
            lm_head_t,
            cos,
            sin,
            device: device.clone(),
        })
    }

    pub fn is_first(&self) -> bool {
        self.layers_range.start == 0
    }
    pub fn is_last(&self) -> bool {
        self.layers_range.end == self.cfg.num_layers
    }
    pub fn device(&self) -> &B::Device {
        &self.device
    }
    pub fn new_cache(&self) -> StageCache<B> {
        StageCache::new(self.layers.len())
    }

    /// Runs the stage on a batch of sequence chunks, appending to each sequence's cache.
    ///
    /// # Shapes
    /// - input tokens: one `Vec<u32>` per sequence (lengths may differ), or hidden `[batch, max_chunk, hidden]`
    /// - output hidden: `[batch, max_chunk, hidden]`; logits `[batch, vocab]` (last new position of each
    ///   sequence), or `[batch * max_chunk, vocab]` when `all_logits`
    pub fn forward(
        &self,
        input: StageIn<B>,
        caches: &mut [&mut StageCache<B>],
        all_logits: bool,
    ) -> Result<StageOut<B>> {
        let (mut x, lens) = match input {
            StageIn::Tokens(tokens) => {
                let embed = self.embed_tokens.as_ref().ok_or_else(|| {
                    EngineError::StageInput("tokens sent to a stage that does not embed".into())
                })?;
                let lens: Vec<usize> = tokens.iter().map(|t| t.len()).collect();
                let t_max = lens.iter().copied().max().unwrap_or(0);
                let mut ids = Vec::with_capacity(tokens.len() * t_max);
                for t in &tokens {
                    for &id in t {
                        if id as usize >= self.cfg.vocab_size {
                            return Err(EngineError::TokenOutOfRange {
                                id,
                                vocab: self.cfg.vocab_size,
                            });
                        }
                        ids.push(id as i64);
                    }
                    ids.extend(std::iter::repeat_n(0i64, t_max - t.len()));
                }
                let idx = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(ids, [tokens.len() * t_max]),
                    &self.device,
                );
                let x = embed.clone().select(0, idx).reshape([
                    tokens.len(),
                    t_max,
                    self.cfg.hidden_size,
                ]);
                (x, lens)
            }
            StageIn::Hidden(x, lens) => {
                if self.is_first() {
                    return Err(EngineError::StageInput(
                        "hidden states sent to the first stage".into(),
                    ));
                }
                (x, lens)
            }
        };
        let b = lens.len();
        if caches.len() != b || b == 0 || lens.contains(&0) {
            return Err(EngineError::StageInput(format!(
                "{} caches for {} sequences with chunk lengths {:?}",
                caches.len(),
                b,
                lens
            )));
        }
        let t_max = x.dims()[1];
        let past: Vec<usize> = caches.iter().map(|c| c.len).collect();
        let total: Vec<usize> = past.iter().zip(&lens).map(|(p, l)| p + l).collect();
        let l_max = *total.iter().max().expect("non-empty batch");
        if l_max > self.cfg.max_position_embeddings {
            return Err(EngineError::StageInput(format!(
                "sequence of {l_max} tokens exceeds the context of {}",
                self.cfg.max_position_embeddings
            )));
        }
        // Rotary tables for each (sequence, new position).
        let mut pos = Vec::with_capacity(b * t_max);
        for i in 0..b {
            for j in 0..t_max {
                pos.push((past[i] + j.min(lens[i] - 1)) as i64);
            }
        }
        let pos = Tensor::<B, 1, Int>::from_data(TensorData::new(pos, [b * t_max]), &self.device);
        let hd = self.cfg.head_dim;
        let cos = self
            .cos
            .clone()
            .select(0, pos.clone())
            .reshape([b, 1, t_max, hd]);
        let sin = self.sin.clone().select(0, pos).reshape([b, 1, t_max, hd]);
        // Additive mask [b, 1, t_max, l_max]: key l is visible to query j of sequence i when
        // l <= past_i + j and l < total_i.
        let mut mask = vec![0f32; b * t_max * l_max];
        for i in 0..b {
            for j in 0..t_max {
                let visible = (past[i] + j.min(lens[i] - 1) + 1).min(total[i]);
                for l in visible..l_max {
                    mask[(i * t_max + j) * l_max + l] = f32::NEG_INFINITY;
                }
            }
        }
        let mask =
            Tensor::<B, 4>::from_data(TensorData::new(mask, [b, 1, t_max, l_max]), &self.device);

        for (li, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, li, x, &cos, &sin, &mask, caches, &lens, &past, l_max);
        }
        for (c, l) in caches.iter_mut().zip(&lens) {
            c.len += l;
        }
        if !self.is_last() {
            return Ok(StageOut::Hidden(x, lens));
        }
        let h = self.cfg.hidden_size;
        let x = if all_logits {
            x.reshape([b * t_max, h])
        } else {
            let last: Vec<i64> = lens
                .iter()
                .enumerate()
                .map(|(i, l)| (i * t_max + l - 1) as i64)
                .collect();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [b]), &self.device);
            x.reshape([b * t_max, h]).select(0, idx)
        };
        let x = rms_norm(
            x,
            self.norm.as_ref().expect("last stage has a norm"),
            self.cfg.rms_norm_eps,
        );
        Ok(StageOut::Logits(x.matmul(
            self.lm_head_t.clone().expect("last stage has a head"),
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        layer: &DecoderLayer<B>,
        li: usize,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 4>,
        sin: &Tensor<B, 4>,
        mask: &Tensor<B, 4>,
        caches: &mut [&mut StageCache<B>],
        lens: &[usize],
        past: &[usize],
        l_max: usize,
    ) -> Tensor<B, 3> {
        let cfg = &self.cfg;
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let residual = x.clone();
        let xn = rms_norm(x, &layer.input_layernorm, eps);
        let q = layer.q_proj.forward(xn.clone()).reshape([b, t, nh, hd]);
        let k = layer.k_proj.forward(xn.clone()).reshape([b, t, nkv, hd]);
        let v = layer.v_proj.forward(xn).reshape([b, t, nkv, hd]);
        let (q, k) = match (&layer.q_norm, &layer.k_norm) {
            (Some(qn), Some(kn)) => (rms_norm(q, qn, eps), rms_norm(k, kn, eps)),
            _ => (q, k),
        };
        let q = apply_rope(q.swap_dims(1, 2), cos, sin); // [b, nh, t, hd]
        let k = apply_rope(k.swap_dims(1, 2), cos, sin); // [b, nkv, t, hd]
        let v = v.swap_dims(1, 2);

        // Append each sequence's new keys/values to its cache, then pad all to l_max.
        let mut ks = Vec::with_capacity(b);
        let mut vs = Vec::with_capacity(b);
        for i in 0..b {
            let ki = k.clone().slice([i..i + 1, 0..nkv, 0..lens[i], 0..hd]);
            let vi = v.clone().slice([i..i + 1, 0..nkv, 0..lens[i], 0..hd]);
            let slot = &mut caches[i].layers[li];
            let (kc, vc) = match slot.take() {
                Some((kp, vp)) => (Tensor::cat(vec![kp, ki], 2), Tensor::cat(vec![vp, vi], 2)),
                None => (ki, vi),
            };
            let len = past[i] + lens[i];
            let pad = l_max - len;
            let (kp, vp) = if pad > 0 {
                let z = Tensor::<B, 4>::zeros([1, nkv, pad, hd], &self.device);
                (
                    Tensor::cat(vec![kc.clone(), z.clone()], 2),
                    Tensor::cat(vec![vc.clone(), z], 2),
                )
            } else {
                (kc.clone(), vc.clone())
            };
            *slot = Some((kc, vc));
            ks.push(kp);
            vs.push(vp);
        }
        let kb = if b == 1 {
            ks.pop().expect("one")
        } else {
            Tensor::cat(ks, 0)
        };
        let vb = if b == 1 {
            vs.pop().expect("one")
        } else {
            Tensor::cat(vs, 0)
        };
        let rep = nh / nkv;
        let kb = repeat_kv(kb, rep);
        let vb = repeat_kv(vb, rep);
        let scores = q.matmul(kb.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt()) + mask.clone();
        let probs = softmax(scores, 3);
        let attn = probs.matmul(vb).swap_dims(1, 2).reshape([b, t, nh * hd]);
        let x = residual + layer.o_proj.forward(attn);
        let residual = x.clone();
        let xn = rms_norm(x, &layer.post_attention_layernorm, eps);
        let mlp = layer
            .down_proj
            .forward(silu(layer.gate_proj.forward(xn.clone())) * layer.up_proj.forward(xn));
        residual + mlp
    }
}

/// `[b, nkv, l, hd]` -> `[b, nkv * rep, l, hd]`, each kv head repeated `rep` times in place.
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, nkv, l, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, rep, l, hd])
        .reshape([b, nkv * rep, l, hd])
}

/// transformers' `q * cos + rotate_half(q) * sin`.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, n, t, hd] = x.dims();
    let half = hd / 2;
    let x1 = x.clone().slice([0..b, 0..n, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..n, 0..t, half..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// cos/sin tables `[max_pos, head_dim]`, computed in f64 and rounded once, like transformers'
/// float32 inv_freq (computed as `1 / theta^(2i/d)` in float32).
fn rope_tables<B: Backend>(cfg: &ModelConfig, dev: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let hd = cfg.head_dim;
    let n = cfg.max_position_embeddings;
    let half = hd / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
        .collect();
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in 0..n {
        for _ in 0..2 {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [n, hd]), dev),
        Tensor::from_data(TensorData::new(sin, [n, hd]), dev),
    )
}
