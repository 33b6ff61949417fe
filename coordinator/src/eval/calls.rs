//! Every model, simulator and judge call goes through [`Calls`]: a stored result is returned
//! without calling again; a new result is stored the moment it arrives. Counts of issued, replayed
//! and failed calls per role feed the report.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backend::{CallError, ChatBackend, ChatRequest, SlotProbs, SlotsRequest};
use super::pool::{GenOutput, GenRequest, ModelPool, PoolError};
use super::store::{call_key, Store};

/// Who made a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Model,
    Simulator,
    Judge,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Model, Role::Simulator, Role::Judge];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Model => "model",
            Role::Simulator => "simulator",
            Role::Judge => "judge",
        }
    }
}

/// A step that failed for good (after retries and re-asks): counted and shown, never scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub role: Role,
    /// What the step was, e.g. `judge dialogue en-med-chest-pain / Qwen3-8B`.
    pub what: String,
    pub error: String,
}

#[derive(Debug, Default)]
struct Tally {
    issued: AtomicU64,
    replayed: AtomicU64,
}

/// Per-role numbers for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleCounts {
    /// Calls sent to a backend in this process.
    pub issued: u64,
    /// Calls answered from the store (completed by an earlier, interrupted run).
    pub replayed: u64,
    /// Steps that failed for good.
    pub failed: u64,
}

pub struct Calls {
    store: Arc<Store>,
    tallies: [Tally; 3],
    failures: Mutex<Vec<Failure>>,
    /// Calls running now, by key: a second caller waits for the first.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Keys completed by this process or already counted as replayed.
    seen: Mutex<HashSet<String>>,
}

fn idx(r: Role) -> usize {
    r as usize
}

impl Calls {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            tallies: Default::default(),
            failures: Mutex::new(Vec::new()),
            inflight: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn fail(&self, role: Role, what: impl Into<String>, error: impl std::fmt::Display) {
        let f = Failure {
            role,
            what: what.into(),
            error: error.to_string(),
        };
        tracing::warn!(role = role.as_str(), what = %f.what, error = %f.error, "step failed");
        self.failures.lock().expect("failures lock").push(f);
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failures.lock().expect("failures lock").clone()
    }

    pub fn counts(&self, role: Role) -> RoleCounts {
        let t = &self.tallies[idx(role)];
        let failed = self
            .failures
            .lock()
            .expect("failures lock")
            .iter()
            .filter(|f| f.role == role)
            .count() as u64;
        RoleCounts {
            issued: t.issued.load(Ordering::Relaxed),
            replayed: t.replayed.load(Ordering::Relaxed),
            failed,
        }
    }

    /// Waits until the call `key` that another caller runs now completes (at once if none).
    async fn wait_for(&self, key: &str) {
        let Some(notify) = self
            .inflight
            .lock()
            .expect("inflight lock")
            .get(key)
            .cloned()
        else {
            return;
        };
        let fut = notify.notified();
        tokio::pin!(fut);
        fut.as_mut().enable();
        // The runner may have finished between the lookup and `enable`.
        let same = self
            .inflight
            .lock()
            .expect("inflight lock")
            .get(key)
            .is_some_and(|n| Arc::ptr_eq(n, &notify));
        if same {
            fut.await;
        }
    }

