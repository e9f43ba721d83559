//! Reading a package tarball exactly once: the bytes are cut into upload
//! parts, hashed with SHA-256, and fed to a gzip+tar verifier running on its
//! own thread, all in the same pass.
//!
//! Verification proves the tarball is a complete gzip stream holding a tar
//! archive whose every entry lives in `<arch>/<pkg>/<ver>-<rev>/` or one of
//! its parent directories, as aliBuild writes it.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::layout::Revision;

/// One upload part: numbered from 1, as S3 numbers them.
pub struct Part {
    pub number: u32,
    pub data: Bytes,
}

/// What a complete, verified read of the tarball found.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub size: u64,
    pub sha256: String,
    pub entries: u64,
}

/// Read `path` once, handing each `part_size` chunk to `on_part` (which may
/// block to apply back-pressure) while hashing and verifying it. Returns an
/// error, and stops reading, as soon as verification fails or `on_part` does.
pub fn scan(
    path: &Path,
    part_size: usize,
    revision: &Revision,
    mut on_part: impl FnMut(Part) -> Result<()>,
) -> Result<Scanned> {
    let mut file = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let (to_verifier, from_reader) = mpsc::sync_channel::<Bytes>(2);
    let rules = EntryRules::new(revision);
    let verifier = thread::Builder::new()
        .name("verify".into())
        .spawn(move || rules.verify(ChannelReader::new(from_reader)))
        .map_err(|e| Error::io("starting the verifier thread", e))?;

    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut number = 0u32;
    let read_result = loop {
        let chunk = match read_chunk(&mut file, part_size) {
            Ok(chunk) => chunk,
            Err(e) => break Err(Error::io(path.display(), e)),
        };
        if chunk.is_empty() && number > 0 {
            break Ok(());
        }
        sha.update(&chunk);
        size += chunk.len() as u64;
        number += 1;
        let last = chunk.len() < part_size;
        // A closed verifier already failed: its own error explains why.
        if to_verifier.send(chunk.clone()).is_err() {
            break Ok(());
        }
        if let Err(e) = on_part(Part {
            number,
            data: chunk,
        }) {
            break Err(e);
        }
        if last {
            break Ok(());
        }
    };
    drop(to_verifier);
    let verified = verifier
        .join()
        .unwrap_or_else(|_| Err(Error::verification("the verifier thread panicked")));
    read_result?;
    let entries =
        verified.map_err(|e| e.context(format!("{} failed verification", path.display())))?;
    Ok(Scanned {
        size,
        sha256: hex::encode(sha.finalize()),
        entries,
    })
}

/// Hash a file without verifying it: used to compare a local tarball with
/// one already in the store.
pub fn sha256_of(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let mut sha = Sha256::new();
    io::copy(&mut file, &mut sha).map_err(|e| Error::io(path.display(), e))?;
    Ok(hex::encode(sha.finalize()))
}

