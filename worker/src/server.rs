//! The gRPC stage server of a worker: a thin layer over [`LoadedStage`]. The coordinator loads and
//! unloads stages; each forward step runs the stage on its sequences' caches (kept here, keyed by
//! sequence id) and relays the hidden states to the next stage itself, so the answer of the first
//! stage is the last stage's output. Also the worker's side of registration and heartbeats.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibench_proto::convert::{OutputKind, Step, StepInput, StepOutput};
use ibench_proto::v1 as pb;
use ibench_proto::{ClusterToken, StageWorkerClient};
use ibench_shared::placement::{weight_bits, DeviceInfo, ModelDemand, ModelSource, StageSpec};
use ibench_shared::Registry;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::device::{ComputeDtype, DeviceSpec};
use crate::error::EngineError;
use crate::sampling::argmax;
use crate::stage::{HostStageInput, HostStageOutput, LoadedStage, SeqCache};

/// Longest a relayed step may take at the next stage (a prefill of a big batch on a CPU).
const RELAY_TIMEOUT: Duration = Duration::from_secs(600);

/// What the stage server can fail with; mapped to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("stage '{0}' is not loaded on this worker")]
    UnknownStage(String),
    #[error("device {device} is not one of this worker's devices ({have})")]
    UnknownDevice { device: String, have: String },
    #[error("sequence {seq_id} has {cached} cached tokens in stage '{stage}' but the step starts at {start}; replay it from 0")]
    CacheMismatch {
        stage: String,
        seq_id: u64,
        cached: usize,
        start: usize,
    },
    #[error("bad step: {0}")]
    BadStep(String),
    #[error("model registry: {0}")]
    Registry(#[from] ibench_shared::SharedError),
    #[error("next stage at {address}: {status}")]
    Relay { address: String, status: Status },
    #[error("the stage task stopped: {0}")]
    Task(String),
}

