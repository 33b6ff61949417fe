//! A model placed on the cluster as a chain of stages, and the generation loop over it.
//!
//! The loop mirrors [`ibench_worker::Engine::generate`] (continuous batching: waiting requests
//! join and are prefilled together, then all active sequences decode one token per step; sampling
//! here, in the coordinator), so a pipeline gives the tokens of the in-process engine. One step is
//! one `Forward` call to the first stage, which relays through the rest of the chain.
//!
//! When a step fails, every stage's worker is asked for its status: stages on dead workers (or
//! that a restarted worker no longer has) are placed again on the live workers, and every active
//! sequence is replayed (its prompt and the tokens generated so far prefilled afresh), so the
//! output is the same as without the failure.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ibench_proto::convert::{Hop, OutputKind, SeqChunk, Step, StepInput, StepOutput};
use ibench_proto::v1 as pb;
use ibench_shared::hf::ModelConfig;
use ibench_shared::placement::{
    self, weight_bits, ModelDemand, ModelSource, PlacementOptions, StageSpec,
};
use ibench_shared::{GenerationParams, Quantization};
use ibench_worker::sampling::{log_softmax, Sampler};
use ibench_worker::{ChatTokenizer, GenerateOutput, GenerateRequest};
use tonic::Request;

use super::registry::WorkerRegistry;
use super::ClusterError;
use crate::eval::backend::BoxFuture;

/// Called after every completed step with the number of steps so far (tests use it to fail a
/// worker at a known point).
pub type StepHook = Arc<dyn Fn(u64) -> BoxFuture<'static, ()> + Send + Sync>;

/// Called after every completed step of any model of a pool with the model's name and its step
/// count (tests use it to fail a worker mid-run and to see models interleave).
#[derive(Clone)]
pub struct OnStep(pub Arc<dyn Fn(&str, u64) -> BoxFuture<'static, ()> + Send + Sync>);

impl std::fmt::Debug for OnStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnStep(..)")
    }
}

/// How models are placed and run on the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Most sequences decoded together in one step.
    pub max_batch: usize,
    /// KV-cache tokens reserved per model when placing it.
    pub kv_tokens: u64,
    /// Split every model into at least this many stages.
    pub min_stages: usize,
    /// `f32` or `bf16` for every stage; `None`: each device's default.
    pub dtype: Option<String>,
    pub placement: PlacementOptions,
    /// Re-placements one generate call may go through before it gives up.
    pub max_recoveries: usize,
    /// Longest one step (or one stage load) may take.
    pub rpc_timeout: Duration,
    /// Largest activation or logits payload of one step; bigger prefills are split.
    pub max_step_bytes: usize,
    /// Micro-batches of one model in flight at once (0: as many as the model has stages).
    pub micro_batches: usize,
    pub on_step: Option<OnStep>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            max_batch: 32,
            kv_tokens: 16_384,
            min_stages: 1,
            dtype: None,
            placement: PlacementOptions::default(),
            max_recoveries: 3,
            rpc_timeout: Duration::from_secs(600),
            max_step_bytes: ibench_proto::MAX_MESSAGE_BYTES * 3 / 4,
            micro_batches: 0,
            on_step: None,
        }
    }
}

/// One loaded stage of the pipeline.
#[derive(Debug, Clone)]
pub struct PlacedStage {
    pub id: String,
    pub worker: String,
    pub address: String,
    pub device: String,
    pub layers: Range<usize>,
    pub bytes: u64,
}

/// A model loaded on the cluster.
pub struct Pipeline {
    model: String,
    folder: PathBuf,
    quantization: Quantization,
    cfg: ModelConfig,
    demand: ModelDemand,
    tokenizer: ChatTokenizer,
    registry: Arc<WorkerRegistry>,
    opts: ClusterOptions,
    stages: Vec<PlacedStage>,
    next_seq: u64,
    next_stage: u64,
    steps: AtomicU64,
    recoveries: u64,
    hook: Option<StepHook>,
}

/// A sequence being generated.
struct Seq {
    index: usize,
    id: u64,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens the stages' caches hold.
    cached: usize,
    sampler: Sampler,
    params: GenerationParams,
}

impl Seq {
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
}

