//! Local container images made of Debian's static busybox, with no registry involved.
//!
//! One layer holds `/bin/busybox`, a symlink per applet, a minimal `/etc` and the usual empty
//! directories. The general-purpose image and the sandbox ("pause") image share that layer;
//! [`ImageSpec`] adds a second layer of files for images a test needs. Archives are written in
//! the docker-archive format (`docker save`), which `ctr images import` reads, and are
//! reproducible: sorted entries, fixed mtimes and owners, configs without timestamps, so the
//! image digests only change when Debian's busybox does.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::tar::TarWriter;
use crate::TestEnvError;
use crate::binaries::{NodeBinaries, cache_dir};

/// The general-purpose image: busybox's `sh`, `sleep`, `httpd`, `nc`, `dd`, `wget`… on `PATH`,
/// default command `sh`. Use it with `imagePullPolicy: IfNotPresent` or `Never`.
pub const BUSYBOX_IMAGE: &str = "kdiag.local/busybox:v1";
/// The sandbox image containerd puts in every pod: a shell that waits for SIGTERM.
pub const PAUSE_IMAGE: &str = "kdiag.local/pause:v1";

/// Bump when the layer or the configs change, so a stale cache is never reused.
const IMAGES_REVISION: u32 = 2;
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The sandbox only has to hold the pod's namespaces and go away on SIGTERM. As pid 1 of its
/// pid namespace a shell ignores signals it does not trap, hence the trap.
const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while true; do sleep 86400 & wait $!; done";

/// An image of the busybox layer plus files of the test's choosing, loaded with
/// [`Cluster::load_image`](crate::Cluster::load_image).
///
/// ```no_run
/// # async fn f() -> Result<(), kdiag_testenv::TestEnvError> {
/// use kdiag_testenv::ImageSpec;
/// let cluster = kdiag_testenv::cluster().await;
/// cluster.load_image(
///     &ImageSpec::new("kdiag.local/greeter:v1")
///         .file("/app/hello.txt", 0o644, b"hello\n".to_vec())
///         .cmd(["cat", "/app/hello.txt"]),
/// )?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// The reference pods use, with a tag that is not `latest` (kubelet would always pull it).
    pub name: String,
    pub files: Vec<ImageFile>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries besides `PATH`.
    pub env: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ImageFile {
    /// An absolute path inside the image.
    pub path: String,
    pub mode: u32,
    pub contents: FileContents,
}

#[derive(Clone, Debug)]
pub enum FileContents {
    Bytes(Vec<u8>),
    /// A file of this machine, read when the image is built (for example a kdiag binary).
    Host(PathBuf),
}

impl ImageSpec {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        }
    }

    pub fn file(mut self, path: impl Into<String>, mode: u32, contents: Vec<u8>) -> Self {
        self.files.push(ImageFile {
            path: path.into(),
            mode,
            contents: FileContents::Bytes(contents),
        });
        self
    }

    pub fn host_file(
        mut self,
        path: impl Into<String>,
        mode: u32,
        host: impl Into<PathBuf>,
    ) -> Self {
        self.files.push(ImageFile {
            path: path.into(),
            mode,
            contents: FileContents::Host(host.into()),
        });
        self
    }

    pub fn entrypoint<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.entrypoint = argv.into_iter().map(Into::into).collect();
        self
    }

    pub fn cmd<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.cmd = argv.into_iter().map(Into::into).collect();
        self
    }

    pub fn env(mut self, entry: impl Into<String>) -> Self {
        self.env.push(entry.into());
        self
    }
}

/// The cached busybox layer and the archive of the two base images.
#[derive(Clone, Debug)]
pub(crate) struct BaseImages {
    pub layer: Layer,
    pub archive: PathBuf,
    /// How long building took, or `None` when the cache was used.
    pub built_in: Option<Duration>,
}

#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub path: PathBuf,
    /// sha256 of the uncompressed tar (the image's diff_id), hex.
    pub digest: String,
}

