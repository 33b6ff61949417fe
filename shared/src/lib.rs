//! IBench's common crate: domain types shared by the engine, the coordinator and the wire format.
//!
//! Nothing here knows about burn, gRPC or HTTP: these are plain data types, the model registry,
//! Hugging Face config structs and pure placement maths.

pub mod chat;
pub mod error;
pub mod generation;
pub mod hf;
pub mod placement;
pub mod registry;
pub mod telemetry;

pub use chat::{ChatMessage, Role};
pub use error::SharedError;
pub use generation::{FinishReason, GenerationParams};
pub use registry::{ModelSpec, Quantization, Registry};