/// A failed step: whether placing stages again may help.
struct StepError {
    status: tonic::Status,
}

fn timeout<T>(msg: T, t: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(t);
    r
}

impl Pipeline {
    /// Places `model` (its folder is read here for the config and tokenizer, and by the workers
    /// at the same path) and loads its stages.
    pub async fn load(
        model: &str,
        folder: &Path,
        quantization: Quantization,
        registry: Arc<WorkerRegistry>,
        opts: ClusterOptions,
    ) -> Result<Self, ClusterError> {
        let err = |why: String| ClusterError::Model {
            model: model.to_string(),
            why,
        };
        let cfg = ModelConfig::from_folder(folder).map_err(|e| err(e.to_string()))?;
        let tokenizer = ChatTokenizer::from_folder(folder).map_err(|e| err(e.to_string()))?;
        let slots = registry.slots();
        // bf16 on GPUs, f32 on CPUs unless told.
        let dtype_bytes = match opts.dtype.as_deref() {
            Some("f32" | "float32") => 4,
            Some(_) => 2,
            None if slots.iter().all(|s| s.device == "cpu") => 4,
            None => 2,
        };
        let mut demand = ModelDemand::from_config(
            model,
            &cfg,
            weight_bits(quantization, dtype_bytes),
            opts.kv_tokens,
            dtype_bytes,
        );
        demand.min_stages = opts.min_stages;
        let hook = opts.on_step.clone().map(|OnStep(f)| {
            let name = model.to_string();
            Arc::new(move |n| f(&name, n)) as StepHook
        });
        let mut p = Self {
            model: model.to_string(),
            folder: folder.to_path_buf(),
            quantization,
            cfg,
            demand,
            tokenizer,
            registry,
            opts,
            stages: Vec::new(),
            next_seq: 0,
            next_stage: 0,
            steps: AtomicU64::new(0),
            recoveries: 0,
            hook,
        };
        let placed = placement::place(std::slice::from_ref(&p.demand), &slots, &p.opts.placement)?;
        let stages = p.load_assignments(&placed[0].stages, 0).await?;
        tracing::info!(model, stages = ?stages.iter().map(|s| (&s.worker, &s.device, &s.layers)).collect::<Vec<_>>(), "model placed");
        p.stages = stages;
        Ok(p)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }
    pub fn stages(&self) -> &[PlacedStage] {
        &self.stages
    }
    /// Steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }
    /// Re-placements so far.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }
    pub fn set_step_hook(&mut self, hook: StepHook) {
        self.hook = Some(hook);
    }

    /// Loads assignments whose layers are relative to `offset`, all at once; on a failure the
    /// ones that loaded are unloaded again.
    async fn load_assignments(
        &mut self,
        assignments: &[placement::StageAssignment],
        offset: usize,
    ) -> Result<Vec<PlacedStage>, ClusterError> {
        let mut calls = Vec::new();
        for a in assignments {
            self.next_stage += 1;
            let layers = a.layers.start + offset..a.layers.end + offset;
            let id = format!(
                "{}/{}-{}/{}",
                self.model, layers.start, layers.end, self.next_stage
            );
            let w = self
                .registry
                .get(&a.worker)
                .ok_or_else(|| ClusterError::Worker {
                    worker: a.worker.clone(),
                    address: String::new(),
                    action: "load a stage",
                    status: "the worker left the cluster".into(),
                })?;
            let spec = StageSpec {
                stage_id: id.clone(),
                model: ModelSource::Path(self.folder.clone()),
                layers: layers.clone(),
                device: a.device.clone(),
                dtype: self.opts.dtype.clone(),
                quantization: self.quantization,
            };
            let stage = PlacedStage {
                id,
                worker: w.id.clone(),
                address: w.address.clone(),
                device: a.device.clone(),
                layers,
                bytes: a.bytes,
            };
            let mut client = w.client.clone();
            let t = self.opts.rpc_timeout;
            calls.push(async move {
                let r = client
                    .load_stage(timeout(pb::LoadStageRequest::from(spec), t))
                    .await;
                (stage, r)
            });
        }
        let mut loaded = Vec::new();
        let mut failure = None;
        for (stage, r) in futures_util::future::join_all(calls).await {
            match r {
                Ok(_) => {
                    self.registry
                        .book(&stage.worker, &stage.device, stage.bytes, true);
                    loaded.push(stage);
                }
                Err(s) => {
                    failure.get_or_insert(ClusterError::Worker {
                        worker: stage.worker.clone(),
                        address: stage.address.clone(),
                        action: "load a stage",
                        status: s.message().to_string(),
                    });
                }
            }
        }
        if let Some(e) = failure {
            self.unload_stages(&loaded).await;
            return Err(e);
        }
        Ok(loaded)
    }

