//! `ibench check-model` (the seed's "test model loading") and `ibench generate`.

use std::time::Instant;

use anyhow::Context;
use ibench_shared::{ChatMessage, GenerationParams, ModelSpec};
use ibench_worker::{ComputeDtype, DeviceSpec, Engine, GenerateRequest, LoadOptions};

use super::GlobalArgs;

/// How to place and run a local model.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Device to run on: `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, env = "IBENCH_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Compute precision: f32 (default on the CPU) or bf16 (default on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    pub fn load_options(&self, spec: &ModelSpec) -> anyhow::Result<LoadOptions> {
        let device: DeviceSpec = self.device.parse()?;
        let dtype = self
            .dtype
            .as_deref()
            .map(str::parse::<ComputeDtype>)
            .transpose()?;
        Ok(LoadOptions {
            device,
            dtype,
            quantization: spec.quantization,
            ..Default::default()
        })
    }
}

/// Sampling flags, with the seed guide's defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerationArgs {
    /// Most tokens to generate per reply.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the reply contains this text (repeatable); the stop text is cut off.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Let Qwen3 models think (`enable_thinking` in the chat template).
    #[arg(long)]
    pub enable_thinking: bool,
}

impl GenerationArgs {
    pub fn params(&self) -> anyhow::Result<GenerationParams> {
        let p = GenerationParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop: self.stop.clone(),
            enable_thinking: self.enable_thinking,
        };
        p.validate()?;
        Ok(p)
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckModelArgs {
    /// A registered model name (see `ibench models list`) or a model folder.
    pub model: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The prompt of the short test reply.
    #[arg(long, default_value = "Hello! Who are you?")]
    pub prompt: String,
    /// Tokens of the short test reply.
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A registered model name (see `ibench models list`) or a model folder.
    #[arg(long)]
    pub model: String,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message before it.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Print one JSON object (text, token_ids, prompt_token_ids, finish_reason, timings).
    #[arg(long)]
    pub json: bool,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub fn check_model(g: &GlobalArgs, a: CheckModelArgs) -> anyhow::Result<()> {
    let spec = g.load_registry()?.resolve(&a.model)?;
    let opts = a.device.load_options(&spec)?;
    let engine = Engine::load(&spec.path, &opts)
        .with_context(|| format!("loading model '{}' from {}", spec.name, spec.path.display()))?;
    let cfg = engine.config().clone();
    let params = cfg.total_params();
    let prompt = engine.encode_chat(&[ChatMessage::user(a.prompt.clone())], true, false)?;
    let t = Instant::now();
    let out = engine.generate(&[GenerateRequest {
        prompt_ids: prompt,
        params: GenerationParams {
            max_new_tokens: a.max_new_tokens,
            ..Default::default()
        },
    }])?;
    let gen_secs = t.elapsed().as_secs_f64();
    let r = engine.report();
    // Weights only; KV cache and activations come on top.
    let need = |bits: f64| (params as f64 * bits / 8.0) as u64;
    let reply = &out[0];
    if a.json {
        let v = serde_json::json!({
            "name": spec.name, "folder": r.folder, "architecture": cfg.architecture.hf_name(),
            "parameters": params, "layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
            "context": cfg.max_position_embeddings, "weight_dtype": r.weight_dtype, "compute_dtype": r.compute_dtype,
            "device": r.device, "shards": r.shards, "bytes_on_disk": r.bytes_on_disk,
            "memory_bytes": {"bf16": need(16.0), "int8": need(8.5), "int4": need(4.5)},
            "kv_bytes_per_token_bf16": cfg.kv_bytes_per_token(2),
            "load_seconds": r.load_seconds, "reply": reply.text, "reply_tokens": reply.token_ids.len(),
            "finish_reason": reply.finish_reason, "generate_seconds": gen_secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model          {} ({})", spec.name, r.folder.display());
    println!(
        "architecture   {} ({} layers, hidden {}, {} heads / {} kv heads, context {})",
        cfg.architecture.hf_name(),
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.max_position_embeddings
    );
    println!("parameters     {:.3} B", params as f64 / 1e9);
    println!(
        "weights        {} in {} shard(s), {} on disk",
        r.weight_dtype.as_deref().unwrap_or("?"),
        r.shards.len(),
        gib(r.bytes_on_disk)
    );
    println!(
        "memory needed  bf16 {} | 8-bit {} | 4-bit {} (weights; KV cache {} KiB/token at bf16)",
        gib(need(16.0)),
        gib(need(8.5)),
        gib(need(4.5)),
        cfg.kv_bytes_per_token(2) / 1024
    );
    println!(
        "loaded on      {} as {} in {:.2} s",
        r.device, r.compute_dtype, r.load_seconds
    );
    println!(
        "test reply     {:?} ({} tokens, {}, {:.2} s)",
        reply.text,
        reply.token_ids.len(),
        reply.finish_reason.as_str(),
        gen_secs
    );
    println!("OK");
    Ok(())
}

pub fn generate(g: &GlobalArgs, a: GenerateArgs) -> anyhow::Result<()> {
    let spec = g.load_registry()?.resolve(&a.model)?;
    let params = a.generation.params()?;
    let opts = a.device.load_options(&spec)?;
    let engine = Engine::load(&spec.path, &opts)
        .with_context(|| format!("loading model '{}' from {}", spec.name, spec.path.display()))?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage::system(s.clone()));
    }
    messages.push(ChatMessage::user(a.prompt.clone()));
    let prompt_ids = engine.encode_chat(&messages, true, params.enable_thinking)?;
    let t = Instant::now();
    let out = engine
        .generate(&[GenerateRequest { prompt_ids, params }])?
        .remove(0);
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": spec.name, "text": out.text, "token_ids": out.token_ids,
            "prompt_token_ids": out.prompt_token_ids, "finish_reason": out.finish_reason,
            "generate_seconds": secs, "load_seconds": engine.report().load_seconds,
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", out.text);
        tracing::info!(
            tokens = out.token_ids.len(),
            finish = out.finish_reason.as_str(),
            secs,
            "generated"
        );
    }
    Ok(())
}
