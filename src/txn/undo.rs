//! Undoing a transaction, always under the one deletion rule
//! ([`delete_unpublished`]): a rollback, the sweep of links written after
//! another process rolled the transaction back, and leaving a revision to
//! the uploader that published it.

use std::time::Instant;

use tracing::{debug, warn};

use std::time::Duration;

use crate::deletion::{
    delete_unpublished, published, retired, revision_tarballs, Deleter, Deletion, Named,
};
use crate::error::{Error, ErrorKind, Result};
use crate::journal::Journal;
use crate::layout::{self, Link, LinkKind};
use crate::ownership::JournalHandle;
use crate::storage::{get_small, Small, Store};

use super::plan::{FailureFacts, JournalNow, Tarball};
use super::{is_ours, Report, Status};

/// The revision's tarball as the store holds it now: the journal's key,
/// else any tarball of its name that its own links (package link, its own
/// link in each dist directory) name. A journal is untrusted input: one
/// whose hash differs from the published build's must not undo that build.
pub(super) async fn tarball_now(store: &dyn Store, journal: &Journal) -> Result<Tarball> {
    if let Some(info) = store.head(&journal.tarball.key).await? {
        return Ok(match is_ours(&info, journal) {
            true => Tarball::Ours,
            false => Tarball::Foreign,
        });
    }
    let tarballs = revision_tarballs(store, named(journal), Some(&journal.tarball.key)).await?;
    for other in tarballs.iter().filter(|key| **key != journal.tarball.key) {
        if store.head(other).await?.is_some() {
            return Ok(Tarball::Foreign);
        }
    }
    // None exists now; one may have been published and retired since by a
    // clean-up, as its publication record tells.
    Ok(match retired(store, &tarballs).await? {
        Some(record) if record.key == journal.tarball.key && record.txn == journal.txn => {
            Tarball::Ours
        }
        Some(_) => Tarball::Foreign,
        None => Tarball::Absent,
    })
}

/// The journal's revision, as [`revision_tarballs`] takes it.
fn named(journal: &Journal) -> Named<'_> {
    let revision = &journal.revision;
    Named {
        architecture: &revision.architecture,
        package: &revision.package,
        tarball: journal.tarball.key.rsplit('/').next().unwrap_or_default(),
    }
}

/// How long the reads that judge a failure may take: a store that stopped
/// answering leaves the journal for `resume` instead of more waiting.
const FAILURE_READS_LIMIT: Duration = Duration::from_secs(10);

/// What a delete loop did.
struct Deleted {
    keys: Vec<String>,
    /// It stopped because the revision's tarball appeared.
    published: bool,
}

/// Delete, in rollback order (dist links, then the package link that
/// frees the revision number), every link of `journal` that is still its
/// own: as the journal's `owner` where this process holds it, proving
/// ownership right before each delete.
async fn delete_own_links(
    store: &dyn Store,
    journal: &Journal,
    owner: Option<&JournalHandle>,
) -> Result<Deleted> {
    let mut deleted = Deleted {
        keys: Vec::new(),
        published: false,
    };
    let tarballs = revision_tarballs(store, named(journal), Some(&journal.tarball.key)).await?;
    if published(store, &tarballs).await?.is_some() {
        deleted.published = true;
        return Ok(deleted);
    }
    let links: Vec<Link> = journal.links().cloned().collect();
    crate::removed::keep(store, &journal.revision, &links).await?;
    for link in rollback_order(journal) {
        let deleter = Deleter::Txn {
            txn: &journal.txn,
            body: &link.body,
        };
        match delete_unpublished(store, &tarballs, &link.key, deleter, owner).await? {
            Deletion::Deleted => deleted.keys.push(link.key.clone()),
            Deletion::Missing | Deletion::NotOurs => {}
            Deletion::Published => {
                deleted.published = true;
                break;
            }
        }
    }
    Ok(deleted)
}