    async fn unload_stages(&self, stages: &[PlacedStage]) {
        let calls = stages.iter().filter_map(|s| {
            let mut client = self.registry.get(&s.worker)?.client;
            self.registry.book(&s.worker, &s.device, s.bytes, false);
            let id = s.id.clone();
            Some(async move {
                if let Err(e) = client
                    .unload_stage(timeout(
                        pb::UnloadStageRequest {
                            stage_id: id.clone(),
                        },
                        Duration::from_secs(30),
                    ))
                    .await
                {
                    tracing::warn!(stage = %id, error = %e.message(), "unload failed");
                }
            })
        });
        futures_util::future::join_all(calls).await;
    }

    /// Unloads every stage.
    pub async fn unload(self) {
        self.unload_stages(&self.stages).await;
        tracing::info!(model = %self.model, "model unloaded");
    }

    /// Frees finished sequences' caches on every stage, in the background.
    fn free(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        for s in &self.stages {
            let Some(w) = self.registry.get(&s.worker) else {
                continue;
            };
            let mut client = w.client;
            let req = pb::FreeSequencesRequest {
                stage_id: s.id.clone(),
                seq_ids: ids.clone(),
            };
            tokio::spawn(async move {
                let _ = client
                    .free_sequences(timeout(req, Duration::from_secs(30)))
                    .await;
            });
        }
    }

    /// One step through the chain.
    async fn step(
        &self,
        seqs: Vec<SeqChunk>,
        tokens: Vec<Vec<u32>>,
        output: OutputKind,
    ) -> Result<StepOutput, StepError> {
        let first = &self.stages[0];
        let step = Step {
            stage_id: first.id.clone(),
            seqs,
            input: StepInput::Tokens(tokens),
            next: self.stages[1..]
                .iter()
                .map(|s| Hop {
                    address: s.address.clone(),
                    stage_id: s.id.clone(),
                })
                .collect(),
            output,
        };
        let mut client = match self.registry.get(&first.worker) {
            Some(w) => w.client,
            None => {
                return Err(StepError {
                    status: tonic::Status::unavailable(format!(
                        "worker {} left the cluster",
                        first.worker
                    )),
                })
            }
        };
        let resp = client
            .forward(timeout(
                pb::ForwardRequest::from(step),
                self.opts.rpc_timeout,
            ))
            .await
            .map_err(|status| StepError { status })?;
        StepOutput::try_from(resp.into_inner()).map_err(|e| StepError {
            status: tonic::Status::internal(e.to_string()),
        })
    }

