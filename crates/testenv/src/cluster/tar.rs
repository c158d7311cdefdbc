//! A minimal, deterministic ustar writer for image layers and docker-archive files.
//!
//! Every header field that could vary between machines or builds is fixed: mtime, owner,
//! group and their names. The caller decides the order of entries (images.rs sorts them), so
//! the same input always gives the same bytes and the same image digest.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// A fixed modification time for every entry (2020-01-01T00:00:00Z). Not 0: some tools treat
/// an epoch mtime as "unknown".
pub(crate) const MTIME: u64 = 1_577_836_800;

pub(crate) struct TarWriter<W: Write> {
    out: W,
}

enum Kind<'a> {
    File(u64),
    Dir,
    Symlink(&'a str),
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// A directory; `path` without a trailing slash.
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.header(&format!("{path}/"), mode, Kind::Dir)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.header(path, 0o777, Kind::Symlink(target))
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
        self.header(path, mode, Kind::File(size))?;
        let copied = io::copy(&mut contents.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {size} bytes, read {copied}"),
            ));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, path: &str, mode: u32, kind: Kind<'_>) -> io::Result<()> {
        let mut h = [0u8; BLOCK];
        let (prefix, name) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode & 0o7777));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        let (size, flag) = match kind {
            Kind::File(size) => (size, b'0'),
            Kind::Dir => (0, b'5'),
            Kind::Symlink(target) => {
                if target.len() > 100 {
                    return Err(invalid(format!("symlink target too long: {target}")));
                }
                h[157..157 + target.len()].copy_from_slice(target.as_bytes());
                (0, b'2')
            }
        };
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], MTIME);
        h[156] = flag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field filled with spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        self.out.write_all(&h)
    }
}

/// Splits a path into ustar's prefix (155 bytes) and name (100 bytes) fields.
fn split_name(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    // Split at a '/' so that the name part fits and the prefix fits.
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
            return Ok((&path[..i], &path[i + 1..]));
        }
    }
    Err(invalid(format!("path too long for a ustar header: {path}")))
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
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
        assert_eq!(sample().len() % BLOCK, 0);
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
    fn a_path_that_cannot_fit_is_an_error_not_a_truncation() {
        let mut t = TarWriter::new(Vec::new());
        assert!(t.file(&"x".repeat(300), 0o644, b"").is_err());
    }
}
