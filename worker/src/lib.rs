//! The IBench inference engine: Hugging Face model folders (Llama, Qwen2, Qwen3) on burn, on the
//! CPU (ndarray) and on CUDA (`cuda` feature), as pipeline stages with per-sequence KV caches.

pub mod chat;
pub mod device;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod loading;
pub mod model;
pub mod sampling;
pub mod server;
pub mod stage;

pub use chat::ChatTokenizer;
pub use device::{ComputeDtype, DeviceSpec};
pub use engine::{
    finish_check, split_layers, Engine, GenerateOutput, GenerateRequest, LoadOptions, LoadReport,
    StepTimings,
};
pub use error::EngineError;
pub use stage::{HostStageInput, HostStageOutput, LoadedStage, SeqCache};