impl From<StageError> for Status {
    fn from(e: StageError) -> Self {
        let msg = e.to_string();
        match e {
            StageError::UnknownStage(_) => Status::not_found(msg),
            StageError::CacheMismatch { .. } => Status::failed_precondition(msg),
            StageError::UnknownDevice { .. } | StageError::BadStep(_) => {
                Status::invalid_argument(msg)
            }
            StageError::Engine(
                EngineError::StageInput(_) | EngineError::TokenOutOfRange { .. },
            ) => Status::invalid_argument(msg),
            StageError::Engine(EngineError::MissingFile { .. } | EngineError::Config(_))
            | StageError::Registry(_) => Status::failed_precondition(msg),
            // Keep the downstream code (unavailable, not found, ...) so the coordinator can tell a
            // dead stage from a bad request; the message says where it happened.
            StageError::Relay { status, .. } => Status::new(status.code(), msg),
            _ => Status::internal(msg),
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub devices: Vec<DeviceSpec>,
    pub token: Option<ClusterToken>,
    /// Resolves `registry_name` stage requests; `None`: only model paths.
    pub registry: Option<Registry>,
    /// Caps the memory reported per device (and so what the coordinator places here).
    pub memory_limit: Option<u64>,
    /// Serves with `tls.server`; connects to the coordinator and to next stages with `tls.client`.
    pub tls: ibench_proto::tls::ClusterTls,
}

struct StageSlot {
    stage: Arc<LoadedStage>,
    device: DeviceSpec,
    layers: std::ops::Range<usize>,
    bytes: u64,
    caches: tokio::sync::Mutex<HashMap<u64, SeqCache>>,
}

struct Inner {
    cfg: WorkerConfig,
    stages: Mutex<HashMap<String, Arc<StageSlot>>>,
    peers: Mutex<HashMap<String, StageWorkerClient>>,
}

/// The StageWorker service. Cloning shares the stages.
#[derive(Clone)]
pub struct StageServer {
    inner: Arc<Inner>,
}

impl StageServer {
    pub fn new(cfg: WorkerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                stages: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn slot(&self, id: &str) -> Result<Arc<StageSlot>, StageError> {
        self.inner
            .stages
            .lock()
            .expect("stages lock")
            .get(id)
            .cloned()
            .ok_or_else(|| StageError::UnknownStage(id.to_string()))
    }

    /// [`StageServer::devices`] as wire messages, with each device's model name.
    pub fn device_messages(&self) -> Vec<pb::Device> {
        self.devices()
            .into_iter()
            .zip(&self.inner.cfg.devices)
            .map(|(info, d)| pb::Device {
                model: device_model(*d),
                ..info.into()
            })
            .collect()
    }

    /// The worker's devices with their memory, less what its stages hold where a limit applies.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        let stages = self.inner.stages.lock().expect("stages lock");
        self.inner
            .cfg
            .devices
            .iter()
            .map(|d| {
                let (mut total, mut free) = device_memory(*d);
                if let Some(limit) = self.inner.cfg.memory_limit {
                    let used: u64 = stages
                        .values()
                        .filter(|s| s.device == *d)
                        .map(|s| s.bytes)
                        .sum();
                    total = total.min(limit);
                    free = free.min(limit.saturating_sub(used));
                }
                DeviceInfo {
                    name: d.to_string(),
                    total_bytes: total,
                    free_bytes: free,
                }
            })
            .collect()
    }

    /// Ids of the loaded stages.
    pub fn stage_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .stages
            .lock()
            .expect("stages lock")
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    fn peer(&self, address: &str) -> Result<StageWorkerClient, StageError> {
        let mut peers = self.inner.peers.lock().expect("peers lock");
        if let Some(c) = peers.get(address) {
            return Ok(c.clone());
        }
        let ep = ibench_proto::endpoint(address, self.inner.cfg.tls.client.as_ref())
            .map_err(|e| StageError::BadStep(format!("next hop address {address}: {e}")))?;
        let client =
            ibench_proto::stage_worker_client(ep.connect_lazy(), self.inner.cfg.token.clone());
        peers.insert(address.to_string(), client.clone());
        Ok(client)
    }

    async fn load(&self, spec: StageSpec) -> Result<pb::LoadStageResponse, StageError> {
        let device: DeviceSpec = spec.device.parse()?;
        if !self.inner.cfg.devices.contains(&device) {
            let have = self
                .inner
                .cfg
                .devices
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StageError::UnknownDevice {
                device: spec.device.clone(),
                have,
            });
        }
        let dtype = match &spec.dtype {
            Some(d) => d.parse()?,
            None => ComputeDtype::default_for(device),
        };
        let folder: PathBuf = match &spec.model {
            ModelSource::Path(p) => p.clone(),
            ModelSource::Registry(name) => match &self.inner.cfg.registry {
                Some(r) => r.resolve(name)?.path,
                None => {
                    return Err(StageError::BadStep(format!(
                        "this worker has no model registry to resolve '{name}'"
                    )))
                }
            },
        };
        let start = Instant::now();
        let layers = spec.layers.clone();
        let quantization = spec.quantization;
        let stage = tokio::task::spawn_blocking(move || {
            LoadedStage::load_folder(&folder, layers, &device, dtype, quantization)
        })
        .await
        .map_err(|e| StageError::Task(e.to_string()))??;
        let cfg = stage.config().clone();
        if spec.layers.end > cfg.num_layers {
            return Err(StageError::BadStep(format!(
                "layers {:?} of a model with {} layers",
                spec.layers, cfg.num_layers
            )));
        }
        let bytes = ModelDemand::from_config(
            "",
            &cfg,
            weight_bits(quantization, dtype.bytes()),
            0,
            dtype.bytes(),
        )
        .stage_bytes(spec.layers.clone());
        let slot = StageSlot {
            stage: Arc::new(stage),
            device,
            layers: spec.layers.clone(),
            bytes,
            caches: tokio::sync::Mutex::new(HashMap::new()),
        };
        let replaced = self
            .inner
            .stages
            .lock()
            .expect("stages lock")
            .insert(spec.stage_id.clone(), Arc::new(slot))
            .is_some();
        let load_seconds = start.elapsed().as_secs_f64();
        tracing::info!(stage = %spec.stage_id, layers = ?spec.layers, %device, %dtype, replaced, secs = load_seconds, "stage loaded");
        Ok(pb::LoadStageResponse {
            stage_id: spec.stage_id,
            num_layers: cfg.num_layers as u32,
            hidden_size: cfg.hidden_size as u32,
            vocab_size: cfg.vocab_size as u32,
            load_seconds,
        })
    }

    /// Runs the step on this stage; returns its raw output.
    async fn run_local(&self, step: &mut Step) -> Result<HostStageOutput, StageError> {
        let slot = self.slot(&step.stage_id)?;
        let stage = slot.stage.clone();
        let input = match std::mem::replace(&mut step.input, StepInput::Tokens(Vec::new())) {
            StepInput::Tokens(t) if stage.is_first() => HostStageInput::Tokens(t),
            StepInput::Hidden {
                data,
                t_max,
                hidden_size,
            } if !stage.is_first() => {
                if hidden_size != stage.config().hidden_size {
                    return Err(StageError::BadStep(format!(
                        "hidden size {hidden_size}, the model's is {}",
                        stage.config().hidden_size
                    )));
                }
                HostStageInput::Hidden {
                    data,
                    lens: step.seqs.iter().map(|c| c.len).collect(),
                    t_max,
                }
            }
            StepInput::Tokens(_) => {
                return Err(StageError::BadStep(format!(
                    "stage '{}' is not the first: send hidden states",
                    step.stage_id
                )))
            }
            StepInput::Hidden { .. } => {
                return Err(StageError::BadStep(format!(
                    "stage '{}' is the first: send tokens",
                    step.stage_id
                )))
            }
        };
        if stage.is_last() != step.next.is_empty() {
            return Err(StageError::BadStep(format!(
                "stage '{}' holds layers {:?} of {} but the step has {} more hops",
                step.stage_id,
                slot.layers,
                stage.config().num_layers,
                step.next.len()
            )));
        }
        // The caches of this step's sequences leave the map while the stage computes; a failed
        // step drops them (the coordinator replays those sequences from position 0).
        let mut map = slot.caches.lock().await;
        let mut caches = Vec::with_capacity(step.seqs.len());
        for c in &step.seqs {
            let cache = match map.remove(&c.seq_id) {
                _ if c.start == 0 => stage.new_cache(),
                Some(cache) if cache.len() == c.start => cache,
                other => {
                    let cached = other.as_ref().map_or(0, |x| x.len());
                    if let Some(x) = other {
                        map.insert(c.seq_id, x);
                    }
                    for (c, cache) in step.seqs.iter().zip(caches) {
                        map.insert(c.seq_id, cache);
                    }
                    return Err(StageError::CacheMismatch {
                        stage: step.stage_id.clone(),
                        seq_id: c.seq_id,
                        cached,
                        start: c.start,
                    });
                }
            };
            caches.push(cache);
        }
        let (caches, out) = tokio::task::spawn_blocking(move || {
            let mut refs: Vec<&mut SeqCache> = caches.iter_mut().collect();
            let out = stage.forward(input, &mut refs, false);
            (caches, out)
        })
        .await
        .map_err(|e| StageError::Task(e.to_string()))?;
        let out = out?;
        for (c, cache) in step.seqs.iter().zip(caches) {
            map.insert(c.seq_id, cache);
        }
        Ok(out)
    }

    #[instrument(skip_all, fields(stage = %step.stage_id, batch = step.seqs.len()))]
    async fn forward(&self, mut step: Step) -> Result<StepOutput, StageError> {
        match self.run_local(&mut step).await? {
            HostStageOutput::Hidden { data, t_max, .. } => {
                let hidden_size = data.len() / (step.seqs.len() * t_max).max(1);
                let next = step
                    .relay(StepInput::Hidden {
                        data,
                        t_max,
                        hidden_size,
                    })
                    .expect("checked: not the last stage");
                let address = step.next[0].address.clone();
                let mut client = self.peer(&address)?;
                let mut req = Request::new(pb::ForwardRequest::from(next));
                req.set_timeout(RELAY_TIMEOUT);
                let resp = client
                    .forward(req)
                    .await
                    .map_err(|status| StageError::Relay {
                        address: address.clone(),
                        status,
                    })?;
                StepOutput::try_from(resp.into_inner())
                    .map_err(|e| StageError::BadStep(format!("answer of {address}: {e}")))
            }
            HostStageOutput::Logits { data, rows, vocab } => Ok(match step.output {
                OutputKind::Logits => StepOutput::Logits { data, rows, vocab },
                OutputKind::Argmax => StepOutput::Tokens(data.chunks(vocab).map(argmax).collect()),
            }),
        }
    }
}

#[tonic::async_trait]
impl pb::stage_worker_server::StageWorker for StageServer {
    #[instrument(skip_all, fields(stage = %req.get_ref().stage_id))]
    async fn load_stage(
        &self,
        req: Request<pb::LoadStageRequest>,
    ) -> Result<Response<pb::LoadStageResponse>, Status> {
        let spec = StageSpec::try_from(req.into_inner())?;
        Ok(Response::new(self.load(spec).await?))
    }

