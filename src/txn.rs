//! The transaction engine: publish one package revision so that readers
//! never see it partial, and roll an interrupted one forward or back.
//!
//! Order of writes (see `docs/protocol.md`):
//! intent journal → staged tarball parts ∥ (package link claim → dist links)
//! → complete the staged upload (the commit point readers see) → journal
//! committed → journal retired. The engine talks only to [`Store`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::{Journal, State, TXN_METADATA};
use crate::layout::{Link, Revision};
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

/// Publish the revision read from the work dir: the `upload` command.
pub async fn upload(
    store: Arc<dyn Store>,
    local: LocalRevision,
    options: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let revision = &local.revision;
    let journal_key = Journal::key_of(&options.journal_prefix, revision);

    // Independent reads, in parallel: they decide whether to write at all.
    // A tarball that fits in one part is read and verified meanwhile, so
    // that a bad one is refused before anything is written.
    let (store_key, link_key) = (revision.store_key(), revision.package_link().key);
    let reads = async {
        tokio::try_join!(
            read_journal(&*store, &options.journal_prefix, &journal_key),
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
                store.delete(&journal_key).await?;
                Box::pin(upload(store, local, options)).await
            }
            State::Pending if !existing.owner_gone() => Err(live_lease_error(&existing)),
            State::Pending => {
                info!("taking over abandoned journal {journal_key}");
                match take_over(store.clone(), existing, Some(&local), options).await {
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
        .put_if_absent(&journal_key, journal.to_bytes(), &Default::default())
        .await?
    {
        Created::Yes => {}
        Created::AlreadyExists => {
            let other = read_journal(&*store, &options.journal_prefix, &journal_key).await?;
            return Err(match other {
                Some(other) => live_lease_error(&other),
                None => Error::conflict(format!(
                    "another upload of {} started and finished while this one was starting; re-run to check the result",
                    revision.full_version()
                )),
            });
        }
    }
    debug!("intent: journal {journal_key} written");
    failpoint("after-intent");
    let handle = JournalHandle::new(store.clone(), journal_key, journal);
    let mut report = run(store, &handle, &local, whole, options).await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Continue an abandoned transaction: forward if `local` still holds the
/// exact files it describes, otherwise back.
pub async fn take_over(
    store: Arc<dyn Store>,
    journal: Journal,
    local: Option<&LocalRevision>,
    options: &Options,
) -> Result<Report> {
    let key = Journal::key_of(&options.journal_prefix, &journal.revision);
    let mut mine = journal.clone();
    mine.owner = crate::journal::Owner::this_process();
    mine.lease_expires_at = crate::now_secs() + options.lease.as_secs() as i64;
    let handle = JournalHandle::new(store.clone(), key, mine);
    handle.update(|_| {}).await?;
    let local = match local.map(|local| (local, mismatch(&journal, local))) {
        Some((local, None)) => local,
        Some((_, Some(why))) => {
            warn!("rolling back {}: {why}", journal.id());
            return rollback(&*store, &handle.snapshot().await, &options.journal_prefix).await;
        }
        None => {
            warn!(
                "rolling back {}: its local files are not available",
                journal.id()
            );
            return rollback(&*store, &handle.snapshot().await, &options.journal_prefix).await;
        }
    };
    let options = Options {
        part_size: journal.tarball.part_size as usize,
        ..options.clone()
    };
    run(store, &handle, local, None, &options).await
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

/// Drive a journaled transaction to its commit; undo it on a conflict or a
/// tarball that fails verification (the error then keeps its kind only if
/// the undo succeeded); leave it for `resume` on other errors.
async fn run(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: &LocalRevision,
    whole: Option<WholeTarball>,
    options: &Options,
) -> Result<Report> {
    let renewer = handle.keep_alive(options.lease);
    let result = roll_forward(store.clone(), handle, local, whole, options).await;
    renewer.abort();
    match result {
        Ok(report) => Ok(report),
        Err(err) if matches!(err.kind, ErrorKind::Conflict | ErrorKind::Verification) => {
            let journal = handle.snapshot().await;
            warn!("undoing {}: {err}", journal.id());
            match rollback(&*store, &journal, &options.journal_prefix).await {
                Ok(_) => Err(err.context_after("nothing of this upload was left in the store")),
                Err(undo) => Err(Error::store(format!(
                    "{err}; undoing it failed too ({undo}); run `alitx rollback {}`",
                    journal.id()
                ))),
            }
        }
        Err(err) => {
            let id = handle.snapshot().await.id();
            Err(err.context_after(format!(
                "the journal {id} keeps what was sent: re-run the same command, or `alitx resume`, to finish; `alitx rollback {id}` to undo"
            )))
        }
    }
}

async fn roll_forward(
    store: Arc<dyn Store>,
    handle: &JournalHandle,
    local: &LocalRevision,
    whole: Option<WholeTarball>,
    options: &Options,
) -> Result<Report> {
    let journal = handle.snapshot().await;
    let revision = &journal.revision;
    let key = journal.tarball.key.clone();
    let mut report = Report::new(Status::Committed, journal.id(), revision, &*store);
    report.txn = Some(journal.txn.clone());
    report.tarball_bytes = local.tarball.size;

    let published = store.head(&key).await?;
    let already_ours = published
        .as_ref()
        .is_some_and(|info| is_ours(info, &journal));
    if let Some(info) = &published {
        if !already_ours {
            return Err(Error::conflict(format!(
                "{key} appeared in the store (size {}) from another uploader while this transaction was open",
                info.size
            )));
        }
    }

    if already_ours {
        report.tarball_sha256 = journal.tarball.sha256.clone();
    } else {
        // A tarball that fits in one part, with no staged upload to resume,
        // is published by one conditional PUT instead of a multipart upload.
        let sent = match whole {
            Some(whole) => put_whole(&*store, &journal, local, whole, options).await?,
            None if journal.tarball.upload_id.is_none() && fits_one_part(local, options) => {
                let whole = read_whole(local, options.part_size).await?;
                put_whole(&*store, &journal, local, whole, options).await?
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
    }

    handle.update(|j| j.state = State::Committed).await?;
    debug!("journal marked committed");
    failpoint("after-commit-mark");
    match &report.tarball_sha256 {
        Some(sha256) => crate::record::write(&*store, &journal, sha256).await?,
        None => warn!(
            "{key} is published, but its SHA-256 is not known here: no publication record written"
        ),
    }
    handle.retire().await?;
    Ok(report)
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
    journal: &Journal,
    local: &LocalRevision,
    whole: WholeTarball,
    options: &Options,
) -> Result<Published> {
    let links_written = write_links(store, journal, options.link_concurrency).await?;
    check_unchanged(journal, local, &whole.scanned)?;
    let key = &journal.tarball.key;
    let bytes_sent = whole.data.len() as u64;
    let created = store
        .put_if_absent(key, whole.data, &journal.object_metadata())
        .await?;
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
    let links = write_links(&*store, journal, options.link_concurrency);
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
    handle.update(|j| j.tarball.sha256 = Some(sha256)).await?;

    // Ceph ignores If-None-Match on completion: look just before.
    if store.head(key).await?.is_some() {
        return Err(Error::conflict(format!(
            "{key} appeared in the store from another uploader just before publishing"
        )));
    }
    store.complete_upload(key, &upload_id, &sent.parts).await?;
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
        match store.list_parts(key, &upload_id).await {
            Ok(parts) => return Ok((upload_id, parts)),
            Err(e) => warn!("the recorded upload {upload_id} is gone ({e}); starting a new one"),
        }
    }
    let upload_id = store.create_upload(key, metadata).await?;
    debug!("staged upload {upload_id} created");
    let recorded = upload_id.clone();
    handle
        .update(move |j| j.tarball.upload_id = Some(recorded))
        .await?;
    failpoint("after-create-upload");
    Ok((upload_id, Vec::new()))
}

/// Claim the package link, then write every dist link. Returns the keys
/// this call created. A key held by something else is a conflict, except
/// a dist link that already has exactly our body.
async fn write_links(
    store: &dyn Store,
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

/// Undo a transaction: delete the tarball, then the dist links, then the
/// package link, each only if this transaction wrote it; abort the staged
/// upload; retire the journal. Safe to repeat.
pub async fn rollback(
    store: &dyn Store,
    journal: &Journal,
    journal_prefix: &str,
) -> Result<Report> {
    let started = Instant::now();
    let mut report = Report::new(Status::RolledBack, journal.id(), &journal.revision, store);
    report.txn = Some(journal.txn.clone());
    for key in rollback_keys(store, journal).await? {
        store.delete(&key).await?;
        report.keys_deleted.push(key);
    }
    if let Some(upload_id) = &journal.tarball.upload_id {
        store.abort_upload(&journal.tarball.key, upload_id).await?;
    }
    store
        .delete(&Journal::key_of(journal_prefix, &journal.revision))
        .await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What [`rollback`] deletes, in its order: the keys of the journal's
/// revision that carry its transaction id, the tarball first, the package
/// link last.
pub async fn rollback_keys(store: &dyn Store, journal: &Journal) -> Result<Vec<String>> {
    let mut keys = vec![journal.tarball.key.clone()];
    keys.extend(journal.links().skip(1).map(|l| l.key.clone()));
    keys.extend(journal.links().take(1).map(|l| l.key.clone()));
    let mut ours = Vec::new();
    for key in keys {
        let info = store.head(&key).await?;
        if info.is_some_and(|info| is_ours(&info, journal)) {
            ours.push(key);
        }
    }
    Ok(ours)
}

/// Read and validate the journal at `key`, if there is one.
pub async fn read_journal(store: &dyn Store, prefix: &str, key: &str) -> Result<Option<Journal>> {
    match store.get(key).await? {
        Some(bytes) => Journal::parse(prefix, key, &bytes).map(Some),
        None => Ok(None),
    }
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

/// The journal of the running transaction: every update is a whole-object
/// rewrite, serialised here, that also extends the lease.
pub struct JournalHandle {
    store: Arc<dyn Store>,
    key: String,
    /// `None` once retired: later updates (a late lease renewal) must not
    /// bring the journal back.
    journal: Mutex<Option<Journal>>,
    lease: Duration,
}

impl JournalHandle {
    fn new(store: Arc<dyn Store>, key: String, journal: Journal) -> Arc<Self> {
        let lease =
            Duration::from_secs((journal.lease_expires_at - crate::now_secs()).max(1) as u64);
        Arc::new(JournalHandle {
            store,
            key,
            journal: Mutex::new(Some(journal)),
            lease,
        })
    }

    async fn snapshot(&self) -> Journal {
        self.journal
            .lock()
            .await
            .clone()
            .expect("journal used after retirement")
    }

    async fn update(&self, change: impl FnOnce(&mut Journal)) -> Result<()> {
        let mut guard = self.journal.lock().await;
        let Some(journal) = guard.as_mut() else {
            return Ok(());
        };
        change(journal);
        journal.lease_expires_at = crate::now_secs() + self.lease.as_secs() as i64;
        let mut metadata = crate::storage::Metadata::new();
        if let Some(sha) = &journal.tarball.sha256 {
            metadata.insert("alitx-sha256".into(), sha.clone());
        }
        self.store
            .put(&self.key, journal.to_bytes(), &metadata)
            .await
    }

    async fn retire(&self) -> Result<()> {
        let mut guard = self.journal.lock().await;
        self.store.delete(&self.key).await?;
        guard.take();
        Ok(())
    }

    /// Renew the lease every third of its length until aborted.
    fn keep_alive(self: &Arc<Self>, lease: Duration) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = handle.update(|j| j.renewals += 1).await {
                    warn!("renewing the lease on {}: {e}", handle.key);
                }
            }
        })
    }
}