    /// After a failed step: finds the stages that are gone and places and loads them again.
    /// `Ok(false)`: every stage is fine, so the failure was not a lost worker.
    async fn recover(&mut self, cause: &tonic::Status) -> Result<bool, ClusterError> {
        // Per stage: `None` when its worker does not answer (gone), else whether it still has the
        // stage (a restarted worker answers without it).
        let probes = self.stages.iter().map(|s| {
            let w = self.registry.get(&s.worker);
            async move {
                let mut client = w?.client;
                let r = client
                    .status(timeout(pb::StatusRequest {}, Duration::from_secs(3)))
                    .await
                    .ok()?;
                Some(r.get_ref().stages.iter().any(|x| x.stage_id == s.id))
            }
        });
        let probed = futures_util::future::join_all(probes).await;
        let lost: Vec<bool> = probed.iter().map(|p| *p != Some(true)).collect();
        for (s, p) in self.stages.iter().zip(&probed) {
            if p.is_none() {
                self.registry.remove(&s.worker);
            }
        }
        if !lost.iter().any(|&l| l) {
            return Ok(false);
        }
        self.recoveries += 1;
        tracing::warn!(model = %self.model, cause = %cause.message(),
            lost = ?self.stages.iter().zip(&lost).filter(|(_, l)| **l).map(|(s, _)| (&s.worker, &s.layers)).collect::<Vec<_>>(),
            "stages lost; placing them again");
        // Consecutive lost stages become one layer range, placed like a model of its own.
        let n = self.cfg.num_layers;
        let mut new_stages = Vec::new();
        let mut i = 0;
        while i < self.stages.len() {
            if !lost[i] {
                new_stages.push(self.stages[i].clone());
                i += 1;
                continue;
            }
            let start = self.stages[i].layers.start;
            while i < self.stages.len() && lost[i] {
                i += 1;
            }
            let end = self.stages[i - 1].layers.end;
            let sub = ModelDemand {
                model: format!("{} layers {start}..{end}", self.model),
                layer_bytes: self.demand.layer_bytes[start..end].to_vec(),
                first_extra_bytes: if start == 0 {
                    self.demand.first_extra_bytes
                } else {
                    0
                },
                last_extra_bytes: if end == n {
                    self.demand.last_extra_bytes
                } else {
                    0
                },
                shared_extra_bytes: if start == 0 && end == n {
                    self.demand.shared_extra_bytes
                } else {
                    0
                },
                min_stages: 1,
            };
            let placed = placement::place(
                std::slice::from_ref(&sub),
                &self.registry.slots(),
                &self.opts.placement,
            )?;
            new_stages.extend(self.load_assignments(&placed[0].stages, start).await?);
        }
        for s in self
            .stages
            .iter()
            .zip(&lost)
            .filter(|(_, l)| **l)
            .map(|(s, _)| s)
        {
            self.registry.book(&s.worker, &s.device, s.bytes, false);
        }
        tracing::info!(model = %self.model, stages = ?new_stages.iter().map(|s| (&s.worker, &s.layers)).collect::<Vec<_>>(), "model placed again");
        self.stages = new_stages;
        Ok(true)
    }

    /// `which` cut into consecutive micro-batches, one per stage by default (one group for a
    /// single stage): fed concurrently, they keep every stage busy.
    fn micro_batches(&self, which: &[usize]) -> Vec<Vec<usize>> {
        let n = match self.opts.micro_batches {
            0 => self.stages.len(),
            n => n,
        };
        let g = n.min(which.len()).max(1);
        let size = which.len().div_ceil(g).max(1);
        which.chunks(size).map(|c| c.to_vec()).collect()
    }

    /// The steps that feed the sequences `which` their uncached tokens, within the size limits.
    fn plan(&self, seqs: &[Seq], which: &[usize], output: OutputKind) -> Vec<PlannedStep> {
        let max_positions = (self.opts.max_step_bytes / (self.cfg.hidden_size * 4)).max(1);
        let max_rows = match output {
            OutputKind::Logits => (self.opts.max_step_bytes / (self.cfg.vocab_size * 4)).max(1),
            OutputKind::Argmax => usize::MAX,
        };
        let lens: Vec<usize> = which
            .iter()
            .map(|&i| seqs[i].tokens.len() - seqs[i].cached)
            .collect();
        plan_steps(&lens, max_positions, max_rows)
            .into_iter()
            .map(|group| {
                let mut step = PlannedStep::default();
                for (r, &(k, ref piece)) in group.iter().enumerate() {
                    let s = &seqs[which[k]];
                    let at = s.cached + piece.start;
                    step.chunks.push(SeqChunk {
                        seq_id: s.id,
                        start: at,
                        len: piece.len(),
                    });
                    step.tokens
                        .push(s.tokens[at..s.cached + piece.end].to_vec());
                    if piece.end == lens[k] {
                        step.finals.push((k, r));
                    }
                }
                step
            })
            .collect()
    }

    /// Runs planned steps one after another; answers the last row of every sequence (by its
    /// index in the group).
    async fn run_plan(
        &self,
        plan: Vec<PlannedStep>,
        output: OutputKind,
    ) -> Result<Vec<(usize, StepRow)>, StepError> {
        let mut rows = Vec::new();
        for st in plan {
            let out = self.step(st.chunks, st.tokens, output).await?;
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            for (k, r) in st.finals {
                rows.push((
                    k,
                    match &out {
                        StepOutput::Tokens(t) => StepRow::Token(t[r]),
                        StepOutput::Logits { data, vocab, .. } => {
                            StepRow::Logits(data[r * vocab..(r + 1) * vocab].to_vec())
                        }
                    },
                ));
            }
            if let Some(h) = &self.hook {
                h(n).await;
            }
        }
        Ok(rows)
    }

