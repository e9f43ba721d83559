//! Publishing: stage the tarball while the links are written, make it
//! appear in one atomic step after every link, then commit (journal marked
//! committed, publication record, journal retired).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::{Journal, SHA256_METADATA};
use crate::layout::Link;
use crate::ownership::JournalHandle;
use crate::record::Evidence;
use crate::storage::{get_small, md5_hex_off_thread, Created, Small, Store, UploadedPart};
use crate::tarball::{self, Part};
use crate::workdir::{FileIdentity, LocalRevision};

use super::undo::abort_staged_uploads;
use super::{is_ours, Bookkeeping, Options, Report, Status};

/// The tarball is ours and published: write any recorded link that is
/// missing (the journal holds every key and body), then commit.
pub(super) async fn finish_published(
    store: &dyn Store,
    handle: &JournalHandle,
    options: &Options,
) -> Result<Report> {
    let journal = handle.snapshot().await;
    let tarball = store.head(&journal.tarball.key).await?;
    let mut report = Report::new(Status::Committed, journal.id(), &journal.revision, store);
    report.txn = Some(journal.txn.clone());
    report.tarball_bytes = tarball.as_ref().map_or(journal.tarball.size, |t| t.size);
    report.tarball_sha256 = journal
        .tarball
        .sha256
        .clone()
        .or_else(|| tarball.as_ref()?.metadata.get(SHA256_METADATA).cloned());
    report.keys_written = restore_links(store, &journal, options).await?;
    if !report.keys_written.is_empty() {
        warn!(
            "{} is published: restored {} missing links",
            journal.id(),
            report.keys_written.len()
        );
    }
    let Some(tarball) = tarball else {
        // Published by this transaction (its record says so) and retired
        // since by a clean-up: final, its links kept; only the journal goes.
        let key = std::slice::from_ref(&journal.tarball.key);
        return match crate::deletion::retired(store, key).await? {
            Some(record) if record.txn == journal.txn => {
                handle.retire().await?;
                report.status = Status::AlreadyPublished;
                Ok(report)
            }
            _ => Err(Error::lost_ownership(format!(
                "{} disappeared after it was published: another process unpublished it",
                journal.tarball.key
            ))),
        };
    };
    let evidence = Evidence::Found(Some(&tarball));
    commit(store, handle, report.tarball_sha256.as_deref(), evidence).await?;
    Ok(report)
}

/// Put back, if absent, every link of the published `journal`: they are
/// its own. Returns the keys written.
async fn restore_links(
    store: &dyn Store,
    journal: &Journal,
    options: &Options,
) -> Result<Vec<String>> {
    let metadata = journal.object_metadata();
    let restored: Vec<Option<String>> = futures::stream::iter(journal.links())
        .map(|link| {
            let metadata = &metadata;
            async move {
                let created = store.put_link_if_absent(link, metadata).await?;
                Ok::<_, Error>((created == Created::Yes).then(|| link.key.clone()))
            }
        })
        .buffer_unordered(options.link_concurrency.max(1))
        .try_collect()
        .await?;
    Ok(restored.into_iter().flatten().collect())
}

/// The tarball is published: mark the journal committed and leave the
/// publication record, at once (neither depends on the other: a crash
/// between them is rolled forward either way), then retire the journal.
/// Another owner that took the journal over meanwhile finishes it the same
/// way (see [`JournalHandle::mark_committed`]).
async fn commit(
    store: &dyn Store,
    handle: &JournalHandle,
    sha256: Option<&str>,
    evidence: Evidence<'_>,
) -> Result<()> {
    let journal = handle.snapshot().await;
    let (marked, recorded, aborted) = tokio::join!(
        handle.mark_committed(),
        write_record(store, &journal, sha256, evidence),
        abort_staged_uploads(store, &journal, false)
    );
    marked?;
    debug!("journal marked committed");
    failpoint("after-commit-mark");
    recorded?;
    aborted?;
    handle.retire().await
}

/// [`commit`] before the report, or in a task of `Finishers` (see
/// [`Bookkeeping`]), with the lease kept meanwhile.
async fn commit_as_asked(
    store: &Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    report: Report,
    options: &Options,
) -> Result<Report> {
    let sha256 = report.tarball_sha256.clone();
    match &options.bookkeeping {
        Bookkeeping::BeforeReport => {
            commit(&**store, handle, sha256.as_deref(), Evidence::PublishedHere).await?
        }
        Bookkeeping::Background(finishers) => {
            let (store, handle) = (store.clone(), handle.clone());
            let journal_key = handle.key().to_string();
            let task = crate::machine::spawn(async move {
                let _renewals = handle.keep_alive();
                let evidence = Evidence::PublishedHere;
                if let Err(err) = commit(&*store, &handle, sha256.as_deref(), evidence).await {
                    warn!(
                        "{} is published, but finishing its journal failed: {err}; \
                         `alitx resume` or the next upload of it finishes it",
                        handle.key()
                    );
                }
            });
            finishers.push(journal_key, task);
        }
    }
    Ok(report)
}