    #[instrument(skip_all, fields(stage = %req.get_ref().stage_id))]
    async fn unload_stage(
        &self,
        req: Request<pb::UnloadStageRequest>,
    ) -> Result<Response<pb::UnloadStageResponse>, Status> {
        let id = req.into_inner().stage_id;
        let slot = self.inner.stages.lock().expect("stages lock").remove(&id);
        if slot.is_some() {
            tracing::info!(stage = %id, "stage unloaded");
        }
        // The memory goes when the last in-flight step drops its reference.
        Ok(Response::new(pb::UnloadStageResponse {
            was_loaded: slot.is_some(),
        }))
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::ForwardResponse>, Status> {
        let step = Step::try_from(req.into_inner())?;
        Ok(Response::new(self.forward(step).await?.into()))
    }

    #[instrument(skip_all, fields(stage = %req.get_ref().stage_id))]
    async fn free_sequences(
        &self,
        req: Request<pb::FreeSequencesRequest>,
    ) -> Result<Response<pb::FreeSequencesResponse>, Status> {
        let r = req.into_inner();
        let slot = self.slot(&r.stage_id)?;
        let mut map = slot.caches.lock().await;
        let freed = r
            .seq_ids
            .iter()
            .filter(|id| map.remove(id).is_some())
            .count();
        Ok(Response::new(pb::FreeSequencesResponse {
            freed: freed as u32,
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let slots: Vec<(String, Arc<StageSlot>)> = self
            .inner
            .stages
            .lock()
            .expect("stages lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut stages = Vec::with_capacity(slots.len());
        for (id, s) in slots {
            stages.push(pb::StageStatus {
                stage_id: id,
                layer_start: s.layers.start as u32,
                layer_end: s.layers.end as u32,
                device: s.device.to_string(),
                sequences: s.caches.lock().await.len() as u32,
            });
        }
        stages.sort_by(|a, b| a.stage_id.cmp(&b.stage_id));
        Ok(Response::new(pb::StatusResponse {
            devices: self.device_messages(),
            stages,
        }))
    }
}

/// `(total, free)` bytes of a device; zeros when it cannot be asked.
pub fn device_memory(d: DeviceSpec) -> (u64, u64) {
    match d {
        DeviceSpec::Cpu => cpu_memory().unwrap_or((0, 0)),
        DeviceSpec::Cuda(i) => cuda_memory(i).unwrap_or((0, 0)),
    }
}

/// What a device is: the GPU's name, or the CPU's model name and thread count.
pub fn device_model(d: DeviceSpec) -> String {
    match d {
        DeviceSpec::Cpu => {
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let name = info
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "CPU".into());
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            format!("{name} ({threads} threads)")
        }
        DeviceSpec::Cuda(i) => cuda_name(i).unwrap_or_else(|| format!("CUDA device {i}")),
    }
}

#[cfg(feature = "cuda")]
fn cuda_name(i: usize) -> Option<String> {
    cudarc::driver::CudaContext::new(i).ok()?.name().ok()
}

#[cfg(not(feature = "cuda"))]
fn cuda_name(_i: usize) -> Option<String> {
    None
}

fn cpu_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(feature = "cuda")]
fn cuda_memory(i: usize) -> Option<(u64, u64)> {
    let ctx = cudarc::driver::CudaContext::new(i).ok()?;
    let (free, total) = ctx.mem_get_info().ok()?;
    Some((total as u64, free as u64))
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory(_i: usize) -> Option<(u64, u64)> {
    None
}

/// Serves the stage service and the gRPC health service on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: StageServer,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::stage_worker_server::StageWorkerServer<StageServer>>()
        .await;
    let token = server.inner.cfg.token.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &server.inner.cfg.tls.server {
        builder = builder.tls_config(tls.clone())?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(ibench_proto::stage_worker_server(server, token))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// Why the worker stopped talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("coordinator address {url}: {why}")]
    BadAddress { url: String, why: String },
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
}

/// Registers with the coordinator at `url` and heartbeats until the process ends; registers again
/// when the coordinator forgets the worker (restart, missed heartbeats) and retries while it is
/// unreachable. Returns only when the coordinator refuses the worker (wrong token, version).
pub async fn run_agent(
    url: &str,
    name: &str,
    advertise: &str,
    server: StageServer,
) -> Result<(), AgentError> {
    let ep = ibench_proto::endpoint(url, server.inner.cfg.tls.client.as_ref()).map_err(|e| {
        AgentError::BadAddress {
            url: url.into(),
            why: e.to_string(),
        }
    })?;
    let mut client =
        ibench_proto::coordinator_client(ep.connect_lazy(), server.inner.cfg.token.clone());
    let mut backoff = Duration::from_millis(200);
    loop {
        let req = pb::RegisterRequest {
            api_version: ibench_proto::API_VERSION,
            name: name.to_string(),
            address: advertise.to_string(),
            devices: server.device_messages(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let reg = match client
            .register(with_timeout(req, Duration::from_secs(10)))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(AgentError::Refused(s.message().to_string()))
            }
            Err(s) => {
                tracing::warn!(coordinator = url, error = %s.message(), retry_ms = backoff.as_millis() as u64, "cannot register; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        tracing::info!(coordinator = url, worker_id = %reg.worker_id, address = advertise, "registered");
        let every = Duration::from_millis(reg.heartbeat_interval_ms.clamp(100, 60_000) as u64);
        loop {
            tokio::time::sleep(every).await;
            let hb = pb::HeartbeatRequest {
                worker_id: reg.worker_id.clone(),
                devices: server.device_messages(),
                stages: server.stage_ids(),
            };
            match client
                .heartbeat(with_timeout(hb, every.max(Duration::from_secs(2))))
                .await
            {
                Ok(r) if r.get_ref().known => {}
                Ok(_) => {
                    tracing::warn!(
                        coordinator = url,
                        "the coordinator forgot this worker; registering again"
                    );
                    break;
                }
                Err(s) => {
                    tracing::warn!(coordinator = url, error = %s.message(), "heartbeat failed; registering again");
                    break;
                }
            }
        }
    }
}

fn with_timeout<T>(msg: T, t: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(t);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibench_proto::convert::SeqChunk;
    use ibench_shared::Quantization;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-qwen3")
    }

    fn spec(id: &str, layers: std::ops::Range<usize>) -> StageSpec {
        StageSpec {
            stage_id: id.into(),
            model: ModelSource::Path(fixture()),
            layers,
            device: "cpu".into(),
            dtype: None,
            quantization: Quantization::None,
        }
    }

    fn tokens(seq_id: u64, start: usize, ids: Vec<u32>, output: OutputKind) -> Step {
        Step {
            stage_id: "all".into(),
            seqs: vec![SeqChunk {
                seq_id,
                start,
                len: ids.len(),
            }],
            input: StepInput::Tokens(vec![ids]),
            next: vec![],
            output,
        }
    }

    #[tokio::test]
    async fn caches_follow_positions_and_are_freed() {
        let s = StageServer::new(WorkerConfig {
            devices: vec![DeviceSpec::Cpu],
            token: None,
            registry: None,
            memory_limit: None,
            tls: Default::default(),
        });
        s.load(spec("all", 0..3)).await.unwrap();
        let StepOutput::Tokens(t) = s
            .forward(tokens(1, 0, vec![72, 101, 108], OutputKind::Argmax))
            .await
            .unwrap()
        else {
            panic!("argmax asked for")
        };
        let StepOutput::Logits { rows, vocab, .. } = s
            .forward(tokens(1, 3, t.clone(), OutputKind::Logits))
            .await
            .unwrap()
        else {
            panic!("logits asked for")
        };
        assert_eq!((rows, vocab), (1, 320));
        // A step that does not continue where the cache ends is refused, and says so.
        let e = s
            .forward(tokens(1, 2, t.clone(), OutputKind::Argmax))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                StageError::CacheMismatch {
                    cached: 4,
                    start: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(Status::from(e).code(), tonic::Code::FailedPrecondition);
        // Position 0 restarts the sequence (a replay).
        s.forward(tokens(1, 0, vec![72], OutputKind::Argmax))
            .await
            .unwrap();
        let e = s
            .forward(tokens(9, 5, vec![1], OutputKind::Argmax))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StageError::CacheMismatch { cached: 0, .. }),
            "{e}"
        );
        // A first-and-last stage wants tokens and no further hops.
        let mut bad = tokens(2, 0, vec![1], OutputKind::Argmax);
        bad.next = vec![ibench_proto::convert::Hop {
            address: "http://127.0.0.1:1".into(),
            stage_id: "x".into(),
        }];
        assert!(matches!(
            s.forward(bad).await.unwrap_err(),
            StageError::BadStep(_)
        ));
        let unknown = Step {
            stage_id: "nope".into(),
            ..tokens(3, 0, vec![1], OutputKind::Argmax)
        };
        assert_eq!(
            Status::from(s.forward(unknown).await.unwrap_err()).code(),
            tonic::Code::NotFound
        );
        assert_eq!(s.stage_ids(), vec!["all".to_string()]);
        assert!(s.devices()[0].total_bytes > 0, "the CPU's memory is known");
    }

    #[tokio::test]
    async fn devices_outside_the_worker_and_a_memory_limit() {
        let s = StageServer::new(WorkerConfig {
            devices: vec![DeviceSpec::Cpu],
            token: None,
            registry: None,
            memory_limit: Some(1 << 20),
            tls: Default::default(),
        });
        let e = s
            .load(StageSpec {
                device: "cuda:3".into(),
                ..spec("x", 0..1)
            })
            .await
            .unwrap_err();
        assert!(matches!(e, StageError::UnknownDevice { .. }), "{e}");
        assert_eq!(s.devices()[0].total_bytes, 1 << 20);
        s.load(spec("x", 0..1)).await.unwrap();
        let d = &s.devices()[0];
        assert!(
            d.free_bytes < 1 << 20,
            "a loaded stage counts against the limit: {d:?}"
        );
        // The wire form carries the same numbers and says what the device is.
        let m = &s.device_messages()[0];
        assert_eq!((m.name.as_str(), m.total_bytes), ("cpu", 1 << 20));
        assert!(m.model.contains("threads"), "{m:?}");
    }
}