    /// Generic: look up; run the misses as one batch, each distinct call once (a call that is
    /// already running for another caller is waited for, not repeated); store each success.
    async fn cached<R, T, F, Fut>(
        &self,
        role: Role,
        op: &str,
        label: &str,
        actor: &str,
        reqs: Vec<R>,
        run: F,
    ) -> Vec<Result<T, CallError>>
    where
        R: Serialize + Clone,
        T: Serialize + serde::de::DeserializeOwned + Clone,
        F: Fn(Vec<R>) -> Fut,
        Fut: std::future::Future<Output = Vec<Result<T, CallError>>>,
    {
        let values: Vec<Value> = reqs
            .iter()
            .map(|r| serde_json::to_value(r).expect("requests serialize"))
            .collect();
        let keys: Vec<String> = values.iter().map(|v| call_key(op, actor, v)).collect();
        let mut out: Vec<Option<Result<T, CallError>>> = vec![None; reqs.len()];
        let mut pending: Vec<usize> = (0..reqs.len()).collect();
        while !pending.is_empty() {
            let mut leaders: Vec<usize> = Vec::new();
            let mut waiters: Vec<usize> = Vec::new();
            let mut dups: Vec<(usize, usize)> = Vec::new();
            for &i in &pending {
                match self.store.get::<T>(&keys[i]) {
                    Ok(Some(v)) => {
                        // A replay is a call completed by an earlier run, counted once.
                        if self.seen.lock().expect("seen lock").insert(keys[i].clone()) {
                            self.tallies[idx(role)]
                                .replayed
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        out[i] = Some(Ok(v));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        out[i] = Some(Err(CallError::Engine(format!("store: {e}"))));
                        continue;
                    }
                }
                if let Some(&j) = leaders.iter().find(|&&j| keys[j] == keys[i]) {
                    dups.push((i, j));
                    continue;
                }
                let mut inflight = self.inflight.lock().expect("inflight lock");
                if inflight.contains_key(&keys[i]) {
                    waiters.push(i);
                } else {
                    inflight.insert(keys[i].clone(), Arc::new(tokio::sync::Notify::new()));
                    leaders.push(i);
                }
            }
            let batch: Vec<R> = leaders.iter().map(|&i| reqs[i].clone()).collect();
            let run_leaders = async {
                if batch.is_empty() {
                    Vec::new()
                } else {
                    run(batch).await
                }
            };
            let wait_all =
                futures_util::future::join_all(waiters.iter().map(|&i| self.wait_for(&keys[i])));
            let (results, _) = futures_util::future::join(run_leaders, wait_all).await;
            for (&i, res) in leaders.iter().zip(results) {
                self.tallies[idx(role)]
                    .issued
                    .fetch_add(1, Ordering::Relaxed);
                if let Ok(v) = &res {
                    self.seen.lock().expect("seen lock").insert(keys[i].clone());
                    if let Err(e) = self.store.put(&keys[i], label, actor, &values[i], v) {
                        // The result is still used; only resumability of this one call is lost.
                        tracing::error!(error = %e, "could not store a completed call");
                    }
                }
                out[i] = Some(res);
                if let Some(n) = self
                    .inflight
                    .lock()
                    .expect("inflight lock")
                    .remove(&keys[i])
                {
                    n.notify_waiters();
                }
            }
            for (i, j) in dups {
                out[i] = out[j].clone();
            }
            // Waiters look in the store again; one whose runner failed runs it itself.
            pending = waiters;
        }
        out.into_iter()
            .map(|o| o.expect("every request answered"))
            .collect()
    }

    /// Chat completions by a simulator or judge backend.
    pub async fn chat(
        &self,
        role: Role,
        label: &str,
        backend: &dyn ChatBackend,
        reqs: Vec<ChatRequest>,
    ) -> Vec<Result<String, CallError>> {
        self.cached(role, "chat", label, backend.id(), reqs, |m| {
            backend.complete(m)
        })
        .await
    }

    pub async fn chat_one(
        &self,
        role: Role,
        label: &str,
        backend: &dyn ChatBackend,
        req: ChatRequest,
    ) -> Result<String, CallError> {
        self.chat(role, label, backend, vec![req])
            .await
            .pop()
            .expect("one answer")
    }

    /// Log-probability choices by a local simulator or judge.
    pub async fn choose(
        &self,
        role: Role,
        label: &str,
        backend: &dyn ChatBackend,
        reqs: Vec<SlotsRequest>,
    ) -> Vec<Result<SlotProbs, CallError>> {
        self.cached(role, "choose", label, backend.id(), reqs, |m| {
            backend.choose(m)
        })
        .await
    }

    /// Turns of a model under test.
    pub async fn generate(
        &self,
        pool: &dyn ModelPool,
        model: &str,
        reqs: Vec<GenRequest>,
    ) -> Vec<Result<GenOutput, CallError>> {
        let actor = match pool.identity(model) {
            Ok(a) => a,
            Err(e) => {
                return reqs
                    .iter()
                    .map(|_| Err(CallError::Engine(e.to_string())))
                    .collect()
            }
        };
        self.cached(
            Role::Model,
            "generate",
            "model",
            &actor,
            reqs,
            |m| async move {
                let load_err = |e: PoolError| match e {
                    PoolError::Load { .. } => CallError::Load(e.to_string()),
                    e => CallError::Engine(e.to_string()),
                };
                pool.generate(model, m)
                    .await
                    .into_iter()
                    .map(|r| r.map_err(load_err))
                    .collect()
            },
        )
        .await
    }
}
