//! Reading a package tarball exactly once: the bytes are cut into upload
//! parts, hashed with SHA-256, and fed to a gzip+tar verifier running on its
//! own thread, all in the same pass.
//!
//! Verification proves the tarball is a complete gzip stream holding a tar
//! archive whose every entry lives in `<arch>/<pkg>/<ver>-<rev>/` or one of
//! its parent directories, as aliBuild writes it. The same [`Verifier`]
//! checks a local file before it is published ([`scan`]) and a store
//! object streamed back by `alitx verify`.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::thread;

use bytes::Bytes;
use flate2::bufread::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

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
    let verifier = Verifier::start(revision)?;
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
        // A stopped verifier already failed: its own error explains why.
        if !verifier.feed_blocking(chunk.clone()) {
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
    let verified = verifier.finish();
    read_result?;
    let entries = verified.map_err(|e| {
        e.context(format!("{} failed verification", path.display()))
            .context_after("rebuild the package")
    })?;
    Ok(Scanned {
        size,
        sha256: hex::encode(sha.finalize()),
        entries,
    })
}

/// The gzip+tar verification of one revision's tarball, on its own thread,
/// fed the tarball's bytes in order by whoever reads them (a local file, a
/// store object). A piece is any container of byte slices; it is dropped,
/// and with it whatever it holds, as soon as the verifier has consumed it.
pub struct Verifier<T> {
    input: mpsc::Sender<T>,
    thread: thread::JoinHandle<Result<u64>>,
}

/// A piece of a tarball as the verifier reads it: its bytes, in order, in
/// one or more slices (a store's answer arrives in segments).
pub trait Piece: Send + 'static {
    fn slices(&self) -> &[Bytes];
}

impl Piece for Bytes {
    fn slices(&self) -> &[Bytes] {
        std::slice::from_ref(self)
    }
}

impl<T: Piece> Verifier<T> {
    pub fn start(revision: &Revision) -> Result<Self> {
        // Two pieces queued: the reader stays one ahead, memory stays small.
        let (input, pieces) = mpsc::channel::<T>(2);
        let rules = EntryRules::new(revision);
        let thread = thread::Builder::new()
            .name("verify".into())
            .spawn(move || rules.verify(ChannelReader::new(pieces)))
            .map_err(|e| Error::io("starting the verifier thread", e))?;
        Ok(Verifier { input, thread })
    }

    /// Hand over the next piece, waiting while the verifier is behind; from
    /// a thread that may block. `false` once the verifier stopped: it
    /// failed, and [`Verifier::finish`] says why.
    pub fn feed_blocking(&self, piece: T) -> bool {
        self.input.blocking_send(piece).is_ok()
    }

    /// [`Verifier::feed_blocking`] for async callers.
    pub async fn feed(&self, piece: T) -> bool {
        self.input.send(piece).await.is_ok()
    }

    /// End of input: wait for the verdict, the number of entries. Blocks
    /// until the verifier has consumed what it was given.
    pub fn finish(self) -> Result<u64> {
        drop(self.input);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::verification("the verifier thread panicked")))
    }
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
    fn verify(&self, input: impl BufRead) -> Result<u64> {
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
                let copied = drain(&mut entry).map_err(broken)?;
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
        drain(&mut gz).map_err(broken)?;
        if !saw_prefix {
            return Err(Error::verification(format!(
                "the archive holds nothing under {}/",
                self.prefix
            )));
        }
        Ok(entries)
    }
}

/// Read `input` to its end, discarding it, in blocks larger than
/// `io::copy`'s 8 KiB: the verifier reads whole tarballs.
fn drain(input: &mut impl Read) -> io::Result<u64> {
    let mut block = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        match input.read(&mut block) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn broken(e: io::Error) -> Error {
    Error::verification(format!(
        "not a complete gzip'd tar archive ({e}); the file may be truncated"
    ))
}

/// Presents the pieces arriving on a channel as one byte stream.
struct ChannelReader<T> {
    pieces: mpsc::Receiver<T>,
    current: Option<T>,
    /// The slice of `current` being read, and the offset in it.
    slice: usize,
    offset: usize,
}

impl<T: Piece> ChannelReader<T> {
    fn new(pieces: mpsc::Receiver<T>) -> Self {
        ChannelReader {
            pieces,
            current: None,
            slice: 0,
            offset: 0,
        }
    }
}

impl<T: Piece> Read for ChannelReader<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.fill_buf()?;
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The pieces are the buffer: the gzip decoder reads them in place.
impl<T: Piece> BufRead for ChannelReader<T> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(piece) = &self.current {
                let slices = piece.slices();
                while self.slice < slices.len() && self.offset == slices[self.slice].len() {
                    (self.slice, self.offset) = (self.slice + 1, 0);
                }
                if self.slice < slices.len() {
                    break;
                }
            }
            // Done with this piece: release it before waiting for the next.
            self.current = None;
            match self.pieces.blocking_recv() {
                Some(piece) => (self.current, self.slice, self.offset) = (Some(piece), 0, 0),
                None => return Ok(&[]),
            }
        }
        let piece = self.current.as_ref().expect("a piece is current");
        Ok(&piece.slices()[self.slice][self.offset..])
    }

    fn consume(&mut self, amount: usize) {
        self.offset += amount;
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

    /// A piece in several slices, some empty, reads as the bytes in order.
    #[test]
    fn verifies_pieces_in_segments() {
        struct Segmented(Vec<Bytes>);
        impl Piece for Segmented {
            fn slices(&self) -> &[Bytes] {
                &self.0
            }
        }
        let bytes = Bytes::from(tarball(&["./arch/pkg/v1-1/a", "./arch/pkg/v1-1/b"]));
        let verifier = Verifier::start(&revision()).unwrap();
        for start in (0..bytes.len()).step_by(37) {
            let (middle, end) = ((start + 18).min(bytes.len()), (start + 37).min(bytes.len()));
            let piece = Segmented(vec![
                Bytes::new(),
                bytes.slice(start..middle),
                Bytes::new(),
                bytes.slice(middle..end),
            ]);
            assert!(verifier.feed_blocking(piece));
        }
        assert_eq!(verifier.finish().unwrap(), 2);
    }
}
