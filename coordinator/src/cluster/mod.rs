//! The cluster control plane: a registry of workers ([`registry`]) fed by their registrations and
//! heartbeats ([`service`]), pipelines of stages placed on them ([`pipeline`]: load, batched
//! generation through the stage chain, re-placement and replay when a worker dies), and a
//! [`crate::eval::pool::ModelPool`] over those pipelines ([`pool`]).

pub mod models;
pub mod pipeline;
pub mod pool;
pub mod registry;
pub mod service;

pub use models::{ModelsService, RemotePool};
pub use pipeline::{ClusterOptions, OnStep, Pipeline};
pub use pool::ClusterPool;
pub use registry::WorkerRegistry;
pub use service::serve;

use ibench_shared::placement::PlacementError;

/// What can go wrong in the cluster, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("model {model}: {why}")]
    Model { model: String, why: String },
    #[error("worker {worker} ({address}) failed to {action}: {status}")]
    Worker {
        worker: String,
        address: String,
        action: &'static str,
        status: String,
    },
    #[error("model {model}: workers kept failing ({attempts} re-placements); last error: {last}")]
    GaveUp {
        model: String,
        attempts: usize,
        last: String,
    },
    #[error("request {index}: {why}")]
    Request { index: usize, why: String },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { secs: u64, what: String },
}