/// Returns the base images, building them into the cache first if needed. The cache is keyed by
/// the busybox binary's digest, so a Debian update gives new images.
pub(crate) fn base_images(bins: &NodeBinaries) -> Result<BaseImages, TestEnvError> {
    let busybox_digest = sha256_file(&bins.busybox)?;
    let dir = cache_dir()
        .join(format!("images-r{IMAGES_REVISION}"))
        .join(&busybox_digest[..16]);
    let layer_path = dir.join("busybox-layer.tar");
    let archive = dir.join("base-images.tar");
    if layer_path.is_file() && archive.is_file() {
        let digest = sha256_file(&layer_path)?;
        return Ok(BaseImages {
            layer: Layer {
                path: layer_path,
                digest,
            },
            archive,
            built_in: None,
        });
    }
    let started = Instant::now();
    let parent = dir.parent().unwrap_or(&dir).to_owned();
    std::fs::create_dir_all(&parent).map_err(TestEnvError::io(&parent))?;
    // Built aside and renamed into place, so a concurrent start never sees half an archive.
    let tmp = parent.join(format!(
        ".build-{}-{}",
        std::process::id(),
        crate::control_plane::random_hex(4)
    ));
    std::fs::create_dir_all(&tmp).map_err(TestEnvError::io(&tmp))?;
    let result = (|| {
        let layer = busybox_layer(&bins.busybox, &tmp.join("busybox-layer.tar"))?;
        let images = [
            image_config(&[&layer], &[], &["sh".into()], &[])?.named(BUSYBOX_IMAGE),
            image_config(
                &[&layer],
                &["/bin/sh".into(), "-c".into(), PAUSE_SCRIPT.into()],
                &[],
                &[],
            )?
            .named(PAUSE_IMAGE),
        ];
        write_archive(&tmp.join("base-images.tar"), &[&layer], &images)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process cached the same content first; theirs is as good as ours.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let digest = sha256_file(&layer_path)?;
    Ok(BaseImages {
        layer: Layer {
            path: layer_path,
            digest,
        },
        archive,
        built_in: Some(started.elapsed()),
    })
}

/// Writes the archive of one [`ImageSpec`] (busybox layer + its files) to `out`.
pub(crate) fn spec_archive(
    base: &BaseImages,
    spec: &ImageSpec,
    work_dir: &Path,
) -> Result<PathBuf, TestEnvError> {
    if spec.name.is_empty() || spec.name.ends_with(":latest") || !spec.name.contains(':') {
        return Err(TestEnvError::Image(format!(
            "image name {:?} needs an explicit tag other than `latest` (the kubelet always pulls `latest`)",
            spec.name
        )));
    }
    std::fs::create_dir_all(work_dir).map_err(TestEnvError::io(work_dir))?;
    let stem = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>();
    let layer = files_layer(&spec.files, &work_dir.join(format!("{stem}-layer.tar")))?;
    let config = image_config(
        &[&base.layer, &layer],
        &spec.entrypoint,
        &spec.cmd,
        &spec.env,
    )?
    .named(&spec.name);
    let out = work_dir.join(format!("{stem}.tar"));
    write_archive(&out, &[&base.layer, &layer], &[config])?;
    Ok(out)
}

enum Entry {
    Dir(u32),
    File(u32, FileContents),
    Symlink(String),
}

fn busybox_layer(busybox: &Path, out: &Path) -> Result<Layer, TestEnvError> {
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| TestEnvError::Spawn {
            process: format!("{} --list-full", busybox.display()),
            source,
        })?;
    if !list.status.success() {
        return Err(TestEnvError::Image(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&list.stderr)
        )));
    }
    let mut entries = BTreeMap::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sbin", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("var/www", 0o755),
    ] {
        entries.insert(dir.to_owned(), Entry::Dir(mode));
    }
    entries.insert(
        "bin/busybox".into(),
        Entry::File(0o755, FileContents::Host(busybox.to_owned())),
    );
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        add_parents(&mut entries, applet);
        entries.insert(applet.to_owned(), Entry::Symlink("/bin/busybox".into()));
    }
    entries.insert(
        "etc/passwd".into(),
        Entry::File(
            0o644,
            FileContents::Bytes(
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                    .to_vec(),
            ),
        ),
    );
    entries.insert(
        "etc/group".into(),
        Entry::File(
            0o644,
            FileContents::Bytes(b"root:x:0:\nnobody:x:65534:\n".to_vec()),
        ),
    );
    write_layer(&entries, out)
}

