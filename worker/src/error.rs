use std::path::PathBuf;

use ibench_shared::SharedError;

/// Everything that can go wrong loading or running a model, each variant saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] SharedError),
    #[error("{path} does not exist: {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("weight shard {path} is corrupt or truncated ({why}); copy it again")]
    CorruptShard { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    BadIndex { path: PathBuf, why: String },
    #[error("tensor '{name}' is missing from the weights in {folder}: the checkpoint does not match config.json")]
    MissingTensor { name: String, folder: PathBuf },
    #[error("tensor '{name}' in {path} has shape {found:?} but config.json implies {expected:?}: the config does not match the weights")]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "tensor '{name}' in {path} has dtype {dtype}; only BF16, F16 and F32 weights are supported"
    )]
    UnsupportedDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },
    #[error("tokenizer {path}: {why}")]
    Tokenizer { path: PathBuf, why: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the model has no chat template (tokenizer_config.json has no `chat_template` and there is no chat_template.jinja)")]
    NoChatTemplate,
    #[error("request {index}: the prompt has {prompt_tokens} tokens but the model's context is {context} tokens; shorten the conversation")]
    PromptTooLong {
        index: usize,
        prompt_tokens: usize,
        context: usize,
    },
    #[error("request {index}: empty prompt")]
    EmptyPrompt { index: usize },
    #[error("token id {id} is outside the vocabulary ({vocab} entries)")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("device '{0}' is not available: {1}")]
    Device(String, String),
    #[error("invalid stage input: {0}")]
    StageInput(String),
    #[error("tensor computation failed: {0}")]
    Compute(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
