//! kdiag's own container image, built the way `make image` builds it (hack/build-image.sh:
//! the release binary, the Debian tools of the node policy, buildah), for tests that install
//! kdiag as users do and import it into a cluster ([`Cluster::import_image_archive`]).
//!
//! Built once and cached under `$KDIAG_CACHE_DIR/kdiag-image/<key>/`, where the key is the
//! digest of the kdiag binaries and of the recipe (the scripts, the tool list, the Dockerfile):
//! a run whose binaries did not change reuses the archive.
//!
//! The binaries are `kdiag` and, next to it, the role binaries `kdiag-controller` and
//! `kdiag-agent` that the shipped manifests run. `kdiag`: `KDIAG_IMAGE_BINARY` when set; else
//! the workspace's release build when it is
//! newer than every source file of the workspace (`make image`, `make plugin` or `make bench`
//! built it since the last change); else the debug build when it is (`make test`'s build made
//! it moments ago); else the debug build brought up to date by `cargo build --bin kdiag …`. A
//! release build of kdiag takes 10 minutes or more on 2 cores (thin LTO), too long to add to a
//! test run. The image is the same recipe either way.
//!
//! [`Cluster::import_image_archive`]: crate::Cluster::import_image_archive

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::TestEnvError;
use crate::binaries::cache_dir;

/// The binaries of the image, next to each other in one directory.
const BINARIES: [&str; 3] = ["kdiag", "kdiag-controller", "kdiag-agent"];

/// Files whose change changes the image besides the binaries.
const RECIPE: [&str; 4] = [
    "hack/build-image.sh",
    "hack/image-rootfs.sh",
    "hack/image-tools.txt",
    "Dockerfile",
];

/// A built kdiag image.
#[derive(Clone, Debug)]
pub struct KdiagImage {
    /// The reference the shipped manifests use, `kdiag:<version>`.
    pub name: String,
    /// Its docker-archive.
    pub archive: PathBuf,
    /// The kdiag binary inside.
    pub binary: PathBuf,
    /// How long bringing the binary up to date took (`cargo build`, a no-op when current).
    pub cargo_build: Duration,
    /// How long building the image took, or `None` when the cache had it.
    pub image_build: Option<Duration>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the release binary if it is not current, then the image if the cache does not have
/// it for this binary and recipe.
pub fn kdiag_image() -> Result<KdiagImage, TestEnvError> {
    let repo = repo_root();
    let version = env!("CARGO_PKG_VERSION");
    let t = Instant::now();
    let binary = match std::env::var_os("KDIAG_IMAGE_BINARY") {
        Some(b) => PathBuf::from(b),
        None => workspace_binary(&repo)?,
    };
    let cargo_build = t.elapsed();

    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let dir = binary.parent().unwrap_or(Path::new("."));
    let binaries = BINARIES.iter().map(|b| dir.join(b));
    for file in binaries.chain(RECIPE.iter().map(|f| repo.join(f))) {
        let mut bytes = Vec::new();
        File::open(&file)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(TestEnvError::io(&file))?;
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let key: String = hasher
        .finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = cache_dir().join("kdiag-image");
    let dir = base.join(&key);
    let archive = dir.join(format!("kdiag-{version}.tar"));
    let image = |image_build| KdiagImage {
        name: format!("kdiag:{version}"),
        archive: archive.clone(),
        binary: binary.clone(),
        cargo_build,
        image_build,
    };
    if archive.is_file() {
        return Ok(image(None));
    }

    // One build at a time on the machine; whoever waited finds the archive built.
    std::fs::create_dir_all(&base).map_err(TestEnvError::io(&base))?;
    let lock_path = base.join(".lock");
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(TestEnvError::io(&lock_path))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| TestEnvError::Other(format!("lock {}: {e}", lock_path.display())))?;
    if archive.is_file() {
        return Ok(image(None));
    }
    let t = Instant::now();
    let work = base.join(format!(".build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let out = Command::new(repo.join("hack/build-image.sh"))
        .arg("--binary")
        .arg(&binary)
        .arg("--out")
        .arg(work.join("out"))
        .arg("--storage")
        .arg(work.join("buildah"))
        .output()
        .map_err(|source| TestEnvError::Spawn {
            process: "hack/build-image.sh".into(),
            source,
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&work);
        return Err(TestEnvError::CommandFailed {
            command: format!("hack/build-image.sh --binary {}", binary.display()),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    // Older images go: one archive is all a machine needs.
    for old in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = old.file_name();
        if !name.to_string_lossy().starts_with('.') {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    let staged = work.join("staged");
    std::fs::create_dir_all(&staged).map_err(TestEnvError::io(&staged))?;
    let built = work.join("out").join(format!("kdiag-{version}.tar"));
    std::fs::rename(&built, staged.join(format!("kdiag-{version}.tar")))
        .map_err(TestEnvError::io(&built))?;
    let packages = work
        .join("out")
        .join(format!("kdiag-{version}.packages.txt"));
    let _ = std::fs::rename(
        &packages,
        staged.join(format!("kdiag-{version}.packages.txt")),
    );
    std::fs::rename(&staged, &dir).map_err(TestEnvError::io(&dir))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(image(Some(t.elapsed())))
}

/// The workspace's kdiag (with its role binaries): a release or debug build newer than the
/// sources, else the debug build brought up to date.
fn workspace_binary(repo: &Path) -> Result<PathBuf, TestEnvError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let target = if target.is_relative() {
        repo.join(target)
    } else {
        target
    };
    let newest_source = newest_mtime(&repo.join("crates"))
        .max(mtime(&repo.join("Cargo.toml")))
        .max(mtime(&repo.join("Cargo.lock")));
    for profile in ["release", "debug"] {
        let current = BINARIES.iter().all(|b| {
            let binary = target.join(profile).join(b);
            binary.is_file() && mtime(&binary) > newest_source
        });
        if current {
            return Ok(target.join(profile).join("kdiag"));
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(repo)
        .args(["build", "--locked"])
        .args(BINARIES.iter().flat_map(|b| ["--bin", b]));
    // Without what cargo set for this test process (CARGO_PKG_*, CARGO_MANIFEST_DIR, OUT_DIR,
    // LD_LIBRARY_PATH…): build scripts that watch such variables would otherwise be rerun, and
    // the next `cargo test` would rebuild their crates again, each build undoing the other's.
    cmd.env_clear();
    for (key, value) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let set_by_cargo_for_tests = k == "CARGO"
            || k == "OUT_DIR"
            || k == "LD_LIBRARY_PATH"
            || k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_CRATE_")
            || k.starts_with("CARGO_BIN_")
            || k.starts_with("CARGO_PRIMARY_")
            || k == "CARGO_TARGET_TMPDIR"
            || k.starts_with("RUST_TEST_");
        if !set_by_cargo_for_tests {
            cmd.env(key, value);
        }
    }
    let out = cmd.output().map_err(|source| TestEnvError::Spawn {
        process: format!("{cmd:?}"),
        source,
    })?;
    if !out.status.success() {
        return Err(TestEnvError::CommandFailed {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target.join("debug").join("kdiag"))
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// The newest modification time of the sources below `dir` (Rust files, manifests, anything a
/// crate embeds), not descending into build output.
fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    let mut newest = mtime(dir);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        let t = match e.file_type() {
            Ok(t) if t.is_dir() && e.file_name() != "target" => newest_mtime(&path),
            Ok(t) if t.is_file() => mtime(&path),
            _ => continue,
        };
        newest = newest.max(t);
    }
    newest
}
