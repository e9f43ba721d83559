//! Committing a published transaction: the journal marked committed, the
//! publication record left, the journal retired; and finishing one found
//! published (its missing links put back first).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::journal::{Journal, SHA256_METADATA};
use crate::ownership::JournalHandle;
use crate::record::Evidence;
use crate::storage::{Created, Store};

use super::undo::abort_staged_uploads;
use super::{Bookkeeping, Options, Report, Status};

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
pub(super) async fn commit_as_asked(
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
