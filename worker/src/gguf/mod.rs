//! GGUF import: read a llama.cpp GGUF file (v2/v3) and write a Hugging Face model folder from it.
//!
//! - [`reader`]: the container: metadata key/values of every type, tensor infos, alignment, and the
//!   tensor data memory-mapped.
//! - [`quant`]: dequantizers to f32 for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K
//!   and Q6_K.
//! - [`tokenizer`]: a byte-level BPE `tokenizer.json` and `tokenizer_config.json` rebuilt from the
//!   `tokenizer.ggml.*` vocabulary.
//! - [`import`]: [`import_gguf`] puts it together: `config.json`, `generation_config.json`,
//!   `model.safetensors` (Hugging Face names and layouts), tokenizer files.

use std::path::PathBuf;

pub mod import;
pub mod quant;
pub mod reader;
pub mod tokenizer;

pub use import::{import_gguf, import_gguf_with_progress, ImportProgress, ImportReport, OutDtype};
pub use quant::{dequantize, DequantError, GgmlType};
pub use reader::{GgufFile, MetaValue, TensorInfo};

/// Everything that can go wrong reading or importing a GGUF file; each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: GGUF version {version} is not supported (only versions 2 and 3){hint}")]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        hint: &'static str,
    },
    #[error(
        "{path} is truncated: {what} needs bytes up to {needed} but the file has {len}; \
         the download or copy is incomplete, fetch the file again"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        needed: u64,
        len: u64,
    },
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("missing GGUF metadata key `{0}`")]
    MissingKey(String),
    #[error("GGUF metadata key `{key}` is {found}, expected {expected}")]
    WrongKeyType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "tensor '{tensor}' has type {ty}, which the importer cannot dequantize; supported types: {}",
        quant::SUPPORTED_NAMES
    )]
    UnsupportedTensorType { tensor: String, ty: GgmlType },
    #[error("tensor '{tensor}': {source}")]
    Dequant {
        tensor: String,
        source: DequantError,
    },
    #[error(
        "GGUF architecture '{0}' is not supported: the importer handles llama, qwen2 and qwen3"
    )]
    UnsupportedArchitecture(String),
    #[error("tensor '{tensor}' is not part of a {arch} model as the importer knows it (MoE, vision or adapter tensors are not supported)")]
    UnexpectedTensor { tensor: String, arch: String },
    #[error("tensor '{0}' is missing from the GGUF file")]
    MissingTensor(String),
    #[error("tensor '{tensor}' has shape {found:?} (Hugging Face order), expected {expected:?} from the metadata")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(
        "pre-tokenizer '{name}' (tokenizer.ggml.pre) is not supported; supported: {supported}"
    )]
    UnsupportedPreTokenizer {
        name: String,
        supported: &'static str,
    },
    #[error("the written folder does not resolve as a model: {0}")]
    Check(#[from] ibench_shared::SharedError),
}

/// Where `ibench fetch-model` puts models unless told otherwise: `$IBENCH_HOME/models`, else
/// `~/.cache/ibench/models` (`./.ibench/models` without a home directory).
pub fn default_models_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("IBENCH_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join("models");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home)
            .join(".cache")
            .join("ibench")
            .join("models"),
        None => PathBuf::from(".ibench").join("models"),
    }
}
