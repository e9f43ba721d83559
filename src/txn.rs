//! The transaction engine: publish one package revision so that readers
//! never see it partial, and roll an interrupted one forward or back.
//!
//! Order of writes (see `docs/protocol.md`):
//! intent journal → staged tarball parts ∥ (package link claim → dist links)
//! → complete the staged upload (the commit point readers see) → journal
//! committed → journal retired. The engine talks only to [`Store`]; who
//! may act on a journal is `ownership`'s business, what may be deleted
//! `deletion`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::deletion::{delete_unpublished, Deleter, Deletion};
use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::{Journal, State, SHA256_METADATA, TXN_METADATA};
use crate::layout::{Link, Revision};
use crate::ownership::{read_journal, JournalHandle, Takeover};
use crate::storage::{Created, ObjectInfo, Store, UploadedPart};
use crate::tarball::{self, Part};
use crate::workdir::{FileIdentity, LocalRevision};

/// Tunables of one upload.
#[derive(Debug, Clone)]
pub struct Options {
    pub journal_prefix: String,
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Link writes in flight at once.
    pub link_concurrency: usize,
    pub lease: Duration,
    /// Draw a progress bar of the tarball's bytes on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            journal_prefix: crate::journal::DEFAULT_PREFIX.into(),
            part_size: 8 << 20,
            concurrency: 8,
            link_concurrency: 32,
            lease: Duration::from_secs(120),
            progress: false,
        }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// This run published the revision.
    Committed,
    /// The store already held the complete revision; nothing was written.
    AlreadyPublished,
    /// The transaction was undone; nothing of it remains.
    RolledBack,
}

/// What a transaction did, for humans and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub journal: String,
    pub txn: Option<String>,
    pub revision: Revision,
    pub store: String,
    pub keys_written: Vec<String>,
    pub keys_deleted: Vec<String>,
    pub tarball_bytes: u64,
    pub tarball_sha256: Option<String>,
    /// Tarball bytes sent in this run (parts the store already held are not).
    pub bytes_sent: u64,
    pub parts_total: u32,
    pub parts_reused: u32,
    pub duration_seconds: f64,
}

impl Report {
    fn new(status: Status, journal: String, revision: &Revision, store: &dyn Store) -> Self {
        Report {
            status,
            journal,
            txn: None,
            revision: revision.clone(),
            store: store.describe(),
            keys_written: vec![],
            keys_deleted: vec![],
            tarball_bytes: 0,
            tarball_sha256: None,
            bytes_sent: 0,
            parts_total: 0,
            parts_reused: 0,
            duration_seconds: 0.0,
        }
    }
}

/// What a process continuing a journaled transaction wants done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Publish: roll forward when the local files match the journal, back
    /// otherwise.
    Forward,
    /// Undo it, unless the revision is already published (then it is
    /// final, and only the journal's bookkeeping is finished).
    Back,
}

