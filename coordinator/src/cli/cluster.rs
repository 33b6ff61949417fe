//! `ibench coordinator` and `ibench worker`: the two processes of a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ibench_proto::tls::{ClusterTls, TlsFiles};
use ibench_proto::ClusterToken;
use ibench_shared::{ChatMessage, Role};
use ibench_worker::server::{StageServer, WorkerConfig};
use ibench_worker::DeviceSpec;

use super::GlobalArgs;
use crate::cluster::{ClusterOptions, ClusterPool, WorkerRegistry};
use crate::eval::pool::{GenRequest, ModelPool};

/// The cluster's shared token (`Debug` shows `***`).
#[derive(Clone, clap::Args)]
pub struct TokenArgs {
    /// Shared secret every cluster RPC carries, both ways; without it the cluster is open.
    #[arg(long, env = "IBENCH_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl TokenArgs {
    pub fn token(&self) -> anyhow::Result<Option<ClusterToken>> {
        let t = ClusterToken::new(self.token.as_deref().unwrap_or_default())?;
        if t.is_none() {
            tracing::warn!("no cluster token: any client that reaches this port can use it (set IBENCH_CLUSTER_TOKEN)");
        }
        Ok(t)
    }
}

/// TLS for the cluster's connections (PEM files; see docs/cluster.md). Without them, plain
/// HTTP/2 with the shared token.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// This process's certificate (served to peers); needs --tls-key and --tls-ca.
    #[arg(long, env = "IBENCH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, env = "IBENCH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA that signed the cluster's certificates: peers are checked against it, and a serving
    /// process with a certificate requires client certificates signed by it (mutual TLS).
    #[arg(long, env = "IBENCH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Expect this name in peers' certificates instead of the host of their URL.
    #[arg(long, env = "IBENCH_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

impl TlsArgs {
    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
            domain: self.tls_domain.clone(),
        }
    }
    /// Server and client settings of a coordinator or worker.
    pub fn load(&self) -> anyhow::Result<ClusterTls> {
        Ok(self.files().load()?)
    }
    /// Client settings of a process that only connects (`compare`): a CA, and a certificate when
    /// the coordinator asks for one.
    pub fn client(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        let f = self.files();
        if f.is_empty() {
            return Ok(None);
        }
        Ok(f.load()?.client)
    }
}

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Address to serve the coordinator API on.
    #[arg(
        long,
        env = "IBENCH_COORDINATOR_LISTEN",
        default_value = "0.0.0.0:50051"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// How often workers heartbeat; three missed heartbeats make a worker dead.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Smoke run: wait for this many workers, generate one reply of --model to --prompt, print it.
    #[arg(long, requires = "model", requires = "prompt")]
    pub workers: Option<usize>,
    /// The model of the smoke run (a registered name or a folder, at the same path on all hosts).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Split every model into at least this many stages (to try a pipeline on small models).
    #[arg(long, env = "IBENCH_MIN_STAGES", default_value_t = 1)]
    pub min_stages: usize,
    /// Most sequences of one model decoded together in one pipeline step.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// KV-cache tokens reserved per model when placing it (all its sequences together).
    #[arg(long, default_value_t = 16_384)]
    pub kv_tokens: u64,
    /// Memory left free on every device when placing models, in GiB.
    #[arg(long, default_value_t = 0.5)]
    pub reserve_gib: f64,
    /// Weights and activations dtype of every stage (`f32`, `bf16`); default: bf16 on GPUs,
    /// f32 on CPUs.
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    /// Micro-batches of one model in flight at once, so all its stages work at the same time
    /// (0: one per stage; 1: the whole batch steps through the stages together).
    #[arg(long, default_value_t = 0)]
    pub micro_batches: usize,
    /// Re-placements after lost workers one batch may go through before its turns fail.
    #[arg(long, default_value_t = 3)]
    pub max_recoveries: usize,
    /// Smoke run: generate this many copies of --prompt together (a batch), to measure throughput.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Smoke run: print one JSON line (placement, load time, a warm-up run, then a timed run's
    /// tokens per second, and the first reply) instead of the reply alone.
    #[arg(long)]
    pub json: bool,
    /// Exit after the smoke run instead of serving on.
    #[arg(long)]
    pub exit_after: bool,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://coordinator:50051.
    #[arg(long, env = "IBENCH_COORDINATOR")]
    pub coordinator: String,
    /// Devices to serve: `cpu`, or CUDA devices such as `cuda:0,cuda:1`.
    #[arg(
        long,
        env = "IBENCH_DEVICES",
        value_delimiter = ',',
        default_value = "cpu"
    )]
    pub devices: Vec<String>,
    /// Address to serve the stage API on (port 0: any free port).
    #[arg(long, env = "IBENCH_WORKER_LISTEN", default_value = "0.0.0.0:50061")]
    pub listen: SocketAddr,
    /// The URL the coordinator and other workers reach this worker at; default: the listen
    /// address, with the hostname for 0.0.0.0 (https:// with --tls-cert).
    #[arg(long, env = "IBENCH_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    /// The worker's name in the cluster (stays the same across restarts); default: the hostname
    /// and port.
    #[arg(long, env = "IBENCH_WORKER_NAME")]
    pub name: Option<String>,
    /// Report at most this many GiB per device (to leave room for others).
    #[arg(long)]
    pub memory_limit_gib: Option<f64>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on SIGTERM (docker stop, systemd) or Ctrl-C: the processes stop serving and exit 0
