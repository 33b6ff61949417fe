//! The cluster as a [`ModelPool`]: each model, once placed, is driven by a task of its own that
//! owns its [`Pipeline`]; turns queued while a batch runs are merged into the next batch.

use std::collections::HashMap;
use std::sync::Arc;

use ibench_shared::Registry;
use ibench_worker::GenerateRequest;
use tokio::sync::{mpsc, Mutex};

use super::pipeline::{ClusterOptions, Pipeline};
use super::registry::WorkerRegistry;
use crate::eval::backend::{BoxFuture, SlotsRequest};
use crate::eval::pool::{
    ask_choose, ask_generate, choice_scores, slot_prompt, GenOutput, GenRequest, Job, ModelPool,
    PoolError,
};

struct Driver {
    tx: mpsc::UnboundedSender<Job>,
    task: tokio::task::JoinHandle<Pipeline>,
    /// The placement when the model was loaded, for reports.
    stages: Vec<String>,
}

/// Models of the registry placed on the cluster's workers on demand.
pub struct ClusterPool {
    models: Registry,
    workers: Arc<WorkerRegistry>,
    opts: ClusterOptions,
    drivers: Mutex<HashMap<String, Driver>>,
}

impl ClusterPool {
    pub fn new(models: Registry, workers: Arc<WorkerRegistry>, opts: ClusterOptions) -> Self {
        Self {
            models,
            workers,
            opts,
            drivers: Mutex::new(HashMap::new()),
        }
    }

    async fn sender(&self, model: &str) -> Result<mpsc::UnboundedSender<Job>, PoolError> {
        let mut drivers = self.drivers.lock().await;
        if let Some(d) = drivers.get(model) {
            if !d.tx.is_closed() {
                return Ok(d.tx.clone());
            }
        }
        let spec = self
            .models
            .resolve(model)
            .map_err(|e| PoolError::Registry(Arc::new(e)))?;
        let pipeline = Pipeline::load(
            model,
            &spec.path,
            spec.quantization,
            self.workers.clone(),
            self.opts.clone(),
        )
        .await
        .map_err(|e| PoolError::Load {
            model: model.into(),
            why: e.to_string(),
        })?;
        let stages = pipeline
            .stages()
            .iter()
            .map(|s| format!("{} {} {:?}", s.worker, s.device, s.layers))
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(model.to_string(), pipeline, rx));
        drivers.insert(
            model.to_string(),
            Driver {
                tx: tx.clone(),
                task,
                stages,
            },
        );
        Ok(tx)
    }
}

impl ClusterPool {
    /// `worker device layers` of each stage of a loaded model (empty when it is not loaded).
    pub async fn placement(&self, model: &str) -> Vec<String> {
        let drivers = self.drivers.lock().await;
        drivers
            .get(model)
            .map(|d| d.stages.clone())
            .unwrap_or_default()
    }
}

impl ModelPool for ClusterPool {
    fn identity(&self, model: &str) -> Result<String, PoolError> {
        // The same as the in-process pool's: the cluster computes the same tokens.
        let s = self
            .models
            .resolve(model)
            .map_err(|e| PoolError::Registry(Arc::new(e)))?;
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
        let model = model.to_string();
        Box::pin(async move {
            let Some(d) = self.drivers.lock().await.remove(&model) else {
                return Ok(());
            };
            drop(d.tx);
            let pipeline = d
                .task
                .await
                .map_err(|_| PoolError::Stopped(model.clone()))?;
            pipeline.unload().await;
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

/// The task that owns a model's pipeline; returns it when the pool drops the queue.
async fn drive(model: String, mut p: Pipeline, mut rx: mpsc::UnboundedReceiver<Job>) -> Pipeline {
    let err = |why: String| PoolError::Engine {
        model: model.clone(),
        why,
    };
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let mut reqs: Vec<GenRequest> = Vec::new();
        let mut replies = Vec::new();
        for job in jobs {
            match job {
                Job::Generate(r, reply) => {
                    replies.push((r.len(), reply));
                    reqs.extend(r);
                }
                Job::Choose(r, reply) => {
                    let _ = reply.send(choose(&mut p, &r).await.map_err(&err));
                }
            }
        }
        if replies.is_empty() {
            continue;
        }
        let mut results = generate(&mut p, &reqs, &err).await.into_iter();
        for (len, reply) in replies {
            let _ = reply.send(results.by_ref().take(len).collect());
        }
    }
    p
}

/// Encodes and generates a batch; a request that cannot be encoded or is too long fails alone.
async fn generate(
    p: &mut Pipeline,
    reqs: &[GenRequest],
    err: &(dyn Fn(String) -> PoolError + Sync),
) -> Vec<Result<GenOutput, PoolError>> {
    let context = p.config().max_position_embeddings;
    let mut out: Vec<Option<Result<GenOutput, PoolError>>> = vec![None; reqs.len()];
    let mut runnable = Vec::new();
    let mut index = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        match p
            .tokenizer()
            .encode_chat(&r.messages, true, r.params.enable_thinking)
        {
            Ok(ids) if !ids.is_empty() && ids.len() < context => {
                runnable.push(GenerateRequest {
                    prompt_ids: ids,
                    params: r.params.clone(),
                });
                index.push(i);
            }
            Ok(ids) => {
                out[i] = Some(Err(err(format!(
                    "the prompt has {} tokens, the context window is {context}",
                    ids.len()
                ))))
            }
            Err(e) => out[i] = Some(Err(err(e.to_string()))),
        }
    }
    if !runnable.is_empty() {
        match p.generate(&runnable).await {
            Ok(outs) => {
                for (&i, o) in index.iter().zip(outs) {
                    out[i] = Some(Ok(GenOutput {
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

/// Slot log-probabilities of every request, from one pass over each prompt.
async fn choose(p: &mut Pipeline, reqs: &[SlotsRequest]) -> Result<Vec<Vec<Vec<f32>>>, String> {
    let context = p.config().max_position_embeddings;
    let mut prompts = Vec::with_capacity(reqs.len());
    for r in reqs {
        let (ids, at) = slot_prompt(p.tokenizer(), r)?;
        if ids.len() >= context {
            return Err(format!(
                "the prompt has {} tokens, the context window is {context}",
                ids.len()
            ));
        }
        prompts.push((ids, at));
    }
    let lps = p.slot_logprobs(&prompts).await.map_err(|e| e.to_string())?;
    reqs.iter()
        .zip(lps)
        .map(|(r, rows)| {
            r.slots
                .iter()
                .zip(rows)
                .map(|(s, lp)| choice_scores(p.tokenizer(), &s.choices, &lp))
                .collect()
        })
        .collect()
}
