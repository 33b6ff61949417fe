//! `ibench compare`: models under test in simulated multi-turn consultations, judged by an LLM.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use ibench_shared::GenerationParams;
use serde::{Deserialize, Serialize};

use super::GlobalArgs;
use crate::cluster::RemotePool;
use crate::eval::backend::{
    ApiKey, ChatBackend, LocalBackend, OpenAiBackend, RetryPolicy, DASHSCOPE_BASE,
};
use crate::eval::calls::Calls;
use crate::eval::pool::{InProcessPool, ModelPool};
use crate::eval::report;
use crate::eval::run::{self, Env, EvalConfig, Mode, ScenarioSource, SystemPrompt};
use crate::eval::scenario::{Domain, Language, Selection};
use crate::eval::store::{short_hash, Store};

/// The simulator and judge when no API key is given (docs/evaluation.md).
pub const DEFAULT_LOCAL: &str = "local:qwen2.5-coder-0.5b-instruct";
/// The simulator and judge on DashScope when an API key is given.
pub const DEFAULT_API_MODEL: &str = "qwen-plus";
/// The settings file of a run directory.
pub const RUN_FILE: &str = "run.json";

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Models under test: registered names (`ibench models list`) or model folders.
    #[arg(long, num_args = 1..)]
    pub models: Vec<String>,
    /// Opening lines to use instead of --scenarios; the simulator invents each hidden profile
    /// (stored with the run, so reruns use the same one).
    #[arg(long, num_args = 1..)]
    pub prompts: Vec<String>,
    /// `builtin` (40 scenarios) or a JSONL file of scenarios (format in docs/evaluation.md).
    #[arg(long, default_value = "builtin")]
    pub scenarios: String,
    /// Only these scenario ids (comma-separated or repeated), in this order.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub scenario_ids: Vec<String>,
    /// Only scenarios in this language.
    #[arg(long, value_parser = ["zh", "en"])]
    pub language: Option<String>,
    /// Only scenarios of this domain.
    #[arg(long, value_parser = ["medical", "psychological"])]
    pub domain: Option<String>,
    /// At most this many scenarios (after the other filters).
    #[arg(long)]
    pub limit: Option<usize>,
    /// The simulated patient: an API model name (e.g. qwen-plus) at --api-base, or `local:MODEL`.
    /// Default: qwen-plus with an API key, else local:qwen2.5-coder-0.5b-instruct.
    #[arg(long)]
    pub simulator: Option<String>,
    /// The judge, as --simulator.
    #[arg(long)]
    pub judge: Option<String>,
    /// OpenAI-compatible API base for the simulator and judge.
    #[arg(long, env = "IBENCH_API_BASE", default_value = DASHSCOPE_BASE)]
    pub api_base: String,
    /// API key for --api-base (never logged or stored).
    #[arg(long, env = "DASHSCOPE_API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,
    /// Model turns per dialogue at most.
    #[arg(long, default_value_t = 3)]
    pub max_turns: usize,
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Let Qwen3 models think (`enable_thinking` in the chat template).
    #[arg(long)]
    pub enable_thinking: bool,
    /// `dialogue` (with the simulated patient), `turn` (teacher-forced turns on fixed histories)
    /// or `both`.
    #[arg(long, value_enum, default_value = "dialogue")]
    pub mode: Mode,
    /// Judge each item K times and keep the median (API judges).
    #[arg(long, default_value_t = 1)]
    pub judge_repeats: usize,
    /// Also judge every pair of models head to head, in both orders.
    #[arg(long)]
    pub pairwise: bool,
    /// Judge whole dialogues only, not every turn.
    #[arg(long)]
    pub no_turn_judging: bool,
    /// Always run --max-turns turns, even after a reply that asks nothing more.
    #[arg(long)]
    pub no_early_stop: bool,
    /// System prompt of the models under test; `none` for none. Default: a neutral role line.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Run directory (default: runs/<hash of the settings>, so the same command resumes).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out; without --models, with the settings stored there.
    #[arg(long)]
    pub resume: bool,
    /// Run every local model on this device (`cpu`, `cuda:N`) instead of its registry device_map.
    #[arg(long, conflicts_with = "coordinator")]
    pub device: Option<String>,
    /// Run the models (and `local:` simulators and judges) on the cluster of this coordinator,
    /// e.g. http://coordinator:50051, instead of in this process. Model names are resolved in the
    /// coordinator's registry; results are the same as in one process.
    #[arg(long, env = "IBENCH_COORDINATOR")]
    pub coordinator: Option<String>,
    #[command(flatten)]
    pub token: super::cluster::TokenArgs,
    #[command(flatten)]
    pub tls: super::cluster::TlsArgs,
    /// Models under test evaluated at the same time (default: 1 in one process, all of them
    /// with --coordinator, where the cluster places them side by side).
    #[arg(long)]
    pub concurrent_models: Option<usize>,
    /// Seconds per HTTP try.
    #[arg(long, default_value_t = 120.0)]
    pub http_timeout: f64,
    /// Tries per HTTP call (429, 5xx, timeouts and malformed bodies are retried).
    #[arg(long, default_value_t = 5)]
    pub http_attempts: u32,
    /// First retry delay in milliseconds; doubled every retry.
    #[arg(long, default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// HTTP calls in flight at most.
    #[arg(long, default_value_t = 8)]
    pub http_concurrency: usize,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
}

