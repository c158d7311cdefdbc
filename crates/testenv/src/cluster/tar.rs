//! Deterministic tar archives for image layers and docker-archive files, written with the `tar`
//! crate.
//!
//! Every header is built here rather than from file metadata (`tar::HeaderMode::Deterministic`
//! only applies to entries appended from the file system, and would still carry the host file's
//! mode): ustar format, the caller's mode, owner and group root (0), a fixed mtime. The caller
//! decides the order of entries (images.rs sorts them), so the same input always gives the same
//! bytes and the same image digest.

use std::io::{self, Read, Write};

use tar::{Builder, EntryType, Header};

/// A fixed modification time for every entry (2020-01-01T00:00:00Z). Not 0: some tools treat
/// an epoch mtime as "unknown".
pub(crate) const MTIME: u64 = 1_577_836_800;

pub(crate) struct TarWriter<W: Write> {
    builder: Builder<W>,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            builder: Builder::new(out),
        }
    }

    /// A directory; `path` without a trailing slash.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut h = header(mode, EntryType::Directory, 0);
        self.builder
            .append_data(&mut h, format!("{path}/"), io::empty())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut h = header(0o777, EntryType::Symlink, 0);
        self.builder.append_link(&mut h, path, target)
    }

    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> io::Result<()> {
        self.file_from(path, mode, contents.len() as u64, &mut &contents[..])
    }

    /// A regular file of exactly `size` bytes read from `contents`.
    pub fn file_from(
        &mut self,
        path: &str,
        mode: u32,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mut h = header(mode, EntryType::Regular, size);
        // The builder copies whatever the reader gives; the header promised `size` bytes.
        let mut counted = Counted {
            inner: contents.take(size),
            read: 0,
        };
        self.builder.append_data(&mut h, path, &mut counted)?;
        if counted.read != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {}", counted.read),
            ));
        }
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the writer, flushed.
    pub fn finish(self) -> io::Result<W> {
        let mut out = self.builder.into_inner()?;
        out.flush()?;
        Ok(out)
    }
}

/// A ustar header with everything that could differ between machines fixed.
fn header(mode: u32, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    // Both names fit the fields: these cannot fail.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

/// Counts what passes through a reader.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new());
        t.dir("bin", 0o755).unwrap();
        t.file("bin/busybox", 0o755, b"#!fake\n").unwrap();
        t.symlink("bin/sh", "/bin/busybox").unwrap();
        let long = format!("{}/file", "d".repeat(120));
        t.file(&long, 0o644, b"x").unwrap();
        t.finish().unwrap()
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        assert_eq!(sample(), sample());
        assert_eq!(sample().len() % 512, 0);
    }

    #[test]
    fn gnu_tar_reads_what_it_writes() {
        let dir = std::env::temp_dir().join(format!("kdiag-tar-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("t.tar");
        std::fs::write(&archive, sample()).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .expect("GNU tar is installed");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("bin/sh -> /bin/busybox"), "{listing}");
        assert!(listing.contains("root/root"), "{listing}");
        assert!(listing.contains("2020-01-01"), "{listing}");
        assert!(
            listing.contains(&format!("{}/file", "d".repeat(120))),
            "{listing}"
        );
    }

    #[test]
    fn a_path_too_long_for_ustar_is_kept_whole() {
        // Longer than ustar's 155 + 100 bytes: the crate adds a GNU long-name entry, which
        // GNU tar and Go's archive/tar (containerd) read.
        let long = format!("{}/file", "x".repeat(300));
        let mut t = TarWriter::new(Vec::new());
        t.file(&long, 0o644, b"").unwrap();
        let bytes = t.finish().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, [long]);
    }

    #[test]
    fn a_file_shorter_than_its_size_is_an_error() {
        let mut t = TarWriter::new(Vec::new());
        let err = t.file_from("f", 0o644, 10, &mut &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
