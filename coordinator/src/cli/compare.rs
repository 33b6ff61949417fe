//! `ibench compare`.

use super::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

pub fn run(_g: &GlobalArgs, _a: CompareArgs) -> anyhow::Result<()> {
    anyhow::bail!("compare is not built yet")
}
