//! The one tracing initialisation of every IBench binary.

use tracing_subscriber::{fmt, EnvFilter};

/// Logs go to stderr (stdout is for results such as `--json`). `RUST_LOG` overrides `default_level`.
/// `json` selects structured JSON lines.
pub fn init(default_level: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) is not an error worth failing for.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
