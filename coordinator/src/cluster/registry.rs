//! The workers the coordinator knows: plain state behind a mutex, changed by registrations,
//! heartbeats and failures, with a watch channel that says when it changed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ibench_proto::tls::ClusterTls;
use ibench_proto::{ClusterToken, StageWorkerClient};
use ibench_shared::placement::{DeviceInfo, DeviceSlot};
use tokio::sync::watch;

use super::ClusterError;

/// One live worker.
#[derive(Clone)]
pub struct WorkerEntry {
    /// `name#n`: a restarted worker gets a new id, so stages of the old one are known lost.
    pub id: String,
    pub name: String,
    pub address: String,
    pub devices: Vec<DeviceInfo>,
    pub client: StageWorkerClient,
    last_seen: Instant,
}

#[derive(Default)]
struct State {
    workers: BTreeMap<String, WorkerEntry>,
    registrations: u64,
    /// Bytes of stages the coordinator placed, per (worker id, device).
    placed: BTreeMap<(String, String), u64>,
}

/// The registry of workers.
pub struct WorkerRegistry {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    token: Option<ClusterToken>,
    tls: ClusterTls,
    heartbeat: Duration,
}

impl WorkerRegistry {
    /// Workers heartbeat every `heartbeat`; three missed ones make a worker dead.
    pub fn new(token: Option<ClusterToken>, heartbeat: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            token,
            tls: ClusterTls::default(),
            heartbeat,
        }
    }

    /// Serves the coordinator with `tls.server` and connects to workers with `tls.client`.
    pub fn with_tls(mut self, tls: ClusterTls) -> Self {
        self.tls = tls;
        self
    }

    pub fn tls(&self) -> &ClusterTls {
        &self.tls
    }

    /// The token the cluster's RPCs carry, both ways.
    pub fn token(&self) -> Option<&ClusterToken> {
        self.token.as_ref()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Adds (or replaces, after a restart) the worker called `name`; returns its new id.
    pub fn register(
        &self,
        name: &str,
        address: &str,
        devices: Vec<DeviceInfo>,
    ) -> Result<String, String> {
        let ep = ibench_proto::endpoint(address, self.tls.client.as_ref())
            .map_err(|e| format!("address '{address}': {e}"))?;
        let client = ibench_proto::stage_worker_client(ep.connect_lazy(), self.token.clone());
        let mut s = self.state.lock().expect("registry lock");
        s.registrations += 1;
        let id = format!("{name}#{}", s.registrations);
        let old: Vec<String> = s
            .workers
            .values()
            .filter(|w| w.name == name)
            .map(|w| w.id.clone())
            .collect();
        for o in old {
            s.workers.remove(&o);
            s.placed.retain(|(w, _), _| *w != o);
        }
        s.workers.insert(
            id.clone(),
            WorkerEntry {
                id: id.clone(),
                name: name.into(),
                address: address.into(),
                devices,
                client,
                last_seen: Instant::now(),
            },
        );
        drop(s);
        self.bump();
        Ok(id)
    }

    /// Records a heartbeat; `false` when the worker is unknown (it must register again).
    pub fn heartbeat(&self, id: &str, devices: Vec<DeviceInfo>) -> bool {
        let mut s = self.state.lock().expect("registry lock");
        match s.workers.get_mut(id) {
            Some(w) => {
                w.devices = devices;
                w.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets a worker that failed; its stages are lost.
    pub fn remove(&self, id: &str) {
        let mut s = self.state.lock().expect("registry lock");
        let removed = s.workers.remove(id).is_some();
        s.placed.retain(|(w, _), _| w != id);
        drop(s);
        if removed {
            tracing::warn!(worker = id, "worker removed");
            self.bump();
        }
    }

    /// Removes workers whose last heartbeat is older than three intervals.
    pub fn expire(&self) {
        let limit = self.heartbeat * 3;
        let stale: Vec<String> = {
            let s = self.state.lock().expect("registry lock");
            s.workers
                .values()
                .filter(|w| w.last_seen.elapsed() > limit)
                .map(|w| w.id.clone())
                .collect()
        };
        for id in stale {
            tracing::warn!(worker = %id, "no heartbeat; the worker is considered dead");
            self.remove(&id);
        }
    }

    pub fn get(&self, id: &str) -> Option<WorkerEntry> {
        self.state
            .lock()
            .expect("registry lock")
            .workers
            .get(id)
            .cloned()
    }

    pub fn workers(&self) -> Vec<WorkerEntry> {
        self.state
            .lock()
            .expect("registry lock")
            .workers
            .values()
            .cloned()
            .collect()
    }

    /// Every device of every live worker with the memory placement may still use: the reported
    /// free memory, and no more than the total less what the coordinator placed there itself
    /// (reports lag behind loads).
    pub fn slots(&self) -> Vec<DeviceSlot> {
        let s = self.state.lock().expect("registry lock");
        let mut out = Vec::new();
        for w in s.workers.values() {
            for d in &w.devices {
                let placed = s
                    .placed
                    .get(&(w.id.clone(), d.name.clone()))
                    .copied()
                    .unwrap_or(0);
                out.push(DeviceSlot {
                    worker: w.id.clone(),
                    device: d.name.clone(),
                    free_bytes: d.free_bytes.min(d.total_bytes.saturating_sub(placed)),
                });
            }
        }
        out
    }

    /// Books (or with a negative sign, releases) stage memory on a device.
    pub fn book(&self, worker: &str, device: &str, bytes: u64, add: bool) {
        let mut s = self.state.lock().expect("registry lock");
        if !s.workers.contains_key(worker) {
            return;
        }
        let e = s
            .placed
            .entry((worker.to_string(), device.to_string()))
            .or_default();
        *e = if add {
            *e + bytes
        } else {
            e.saturating_sub(bytes)
        };
    }

    /// Waits until at least `n` workers are registered.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<(), ClusterError> {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if self.state.lock().expect("registry lock").workers.len() >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClusterError::Timeout {
                secs: timeout.as_secs(),
                what: format!("{n} workers to register"),
            })
    }
}
