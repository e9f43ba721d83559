//! How `verify` and `fetch` read a tarball: ranged GETs in parallel under a
//! memory budget, hashed and fed in order to the gzip+tar verifier (and, for
//! `fetch`, written in order to a file).

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::PERMIT_BYTES;
use crate::budget::{Budget, Grant};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::Revision;
use crate::storage::{Segments, Store};
use crate::tarball::{Piece, Verifier};

/// One ranged GET's bytes in memory, as they arrived: it holds its memory
/// permits until the verifier has consumed it, which bounds memory.
struct Range {
    data: Segments,
    _memory: Grant,
}

impl Piece for Range {
    fn slices(&self) -> &[Bytes] {
        self.data.as_slices()
    }
}

/// A spawned task that is aborted when its handle is dropped: the ranged
/// GETs still in flight when a tarball's reading stops early (a corrupt
/// piece, an error) end with it instead of running to completion.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What reading a tarball through the verifier found.
pub(crate) struct TarballRead {
    /// `Some` when every byte was read (and, with a copy, written).
    pub(crate) sha256: Option<String>,
    /// The gzip+tar verdict: entries, or why not.
    pub(crate) verdict: Result<u64>,
}

/// What every tarball read shares: the store, the memory budget, the
/// requests in flight and the progress bar.
pub(crate) struct Reader {
    pub(crate) store: Arc<dyn Store>,
    /// Tarball bytes held, in units of `PERMIT_BYTES`.
    pub(crate) memory: Arc<Budget>,
    /// Ranged GETs queued per tarball ahead of the one consumed.
    pub(crate) concurrency: usize,
    /// Requests in flight to the store: each ranged GET holds one while it
    /// runs (`fetch` shares it with its listings and link reads).
    pub(crate) requests: Arc<Budget>,
    pub(crate) chunk_size: u64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bar: indicatif::ProgressBar,
}

impl Reader {
    /// Stream `key` (`size` bytes) once through SHA-256 and the gzip+tar
    /// verifier, in ranged GETs of `chunk_size`, several in flight; with
    /// `copy_to`, write the bytes in order to that file too (a write error
    /// ends the read with that error). Its memory and requests are served
    /// at `priority` (see `Budget`).
    pub(crate) async fn read_tarball(
        &self,
        priority: u64,
        key: &str,
        size: u64,
        revision: &Revision,
        mut copy_to: Option<File>,
    ) -> Result<TarballRead> {
        let verifier = Verifier::<Range>::start(revision)?;
        // A dispatcher takes memory permits for the pieces in order and
        // starts each ranged GET as a task of its own, so that bodies keep
        // arriving while earlier pieces are hashed and verified. In order:
        // a piece holds memory only after every earlier piece of its tarball
        // does, so the piece consumed next can always arrive, however many
        // tarballs share the permits.
        let (gets, mut arrivals) = tokio::sync::mpsc::channel(self.concurrency);
        let (store, memory, source) = (self.store.clone(), self.memory.clone(), key.to_string());
        let requests = self.requests.clone();
        let chunk = self.chunk_size;
        let dispatcher = AbortOnDrop(tokio::spawn(async move {
            for offset in (0..size.div_ceil(chunk)).map(|i| i * chunk) {
                let expected = chunk.min(size - offset);
                let units = expected.div_ceil(PERMIT_BYTES) as usize;
                let held = memory.acquire(priority, units).await;
                let (store, key, requests) = (store.clone(), source.clone(), requests.clone());
                let get = AbortOnDrop(tokio::spawn(async move {
                    let _request = requests.acquire(priority, 1).await;
                    match store.get_range(&key, offset, expected).await? {
                        Some(data) if data.len() as u64 == expected => Ok(Range {
                            data,
                            _memory: held,
                        }),
                        _ => Err(Error::store(format!(
                            "{key} changed while it was read (it had {size} bytes); run verify again"
                        ))),
                    }
                }));
                if gets.send(get).await.is_err() {
                    return; // The reading stopped early.
                }
            }
        }));
        let mut sha = Sha256::new();
        let mut read = 0u64;
        let mut failure = None;
        while let Some(get) = arrivals.recv().await {
            let joined = get
                .await
                .map_err(|e| Error::new(ErrorKind::Io, format!("reading task: {e}")));
            let piece = match joined.and_then(|piece| piece) {
                Ok(piece) => piece,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let len = piece.data.len() as u64;
            let mut copy = copy_to.take();
            let (hashed, piece, copy, written) = tokio::task::spawn_blocking(move || {
                piece.slices().iter().for_each(|slice| sha.update(slice));
                let written = copy.as_mut().map_or(Ok(()), |file| {
                    piece.slices().iter().try_for_each(|s| file.write_all(s))
                });
                (sha, piece, copy, written)
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("hashing task: {e}")))?;
            (sha, copy_to) = (hashed, copy);
            if let Err(e) = written {
                failure = Some(Error::io(format!("writing the copy of {key}"), e));
                break;
            }
            read += len;
            self.bytes_read.fetch_add(len, Ordering::Relaxed);
            self.bar.inc(len);
            if !verifier.feed(piece).await {
                break; // It failed: its verdict says why.
            }
        }
        drop((arrivals, dispatcher));
        let verdict = tokio::task::spawn_blocking(move || verifier.finish())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("verifier task: {e}")))?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(TarballRead {
            sha256: (read == size).then(|| hex::encode(sha.finalize())),
            verdict,
        })
    }
}
