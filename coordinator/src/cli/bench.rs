//! `ibench bench`: load time, prefill and decode throughput of the engine on one model.

use std::time::Instant;

use anyhow::Context;
use ibench_worker::Engine;

use super::run_model::DeviceArgs;
use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A registered model name or a model folder.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub batch_sizes: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Decode steps per measurement.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Untimed warm-up runs first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
}

pub fn run(g: &GlobalArgs, a: BenchArgs) -> anyhow::Result<()> {
    let spec = g.load_registry()?.resolve(&a.model)?;
    let opts = a.device.load_options(&spec)?;
    let t = Instant::now();
    let engine = Engine::load(&spec.path, &opts)
        .with_context(|| format!("loading {}", spec.path.display()))?;
    let load_seconds = t.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    for &b in &a.batch_sizes {
        for _ in 0..a.warmup {
            engine.time_generation(b, a.prompt_tokens, a.new_tokens.min(8))?;
        }
        let m = engine.time_generation(b, a.prompt_tokens, a.new_tokens)?;
        tracing::info!(
            batch = b,
            prefill_tps = m.prefill_tokens_per_second(),
            decode_tps = m.decode_tokens_per_second(),
            "measured"
        );
        rows.push(serde_json::json!({
            "batch": b, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
            "prefill_seconds": m.prefill_seconds, "prefill_tokens_per_second": m.prefill_tokens_per_second(),
            "decode_seconds": m.decode_seconds, "decode_tokens_per_second": m.decode_tokens_per_second(),
        }));
    }
    let out = serde_json::json!({
        "engine": "ibench", "model": spec.name, "device": engine.report().device,
        "dtype": engine.report().compute_dtype, "load_seconds": load_seconds, "runs": rows,
    });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