/// Leave the publication record of a committed transaction, if `evidence`
/// bears the journal out (see [`crate::record::write`]).
pub(super) async fn write_record(
    store: &dyn Store,
    journal: &Journal,
    sha256: Option<&str>,
    evidence: Evidence<'_>,
) -> Result<()> {
    match sha256 {
        Some(sha256) => crate::record::write(store, journal, sha256, evidence).await,
        None => {
            warn!(
                "{} is published, but its SHA-256 is not known here: no publication record written",
                journal.tarball.key
            );
            Ok(())
        }
    }
}

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

/// Publish the tarball (absent when the transaction was checked) and
/// commit.
pub(super) async fn roll_forward(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: &LocalRevision,
    staging: Staging,
    options: &Options,
) -> Result<Report> {
    let journal = handle.snapshot().await;
    let key = journal.tarball.key.clone();
    let mut report = Report::new(Status::Committed, journal.id(), &journal.revision, &*store);
    report.txn = Some(journal.txn.clone());
    report.tarball_bytes = local.tarball.size;
    let sent = put_staged(store.clone(), handle, &journal, local, staging, options).await?;
    report.keys_written = sent.links_written;
    report.keys_written.push(key.clone());
    report.bytes_sent = sent.bytes_sent;
    report.parts_total = sent.parts_total;
    report.parts_reused = sent.parts_reused;
    report.tarball_sha256 = Some(sent.sha256);
    info!("published {key}");
    failpoint("after-publish");
    commit_as_asked(&store, handle, report, options).await
}

