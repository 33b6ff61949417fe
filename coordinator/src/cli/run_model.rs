//! `ibench check-model` and `ibench generate`.

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct CheckModelArgs {}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {}

pub fn check_model(_g: &GlobalArgs, _a: CheckModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("check-model is not built yet")
}

pub fn generate(_g: &GlobalArgs, _a: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("generate is not built yet")
}
