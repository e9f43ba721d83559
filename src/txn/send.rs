//! The tarball's bytes: read and verified (whole when it fits in one part,
//! else part by part as they are sent) and sent as the parts of its staged
//! upload, created here or resumed from the journal's record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::Journal;
use crate::ownership::JournalHandle;
use crate::storage::{md5_hex_off_thread, Store, UploadedPart};
use crate::tarball::{self, Part};
use crate::workdir::{FileIdentity, LocalRevision};

use super::Options;

/// How the tarball's staged upload comes to be.
pub(super) enum Staging {
    /// Created alongside the upload's first look and recorded in its
    /// intent journal: no part of it is sent yet. `whole`: the tarball,
    /// read and verified, when it fits in one part.
    Fresh {
        upload_id: String,
        whole: Option<WholeTarball>,
    },
    /// The one the journal records, with the parts it holds, if it still
    /// exists; else a new one, recorded before any part is sent.
    Recorded,
}

fn fits_one_part(local: &LocalRevision, options: &Options) -> bool {
    local.tarball.size <= options.part_size as u64
}

/// A tarball that fits in one part, read and verified whole; `None` for a
/// larger one, which is read while its parts are sent.
pub(super) async fn read_whole_if_small(
    local: &LocalRevision,
    options: &Options,
) -> Result<Option<WholeTarball>> {
    match fits_one_part(local, options) {
        true => read_whole(local, options.part_size).await.map(Some),
        false => Ok(None),
    }
}

/// A tarball read and verified whole, before any of it is sent.
pub(super) struct WholeTarball {
    scanned: tarball::Scanned,
    data: Bytes,
}

impl WholeTarball {
    pub(super) fn sha256(&self) -> &str {
        &self.scanned.sha256
    }
}