/// Fill a buffer of up to `len` bytes, short only at end of file.
fn read_chunk(file: &mut File, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// The paths a revision's tarball may contain.
struct EntryRules {
    parents: [String; 3],
    prefix: String,
}

impl EntryRules {
    fn new(revision: &Revision) -> Self {
        EntryRules {
            parents: [
                String::new(),
                revision.architecture.clone(),
                format!("{}/{}", revision.architecture, revision.package),
            ],
            prefix: revision.install_prefix(),
        }
    }

    /// `./a/b/` → `a/b`; `None` for absolute paths or any `..`.
    fn normalise(path: &str) -> Option<String> {
        if path.starts_with('/') {
            return None;
        }
        let parts: Vec<&str> = path
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect();
        (!parts.contains(&"..")).then(|| parts.join("/"))
    }

    fn inside_prefix(&self, path: &str) -> bool {
        path == self.prefix || path.starts_with(&format!("{}/", self.prefix))
    }

    /// `Ok(true)` for an entry inside the install prefix, `Ok(false)` for one
    /// of its parent directories, an error for anything else.
    fn check(&self, raw: &str) -> Result<bool> {
        match Self::normalise(raw) {
            Some(path) if self.inside_prefix(&path) => Ok(true),
            Some(path) if self.parents.contains(&path) => Ok(false),
            _ => Err(Error::verification(format!(
                "entry {raw:?} lies outside {}/: this tarball does not belong to this package revision",
                self.prefix
            ))),
        }
    }

    /// Read the whole stream; return the number of entries.
    fn verify(&self, input: impl Read) -> Result<u64> {
        let mut gz = MultiGzDecoder::new(input);
        let mut entries = 0u64;
        let mut saw_prefix = false;
        {
            let mut archive = tar::Archive::new(&mut gz);
            let iter = archive.entries().map_err(broken)?;
            for entry in iter {
                let mut entry = entry.map_err(broken)?;
                let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                saw_prefix |= self.check(&raw)?;
                if let Some(target) = entry.link_name_bytes() {
                    if entry.header().entry_type().is_hard_link() {
                        self.check(&String::from_utf8_lossy(&target))?;
                    }
                }
                let expected = entry.header().entry_size().map_err(broken)?;
                let copied = io::copy(&mut entry, &mut io::sink()).map_err(broken)?;
                if copied != expected {
                    return Err(Error::verification(format!(
                        "entry {raw:?} is truncated ({copied} of {expected} bytes)"
                    )));
                }
                entries += 1;
            }
        }
        // Drain what follows the archive so the gzip trailer (CRC, length)
        // and any further members are checked too.
        io::copy(&mut gz, &mut io::sink()).map_err(broken)?;
        if !saw_prefix {
            return Err(Error::verification(format!(
                "the archive holds nothing under {}/",
                self.prefix
            )));
        }
        Ok(entries)
    }
}

fn broken(e: io::Error) -> Error {
    Error::verification(format!(
        "not a complete gzip'd tar archive ({e}); the file may be truncated: rebuild the package"
    ))
}

/// Presents the chunks arriving on a channel as one byte stream.
struct ChannelReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn revision() -> Revision {
        Revision::new("arch", "pkg", "v1", "1", &"ab".repeat(20)).unwrap()
    }

    fn tarball(paths: &[&str]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for path in paths {
            // Raw names, so that tests can forge `..` entries.
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            let body = b"hello\n";
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, &body[..]).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn scan_bytes(bytes: &[u8], part_size: usize) -> Result<(Scanned, Vec<usize>)> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let mut parts = Vec::new();
        let scanned = scan(file.path(), part_size, &revision(), |p| {
            parts.push(p.data.len());
            Ok(())
        })?;
        Ok((scanned, parts))
    }

    #[test]
    fn accepts_a_good_tarball_and_cuts_parts() {
        let bytes = tarball(&["./arch/pkg/v1-1/.meta.json", "arch/pkg/v1-1/bin/x"]);
        let (scanned, parts) = scan_bytes(&bytes, 100).unwrap();
        assert_eq!(scanned.size, bytes.len() as u64);
        assert_eq!(scanned.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(scanned.entries, 2);
        assert_eq!(parts.iter().sum::<usize>(), bytes.len());
        assert!(parts[..parts.len() - 1].iter().all(|&n| n == 100));
    }

    #[test]
    fn refuses_truncated_garbage_and_foreign_entries() {
        let good = tarball(&["./arch/pkg/v1-1/.meta.json"]);
        let truncated = &good[..good.len() - 10];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", truncated.to_vec()),
            ("garbage", b"this is not a tarball at all".repeat(10)),
            ("empty", Vec::new()),
            ("other package", tarball(&["./arch/other/v1-1/.meta.json"])),
            ("other revision", tarball(&["./arch/pkg/v1-2/x"])),
            ("escape", tarball(&["./arch/pkg/v1-1/../../../etc/passwd"])),
            ("no content", tarball(&["./arch/pkg/"])),
            (
                "trailing garbage",
                [good.clone(), b"junk".to_vec()].concat(),
            ),
        ];
        for (what, bytes) in cases {
            let err = scan_bytes(&bytes, 64)
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert_eq!(
                err.kind,
                crate::error::ErrorKind::Verification,
                "{what}: {err}"
            );
        }
    }
}