    /// Feeds every sequence of the given disjoint groups its uncached tokens (big prefills in
    /// several steps within the size limit) and answers with each one's last row: logits, or the
    /// argmax token. Each group's steps run in order, the groups concurrently, so while one
    /// group's step is in stage k the next group's is in stage k-1 (micro-batches: all stages
    /// work at once). A failure in any group re-places the lost stages and replays every sequence.
    async fn feed_groups(
        &mut self,
        seqs: &mut [Seq],
        groups: &[Vec<usize>],
        want_logits: bool,
    ) -> Result<Vec<Vec<StepRow>>, ClusterError> {
        let mut attempts = 0;
        loop {
            let output = if want_logits
                || groups
                    .iter()
                    .flatten()
                    .any(|&i| !seqs[i].params.is_greedy())
            {
                OutputKind::Logits
            } else {
                OutputKind::Argmax
            };
            let plans: Vec<Vec<PlannedStep>> =
                groups.iter().map(|g| self.plan(seqs, g, output)).collect();
            let results =
                futures_util::future::join_all(plans.into_iter().map(|p| self.run_plan(p, output)))
                    .await;
            let mut failure = None;
            let mut out = Vec::with_capacity(groups.len());
            for (g, r) in groups.iter().zip(results) {
                match r {
                    Ok(rows) => {
                        let mut ordered: Vec<Option<StepRow>> = vec![None; g.len()];
                        for (k, row) in rows {
                            ordered[k] = Some(row);
                        }
                        out.push(
                            ordered
                                .into_iter()
                                .map(|r| r.expect("every sequence's last piece ran"))
                                .collect::<Vec<_>>(),
                        );
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            let Some(e) = failure else {
                for &i in groups.iter().flatten() {
                    seqs[i].cached = seqs[i].tokens.len();
                }
                return Ok(out);
            };
            let code = e.status.code();
            if matches!(
                code,
                tonic::Code::InvalidArgument
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
            ) {
                return Err(ClusterError::Model {
                    model: self.model.clone(),
                    why: e.status.message().to_string(),
                });
            }
            attempts += 1;
            if attempts > self.opts.max_recoveries {
                return Err(ClusterError::GaveUp {
                    model: self.model.clone(),
                    attempts: attempts - 1,
                    last: e.status.message().to_string(),
                });
            }
            let replaced = self.recover(&e.status).await?;
            if !replaced
                && !matches!(
                    code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::NotFound
                        | tonic::Code::Unknown
                )
            {
                return Err(ClusterError::Model {
                    model: self.model.clone(),
                    why: e.status.message().to_string(),
                });
            }
            // Every cache may be gone or partly written: replay all sequences.
            for s in seqs.iter_mut() {
                s.cached = 0;
            }
        }
    }

    fn check_prompt(&self, index: usize, ids: &[u32]) -> Result<(), ClusterError> {
        let bad = |why: String| Err(ClusterError::Request { index, why });
        let context = self.cfg.max_position_embeddings;
        if ids.is_empty() {
            return bad("empty prompt".into());
        }
        if ids.len() + 1 > context {
            return bad(format!("the prompt has {} tokens but the model's context is {context} tokens; shorten the conversation", ids.len()));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return bad(format!(
                "token id {id} is outside the vocabulary ({} entries)",
                self.cfg.vocab_size
            ));
        }
        Ok(())
    }

    /// Generates for every request, batched; outputs in request order.
    pub async fn generate(
        &mut self,
        reqs: &[GenerateRequest],
    ) -> Result<Vec<GenerateOutput>, ClusterError> {
        for (i, r) in reqs.iter().enumerate() {
            r.params.validate().map_err(|e| ClusterError::Request {
                index: i,
                why: e.to_string(),
            })?;
            self.check_prompt(i, &r.prompt_ids)?;
        }
        let mut out: Vec<Option<GenerateOutput>> = vec![None; reqs.len()];
        let mut waiting: std::collections::VecDeque<usize> = (0..reqs.len()).collect();
        let mut active: Vec<Seq> = Vec::new();
        let max_batch = self.opts.max_batch.max(1);
        while !waiting.is_empty() || !active.is_empty() {
            while active.len() < max_batch {
                let Some(i) = waiting.pop_front() else { break };
                self.next_seq += 1;
                active.push(Seq {
                    index: i,
                    id: self.next_seq,
                    tokens: reqs[i].prompt_ids.clone(),
                    prompt_len: reqs[i].prompt_ids.len(),
                    cached: 0,
                    sampler: Sampler::new(&reqs[i].params),
                    params: reqs[i].params.clone(),
                });
            }
            // As the engine: sequences to prefill (new ones, or all after a failure) step alone;
            // otherwise every active sequence decodes one token.
            let mut which: Vec<usize> = (0..active.len())
                .filter(|&i| active[i].cached == 0)
                .collect();
            if which.is_empty() {
                which = (0..active.len()).collect();
            }
            let groups = self.micro_batches(&which);
            let rows = self
                .feed_groups(&mut active, &groups, false)
                .await?
                .concat();
            for (&i, row) in which.iter().zip(rows) {
                let s = &mut active[i];
                let t = match row {
                    StepRow::Token(t) => t,
                    StepRow::Logits(l) => s.sampler.sample(&l),
                };
                s.tokens.push(t);
            }
            let mut still = Vec::with_capacity(active.len());
            let mut done_ids = Vec::new();
            for s in active {
                match self.finished(&s)? {
                    Some(o) => {
                        done_ids.push(s.id);
                        out[s.index] = Some(o);
                    }
                    None => still.push(s),
                }
            }
            active = still;
            self.free(done_ids);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every request finishes"))
            .collect())
    }

    /// The engine's finish rules ([`ibench_worker::finish_check`]).
    fn finished(&self, s: &Seq) -> Result<Option<GenerateOutput>, ClusterError> {
        let generated = s.generated();
        let done = ibench_worker::finish_check(
            &self.cfg,
            &self.tokenizer,
            &s.params,
            generated,
            s.tokens.len(),
        )
        .map_err(|e| ClusterError::Model {
            model: self.model.clone(),
            why: e.to_string(),
        })?;
        Ok(done.map(|(finish_reason, text)| GenerateOutput {
            text,
            token_ids: generated.to_vec(),
            prompt_token_ids: s.tokens[..s.prompt_len].to_vec(),
            finish_reason,
        }))
    }
}

impl Pipeline {
    /// Per prompt and listed position, log-softmax over the vocabulary for the token after it
    /// (positions ascending, as [`crate::eval::pool::slot_prompt`] gives them). Each prompt is fed
    /// once, in rounds up to its next position, so the stages' caches carry it from one position
    /// to the next: one forward pass in all, as the in-process engine's `prompt_logits`.
    pub async fn slot_logprobs(
        &mut self,
        prompts: &[(Vec<u32>, Vec<usize>)],
    ) -> Result<Vec<Vec<Vec<f32>>>, ClusterError> {
        let mut out = Vec::with_capacity(prompts.len());
        for batch in prompts.chunks(self.opts.max_batch.max(1)) {
            let mut seqs = Vec::with_capacity(batch.len());
            for (i, (ids, at)) in batch.iter().enumerate() {
                self.check_prompt(i, ids)?;
                if at.windows(2).any(|w| w[0] > w[1]) || at.iter().any(|&p| p >= ids.len()) {
                    return Err(ClusterError::Request {
                        index: i,
                        why: "slot positions must ascend inside the prompt".into(),
                    });
                }
                self.next_seq += 1;
                seqs.push(Seq {
                    index: i,
                    id: self.next_seq,
                    tokens: Vec::new(),
                    prompt_len: 0,
                    cached: 0,
                    sampler: Sampler::new(&GenerationParams::default()),
                    params: GenerationParams::default(),
                });
            }
            let mut rows: Vec<Vec<Vec<f32>>> = batch
                .iter()
                .map(|(_, at)| Vec::with_capacity(at.len()))
                .collect();
            let rounds = batch.iter().map(|(_, at)| at.len()).max().unwrap_or(0);
            for r in 0..rounds {
                let mut which = Vec::new();
                for (i, (ids, at)) in batch.iter().enumerate() {
                    let Some(&p) = at.get(r) else { continue };
                    if p + 1 == seqs[i].tokens.len() {
                        // The same position as the slot before (nothing between them).
                        let last = rows[i].last().cloned().expect("an earlier slot was read");
                        rows[i].push(last);
                        continue;
                    }
                    seqs[i].tokens = ids[..p + 1].to_vec();
                    which.push(i);
                }
                if which.is_empty() {
                    continue;
                }
                let groups = self.micro_batches(&which);
                let got = self.feed_groups(&mut seqs, &groups, true).await;
                let got = match got {
                    Ok(g) => g.concat(),
                    Err(e) => {
                        self.free(seqs.iter().map(|s| s.id).collect());
                        return Err(e);
                    }
                };
                for (&i, row) in which.iter().zip(got) {
                    match row {
                        StepRow::Logits(l) => rows[i].push(log_softmax(&l)),
                        StepRow::Token(_) => unreachable!("logits were asked for"),
                    }
                }
            }
            self.free(seqs.iter().map(|s| s.id).collect());
            out.extend(rows);
        }
        Ok(out)
    }
}

/// One step of a plan: its chunks and tokens, and (index in the group, row in the step) of the
/// sequences whose last piece it carries.
#[derive(Default)]
struct PlannedStep {
    chunks: Vec<SeqChunk>,
    tokens: Vec<Vec<u32>>,
    finals: Vec<(usize, usize)>,
}

/// The last row of one sequence in a step.
#[derive(Debug, Clone)]
enum StepRow {
    Token(u32),
    Logits(Vec<f32>),
}

/// Splits chunks of `lens` tokens into steps of at most `max_positions` padded positions
/// (sequences x longest piece) and `max_rows` sequences: round r holds every chunk's r-th piece,
/// so a sequence's pieces run in order. Each step lists (chunk index, token range in the chunk).
fn plan_steps(
    lens: &[usize],
    max_positions: usize,
    max_rows: usize,
) -> Vec<Vec<(usize, Range<usize>)>> {
    let piece = max_positions.max(1);
    let rounds = lens.iter().map(|l| l.div_ceil(piece)).max().unwrap_or(0);
    let mut steps = Vec::new();
    for r in 0..rounds {
        let mut cur: Vec<(usize, Range<usize>)> = Vec::new();
        let mut longest = 0;
        for (k, &len) in lens.iter().enumerate() {
            let start = r * piece;
            if start >= len {
                continue;
            }
            let range = start..(start + piece).min(len);
            let l = longest.max(range.len());
            if !cur.is_empty() && ((cur.len() + 1) * l > max_positions || cur.len() + 1 > max_rows)
            {
                steps.push(std::mem::take(&mut cur));
                longest = 0;
            }
            longest = longest.max(range.len());
            cur.push((k, range));
        }
        if !cur.is_empty() {
            steps.push(cur);
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::plan_steps;

    #[test]
    fn small_batches_are_one_step() {
        assert_eq!(
            plan_steps(&[3, 5, 1], 100, 32),
            vec![vec![(0, 0..3), (1, 0..5), (2, 0..1)]]
        );
    }

    #[test]
    fn big_prefills_split_by_positions_rows_and_pieces() {
        // 3 x 5 positions > 12: two steps.
        assert_eq!(
            plan_steps(&[5, 5, 5], 12, 32),
            vec![vec![(0, 0..5), (1, 0..5)], vec![(2, 0..5)]]
        );
        assert_eq!(
            plan_steps(&[1, 1, 1], 100, 2),
            vec![vec![(0, 0..1), (1, 0..1)], vec![(2, 0..1)]]
        );
        // A 10-token chunk with 4 positions per step: pieces in order, one per round.
        assert_eq!(
            plan_steps(&[10, 2], 4, 32),
            vec![
                vec![(0, 0..4)],
                vec![(1, 0..2)],
                vec![(0, 4..8)],
                vec![(0, 8..10)]
            ]
        );
    }
}