/// What publishing the tarball and writing the links did.
struct Published {
    links_written: Vec<String>,
    sha256: String,
    bytes_sent: u64,
    parts_total: u32,
    parts_reused: u32,
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

/// Stage the tarball's parts (resuming a recorded upload) while the links
/// are written, record the verified SHA-256 (known at the intent for a
/// tarball read whole), then complete the upload: the tarball appears at
/// once, after every link. A process that took the journal over has
/// aborted that upload first, so this completion then fails: the
/// revision is published only by the journal's owner.
async fn put_staged(
    store: Arc<dyn Store>,
    handle: &JournalHandle,
    journal: &Journal,
    local: &LocalRevision,
    staging: Staging,
    options: &Options,
) -> Result<Published> {
    let key = &journal.tarball.key;
    let (upload_id, existing, whole) = match staging {
        Staging::Fresh { upload_id, whole } => (upload_id, Vec::new(), whole),
        Staging::Recorded => {
            // The upload id is recorded before anything else is written,
            // so that no crash can orphan a staged upload.
            let (upload_id, existing) =
                staged_upload(&*store, handle, key, &journal.object_metadata()).await?;
            (upload_id, existing, None)
        }
    };
    let links = write_links(&*store, handle, journal, options.link_concurrency);
    let bulk = async {
        match whole {
            Some(whole) => send_whole(&*store, key, &upload_id, whole).await,
            None => send_tarball(store.clone(), key, &upload_id, local, options, existing).await,
        }
    };
    let (links_written, sent) = tokio::try_join!(links, bulk)?;
    debug!(
        "tarball staged: {} parts, {} B sent",
        sent.parts.len(),
        sent.bytes_sent
    );
    failpoint("after-bulk");
    check_unchanged(journal, local, &sent.scanned)?;
    let sha256 = sent.scanned.sha256.clone();
    // Both confirm that this process still owns the transaction.
    let owned = async {
        match journal.tarball.sha256 {
            Some(_) => handle.confirm().await,
            None => handle.update(|j| j.tarball.sha256 = Some(sha256)).await,
        }
    };
    // Ceph ignores If-None-Match on completion: look just before.
    let (_, tarball) = tokio::try_join!(owned, store.head(key))?;
    match tarball {
        Some(info) if is_ours(&info, journal) => {
            debug!("{key} is already published by this transaction")
        }
        Some(_) => {
            return Err(Error::conflict(format!(
                "{key} appeared in the store from another uploader just before publishing"
            )))
        }
        None => {
            failpoint("before-publish");
            let completed = store.complete_upload(key, &upload_id, &sent.parts).await;
            if let Err(e) = &completed {
                if !store
                    .head(key)
                    .await?
                    .is_some_and(|info| is_ours(&info, journal))
                {
                    return Err(Error::new(e.kind, e.message.clone()));
                }
            }
            // Published by this transaction: by this completion if the
            // journal is still ours (its answer may have been lost); else
            // by the process that took it over and aborted this upload
            // first. Ceph RGW answers success to the completion of an
            // aborted upload when the key holds an object with the same
            // parts: only the journal tells.
            handle.confirm().await?;
            if completed.is_err() {
                debug!("{key}: the completion's answer was lost, but it is published");
            }
        }
    }
    Ok(Published {
        links_written,
        sha256: sent.scanned.sha256,
        bytes_sent: sent.bytes_sent,
        parts_total: sent.parts.len() as u32,
        parts_reused: sent.reused,
    })
}

/// Send a tarball read whole as the one part of its staged upload.
async fn send_whole(
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
fn check_unchanged(
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
async fn staged_upload(
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

/// Claim the package link, then write every dist link. Returns the keys
/// this call created. A key held by something else is a conflict, except
/// a dist link that already has exactly our body.
async fn write_links(
    store: &dyn Store,
    handle: &JournalHandle,
    journal: &Journal,
    concurrency: usize,
) -> Result<Vec<String>> {
    let metadata = journal.object_metadata();
    let mut links = journal.links();
    let package_link = links.next().expect("journals start with the package link");
    let mut written = Vec::new();
    // Adopting, the package link an earlier upload of this build left is
    // this transaction's claim.
    if put_link(store, journal, package_link, &metadata, journal.adopts).await? {
        written.push(package_link.key.clone());
    }
    debug!("claimed {}", package_link.key);
    failpoint("after-claim");
    let dist: Vec<Option<String>> = futures::stream::iter(links)
        .map(|link| {
            let metadata = &metadata;
            async move {
                // A lost journal stops the writes at once, not at the next
                // confirmation.
                handle.ensure_not_lost()?;
                let created = put_link(store, journal, link, metadata, true).await?;
                Ok::<_, Error>(created.then(|| link.key.clone()))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    written.extend(dist.into_iter().flatten());
    debug!("{} dist links in place", journal.links.len() - 1);
    failpoint("after-links");
    Ok(written)
}

/// Put one link if absent; `Ok(false)` if an acceptable object was there.
async fn put_link(
    store: &dyn Store,
    journal: &Journal,
    link: &Link,
    metadata: &crate::storage::Metadata,
    identical_ok: bool,
) -> Result<bool> {
    // A key deleted between the claim and the reads (a rollback of what
    // held it) is claimed again, a few times.
    for _ in 0..CLAIM_ATTEMPTS {
        if store.put_link_if_absent(link, metadata).await? == Created::Yes {
            return Ok(true);
        }
        let info = store.head(&link.key).await?;
        if info.as_ref().is_some_and(|info| is_ours(info, journal)) {
            return Ok(false);
        }
        let held = match get_small(store, &link.key, Small::Link).await? {
            None => continue,
            Some(body) => body,
        };
        match (held == link.body.as_bytes(), identical_ok) {
            (true, true) => return Ok(false),
            // A package link of this very build that appeared since the
            // first look: another upload of the same build is writing it.
            (true, false) => {
                return Err(Error::new(
                    ErrorKind::LiveLease,
                    format!(
                        "{} was written by another upload of this very build since this one began: \
                         it may still be running; re-run once it is over, or after --adopt-after, to complete it",
                        link.key
                    ),
                ))
            }
            (false, _) => break,
        }
    }
    Err(Error::conflict(format!(
        "{} already exists in the store and was not written by this transaction: another build holds revision {} of {}; \
         if it is a leftover of a killed upload, run `alitx check`/`alitx repair --package {}`",
        link.key, journal.revision.revision, journal.revision.package, journal.revision.package
    )))
}

/// How many times a link is claimed while what held its key keeps going.
const CLAIM_ATTEMPTS: usize = 3;

struct Sent {
    scanned: tarball::Scanned,
    parts: Vec<UploadedPart>,
    bytes_sent: u64,
    reused: u32,
}

/// Read the tarball once, verifying it, and upload every part the store
/// does not already hold with the same bytes.
async fn send_tarball(
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

/// Retire the journal of a committed transaction (its revision is
/// published and final), after leaving its publication record if the
/// process that committed it died first and the store's tarball bears the
/// journal out.
pub async fn retire_committed(store: &dyn Store, journal: &Journal, prefix: &str) -> Result<()> {
    let tarball = store.head(&journal.tarball.key).await?;
    let sha256 = journal.tarball.sha256.clone().or_else(|| {
        let info = tarball.as_ref()?;
        info.metadata.get(SHA256_METADATA).cloned()
    });
    let evidence = Evidence::Found(tarball.as_ref());
    write_record(store, journal, sha256.as_deref(), evidence).await?;
    store
        .delete(&Journal::key_of(prefix, &journal.revision))
        .await
}
