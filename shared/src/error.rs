use std::path::PathBuf;

/// Errors of the shared crate: registry and configuration problems, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML for a model registry: {why}. Fix or delete the file.")]
    RegistryParse { path: PathBuf, why: String },
    #[error("unknown model '{name}': not in the registry ({known}) and not a folder. Register it with `ibench models register {name} --path DIR`.")]
    UnknownModel { name: String, known: String },
    #[error(
        "model name '{0}' is invalid: use letters, digits, '.', '_' and '-' (1-128 characters)"
    )]
    InvalidModelName(String),
    #[error("model '{0}' is predefined and cannot be replaced; pick another name")]
    Predefined(String),
    #[error("--load-in-8bit and --load-in-4bit exclude each other")]
    ConflictingQuantization,
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("invalid generation setting {field}: {why}")]
    InvalidGeneration { field: &'static str, why: String },
}
