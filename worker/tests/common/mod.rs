//! Shared by the real-model tests: where `ibench fetch-model` put a model.

use std::path::PathBuf;

/// The fetched folder of `name` under `$IBENCH_MODELS_DIR` (default `$IBENCH_HOME/models`, else
/// `~/.cache/ibench/models`), or `None` (with a skip line) when `IBENCH_SKIP_REAL_MODELS=1`; a
/// missing folder otherwise fails the test, saying what to run.
pub fn real_model_folder(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("IBENCH_MODELS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(ibench_worker::gguf::default_models_dir);
    let dir = base.join(name);
    if dir.join("config.json").is_file() {
        return Some(dir);
    }
    if std::env::var("IBENCH_SKIP_REAL_MODELS").is_ok_and(|v| v == "1") {
        eprintln!(
            "skipping: {} is missing (IBENCH_SKIP_REAL_MODELS=1)",
            dir.display()
        );
        return None;
    }
    panic!(
        "{} is missing: run `ibench fetch-model {name}` (or set IBENCH_MODELS_DIR to where it is, \
         or IBENCH_SKIP_REAL_MODELS=1 to skip the real-model tests)",
        dir.display()
    );
}