/// Undo an owned transaction: its own links (each only if it carries this
/// transaction's id and body and the revision's tarball does not exist,
/// with ownership confirmed before each), then abort the staged upload
/// and retire the journal. Safe to repeat. A tarball that appears
/// meanwhile stops it.
pub(super) async fn roll_back(store: &dyn Store, handle: &JournalHandle) -> Result<Report> {
    let started = Instant::now();
    let journal = handle.snapshot().await;
    let mut report = Report::new(Status::RolledBack, journal.id(), &journal.revision, store);
    report.txn = Some(journal.txn.clone());
    let deleted = delete_own_links(store, &journal, Some(handle)).await?;
    report.keys_deleted = deleted.keys;
    if deleted.published && !report.keys_deleted.is_empty() {
        // Never "already published, nothing more written": the journal,
        // kept, holds every key and body for `resume` to put back.
        return Err(Error::conflict(format!(
            "{} was published while this process rolled the transaction back, after it had deleted {}; \
             run `alitx resume {}` to restore them",
            journal.tarball.key,
            crate::counted(report.keys_deleted.len(), "link"),
            journal.id()
        )));
    }
    if deleted.published {
        return Err(Error::lost_ownership(format!(
            "{} was published while this process rolled the transaction back",
            journal.tarball.key
        )));
    }
    handle.confirm().await?;
    abort_staged_uploads(store, &journal, true).await?;
    handle.retire().await?;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Delete, under the one rule, every link of `journal` that is still its
/// own: those a process wrote after another one rolled the transaction
/// back. Returns how many went.
pub(super) async fn sweep_late_links(store: &dyn Store, journal: &Journal) -> Result<usize> {
    let deleted = delete_own_links(store, journal, None).await?;
    Ok(deleted.keys.len())
}

/// The links a rollback considers, in its order: the dist links, then the
/// package link.
fn rollback_order(journal: &Journal) -> Vec<&Link> {
    let mut links = journal.links();
    let package_link = links.next();
    links.chain(package_link).collect()
}

/// What a rollback of `journal` would delete now, in its order: nothing
/// once the revision is published, else the links carrying its id and body.
pub async fn rollback_keys(store: &dyn Store, journal: &Journal) -> Result<Vec<String>> {
    if tarball_now(store, journal).await? != Tarball::Absent {
        return Ok(Vec::new());
    }
    let mut ours = Vec::new();
    for link in rollback_order(journal) {
        let info = store.head(&link.key).await?;
        if info.is_some_and(|info| is_ours(&info, journal))
            && get_small(store, &link.key, Small::Link).await?.as_deref()
                == Some(link.body.as_bytes())
        {
            ours.push(link.key.clone());
        }
    }
    Ok(ours)
}

/// Another uploader published the revision's tarball: every link of ours
/// stays (its readers may need them), the staged upload is freed and the
/// journal retired.
pub(super) async fn leave_to_foreign(
    store: &dyn Store,
    handle: &JournalHandle,
    journal: &Journal,
) -> Error {
    let conflict = |what: &str| {
        Error::new(
            ErrorKind::ForeignPublished,
            format!(
                "{} is published by another uploader (as {}); \
                 none of this transaction's links that its readers may need were deleted; {what}",
                journal.revision.full_version(),
                journal.revision.package_link().key
            ),
        )
    };
    let cleanup = async {
        handle.confirm().await?;
        if let Some(upload_id) = &journal.tarball.upload_id {
            store.abort_upload(&journal.tarball.key, upload_id).await?;
        }
        delete_naming_own_tarball(store, handle, journal).await?;
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

/// Delete, under the one rule, this transaction's links that name its own
/// tarball (its package link, its own link in each dist directory), now
/// that its staged upload is aborted and another hash is published: they
/// name a tarball that will never come, and hold the revision's keys
/// against the published build's own (which `repair` puts back). Its
/// other links, its dependencies', may be the published build's too and
/// stay. Nothing goes while a tarball of this very key exists.
async fn delete_naming_own_tarball(
    store: &dyn Store,
    handle: &JournalHandle,
    journal: &Journal,
) -> Result<()> {
    let own_tarball = std::slice::from_ref(&journal.tarball.key);
    let package_link = journal.revision.package_link().key;
    for link in journal.links() {
        let kind = match link.key == package_link {
            true => LinkKind::Package,
            false => LinkKind::Dist,
        };
        let named = layout::link_target(&journal.revision.architecture, kind, link.body.as_bytes());
        if named.as_ref() != Some(&journal.tarball.key) {
            continue;
        }
        let deleter = Deleter::Txn {
            txn: &journal.txn,
            body: &link.body,
        };
        if delete_unpublished(store, own_tarball, &link.key, deleter, Some(handle)).await?
            == Deletion::Published
        {
            break;
        }
    }
    Ok(())
}

/// Abort the staged uploads of the journal's tarball key that nothing
/// else will ever complete: with `recorded`, every one (a rollback); else
/// every one but the recorded one, which a commit has just completed
/// anyway. Those are a CreateMultipartUpload whose answer was lost and
/// that the SDK retried, or one a killed owner created and died before
/// recording. The journal's owner is the only writer of that key.
pub(super) async fn abort_staged_uploads(
    store: &dyn Store,
    journal: &Journal,
    recorded: bool,
) -> Result<()> {
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

/// Fence a journal's previous owner out, before a process that took it
/// over decides anything: abort every staged upload of its tarball key,
/// the recorded one included unless `keep_recorded` (kept for a dead
/// owner's transaction rolled forward, whose parts it reuses). An abort
/// that succeeded means that upload can no longer be completed: the
/// tarball is then published only if a completion came first, which the
/// read after this shows. A single PUT could not be stopped so; this is
/// why every tarball is staged.
pub(super) async fn fence(store: &dyn Store, journal: &Journal, keep_recorded: bool) -> Result<()> {
    let key = &journal.tarball.key;
    let recorded = journal.tarball.upload_id.clone();
    let mut staged: Vec<String> = store
        .list_uploads(key)
        .await?
        .into_iter()
        .filter(|upload| upload.key == *key)
        .map(|upload| upload.upload_id)
        .collect();
    staged.extend(recorded.clone().filter(|id| !staged.contains(id)));
    staged.retain(|id| !(keep_recorded && recorded.as_ref() == Some(id)));
    futures::future::try_join_all(staged.iter().map(|id| store.abort_upload(key, id))).await?;
    if !staged.is_empty() {
        debug!(
            "{key}: aborted {} staged uploads before taking over",
            staged.len()
        );
    }
    Ok(())
}

/// What the store holds after a failed step, read within
/// [`FAILURE_READS_LIMIT`]; with the journal read, if another process
/// owns or retired it now.
pub(super) async fn failure_facts(
    store: &dyn Store,
    handle: &JournalHandle,
    journal: &Journal,
    kind: ErrorKind,
) -> (FailureFacts, Option<Option<Journal>>) {
    let reads = async { tokio::join!(handle.reread(), tarball_now(store, journal)) };
    let (journal_read, tarball) = match tokio::time::timeout(FAILURE_READS_LIMIT, reads).await {
        Ok((journal_read, tarball)) => (journal_read.ok(), tarball.ok()),
        Err(_) => {
            warn!(
                "{}: the store did not answer within {FAILURE_READS_LIMIT:?} after the failure",
                store.describe()
            );
            (None, None)
        }
    };
    let journal_now = journal_read.as_ref().map(|read| match read {
        None => JournalNow::Retired,
        Some(now) if now.owner.token == journal.owner.token => JournalNow::Ours,
        Some(_) => JournalNow::TakenOver,
    });
    let lost = journal_read.filter(|read| {
        read.as_ref()
            .is_none_or(|now| now.owner.token != journal.owner.token)
    });
    let facts = FailureFacts {
        kind,
        journal: journal_now,
        tarball,
    };
    (facts, lost)
}

/// Ownership lost: the journal `now` (gone, or another owner's).
pub(super) fn lost_error(key: &str, now: &Option<Journal>) -> Error {
    match now {
        None => Error::lost_ownership(format!(
            "the journal {key} was retired by another process while this one worked on it"
        )),
        Some(now) => Error::lost_ownership(format!(
            "the journal {key} was taken over by {} (pid {} on {}) while this process worked on it",
            now.owner.tool, now.owner.pid, now.owner.host
        )),
    }
}
