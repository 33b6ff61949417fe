//! Consultation evaluation: models under test talk with a simulated patient over built-in or
//! given scenarios, a judge scores every turn and dialogue, and the run directory collects
//! transcripts, scores and reports (docs/evaluation.md).
//!
//! - [`scenario`]: scenarios and the built-in set; [`patient`]: the simulated patient;
//!   [`judge`]: the rubric and the judge;
//! - [`backend`]: the `ChatBackend` trait (OpenAI-compatible HTTP, `local:MODEL`);
//!   [`pool`]: the `ModelPool` trait and the in-process engine pool;
//! - [`store`] and [`calls`]: every call stored by content hash, so runs resume;
//! - [`run`]: the driver; [`stats`] and [`report`]: aggregates and outputs.

pub mod backend;
pub mod calls;
pub mod judge;
pub mod parse;
pub mod patient;
pub mod pool;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod store;

use std::path::PathBuf;

/// Errors that stop an evaluation (single failed calls do not: they are counted and reported).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("scenarios: {0}")]
    Scenarios(String),
    #[error("run store: {0}")]
    Store(String),
    #[error("model: {0}")]
    Model(String),
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