fn files_layer(files: &[ImageFile], out: &Path) -> Result<Layer, TestEnvError> {
    let mut entries = BTreeMap::new();
    for f in files {
        let path = f.path.trim_start_matches('/');
        if path.is_empty() || !f.path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(TestEnvError::Image(format!(
                "image file path {:?} must be absolute and without `..`",
                f.path
            )));
        }
        add_parents(&mut entries, path);
        entries.insert(path.to_owned(), Entry::File(f.mode, f.contents.clone()));
    }
    write_layer(&entries, out)
}

fn add_parents(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut parent = Path::new(path).parent();
    while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
        entries
            .entry(p.to_string_lossy().into_owned())
            .or_insert(Entry::Dir(0o755));
        parent = p.parent();
    }
}

/// Writes the entries in path order (BTreeMap order: parents before children).
fn write_layer(entries: &BTreeMap<String, Entry>, out: &Path) -> Result<Layer, TestEnvError> {
    let file = File::create(out).map_err(TestEnvError::io(out))?;
    let mut tar = TarWriter::new(HashingWriter::new(BufWriter::new(file)));
    for (path, entry) in entries {
        let written = match entry {
            Entry::Dir(mode) => tar.dir(path, *mode),
            Entry::Symlink(target) => tar.symlink(path, target),
            Entry::File(mode, FileContents::Bytes(b)) => tar.file(path, *mode, b),
            Entry::File(mode, FileContents::Host(host)) => File::open(host).and_then(|mut f| {
                let size = f.metadata()?.len();
                tar.file_from(path, *mode, size, &mut f)
            }),
        };
        written.map_err(|e| {
            TestEnvError::Image(format!("writing {path} into {}: {e}", out.display()))
        })?;
    }
    let hashing = tar.finish().map_err(TestEnvError::io(out))?;
    Ok(Layer {
        path: out.to_owned(),
        digest: hashing.hex_digest(),
    })
}