/// instead of being killed after the grace period (as PID 1 in a container, an unhandled
/// SIGTERM is ignored).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

pub fn coordinator(g: &GlobalArgs, a: CoordinatorArgs) -> anyhow::Result<()> {
    let token = a.token.token()?;
    if a.heartbeat_ms == 0 {
        bail!("--heartbeat-ms must be at least 1");
    }
    if !(a.reserve_gib.is_finite() && a.reserve_gib >= 0.0) {
        bail!("--reserve-gib must be a number of GiB, 0 or more");
    }
    if a.max_batch == 0 || a.min_stages == 0 {
        bail!("--max-batch and --min-stages must be at least 1");
    }
    let tls = a.tls.load()?;
    let registry =
        Arc::new(WorkerRegistry::new(token, Duration::from_millis(a.heartbeat_ms)).with_tls(tls));
    let opts = ClusterOptions {
        min_stages: a.min_stages,
        max_batch: a.max_batch,
        kv_tokens: a.kv_tokens,
        dtype: a.dtype.clone(),
        max_recoveries: a.max_recoveries,
        micro_batches: a.micro_batches,
        placement: ibench_shared::placement::PlacementOptions {
            reserve_bytes: (a.reserve_gib * (1u64 << 30) as f64) as u64,
        },
        ..Default::default()
    };
    let pool = Arc::new(ClusterPool::new(g.load_registry()?, registry.clone(), opts));
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        tracing::info!(address = %listener.local_addr()?, "coordinator listening");
        let models: Arc<dyn ModelPool> = pool.clone();
        let server = tokio::spawn(crate::cluster::serve(
            listener,
            registry.clone(),
            Some(models),
            shutdown_signal(),
        ));
        if let (Some(n), Some(model), Some(prompt)) = (a.workers, &a.model, &a.prompt) {
            registry
                .wait_for_workers(n, Duration::from_secs(600))
                .await?;
            let params = ibench_shared::GenerationParams {
                max_new_tokens: a.max_new_tokens,
                ..Default::default()
            };
            let req = GenRequest {
                messages: vec![ChatMessage::new(Role::User, prompt.clone())],
                params,
            };
            let reqs = vec![req; a.batch.max(1)];
            let t0 = std::time::Instant::now();
            pool.load(model).await?;
            let load_s = t0.elapsed().as_secs_f64();
            // The first run pays for kernel compilation on CUDA; the second is the measurement.
            let runs = if a.json { 2 } else { 1 };
            let mut timings = Vec::new();
            let mut outs = Vec::new();
            for _ in 0..runs {
                let t = std::time::Instant::now();
                outs = pool
                    .generate(model, reqs.clone())
                    .await
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
                timings.push(t.elapsed().as_secs_f64());
            }
            if a.json {
                let tokens: usize = outs.iter().map(|o| o.completion_tokens).sum();
                let secs = *timings.last().expect("one run");
                let line = serde_json::json!({
                    "model": model,
                    "stages": pool.placement(model).await,
                    "batch": reqs.len(),
                    "max_new_tokens": a.max_new_tokens,
                    "micro_batches": a.micro_batches,
                    "load_s": load_s,
                    "warmup_s": timings[0],
                    "timed_s": secs,
                    "new_tokens": tokens,
                    "tokens_per_s": tokens as f64 / secs,
                    "text": outs[0].text,
                    "all_equal": outs.iter().all(|o| o.text == outs[0].text),
                });
                println!("{line}");
            } else {
                println!("{}", outs[0].text);
            }
            if a.exit_after {
                return Ok(());
            }
        }
        server
            .await
            .context("the coordinator server task")?
            .context("serving the coordinator API")
    })
}

pub fn worker(g: &GlobalArgs, a: WorkerArgs) -> anyhow::Result<()> {
    let token = a.token.token()?;
    let devices = a
        .devices
        .iter()
        .map(|d| d.parse::<DeviceSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        bail!("--devices lists no device");
    }
    let memory_limit = match a.memory_limit_gib {
        Some(g) if !(g.is_finite() && g > 0.0) => {
            bail!("--memory-limit-gib must be a positive number")
        }
        Some(g) => Some((g * (1u64 << 30) as f64) as u64),
        None => None,
    };
    let registry = g.load_registry().ok();
    let tls = a.tls.load()?;
    let scheme = if tls.server.is_some() {
        "https"
    } else {
        "http"
    };
    let server = StageServer::new(WorkerConfig {
        devices,
        token,
        registry,
        memory_limit,
        tls,
    });
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        let local = listener.local_addr()?;
        let advertise = a.advertise.clone().unwrap_or_else(|| {
            if local.ip().is_unspecified() {
                format!("{scheme}://{}:{}", hostname(), local.port())
            } else {
                format!("{scheme}://{local}")
            }
        });
        let name = a
            .name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", hostname(), local.port()));
        tracing::info!(address = %local, %advertise, %name, "worker listening");
        let serving = tokio::spawn(ibench_worker::server::serve(
            listener,
            server.clone(),
            shutdown_signal(),
        ));
        let agent = ibench_worker::server::run_agent(&a.coordinator, &name, &advertise, server);
        tokio::select! {
            r = serving => r.context("the stage server task")?.context("serving the stage API"),
            r = agent => r.context("talking to the coordinator"),
        }
    })
}