/// `run.json`: everything needed to resume, and nothing secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    pub config: EvalConfig,
    pub simulator: String,
    pub judge: String,
    pub api_base: String,
    pub retry: RetryPolicy,
    pub http_concurrency: usize,
    pub device: Option<String>,
}

fn settings(a: &CompareArgs) -> anyhow::Result<RunFile> {
    let scenarios = if a.prompts.is_empty() {
        ScenarioSource::Set {
            source: a.scenarios.clone(),
            selection: Selection {
                ids: a.scenario_ids.clone(),
                language: a.language.as_deref().map(|l| {
                    if l == "zh" {
                        Language::Zh
                    } else {
                        Language::En
                    }
                }),
                domain: a.domain.as_deref().map(|d| {
                    if d == "medical" {
                        Domain::Medical
                    } else {
                        Domain::Psychological
                    }
                }),
                limit: a.limit,
            },
        }
    } else {
        ScenarioSource::Prompts(a.prompts.clone())
    };
    let default_role = if a.api_key.is_some() {
        DEFAULT_API_MODEL
    } else {
        DEFAULT_LOCAL
    };
    let mut config = EvalConfig {
        models: a.models.clone(),
        scenarios,
        mode: a.mode,
        max_turns: a.max_turns,
        generation: GenerationParams {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            enable_thinking: a.enable_thinking,
            ..Default::default()
        },
        system_prompt: match a.system_prompt.as_deref() {
            None => SystemPrompt::Default,
            Some("none") => SystemPrompt::None,
            Some(t) => SystemPrompt::Custom(t.to_string()),
        },
        stop_on_conclusion: !a.no_early_stop,
        judge_turns: !a.no_turn_judging,
        judge_repeats: a.judge_repeats,
        pairwise: a.pairwise,
        bootstrap_resamples: a.bootstrap,
        out: PathBuf::new(),
    };
    if !(a.http_timeout.is_finite() && a.http_timeout > 0.0) {
        bail!("--http-timeout must be a positive number of seconds");
    }
    let mut run = RunFile {
        config: config.clone(),
        simulator: a.simulator.clone().unwrap_or_else(|| default_role.into()),
        judge: a.judge.clone().unwrap_or_else(|| default_role.into()),
        api_base: a.api_base.clone(),
        retry: RetryPolicy {
            attempts: a.http_attempts.max(1),
            base_delay_ms: a.retry_base_ms,
            max_delay_ms: 30_000.max(a.retry_base_ms),
            timeout_ms: (a.http_timeout * 1000.0) as u64,
        },
        http_concurrency: a.http_concurrency,
        device: a.device.clone(),
    };
    config.out = match &a.out {
        Some(o) => o.clone(),
        None => PathBuf::from("runs").join(short_hash(&run)),
    };
    run.config = config;
    Ok(run)
}