#[derive(Serialize)]
struct ImageConfig {
    architecture: &'static str,
    os: &'static str,
    config: ContainerConfig,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
    working_dir: &'static str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

struct NamedConfig {
    name: String,
    json: Vec<u8>,
    digest: String,
    layers: Vec<String>,
}

struct UnnamedConfig {
    json: Vec<u8>,
    layers: Vec<String>,
}

impl UnnamedConfig {
    fn named(self, name: &str) -> NamedConfig {
        NamedConfig {
            name: name.to_owned(),
            digest: sha256_hex(&self.json),
            json: self.json,
            layers: self.layers,
        }
    }
}

fn image_config(
    layers: &[&Layer],
    entrypoint: &[String],
    cmd: &[String],
    env: &[String],
) -> Result<UnnamedConfig, TestEnvError> {
    let mut all_env = vec![PATH_ENV.to_owned()];
    all_env.extend(env.iter().cloned());
    let config = ImageConfig {
        architecture: oci_arch(),
        os: "linux",
        config: ContainerConfig {
            env: all_env,
            entrypoint: entrypoint.to_vec(),
            cmd: cmd.to_vec(),
            working_dir: "/",
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers
                .iter()
                .map(|l| format!("sha256:{}", l.digest))
                .collect(),
        },
    };
    let json = serde_json::to_vec(&config).map_err(|e| TestEnvError::Image(e.to_string()))?;
    Ok(UnnamedConfig {
        json,
        layers: layers.iter().map(|l| l.digest.clone()).collect(),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// A docker-archive: `<layer>/layer.tar`, `<config>.json`, `manifest.json`, in name order.
fn write_archive(
    out: &Path,
    layers: &[&Layer],
    images: &[NamedConfig],
) -> Result<(), TestEnvError> {
    let manifest: Vec<ManifestEntry> = images
        .iter()
        .map(|i| ManifestEntry {
            config: format!("{}.json", i.digest),
            repo_tags: vec![i.name.clone()],
            layers: i.layers.iter().map(|l| format!("{l}/layer.tar")).collect(),
        })
        .collect();
    let manifest = serde_json::to_vec(&manifest).map_err(|e| TestEnvError::Image(e.to_string()))?;

    enum Item<'a> {
        Dir,
        Bytes(&'a [u8]),
        Layer(&'a Path),
    }
    let mut items: BTreeMap<String, Item<'_>> = BTreeMap::new();
    for l in layers {
        items.insert(l.digest.clone(), Item::Dir);
        items.insert(format!("{}/layer.tar", l.digest), Item::Layer(&l.path));
    }
    for i in images {
        items.insert(format!("{}.json", i.digest), Item::Bytes(&i.json));
    }
    items.insert("manifest.json".into(), Item::Bytes(&manifest));

    let file = File::create(out).map_err(TestEnvError::io(out))?;
    let mut tar = TarWriter::new(BufWriter::new(file));
    for (name, item) in &items {
        let written = match item {
            Item::Dir => tar.dir(name, 0o755),
            Item::Bytes(b) => tar.file(name, 0o644, b),
            Item::Layer(p) => File::open(p).and_then(|mut f| {
                let size = f.metadata()?.len();
                tar.file_from(name, 0o644, size, &mut f)
            }),
        };
        written.map_err(|e| {
            TestEnvError::Image(format!("writing {name} into {}: {e}", out.display()))
        })?;
    }
    tar.finish().map_err(TestEnvError::io(out))?;
    Ok(())
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    ctx: ring::digest::Context,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn hex_digest(self) -> String {
        hex(self.ctx.finish().as_ref())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn sha256_file(path: &Path) -> Result<String, TestEnvError> {
    let mut f = File::open(path).map_err(TestEnvError::io(path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(TestEnvError::io(path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("kdiag-images-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn listing(archive: &Path) -> String {
        let out = Command::new("tar")
            .arg("-tvf")
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_busybox_layer_is_reproducible_and_holds_the_applets_tests_use() {
        let d = scratch("layer");
        let busybox = NodeBinaries::locate().busybox;
        let a = busybox_layer(&busybox, &d.join("a.tar")).unwrap();
        let b = busybox_layer(&busybox, &d.join("b.tar")).unwrap();
        assert_eq!(a.digest, b.digest, "two builds must give the same layer");
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
        let files = listing(&a.path);
        for applet in [
            "bin/sh ->",
            "bin/sleep ->",
            "httpd ->",
            "bin/nc ->",
            "bin/dd ->",
        ] {
            assert!(files.contains(applet), "{applet} missing from:\n{files}");
        }
        assert!(files.contains("etc/passwd"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_spec_image_adds_its_files_in_a_second_layer() {
        let d = scratch("spec");
        let busybox = NodeBinaries::locate().busybox;
        let layer = busybox_layer(&busybox, &d.join("base.tar")).unwrap();
        let base = BaseImages {
            layer,
            archive: PathBuf::new(),
            built_in: None,
        };
        let spec = ImageSpec::new("kdiag.local/t:v1")
            .file("/app/deep/hello.txt", 0o644, b"hi".to_vec())
            .cmd(["cat", "/app/deep/hello.txt"]);
        let archive = spec_archive(&base, &spec, &d).unwrap();
        let files = listing(&archive);
        assert!(files.contains("manifest.json"), "{files}");
        assert_eq!(files.matches("/layer.tar").count(), 2, "{files}");
        let layer = listing(&d.join("kdiag_local_t_v1-layer.tar"));
        assert!(layer.contains("app/deep/"), "{layer}");
        assert!(layer.contains("app/deep/hello.txt"), "{layer}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_image_tagged_latest_is_refused() {
        let base = BaseImages {
            layer: Layer {
                path: PathBuf::new(),
                digest: String::new(),
            },
            archive: PathBuf::new(),
            built_in: None,
        };
        let err = spec_archive(
            &base,
            &ImageSpec::new("kdiag.local/x:latest"),
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("latest"), "{err}");
    }
}
