//! Publishing: stage the tarball while the links are written, make it
//! appear in one atomic step after every link, then commit (journal marked
//! committed, publication record, journal retired).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tracing::{debug, info};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::Journal;
use crate::layout::Link;
use crate::ownership::JournalHandle;
use crate::storage::{get_small, Created, Small, Store};
use crate::workdir::LocalRevision;

use super::commit::commit_as_asked;
use super::send::{check_unchanged, send_tarball, send_whole, staged_upload, Staging};
use super::{is_ours, Options, Report, Status};

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