fn backend(
    spec: &str,
    run: &RunFile,
    key: Option<&ApiKey>,
    pool: &Arc<dyn ModelPool>,
    role: &str,
) -> anyhow::Result<Arc<dyn ChatBackend>> {
    if let Some(model) = spec.strip_prefix("local:") {
        let b = LocalBackend::new(pool.clone(), model).map_err(|e| {
            anyhow::anyhow!(
                "{role} {spec}: {e}. Fetch it with `ibench fetch-model {model}` or give an API key"
            )
        })?;
        return Ok(Arc::new(b));
    }
    if key.is_none() && run.api_base.trim_end_matches('/') == DASHSCOPE_BASE {
        bail!("the {role} '{spec}' runs on DashScope and needs an API key: give --api-key or set DASHSCOPE_API_KEY, or use --{role} local:MODEL");
    }
    let b = OpenAiBackend::new(
        &run.api_base,
        spec,
        key.cloned(),
        run.retry.clone(),
        run.http_concurrency,
    )
    .map_err(|e| anyhow::anyhow!("{role}: {e}"))?;
    Ok(Arc::new(b))
}

fn progress() -> indicatif::ProgressBar {
    let pb =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .expect("valid template"),
    );
    pb
}

pub fn run(g: &GlobalArgs, a: CompareArgs) -> anyhow::Result<()> {
    let run = if a.resume && a.models.is_empty() {
        let Some(dir) = &a.out else {
            bail!("--resume without --models needs --out DIR (the run directory to continue)")
        };
        let path = dir.join(RUN_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a run directory?)",
                path.display(),
                dir.display()
            )
        })?;
        let mut r: RunFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        r.config.out = dir.clone();
        r
    } else {
        if a.models.is_empty() {
            bail!("give the models to compare with --models NAME...");
        }
        settings(&a)?
    };
    run.config.validate()?;
    let dir = run.config.out.clone();
    if a.resume && !dir.join(crate::eval::store::STORE_FILE).is_file() {
        bail!("--resume: {} holds no run to continue", dir.display());
    }
    let store = Arc::new(Store::open(&dir)?);
    let earlier: Option<RunFile> = store.get_meta("run")?;
    if let Some(e) = &earlier {
        if e != &run {
            tracing::warn!(dir = %dir.display(), "the run directory holds a run with other settings; calls that match are reused");
        } else {
            tracing::info!(dir = %dir.display(), "continuing the run stored there");
        }
    }
    store.set_meta("run", &run)?;
    std::fs::write(dir.join(RUN_FILE), serde_json::to_string_pretty(&run)?)
        .with_context(|| format!("writing {}", dir.join(RUN_FILE).display()))?;

    let device = match &run.device {
        Some(d) => Some(
            d.parse()
                .map_err(|e: ibench_worker::EngineError| anyhow::anyhow!("--device: {e}"))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let local_roles: Vec<String> = [&run.simulator, &run.judge]
        .iter()
        .filter_map(|s| s.strip_prefix("local:"))
        .map(String::from)
        .collect();
    let pool: Arc<dyn ModelPool> = match &a.coordinator {
        None => Arc::new(InProcessPool::new(g.load_registry()?, device)),
        Some(url) => {
            let remote = rt.block_on(async {
                let tls = a.tls.client()?;
                let channel = ibench_proto::connect(url, tls.as_ref())
                    .await
                    .with_context(|| format!("connecting to the coordinator at {url}"))?;
                let remote =
                    RemotePool::new(ibench_proto::models_client(channel, a.token.token()?), url);
                let mut names = run.config.models.clone();
                names.extend(local_roles.iter().cloned());
                remote.describe(&names).await?;
                anyhow::Ok(remote)
            })?;
            tracing::info!(coordinator = %url, "models run on the cluster");
            Arc::new(remote)
        }
    };
    let concurrent_models = match (a.concurrent_models, &a.coordinator) {
        (Some(0), _) => bail!("--concurrent-models must be at least 1"),
        (Some(n), _) => n,
        (None, Some(_)) => run.config.models.len(),
        (None, None) => 1,
    };
    let key = a.api_key.as_ref();
    let simulator = backend(&run.simulator, &run, key, &pool, "simulator")?;
    let judge = backend(&run.judge, &run, key, &pool, "judge")?;
    let env = Env {
        pool,
        simulator,
        judge,
        keep_loaded: local_roles,
        concurrent_models,
        progress: progress(),
    };
    let calls = Calls::new(store.clone());
    tracing::info!(dir = %dir.display(), models = ?run.config.models, simulator = %env.simulator.id(), judge = %env.judge.id(), "compare");

    let results = rt.block_on(run::run(&run.config, &calls, &env))?;
    let summary = report::summarise(&run.config, &results);
    report::write_outputs(&dir, &run.config, &results, &summary)?;
    print!("{}", report::terminal_table(&results, &summary, &dir));
    Ok(())
}