/// Publish the revision read from the work dir: the `upload` command.
pub async fn upload(
    store: Arc<dyn Store>,
    local: LocalRevision,
    options: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let revision = &local.revision;
    let prefix = &options.journal_prefix;
    let journal_key = Journal::key_of(prefix, revision);

    // Independent reads, in parallel: they decide whether to write at all.
    // A tarball that fits in one part is read and verified meanwhile, so
    // that a bad one is refused before anything is written.
    let (store_key, link_key) = (revision.store_key(), revision.package_link().key);
    let reads = async {
        tokio::try_join!(
            read_journal(&*store, prefix, &journal_key),
            store.head(&store_key),
            store.head(&link_key),
        )
    };
    let whole = async {
        match fits_one_part(&local, options) {
            true => read_whole(&local, options.part_size).await.map(Some),
            false => Ok(None),
        }
    };
    let (reachable, reads, whole) = tokio::join!(store.preflight(), reads, whole);
    // The preflight's error says best what is wrong with the store.
    reachable?;
    debug!("store reachable: {}", store.describe());
    let (existing, tarball, package_link) = reads?;
    if let Some(existing) = existing {
        return match existing.state {
            State::Committed => {
                // The last writer died after publishing, before retiring.
                info!("retiring committed journal {journal_key}");
                retire_committed(&*store, &existing, prefix).await?;
                Box::pin(upload(store, local, options)).await
            }
            State::Pending => {
                let takeover = JournalHandle::take_over(
                    store.clone(),
                    prefix,
                    &journal_key,
                    options.lease,
                    false,
                )
                .await?;
                let handle = match takeover {
                    Takeover::Busy(owner) => return Err(live_lease_error(&owner)),
                    Takeover::Retired => return Box::pin(upload(store, local, options)).await,
                    Takeover::Owned(handle) => handle,
                };
                info!("took over abandoned journal {journal_key}");
                match continue_owned(
                    store.clone(),
                    &handle,
                    Some(&local),
                    Intent::Forward,
                    options,
                )
                .await
                {
                    // It described other bytes: undone, now publish ours.
                    Ok(report) if report.status == Status::RolledBack => {
                        Box::pin(upload(store, local, options)).await
                    }
                    Err(e) if e.kind == ErrorKind::Verification => {
                        warn!("{e}; starting a new transaction");
                        Box::pin(upload(store, local, options)).await
                    }
                    Ok(mut report) => {
                        report.duration_seconds = started.elapsed().as_secs_f64();
                        Ok(report)
                    }
                    Err(e) => Err(e),
                }
            }
        };
    }

    if tarball.is_some() && links_complete(&*store, revision, &local.links).await? {
        let mut report = Report::new(
            Status::AlreadyPublished,
            Journal::id_of(revision),
            revision,
            &*store,
        );
        report.tarball_bytes = local.tarball.size;
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    if package_link.is_some() {
        return Err(taken_error(revision));
    }
    let whole = whole?;
    // A full local disk is refused now, with both figures, not half-way.
    store.ensure_space(local.tarball.size).await?;

    // Intent: the journal is the first write; a concurrent writer of the
    // same revision collides here.
    let journal = Journal::new(
        crate::random_hex(8),
        revision,
        local.tarball,
        &local.links,
        options.part_size as u64,
        options.lease,
    );
    match store
        .put_if_absent(&journal_key, journal.to_bytes(), &journal.journal_metadata())
        .await?
    {
        Created::Yes => {}
        Created::AlreadyExists => match read_journal(&*store, prefix, &journal_key).await? {
            // A retried request whose first answer was lost: it is ours.
            Some(stored) if stored.txn == journal.txn => {
                debug!("intent: the journal's first write had stored it")
            }
            Some(other) => return Err(live_lease_error(&other)),
            None => {
                return Err(Error::conflict(format!(
                    "another upload of {} started and finished while this one was starting; re-run to check the result",
                    revision.full_version()
                )))
            }
        },
    }
    debug!("intent: journal {journal_key} written");
    failpoint("after-intent");
    let handle = JournalHandle::created(store.clone(), prefix, journal);
    let mut report = drive(
        store,
        &handle,
        Some(&local),
        whole,
        None,
        Intent::Forward,
        options,
    )
    .await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Continue a transaction whose journal this process now owns (after
/// [`JournalHandle::take_over`]): finish it if its tarball is published,
/// else roll it forward (with `local` files that match it) or back.
pub async fn continue_owned(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    intent: Intent,
    options: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let journal = handle.snapshot().await;
    let options = Options {
        part_size: journal.tarball.part_size as usize,
        ..options.clone()
    };
    let published = store.head(&journal.tarball.key).await?;
    let mut report = drive(store, handle, local, None, published, intent, &options).await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Why the local files cannot complete `journal`, if they cannot.
pub fn mismatch(journal: &Journal, local: &LocalRevision) -> Option<String> {
    if local.revision != journal.revision {
        return Some("the work dir holds a different build of this revision".into());
    }
    if (local.tarball.size, local.tarball.mtime_ns)
        != (journal.tarball.size, journal.tarball.mtime_ns)
    {
        return Some(format!(
            "{} changed since the journal was written",
            local.tarball_path.display()
        ));
    }
    let planned: Vec<&Link> = journal.links().collect();
    let found: Vec<&Link> = local.links.iter().collect();
    if planned != found {
        return Some("the work dir's links differ from the journal's".into());
    }
    None
}

/// Drive an owned transaction to its end, with the lease renewed meanwhile.
/// A published tarball decides first: ours, the transaction is finished
/// (never undone); another uploader's, nothing of the revision is deleted.
/// Otherwise roll forward or back as `intent` and `local` say. On a
/// conflict or a tarball that fails verification the transaction is
/// undone (the error keeps its kind only if the undo succeeded); other
/// errors leave the journal for `resume`.
async fn drive(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    whole: Option<WholeTarball>,
    published: Option<ObjectInfo>,
    intent: Intent,
    options: &Options,
) -> Result<Report> {
    let _renewals = handle.keep_alive();
    let journal = handle.snapshot().await;
    let result = match published {
        Some(info) if is_ours(&info, &journal) => {
            finish_published(&*store, handle, &info, options).await
        }
        Some(_) => Err(Error::conflict(format!(
            "{} is published by another uploader",
            journal.tarball.key
        ))),
        None if intent == Intent::Back => roll_back(&*store, handle).await,
        None => match local.map(|local| (local, mismatch(&journal, local))) {
            Some((local, None)) => roll_forward(store.clone(), handle, local, whole, options).await,
            Some((_, Some(why))) => {
                warn!("rolling back {}: {why}", journal.id());
                roll_back(&*store, handle).await
            }
            None => {
                info!(
                    "rolling back {}: no work dir with its files was given",
                    journal.id()
                );
                roll_back(&*store, handle).await
            }
        },
    };
    let err = match result {
        Ok(report) => return Ok(report),
        Err(err) => err,
    };
    // Failing because another owner took over (its completion removed our
    // staged upload, say) is losing the journal, whatever the request said.
    let err = match handle.confirm().await {
        Err(lost)
            if lost.kind == ErrorKind::LostOwnership && err.kind != ErrorKind::LostOwnership =>
        {
            debug!("{err}");
            lost
        }
        _ => err,
    };
    // What the store holds now decides what the error leaves behind.
    let now = match store.head(&journal.tarball.key).await {
        Ok(now) => now,
        Err(_) => return Err(kept_for_resume(err, &journal)),
    };
    match now {
        Some(info) if is_ours(&info, &journal) && err.kind == ErrorKind::LostOwnership => {
            info!("{err}");
            let mut report = Report::new(
                Status::AlreadyPublished,
                journal.id(),
                &journal.revision,
                &*store,
            );
            report.txn = Some(journal.txn.clone());
            report.tarball_bytes = info.size;
            report.tarball_sha256 = journal.tarball.sha256.clone();
            Ok(report)
        }
        Some(info) if is_ours(&info, &journal) => Err(kept_for_resume(err, &journal)),
        Some(_) => Err(leave_to_foreign(&*store, handle, &journal).await),
        // Rolled back by another process while this one still wrote: what
        // it wrote since is swept, under the one deletion rule.
        None if err.kind == ErrorKind::LostOwnership
            && matches!(handle.reread().await, Ok(None)) =>
        {
            Err(match sweep_late_links(&*store, &journal).await {
                Ok(0) => err,
                Ok(n) => err.context_after(format!(
                    "its transaction was rolled back; the {} this process wrote after that were deleted",
                    crate::counted(n, "link")
                )),
                Err(e) => err.context_after(format!("removing the links it wrote late failed ({e})")),
            })
        }
        None if matches!(err.kind, ErrorKind::Conflict | ErrorKind::Verification) => {
            warn!("undoing {}: {err}", journal.id());
            match roll_back(&*store, handle).await {
                Ok(_) => Err(err.context_after("nothing of this upload was left in the store")),
                Err(undo) if undo.kind == ErrorKind::ForeignPublished => Err(undo),
                Err(undo) => Err(Error::store(format!(
                    "{err}; undoing it failed too ({undo}); run `alitx rollback {}`",
                    journal.id()
                ))),
            }
        }
        None => Err(kept_for_resume(err, &journal)),
    }
}

fn kept_for_resume(err: Error, journal: &Journal) -> Error {
    if err.kind == ErrorKind::LostOwnership {
        return err.context_after("this process stopped and left the transaction to its new owner");
    }
    let id = journal.id();
    err.context_after(format!(
        "the journal {id} keeps what was sent: re-run the same command, or `alitx resume`, to finish; `alitx rollback {id}` to undo"
    ))
}

/// Delete, under the one rule, every link of `journal` that still carries
/// its transaction id: those a process wrote after another one rolled the
/// transaction back. Returns how many went.
async fn sweep_late_links(store: &dyn Store, journal: &Journal) -> Result<usize> {
    let mut deleted = 0;
    for key in rollback_order(journal) {
        let deletion = delete_unpublished(
            store,
            &journal.tarball.key,
            &key,
            Deleter::Txn(&journal.txn),
        )
        .await?;
        match deletion {
            Deletion::Deleted => deleted += 1,
            Deletion::Published => break,
            Deletion::Missing | Deletion::NotOurs => {}
        }
    }
    Ok(deleted)
}

/// Another uploader published the revision's tarball: every link of ours
/// stays (its readers may need them), the staged upload is freed and the
/// journal retired.
async fn leave_to_foreign(store: &dyn Store, handle: &JournalHandle, journal: &Journal) -> Error {
    let conflict = |what: &str| {
        Error::new(
            ErrorKind::ForeignPublished,
            format!(
                "{} was published by another uploader while this transaction was open; \
                 none of this transaction's links were deleted, since that revision's readers need them; {what}",
                journal.tarball.key
            ),
        )
    };
    let cleanup = async {
        handle.confirm().await?;
        if let Some(upload_id) = &journal.tarball.upload_id {
            store.abort_upload(&journal.tarball.key, upload_id).await?;
        }
        handle.retire().await
    };
    match cleanup.await {
        Ok(()) => conflict("the journal was retired"),
        Err(e) => conflict(&format!(
            "retiring the journal failed ({e}): run `alitx resume {}`",
            journal.id()
        )),
    }
}

/// The tarball is ours and published: write any recorded link that is
/// missing (the journal holds every key and body), then commit.
async fn finish_published(
    store: &dyn Store,
    handle: &JournalHandle,
    tarball: &ObjectInfo,
    options: &Options,
) -> Result<Report> {
    let journal = handle.snapshot().await;
    let mut report = Report::new(Status::Committed, journal.id(), &journal.revision, store);
    report.txn = Some(journal.txn.clone());
    report.tarball_bytes = tarball.size;
    report.tarball_sha256 = journal
        .tarball
        .sha256
        .clone()
        .or_else(|| tarball.metadata.get(SHA256_METADATA).cloned());
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
    report.keys_written = restored.into_iter().flatten().collect();
    if !report.keys_written.is_empty() {
        warn!(
            "{} is published: restored {} missing links",
            journal.id(),
            report.keys_written.len()
        );
    }
    commit(store, handle, report).await
}

/// The tarball is published: mark the journal committed and leave the
/// publication record, at once (neither depends on the other: a crash
/// between them is rolled forward either way), then retire the journal.
/// Losing the journal to another owner now is harmless: it finishes the
/// same way.
async fn commit(store: &dyn Store, handle: &JournalHandle, report: Report) -> Result<Report> {
    let journal = handle.snapshot().await;
    let (marked, recorded) = tokio::join!(
        handle.update(|j| j.state = State::Committed),
        write_record(store, &journal, report.tarball_sha256.as_deref())
    );
    match marked {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::LostOwnership => {
            info!("{e}; the revision is published, its new owner retires the journal");
            return Ok(report);
        }
        Err(e) => return Err(e),
    }
    debug!("journal marked committed");
    failpoint("after-commit-mark");
    recorded?;
    if journal.tarball.upload_id.is_some() || journal.takeovers > 0 {
        abort_staged_uploads(store, &journal, false).await?;
    }
    handle.retire().await?;
    Ok(report)
}

/// Leave the publication record of a committed transaction.
async fn write_record(store: &dyn Store, journal: &Journal, sha256: Option<&str>) -> Result<()> {
    match sha256 {
        Some(sha256) => crate::record::write(store, journal, sha256).await,
        None => {
            warn!(
                "{} is published, but its SHA-256 is not known here: no publication record written",
                journal.tarball.key
            );
            Ok(())
        }
    }
}

/// Publish the tarball (absent when the transaction was checked) and
/// commit.
async fn roll_forward(
    store: Arc<dyn Store>,
    handle: &JournalHandle,
    local: &LocalRevision,
    whole: Option<WholeTarball>,
    options: &Options,
) -> Result<Report> {
    let journal = handle.snapshot().await;
    let key = journal.tarball.key.clone();
    let mut report = Report::new(Status::Committed, journal.id(), &journal.revision, &*store);
    report.txn = Some(journal.txn.clone());
    report.tarball_bytes = local.tarball.size;
    // A tarball that fits in one part, with no staged upload to resume,
    // is published by one conditional PUT instead of a multipart upload.
    let sent = match whole {
        Some(whole) => put_whole(&*store, handle, &journal, local, whole, options).await?,
        None if journal.tarball.upload_id.is_none() && fits_one_part(local, options) => {
            let whole = read_whole(local, options.part_size).await?;
            put_whole(&*store, handle, &journal, local, whole, options).await?
        }
        None => put_staged(store.clone(), handle, &journal, local, options).await?,
    };
    report.keys_written = sent.links_written;
    report.keys_written.push(key.clone());
    report.bytes_sent = sent.bytes_sent;
    report.parts_total = sent.parts_total;
    report.parts_reused = sent.parts_reused;
    report.tarball_sha256 = Some(sent.sha256);
    info!("published {key}");
    failpoint("after-publish");
    commit(&*store, handle, report).await
}

/// What publishing the tarball and writing the links did.
struct Published {
    links_written: Vec<String>,
    sha256: String,
    bytes_sent: u64,
    parts_total: u32,
    parts_reused: u32,
}

/// Whether `info` describes an object this transaction wrote.
fn is_ours(info: &ObjectInfo, journal: &Journal) -> bool {
    info.metadata.get(TXN_METADATA) == Some(&journal.txn)
}

fn fits_one_part(local: &LocalRevision, options: &Options) -> bool {
    local.tarball.size <= options.part_size as u64
}

/// A tarball read and verified whole, before any of it is sent.
struct WholeTarball {
    scanned: tarball::Scanned,
    data: Bytes,
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

/// Write the links, then publish the verified tarball with one
/// put-if-absent: it appears at once, after every link, and never over an
/// object another uploader put there.
async fn put_whole(
    store: &dyn Store,
    handle: &JournalHandle,
    journal: &Journal,
    local: &LocalRevision,
    whole: WholeTarball,
    options: &Options,
) -> Result<Published> {
    let links_written = write_links(store, handle, journal, options.link_concurrency).await?;
    check_unchanged(journal, local, &whole.scanned)?;
    let key = &journal.tarball.key;
    let bytes_sent = whole.data.len() as u64;
    let mut metadata = journal.object_metadata();
    metadata.insert(SHA256_METADATA.into(), whole.scanned.sha256.clone());
    handle.confirm().await?;
    let created = store.put_if_absent(key, whole.data, &metadata).await?;
    // Taken already: ours only if a retried request had stored it.
    if created == Created::AlreadyExists
        && !store
            .head(key)
            .await?
            .is_some_and(|info| is_ours(&info, journal))
    {
        return Err(Error::conflict(format!(
            "{key} appeared in the store from another uploader just before publishing"
        )));
    }
    Ok(Published {
        links_written,
        sha256: whole.scanned.sha256,
        bytes_sent,
        parts_total: 1,
        parts_reused: 0,
    })
}

/// Stage the tarball's parts (resuming a recorded upload) while the links
/// are written, record the verified SHA-256, then complete the upload: the
/// tarball appears at once, after every link.
async fn put_staged(
    store: Arc<dyn Store>,
    handle: &JournalHandle,
    journal: &Journal,
    local: &LocalRevision,
    options: &Options,
) -> Result<Published> {
    let key = &journal.tarball.key;
    // The upload id is recorded before anything else is written, so that
    // no crash can orphan a staged upload.
    let (upload_id, existing) =
        staged_upload(&*store, handle, key, &journal.object_metadata()).await?;
    let links = write_links(&*store, handle, journal, options.link_concurrency);
    let bulk = send_tarball(store.clone(), key, &upload_id, local, options, existing);
    let (links_written, sent) = tokio::try_join!(links, bulk)?;
    debug!(
        "tarball staged: {} parts, {} B sent",
        sent.parts.len(),
        sent.bytes_sent
    );
    failpoint("after-bulk");
    check_unchanged(journal, local, &sent.scanned)?;
    let sha256 = sent.scanned.sha256.clone();
    // Also confirms that this process still owns the transaction.
    handle.update(|j| j.tarball.sha256 = Some(sha256)).await?;

    // Ceph ignores If-None-Match on completion: look just before. A
    // completion whose answer was lost (the retry finds no upload) has
    // published our tarball all the same.
    match store.head(key).await? {
        Some(info) if is_ours(&info, journal) => {
            debug!("{key} is already published by this transaction")
        }
        Some(_) => {
            return Err(Error::conflict(format!(
                "{key} appeared in the store from another uploader just before publishing"
            )))
        }
        None => {
            if let Err(e) = store.complete_upload(key, &upload_id, &sent.parts).await {
                if !store
                    .head(key)
                    .await?
                    .is_some_and(|info| is_ours(&info, journal))
                {
                    return Err(e);
                }
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

/// Abort the staged uploads of the journal's tarball key that nothing
/// else will ever complete: with `recorded`, every one (a rollback); else
/// every one but the recorded one, which a commit has just completed
/// anyway. Those are a CreateMultipartUpload whose answer was lost and
/// that the SDK retried, or one a killed owner created and died before
/// recording. The journal's owner is the only writer of that key.
async fn abort_staged_uploads(store: &dyn Store, journal: &Journal, recorded: bool) -> Result<()> {
    let key = &journal.tarball.key;
    for upload in store.list_uploads(key).await? {
        let ours = journal.tarball.upload_id.as_deref() == Some(&upload.upload_id);
        if upload.key == *key && (recorded || !ours) {
            if !ours {
                warn!(
                    "aborting {}, a staged upload of {key} no journal records",
                    upload.upload_id
                );
            }
            store.abort_upload(key, &upload.upload_id).await?;
        }
    }
    Ok(())
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
    if put_link(store, journal, package_link, &metadata, false).await? {
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
    if store.put_link_if_absent(link, metadata).await? == Created::Yes {
        return Ok(true);
    }
    let info = store.head(&link.key).await?;
    if info.as_ref().is_some_and(|info| is_ours(info, journal)) {
        return Ok(false);
    }
    if identical_ok && store.get(&link.key).await?.as_deref() == Some(link.body.as_bytes()) {
        return Ok(false);
    }
    Err(Error::conflict(format!(
        "{} already exists in the store and was not written by this transaction: another build holds revision {} of {}; \
         if it is a leftover of a killed upload, run `alitx check`/`alitx repair --package {}`",
        link.key, journal.revision.revision, journal.revision.package, journal.revision.package
    )))
}

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
    let bar = progress_bar(options.progress, local);
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
                    let md5 = md5_hex(part.data.clone()).await;
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

fn progress_bar(show: bool, local: &LocalRevision) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(local.tarball.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(local.revision.tarball_name());
    bar
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn md5_hex(data: Bytes) -> String {
    tokio::task::spawn_blocking(move || hex::encode(Md5::digest(&data)))
        .await
        .expect("md5 task")
}

/// Undo an owned transaction under the one deletion rule
/// ([`delete_unpublished`]): its dist links, then its package link (which
/// frees the revision number), each only if it carries this transaction's
/// id and the revision's tarball does not exist, with ownership confirmed
/// before each step; then abort the staged upload and retire the journal.
/// Safe to repeat. A tarball that appears meanwhile stops it.
async fn roll_back(store: &dyn Store, handle: &JournalHandle) -> Result<Report> {
    let started = Instant::now();
    let journal = handle.snapshot().await;
    let mut report = Report::new(Status::RolledBack, journal.id(), &journal.revision, store);
    report.txn = Some(journal.txn.clone());
    let tarball = &journal.tarball.key;
    for key in rollback_order(&journal) {
        handle.confirm().await?;
        match delete_unpublished(store, tarball, &key, Deleter::Txn(&journal.txn)).await? {
            Deletion::Deleted => report.keys_deleted.push(key),
            Deletion::Missing | Deletion::NotOurs => {}
            Deletion::Published => {
                return Err(Error::lost_ownership(format!(
                    "{tarball} was published while this process rolled the transaction back"
                )))
            }
        }
    }
    handle.confirm().await?;
    abort_staged_uploads(store, &journal, true).await?;
    handle.retire().await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The keys a rollback considers, in its order: the dist links, then the
/// package link.
fn rollback_order(journal: &Journal) -> Vec<String> {
    let mut links = journal.links().map(|l| l.key.clone());
    let package_link = links.next();
    links.chain(package_link).collect()
}

/// What a rollback of `journal` would delete now, in its order: nothing
/// once the tarball is published, else the links carrying its id.
pub async fn rollback_keys(store: &dyn Store, journal: &Journal) -> Result<Vec<String>> {
    if store.head(&journal.tarball.key).await?.is_some() {
        return Ok(Vec::new());
    }
    let mut ours = Vec::new();
    for key in rollback_order(journal) {
        let info = store.head(&key).await?;
        if info.is_some_and(|info| is_ours(&info, journal)) {
            ours.push(key);
        }
    }
    Ok(ours)
}

/// Retire the journal of a committed transaction (its revision is
/// published and final), after leaving its publication record if the
/// process that committed it died first.
pub async fn retire_committed(store: &dyn Store, journal: &Journal, prefix: &str) -> Result<()> {
    let sha256 = match &journal.tarball.sha256 {
        Some(sha256) => Some(sha256.clone()),
        None => store
            .head(&journal.tarball.key)
            .await?
            .and_then(|info| info.metadata.get(SHA256_METADATA).cloned()),
    };
    write_record(store, journal, sha256.as_deref()).await?;
    store
        .delete(&Journal::key_of(prefix, &journal.revision))
        .await
}

fn live_lease_error(journal: &Journal) -> Error {
    let o = &journal.owner;
    Error::new(
        ErrorKind::LiveLease,
        format!(
            "{} is being uploaded by {} (pid {} on {}, started {}s ago; lease valid {}s more): \
             wait for it, or if that process is dead run `alitx resume --force {}`",
            journal.revision.full_version(),
            o.tool,
            o.pid,
            o.host,
            crate::now_secs() - o.started_at,
            journal.lease_expires_at - crate::now_secs(),
            journal.id()
        ),
    )
}

/// With the tarball present: whether every link is there exactly, or a
/// conflict naming the partial revision.
async fn links_complete(store: &dyn Store, revision: &Revision, links: &[Link]) -> Result<bool> {
    let missing = futures::stream::iter(links)
        .map(|link| async move {
            Ok::<_, Error>(store.get(&link.key).await?.as_deref() != Some(link.body.as_bytes()))
        })
        .buffer_unordered(32)
        .try_filter(|differs| futures::future::ready(*differs))
        .count()
        .await;
    if missing == 0 {
        return Ok(true);
    }
    Err(Error::conflict(format!(
        "{} is in the store but {missing} of its links are missing or different: a partial revision left by another uploader; \
         inspect it with `alitx check --package {}`",
        revision.store_key(),
        revision.package
    )))
}

/// The package link exists but the tarball does not: refused before writing
/// anything.
fn taken_error(revision: &Revision) -> Error {
    let link = revision.package_link();
    Error::conflict(format!(
            "{} already exists but {} does not: revision {} of {} is taken by another build or is a leftover of a killed upload; \
             `alitx check --package {}` tells which",
            link.key,
            revision.store_key(),
            revision.revision,
            revision.package,
            revision.package
        ))
}
