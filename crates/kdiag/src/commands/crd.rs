//! `kdiag crd`: the CRDs generated from the Rust types.

use std::io::Write;
use std::process::ExitCode;

use kdiag_api::crds;

use super::CommandError;
use crate::cli::CrdArgs;

pub fn run(args: CrdArgs) -> Result<ExitCode, CommandError> {
    match args.output_dir {
        None => {
            std::io::stdout().write_all(crds::all_to_yaml()?.as_bytes())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
            for crd in crds::all() {
                let path = dir.join(crds::file_name(&crd));
                std::fs::write(&path, crds::to_yaml(&crd)?)
                    .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
