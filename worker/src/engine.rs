//! The engine: a model folder loaded as one or more pipeline stages plus its tokenizer, and the
//! generation loop (continuous batching: all requests run together, finished ones leave the batch
//! and waiting ones join, each with its own KV cache).

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ibench_shared::hf::ModelConfig;
use ibench_shared::{ChatMessage, FinishReason, GenerationParams, Quantization};

use crate::chat::ChatTokenizer;
use crate::device::{ComputeDtype, DeviceSpec};
use crate::error::{EngineError, Result};
use crate::loading::WeightFiles;
use crate::sampling::{log_softmax, Sampler};
use crate::stage::{HostStageInput, HostStageOutput, LoadedStage, SeqCache};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    /// Defaults to f32 on the CPU and bf16 on CUDA.
    pub dtype: Option<ComputeDtype>,
    pub quantization: Quantization,
    /// Split the layers into this many consecutive stages (pipeline) on the same device.
    pub stages: usize,
    /// Most sequences decoded together in one forward.
    pub max_batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            dtype: None,
            quantization: Quantization::None,
            stages: 1,
            max_batch: 32,
        }
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub params: GenerationParams,
}

/// One finished generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerateOutput {
    /// The reply, special tokens skipped, cut before a stop string.
    pub text: String,
    /// Generated ids, including a final eos id when one ended the generation (as transformers).
    pub token_ids: Vec<u32>,
    pub prompt_token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Facts about a load, for `check-model`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub folder: PathBuf,
    pub shards: Vec<PathBuf>,
    pub bytes_on_disk: u64,
    pub weight_dtype: Option<String>,
    pub compute_dtype: String,
    pub quantization: Quantization,
    pub device: String,
    pub load_seconds: f64,
    pub stages: Vec<(usize, usize)>,
}

/// What [`Engine::time_generation`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepTimings {
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl StepTimings {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        (self.batch * self.prompt_len) as f64 / self.prefill_seconds
    }
    pub fn decode_tokens_per_second(&self) -> f64 {
        (self.batch * self.new_tokens) as f64 / self.decode_seconds
    }
}

pub struct Engine {
    stages: Vec<LoadedStage>,
    tokenizer: ChatTokenizer,
    cfg: ModelConfig,
    max_batch: usize,
    report: LoadReport,
}

/// Even split of `n` layers into `k` consecutive ranges.
pub fn split_layers(n: usize, k: usize) -> Vec<Range<usize>> {
    let k = k.clamp(1, n.max(1));
    (0..k).map(|i| (i * n / k)..((i + 1) * n / k)).collect()
}

struct Active {
    index: usize,
    caches: Vec<SeqCache>,
    generated: Vec<u32>,
    sampler: Sampler,
    params: GenerationParams,
}

impl Engine {
    /// Loads a Hugging Face model folder.
    pub fn load(folder: &Path, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        if !folder.is_dir() {
            return Err(EngineError::MissingFile {
                path: folder.to_path_buf(),
                what: "the model folder does not exist",
            });
        }
        let cfg = ModelConfig::from_folder(folder)?;
        let tokenizer = ChatTokenizer::from_folder(folder)?;
        let weights = WeightFiles::open(folder)?;
        let dtype = opts.dtype.unwrap_or(ComputeDtype::default_for(opts.device));
        let ranges = split_layers(cfg.num_layers, opts.stages);
        let quantization = match (opts.quantization, opts.device) {
            (Quantization::Int4, DeviceSpec::Cpu) => {
                tracing::warn!("4-bit weights need CUDA (the CPU backend has no 4-bit kind): loading 8-bit instead");
                Quantization::Int8
            }
            (q, _) => q,
        };
        let mut stages = Vec::with_capacity(ranges.len());
        for r in &ranges {
            tracing::debug!(layers = ?r, device = %opts.device, "loading stage");
            stages.push(LoadedStage::load(
                &cfg,
                &weights,
                r.clone(),
                &opts.device,
                dtype,
                quantization,
            )?);
        }
        let report = LoadReport {
            folder: folder.to_path_buf(),
            shards: weights.shard_paths().map(Path::to_path_buf).collect(),
            bytes_on_disk: weights.bytes_on_disk(),
            weight_dtype: weights.dtype("model.embed_tokens.weight"),
            compute_dtype: dtype.to_string(),
            quantization,
            device: opts.device.to_string(),
            load_seconds: start.elapsed().as_secs_f64(),
            stages: ranges.iter().map(|r| (r.start, r.end)).collect(),
        };
        tracing::info!(folder = %folder.display(), arch = ?cfg.architecture, layers = cfg.num_layers,
            secs = report.load_seconds, "model loaded");
        Ok(Self {
            stages,
            tokenizer,
            cfg,
            max_batch: opts.max_batch.max(1),
            report,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }
    pub fn report(&self) -> &LoadReport {
        &self.report
    }
    /// The context window in tokens.
    pub fn context_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: bool,
    ) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_chat(messages, add_generation_prompt, enable_thinking)
    }
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    fn new_caches(&self) -> Vec<SeqCache> {
        self.stages.iter().map(|s| s.new_cache()).collect()
    }

