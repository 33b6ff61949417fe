//! `ibench coordinator` and `ibench worker`: the two processes of a cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
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
    fn token(&self) -> anyhow::Result<Option<ClusterToken>> {
        let t = ClusterToken::new(self.token.as_deref().unwrap_or_default())?;
        if t.is_none() {
            tracing::warn!("no cluster token: any client that reaches this port can use it (set IBENCH_CLUSTER_TOKEN)");
        }
        Ok(t)
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
    /// Split the model into at least this many stages (to try a pipeline on small models).
    #[arg(long, default_value_t = 1)]
    pub min_stages: usize,
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
    /// address, with the hostname for 0.0.0.0.
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
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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
    let registry = Arc::new(WorkerRegistry::new(
        token,
        Duration::from_millis(a.heartbeat_ms),
    ));
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        tracing::info!(address = %listener.local_addr()?, "coordinator listening");
        let server = tokio::spawn(crate::cluster::serve(
            listener,
            registry.clone(),
            std::future::pending(),
        ));
        if let (Some(n), Some(model), Some(prompt)) = (a.workers, &a.model, &a.prompt) {
            registry
                .wait_for_workers(n, Duration::from_secs(600))
                .await?;
            let opts = ClusterOptions {
                min_stages: a.min_stages,
                ..Default::default()
            };
            let pool = ClusterPool::new(g.load_registry()?, registry.clone(), opts);
            let params = ibench_shared::GenerationParams {
                max_new_tokens: a.max_new_tokens,
                ..Default::default()
            };
            let req = GenRequest {
                messages: vec![ChatMessage::new(Role::User, prompt.clone())],
                params,
            };
            let out = pool.generate(model, vec![req]).await.remove(0)?;
            println!("{}", out.text);
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
    let server = StageServer::new(WorkerConfig {
        devices,
        token,
        registry,
        memory_limit,
    });
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        let local = listener.local_addr()?;
        let advertise = a.advertise.clone().unwrap_or_else(|| {
            if local.ip().is_unspecified() {
                format!("http://{}:{}", hostname(), local.port())
            } else {
                format!("http://{local}")
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
            std::future::pending(),
        ));
        let agent = ibench_worker::server::run_agent(&a.coordinator, &name, &advertise, server);
        tokio::select! {
            r = serving => r.context("the stage server task")?.context("serving the stage API"),
            r = agent => r.context("talking to the coordinator"),
        }
    })
}
