//! `ibench import-gguf` and `ibench fetch-model`.

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {}

pub fn import(_g: &GlobalArgs, _a: ImportArgs) -> anyhow::Result<()> {
    anyhow::bail!("import-gguf is not built yet")
}

pub fn fetch(_g: &GlobalArgs, _a: FetchArgs) -> anyhow::Result<()> {
    anyhow::bail!("fetch-model is not built yet")
}
