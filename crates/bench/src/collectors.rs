//! Section 5: the collectors against `ps` and `du`, by kdiag-collectors' own benchmark
//! (`cargo run --release -p kdiag-collectors --example bench_collectors`), which alternates kdiag
//! and the reference tool run by run. This runs its release build and keeps its JSON.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub fn run(example: &Path, out_dir: &Path) -> Result<Value> {
    let out = out_dir.join("collectors.json.tmp");
    let status = Command::new(example).arg(&out).status().with_context(|| {
        format!(
            "running {} (cargo build --release -p kdiag-collectors --example bench_collectors)",
            example.display()
        )
    })?;
    if !status.success() {
        bail!("{} failed: {status}", example.display());
    }
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(serde_json::from_str(&text)?)
}
