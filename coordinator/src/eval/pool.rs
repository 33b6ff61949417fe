//! The models under test (and `local:` simulators/judges) as the evaluation sees them: the
//! [`ModelPool`] trait, and its in-process implementation over the worker's [`Engine`].
//!
//! A cluster pool (gRPC workers) implements the same trait later. The in-process pool runs each
//! loaded model on a thread of its own that owns the engine; jobs queued while the engine is busy
//! are merged into one batched `generate` call (continuous batching at the turn level).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use ibench_shared::{ChatMessage, FinishReason, GenerationParams, ModelSpec, Registry};
use ibench_worker::{DeviceSpec, Engine, GenerateRequest, LoadOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::backend::{BoxFuture, ChoiceRequest, Slot, SlotsRequest};

/// One chat turn to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRequest {
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
}

/// A generated turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenOutput {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Registry(Arc<ibench_shared::SharedError>),
    #[error("loading {model}: {why}")]
    Load { model: String, why: String },
    #[error("{model}: {why}")]
    Engine { model: String, why: String },
    #[error("the engine thread of {0} stopped")]
    Stopped(String),
}

/// Named models that generate chat turns in batches.
pub trait ModelPool: Send + Sync {
    /// What identifies a model's outputs in store keys: its name, folder and quantization.
    fn identity(&self, model: &str) -> Result<String, PoolError>;
    /// Loads a model now (generation loads on demand too).
    fn load(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>>;
    /// Drops a model and frees its memory; a no-op for a model not loaded.
    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>>;
    /// One reply per request, in request order, generated together as one batch; a request that
    /// cannot run (prompt too long) fails alone.
    fn generate(
        &self,
        model: &str,
        reqs: Vec<GenRequest>,
    ) -> BoxFuture<'_, Vec<Result<GenOutput, PoolError>>>;
    /// Next-token log-probabilities of each choice after the chat prompt plus prefix: by
    /// default each request is a one-slot [`ModelPool::choose_slots`] request, so both ask the
    /// model the same way.
    fn choose(
        &self,
        model: &str,
        reqs: Vec<ChoiceRequest>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, PoolError>> {
        let slots = reqs
            .into_iter()
            .map(|r| SlotsRequest {
                messages: r.messages,
                slots: vec![Slot {
                    prefix: r.prefix,
                    choices: r.choices,
                    fill: String::new(),
                }],
            })
            .collect();
        let model = model.to_string();
        Box::pin(async move {
            Ok(self
                .choose_slots(&model, slots)
                .await?
                .into_iter()
                .map(|mut s| s.pop().unwrap_or_default())
                .collect())
        })
    }
    /// Per request and slot, the next-token log-probabilities of each choice, all slots of a
    /// request read from one pass over its prompt.
    fn choose_slots(
        &self,
        model: &str,
        reqs: Vec<SlotsRequest>,
    ) -> BoxFuture<'_, Result<Vec<Vec<Vec<f32>>>, PoolError>>;
}

/// Work for the task or thread that owns one model (in-process engine or cluster pipeline); the
/// answer comes back on the oneshot.
pub(crate) enum Job {
    Generate(
        Vec<GenRequest>,
        oneshot::Sender<Vec<Result<GenOutput, PoolError>>>,
    ),
    Choose(
        Vec<SlotsRequest>,
        oneshot::Sender<Result<Vec<Vec<Vec<f32>>>, PoolError>>,
    ),
}

/// The queue of a model's owner: a std channel (engine thread) or a tokio one (pipeline task).
pub(crate) trait JobQueue {
    /// `false` when the owner has stopped.
    fn push(&self, job: Job) -> bool;
}

impl JobQueue for mpsc::Sender<Job> {
    fn push(&self, job: Job) -> bool {
        self.send(job).is_ok()
    }
}

impl JobQueue for tokio::sync::mpsc::UnboundedSender<Job> {
    fn push(&self, job: Job) -> bool {
        self.send(job).is_ok()
    }
}

/// Queues a generate job for `model` (its queue, or why there is none) and waits for the answer;
/// every request fails alike when the queue cannot be had or its owner stops.
pub(crate) async fn ask_generate(
    queue: Result<impl JobQueue, PoolError>,
    model: String,
    reqs: Vec<GenRequest>,
) -> Vec<Result<GenOutput, PoolError>> {
    let n = reqs.len();
    let fail = |e: PoolError| (0..n).map(|_| Err(e.clone())).collect();
    let queue = match queue {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let (otx, orx) = oneshot::channel();
    if !queue.push(Job::Generate(reqs, otx)) {
        return fail(PoolError::Stopped(model));
    }
    orx.await
        .unwrap_or_else(|_| fail(PoolError::Stopped(model)))
}

/// Queues a choose job for `model` and waits for the answer.
pub(crate) async fn ask_choose(
    queue: Result<impl JobQueue, PoolError>,
    model: String,
    reqs: Vec<SlotsRequest>,
) -> Result<Vec<Vec<Vec<f32>>>, PoolError> {
    let (otx, orx) = oneshot::channel();
    if !queue?.push(Job::Choose(reqs, otx)) {
        return Err(PoolError::Stopped(model));
    }
    orx.await.map_err(|_| PoolError::Stopped(model))?
}

struct Worker {
    tx: mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

/// Models of the registry, each loaded on demand onto a thread that owns its [`Engine`].
pub struct InProcessPool {
    registry: Registry,
    device: Option<DeviceSpec>,
    workers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Worker>>>>>,
}

impl InProcessPool {
    /// `device` overrides every model's `device_map` when given.
    pub fn new(registry: Registry, device: Option<DeviceSpec>) -> Self {
        Self {
            registry,
            device,
            workers: Mutex::new(HashMap::new()),
        }
    }

    fn spec(&self, model: &str) -> Result<ModelSpec, PoolError> {
        self.registry
            .resolve(model)
            .map_err(|e| PoolError::Registry(Arc::new(e)))
    }

    fn device_for(&self, spec: &ModelSpec) -> DeviceSpec {
        if let Some(d) = self.device {
            return d;
        }
        match spec.device_map.as_str() {
            "auto" if cfg!(feature = "cuda") => DeviceSpec::Cuda(0),
            "auto" => DeviceSpec::Cpu,
            other => other.parse().unwrap_or_else(|_| {
                tracing::warn!(model = %spec.name, device_map = other, "unknown device_map; using the CPU");
                DeviceSpec::Cpu
            }),
        }
    }

    /// The sender of a loaded model's thread, loading it first if needed. Concurrent callers
    /// for the same model wait for one load.
    async fn sender(&self, model: &str) -> Result<mpsc::Sender<Job>, PoolError> {
        let slot = self
            .workers
            .lock()
            .expect("pool lock")
            .entry(model.to_string())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(w) = guard.as_ref() {
            return Ok(w.tx.clone());
        }
        let spec = self.spec(model)?;
        let opts = LoadOptions {
            device: self.device_for(&spec),
            quantization: spec.quantization,
            ..Default::default()
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel::<Job>();
        let name = model.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || engine_thread(name, spec, opts, rx, ready_tx))
            .map_err(|e| PoolError::Load {
                model: model.into(),
                why: e.to_string(),
            })?;
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(PoolError::Stopped(model.into())),
        }
        *guard = Some(Worker {
            tx: tx.clone(),
            thread,
        });
        Ok(tx)
    }
}

impl ModelPool for InProcessPool {
    fn identity(&self, model: &str) -> Result<String, PoolError> {
        let s = self.spec(model)?;
        Ok(format!(
            "{}@{}#{}",
            s.name,
            s.path.display(),
            s.quantization.as_str()
        ))
    }

    fn load(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>> {
        let model = model.to_string();
        Box::pin(async move { self.sender(&model).await.map(|_| ()) })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>> {
        let slot = self.workers.lock().expect("pool lock").remove(model);
        let model = model.to_string();
        Box::pin(async move {
            let worker = match slot {
                Some(s) => s.lock().await.take(),
                None => None,
            };
            if let Some(w) = worker {
                drop(w.tx);
                // The thread ends when its queue closes, dropping the engine and its memory.
                tokio::task::spawn_blocking(move || w.thread.join())
                    .await
                    .map_err(|_| PoolError::Stopped(model.clone()))?
                    .map_err(|_| PoolError::Stopped(model.clone()))?;
                tracing::info!(model = %model, "model unloaded");
            }
            Ok(())
        })
    }

    fn generate(
        &self,
        model: &str,
        reqs: Vec<GenRequest>,
    ) -> BoxFuture<'_, Vec<Result<GenOutput, PoolError>>> {
        let model = model.to_string();
        Box::pin(async move { ask_generate(self.sender(&model).await, model, reqs).await })
    }

    fn choose_slots(
        &self,
        model: &str,
        reqs: Vec<SlotsRequest>,
    ) -> BoxFuture<'_, Result<Vec<Vec<Vec<f32>>>, PoolError>> {
        let model = model.to_string();
        Box::pin(async move { ask_choose(self.sender(&model).await, model, reqs).await })
    }
}

fn engine_thread(
    name: String,
    spec: ModelSpec,
    opts: LoadOptions,
    rx: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), PoolError>>,
) {
    tracing::info!(model = %name, path = %spec.path.display(), device = %opts.device, "loading model");
    let engine = match Engine::load(&spec.path, &opts) {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(PoolError::Load {
                model: name,
                why: e.to_string(),
            }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let err = |why: String| PoolError::Engine {
        model: name.clone(),
        why,
    };
    while let Ok(first) = rx.recv() {
        // Everything queued meanwhile joins this round: generations as one batch.
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut gen_reqs: Vec<GenRequest> = Vec::new();
        let mut gen_replies = Vec::new();
        for job in jobs {
            match job {
                Job::Generate(reqs, reply) => {
                    gen_replies.push((gen_reqs.len(), reqs.len(), reply));
                    gen_reqs.extend(reqs);
                }
                Job::Choose(reqs, reply) => {
                    let _ = reply.send(
                        reqs.iter()
                            .map(|r| choice_logprobs(&engine, r).map_err(&err))
                            .collect(),
                    );
                }
            }
        }
        if gen_replies.is_empty() {
            continue;
        }
        let mut results = run_batch(&engine, &gen_reqs, &err).into_iter();
        for (_, len, reply) in gen_replies {
            let _ = reply.send(results.by_ref().take(len).collect());
        }
    }
    tracing::debug!(model = %name, "engine thread ends");
}

/// Encodes and generates a batch; requests that cannot be encoded or are too long fail alone.
fn run_batch(
    engine: &Engine,
    reqs: &[GenRequest],
    err: &dyn Fn(String) -> PoolError,
) -> Vec<Result<GenOutput, PoolError>> {
    let mut out: Vec<Option<Result<GenOutput, PoolError>>> = vec![None; reqs.len()];
    let mut runnable = Vec::new();
    let mut index = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        match engine.encode_chat(&r.messages, true, r.params.enable_thinking) {
            Ok(ids) if ids.len() < engine.context_len() => {
                runnable.push(GenerateRequest {
                    prompt_ids: ids,
                    params: r.params.clone(),
                });
                index.push(i);
            }
            Ok(ids) => {
                out[i] = Some(Err(err(format!(
                    "the prompt has {} tokens, the context window is {}",
                    ids.len(),
                    engine.context_len()
                ))))
            }
            Err(e) => out[i] = Some(Err(err(e.to_string()))),
        }
    }
    if !runnable.is_empty() {
        tracing::debug!(batch = runnable.len(), "engine generate");
        match engine.generate(&runnable) {
            Ok(outs) => {
                for (i, o) in index.iter().zip(outs) {
                    out[*i] = Some(Ok(GenOutput {
                        text: o.text,
                        prompt_tokens: o.prompt_token_ids.len(),
                        completion_tokens: o.token_ids.len(),
                        finish_reason: o.finish_reason,
                    }));
                }
            }
            Err(e) => {
                let e = err(e.to_string());
                for i in index {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|o| o.expect("every request answered"))
        .collect()
}

/// The token ids a choice can start with: the choice alone and after a space, where either is a
/// single token; else the first token of the choice. Shared by the in-process and cluster pools.
pub fn choice_token_ids(
    tok: &ibench_worker::ChatTokenizer,
    choice: &str,
) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    for variant in [choice.to_string(), format!(" {choice}")] {
        let enc = tok.encode(&variant).map_err(|e| e.to_string())?;
        if enc.len() == 1 && !ids.contains(&enc[0]) {
            ids.push(enc[0]);
        }
    }
    if ids.is_empty() {
        let enc = tok.encode(choice).map_err(|e| e.to_string())?;
        ids.extend(enc.first().copied());
    }
    if ids.is_empty() {
        return Err(format!("the choice '{choice}' encodes to no token"));
    }
    Ok(ids)
}

/// The token ids of a slots request and, per slot, the position whose next-token distribution
/// it reads: the chat prompt, then each slot's prefix and (but for the last) its fill, each
/// encoded on its own. Both pools build slot prompts here, so they read the same positions.
pub fn slot_prompt(
    tok: &ibench_worker::ChatTokenizer,
    r: &SlotsRequest,
) -> Result<(Vec<u32>, Vec<usize>), String> {
    let mut ids = tok
        .encode_chat(&r.messages, true, false)
        .map_err(|e| e.to_string())?;
    let mut at = Vec::with_capacity(r.slots.len());
    for (k, s) in r.slots.iter().enumerate() {
        if !s.prefix.is_empty() {
            ids.extend(tok.encode(&s.prefix).map_err(|e| e.to_string())?);
        }
        if ids.is_empty() {
            return Err("an empty prompt".into());
        }
        at.push(ids.len() - 1);
        if k + 1 < r.slots.len() && !s.fill.is_empty() {
            ids.extend(tok.encode(&s.fill).map_err(|e| e.to_string())?);
        }
    }
    Ok((ids, at))
}

/// The log-probability of each choice in a next-token distribution `lp`: log-sum-exp over the
/// token ids a choice can start with ([`choice_token_ids`]).
pub fn choice_scores(
    tok: &ibench_worker::ChatTokenizer,
    choices: &[String],
    lp: &[f32],
) -> Result<Vec<f32>, String> {
    choices
        .iter()
        .map(|c| {
            let vals: Vec<f32> = choice_token_ids(tok, c)?
                .iter()
                .filter_map(|&i| lp.get(i as usize).copied())
                .collect();
            let m = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            Ok(if m.is_finite() {
                m + vals.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
            } else {
                m
            })
        })
        .collect()
}

fn choice_logprobs(engine: &Engine, r: &SlotsRequest) -> Result<Vec<Vec<f32>>, String> {
    let (ids, at) = slot_prompt(engine.tokenizer(), r)?;
    if ids.len() >= engine.context_len() {
        return Err(format!(
            "the prompt has {} tokens, the context window is {}",
            ids.len(),
            engine.context_len()
        ));
    }
    let rows: Vec<Vec<f32>> = if r.slots.len() == 1 {
        vec![engine
            .next_token_logprobs(&ids)
            .map_err(|e| e.to_string())?]
    } else {
        let logits = engine.prompt_logits(&ids).map_err(|e| e.to_string())?;
        at.iter()
            .map(|&p| ibench_worker::sampling::log_softmax(&logits[p]))
            .collect()
    };
    r.slots
        .iter()
        .zip(rows)
        .map(|(s, lp)| choice_scores(engine.tokenizer(), &s.choices, &lp))
        .collect()
}