async fn read_whole(local: &LocalRevision, part_size: usize) -> Result<WholeTarball> {
    let path = local.tarball_path.clone();
    let revision = local.revision.clone();
    tokio::task::spawn_blocking(move || {
        let mut data = None;
        let scanned = tarball::scan(&path, part_size, &revision, |part| {
            // A second part: the file grew since it was measured.
            match data.replace(part.data) {
                None => Ok(()),
                Some(_) => Err(changed_while_read(&path)),
            }
        })?;
        Ok(WholeTarball {
            scanned,
            data: data.unwrap_or_default(),
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Io, format!("reader task: {e}")))?
}

/// Send a tarball read whole as the one part of its staged upload.
pub(super) async fn send_whole(
    store: &dyn Store,
    key: &str,
    upload_id: &str,
    whole: WholeTarball,
) -> Result<Sent> {
    let bytes_sent = whole.data.len() as u64;
    let part = store.upload_part(key, upload_id, 1, whole.data).await?;
    failpoint("part-sent-1");
    Ok(Sent {
        scanned: whole.scanned,
        parts: vec![part],
        bytes_sent,
        reused: 0,
    })
}

/// The bytes just read are the ones the journal describes: the file did
/// not change during the read, nor since an earlier read recorded its hash.
pub(super) fn check_unchanged(
    journal: &Journal,
    local: &LocalRevision,
    scanned: &tarball::Scanned,
) -> Result<()> {
    if FileIdentity::of(&local.tarball_path)? != local.tarball || scanned.size != local.tarball.size
    {
        return Err(changed_while_read(&local.tarball_path));
    }
    if journal
        .tarball
        .sha256
        .as_ref()
        .is_some_and(|recorded| *recorded != scanned.sha256)
    {
        return Err(Error::verification(format!(
            "{} no longer has the SHA-256 recorded in the journal",
            local.tarball_path.display()
        )));
    }
    Ok(())
}

fn changed_while_read(path: &std::path::Path) -> Error {
    Error::verification(format!(
        "{} changed while it was being uploaded; rebuild or re-run",
        path.display()
    ))
}

/// The staged upload of the tarball and the parts it already holds: the
/// recorded one when resuming, else a new one recorded in the journal
/// before any part is sent.
pub(super) async fn staged_upload(
    store: &dyn Store,
    handle: &JournalHandle,
    key: &str,
    metadata: &crate::storage::Metadata,
) -> Result<(String, Vec<UploadedPart>)> {
    if let Some(upload_id) = handle.snapshot().await.tarball.upload_id {
        // Only a definite "no such upload" makes it gone; any other error
        // keeps the journal (and the parts) for a later resume.
        match store.list_parts(key, &upload_id).await? {
            Some(parts) => return Ok((upload_id, parts)),
            None => warn!("the recorded upload {upload_id} no longer exists; starting a new one"),
        }
    }
    let upload_id = store.create_upload(key, metadata).await?;
    debug!("staged upload {upload_id} created");
    failpoint("before-record-upload");
    let recorded = upload_id.clone();
    if let Err(e) = handle
        .update(move |j| j.tarball.upload_id = Some(recorded))
        .await
    {
        // Not recorded, so no one else could ever free it.
        if e.kind == ErrorKind::LostOwnership {
            store.abort_upload(key, &upload_id).await?;
        }
        return Err(e);
    }
    failpoint("after-create-upload");
    Ok((upload_id, Vec::new()))
}

pub(super) struct Sent {
    pub(super) scanned: tarball::Scanned,
    pub(super) parts: Vec<UploadedPart>,
    pub(super) bytes_sent: u64,
    pub(super) reused: u32,
}

/// Read the tarball once, verifying it, and upload every part the store
/// does not already hold with the same bytes.
pub(super) async fn send_tarball(
    store: Arc<dyn Store>,
    key: &str,
    upload_id: &str,
    local: &LocalRevision,
    options: &Options,
    existing: Vec<UploadedPart>,
) -> Result<Sent> {
    let existing: HashMap<u32, UploadedPart> =
        existing.into_iter().map(|p| (p.number, p)).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Part>(1);
    let path = local.tarball_path.clone();
    let revision = local.revision.clone();
    let part_size = options.part_size;
    let reader = tokio::task::spawn_blocking(move || {
        tarball::scan(&path, part_size, &revision, |part| {
            failpoint(&format!("bulk-part-{}", part.number));
            tx.blocking_send(part)
                .map_err(|_| Error::new(ErrorKind::Io, "upload stopped"))
        })
    });
    let sent_bytes = AtomicU64::new(0);
    let reused = AtomicU64::new(0);
    let bar = crate::progress::bar(
        options.progress,
        local.tarball.size,
        "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    bar.set_message(local.revision.tarball_name());
    let uploads = tokio_stream_from(rx)
        .map(|part| {
            let store = store.clone();
            let existing = existing.get(&part.number).cloned();
            let (sent_bytes, reused, bar) = (&sent_bytes, &reused, &bar);
            async move {
                let size = part.data.len() as u64;
                if let Some(have) = existing {
                    // Staged parts are atomic: one that differs means the
                    // file changed since it was sent.
                    let md5 = md5_hex_off_thread(part.data.clone()).await;
                    if have.md5 != md5 || have.size != part.data.len() as u64 {
                        return Err(Error::verification(format!(
                            "part {} differs from the one staged earlier: the tarball changed since the journal was written",
                            part.number
                        )));
                    }
                    reused.fetch_add(1, Ordering::Relaxed);
                    bar.inc(size);
                    return Ok(have);
                }
                let uploaded = store
                    .upload_part(key, upload_id, part.number, part.data)
                    .await?;
                failpoint(&format!("part-sent-{}", uploaded.number));
                sent_bytes.fetch_add(size, Ordering::Relaxed);
                bar.inc(size);
                Ok::<_, Error>(uploaded)
            }
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    let scanned = reader
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("reader task: {e}")))?;
    // An upload error is the cause when both failed: the reader only saw
    // its channel close.
    let mut parts = uploads?;
    let scanned = scanned?;
    parts.sort_by_key(|p| p.number);
    Ok(Sent {
        scanned,
        parts,
        bytes_sent: sent_bytes.into_inner(),
        reused: reused.into_inner() as u32,
    })
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