    /// Runs all stages; returns logits rows.
    fn forward(
        &self,
        tokens: Vec<Vec<u32>>,
        caches: &mut [&mut Vec<SeqCache>],
        all_logits: bool,
    ) -> Result<(Vec<f32>, usize)> {
        let mut input = HostStageInput::Tokens(tokens);
        for (si, stage) in self.stages.iter().enumerate() {
            let mut sc: Vec<&mut SeqCache> = caches.iter_mut().map(|c| &mut c[si]).collect();
            match stage.forward(input, &mut sc, all_logits)? {
                HostStageOutput::Hidden { data, lens, t_max } => {
                    input = HostStageInput::Hidden { data, lens, t_max }
                }
                HostStageOutput::Logits { data, vocab, .. } => return Ok((data, vocab)),
            }
        }
        Err(EngineError::StageInput(
            "the last stage produced no logits".into(),
        ))
    }

    /// Logits at every position of `ids` (`ids.len()` rows of `vocab`), without cache reuse.
    pub fn prompt_logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_prompt(0, ids, 0)?;
        let mut caches = self.new_caches();
        let (data, vocab) = self.forward(vec![ids.to_vec()], &mut [&mut caches], true)?;
        Ok(data.chunks(vocab).map(|c| c.to_vec()).collect())
    }

    /// log-softmax over the vocabulary for the token after `prompt_ids`.
    pub fn next_token_logprobs(&self, prompt_ids: &[u32]) -> Result<Vec<f32>> {
        self.check_prompt(0, prompt_ids, 0)?;
        let mut caches = self.new_caches();
        let (data, _) = self.forward(vec![prompt_ids.to_vec()], &mut [&mut caches], false)?;
        Ok(log_softmax(&data))
    }

    fn check_prompt(&self, index: usize, ids: &[u32], room: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(EngineError::EmptyPrompt { index });
        }
        if ids.len() + room > self.context_len() {
            return Err(EngineError::PromptTooLong {
                index,
                prompt_tokens: ids.len(),
                context: self.context_len(),
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                id,
                vocab: self.cfg.vocab_size,
            });
        }
        Ok(())
    }

    /// Generates for every request, batched; outputs come back in request order.
    pub fn generate(&self, reqs: &[GenerateRequest]) -> Result<Vec<GenerateOutput>> {
        for (i, r) in reqs.iter().enumerate() {
            r.params.validate()?;
            self.check_prompt(i, &r.prompt_ids, 1)?;
        }
        let mut out: Vec<Option<GenerateOutput>> = vec![None; reqs.len()];
        let mut waiting: VecDeque<usize> = (0..reqs.len()).collect();
        let mut active: Vec<Active> = Vec::new();
        while !waiting.is_empty() || !active.is_empty() {
            // Admit waiting requests into free slots and prefill them together.
            let mut joining = Vec::new();
            while active.len() + joining.len() < self.max_batch {
                let Some(i) = waiting.pop_front() else { break };
                joining.push(Active {
                    index: i,
                    caches: self.new_caches(),
                    generated: Vec::new(),
                    sampler: Sampler::new(&reqs[i].params),
                    params: reqs[i].params.clone(),
                });
            }
            if !joining.is_empty() {
                let tokens = joining
                    .iter()
                    .map(|a| reqs[a.index].prompt_ids.clone())
                    .collect();
                let mut caches: Vec<&mut Vec<SeqCache>> =
                    joining.iter_mut().map(|a| &mut a.caches).collect();
                let (logits, vocab) = self.forward(tokens, &mut caches, false)?;
                for (a, row) in joining.iter_mut().zip(logits.chunks(vocab)) {
                    let t = a.sampler.sample(row);
                    a.generated.push(t);
                }
                active.extend(joining);
            } else {
                let tokens = active
                    .iter()
                    .map(|a| vec![*a.generated.last().expect("prefilled")])
                    .collect();
                let mut caches: Vec<&mut Vec<SeqCache>> =
                    active.iter_mut().map(|a| &mut a.caches).collect();
                let (logits, vocab) = self.forward(tokens, &mut caches, false)?;
                for (a, row) in active.iter_mut().zip(logits.chunks(vocab)) {
                    let t = a.sampler.sample(row);
                    a.generated.push(t);
                }
            }
            // Retire finished sequences.
            let mut still = Vec::with_capacity(active.len());
            for a in active {
                match self.finished(&a, reqs[a.index].prompt_ids.len())? {
                    Some(done) => {
                        out[a.index] = Some(GenerateOutput {
                            prompt_token_ids: reqs[a.index].prompt_ids.clone(),
                            ..done
                        })
                    }
                    None => still.push(a),
                }
            }
            active = still;
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every request finishes"))
            .collect())
    }

    /// Whether a sequence is done after its last token, and its output if so.
    fn finished(&self, a: &Active, prompt_len: usize) -> Result<Option<GenerateOutput>> {
        let total = prompt_len + a.generated.len();
        Ok(
            finish_check(&self.cfg, &self.tokenizer, &a.params, &a.generated, total)?.map(
                |(finish_reason, text)| GenerateOutput {
                    text,
                    token_ids: a.generated.clone(),
                    prompt_token_ids: Vec::new(),
                    finish_reason,
                },
            ),
        )
    }

    /// Times one prefill of `batch` prompts of `prompt_len` tokens and `new_tokens` greedy decode
    /// steps (eos ignored), for benchmarks. Token ids are a fixed pseudo-random sequence.
    pub fn time_generation(
        &self,
        batch: usize,
        prompt_len: usize,
        new_tokens: usize,
    ) -> Result<StepTimings> {
        let vocab = self.cfg.vocab_size as u64;
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        };
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|_| (0..prompt_len).map(|_| next()).collect())
            .collect();
        self.check_prompt(0, &prompts[0], new_tokens)?;
        let mut caches: Vec<Vec<SeqCache>> = (0..batch).map(|_| self.new_caches()).collect();
        let t = Instant::now();
        let mut refs: Vec<&mut Vec<SeqCache>> = caches.iter_mut().collect();
        let (logits, vocab) = self.forward(prompts, &mut refs, false)?;
        let prefill = t.elapsed().as_secs_f64();
        let mut last: Vec<u32> = logits.chunks(vocab).map(crate::sampling::argmax).collect();
        let t = Instant::now();
        for _ in 0..new_tokens {
            let tokens = last.iter().map(|&x| vec![x]).collect();
            let mut refs: Vec<&mut Vec<SeqCache>> = caches.iter_mut().collect();
            let (logits, vocab) = self.forward(tokens, &mut refs, false)?;
            last = logits.chunks(vocab).map(crate::sampling::argmax).collect();
        }
        let decode = t.elapsed().as_secs_f64();
        Ok(StepTimings {
            batch,
            prompt_len,
            new_tokens,
            prefill_seconds: prefill,
            decode_seconds: decode,
        })
    }

    /// Convenience: one chat turn for each conversation.
    pub fn chat(
        &self,
        conversations: &[Vec<ChatMessage>],
        params: &GenerationParams,
    ) -> Result<Vec<GenerateOutput>> {
        let reqs = conversations
            .iter()
            .map(|m| {
                Ok(GenerateRequest {
                    prompt_ids: self.encode_chat(m, true, params.enable_thinking)?,
                    params: params.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.generate(&reqs)
    }
}

/// The finish rules shared by the engine and the cluster pipeline, checked after each new token:
/// an eos id (the text excludes it), a stop string (the text is cut before it), `max_new_tokens`,
/// or the context window (`total_len` = prompt + generated tokens). Returns the reason and the text.
pub fn finish_check(
    cfg: &ModelConfig,
    tok: &ChatTokenizer,
    params: &GenerationParams,
    generated: &[u32],
    total_len: usize,
) -> Result<Option<(FinishReason, String)>> {
    let Some(&last) = generated.last() else {
        return Ok(None);
    };
    if cfg.eos_token_ids.contains(&last) {
        return Ok(Some((
            FinishReason::Eos,
            tok.decode(&generated[..generated.len() - 1])?,
        )));
    }
    if !params.stop.is_empty() {
        let text = tok.decode(generated)?;
        if let Some(cut) = params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            return Ok(Some((FinishReason::Stop, text[..cut].to_string())));
        }
    }
    if generated.len() >= params.max_new_tokens {
        return Ok(Some((FinishReason::Length, tok.decode(generated)?)));
    }
    if total_len >= cfg.max_position_embeddings {
        return Ok(Some((FinishReason::ContextFull, tok.decode(generated)?)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_evenly_and_cover_everything() {
        assert_eq!(split_layers(3, 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(split_layers(36, 1), vec![0..36]);
        assert_eq!(split_layers(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(split_layers(2, 5), vec![0..1, 1..2]);
    }
}
