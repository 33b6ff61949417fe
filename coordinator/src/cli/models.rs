//! `ibench models list|register`.

use std::path::PathBuf;

use anyhow::Context;
use ibench_shared::{ModelSpec, Quantization};

use super::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Show every known model: predefined and registered, with path, quantization and whether the folder exists.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register (or update) a named model in the registry file.
    Register(RegisterArgs),
}

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The name to use with --model, --models and check-model.
    pub name: String,
    /// The Hugging Face model folder (config.json, *.safetensors, tokenizer.json ...).
    #[arg(long)]
    pub path: PathBuf,
    /// Load the weights as 8-bit integers (about 1 byte per parameter).
    #[arg(long)]
    pub load_in_8bit: bool,
    /// Load the weights as 4-bit integers (about 0.6 bytes per parameter).
    #[arg(long)]
    pub load_in_4bit: bool,
    /// Where to place the model: `auto` (by free memory), `cpu` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device_map: String,
    /// A free-text description shown by `models list`.
    #[arg(long, default_value = "")]
    pub description: String,
}

pub fn run(g: &GlobalArgs, cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::List { json } => {
            let reg = g.load_registry()?;
            if json {
                let rows: Vec<_> = reg
                    .list()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name, "path": m.path, "quantization": m.quantization,
                            "device_map": m.device_map, "description": m.description,
                            "predefined": m.predefined, "exists": m.path.join("config.json").is_file(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<44} {:<6} {:<8} {:<6} PATH",
                    "NAME", "QUANT", "DEVICES", "FOUND"
                );
                for m in reg.list() {
                    let found = if m.path.join("config.json").is_file() {
                        "yes"
                    } else {
                        "no"
                    };
                    println!(
                        "{:<44} {:<6} {:<8} {:<6} {}{}",
                        m.name,
                        m.quantization.as_str(),
                        m.device_map,
                        found,
                        m.path.display(),
                        if m.description.is_empty() {
                            String::new()
                        } else {
                            format!("  ({})", m.description)
                        }
                    );
                }
                println!("registry file: {}", reg.file().display());
            }
            Ok(())
        }
        ModelsCommand::Register(a) => {
            let quantization = Quantization::from_flags(a.load_in_8bit, a.load_in_4bit)?;
            let path = std::fs::canonicalize(&a.path).unwrap_or(a.path.clone());
            if !path.join("config.json").is_file() {
                tracing::warn!(path = %path.display(), "no config.json there yet; registering anyway");
            }
            let mut reg = g.load_registry()?;
            reg.register(ModelSpec {
                name: a.name.clone(),
                path,
                quantization,
                device_map: a.device_map,
                description: a.description,
                predefined: false,
            })
            .with_context(|| format!("registering {}", a.name))?;
            println!("registered {} in {}", a.name, reg.file().display());
            Ok(())
        }
    }
}
