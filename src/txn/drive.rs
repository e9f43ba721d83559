//! A transaction this process owns, driven to its end: what a continuing
//! process decides first, the plan executed, and on failure what it
//! leaves behind.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::journal::Journal;
use crate::layout::Link;
use crate::liveness::Liveness;
use crate::ownership::JournalHandle;
use crate::storage::Store;
use crate::workdir::LocalRevision;

use super::plan::{self, Aftermath, LocalFiles, Plan, Tarball};
use super::send::Staging;
use super::{commit, publish, undo, Ended, Intent, Options, Report, Status};

/// Continue a transaction whose journal this process now owns (after
/// [`JournalHandle::take_over`]): finish it if its tarball is published,
/// else roll it forward (with `local` files that match it) or back.
pub async fn continue_owned(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    intent: Intent,
    options: &Options,
) -> Result<Ended> {
    let started = Instant::now();
    let journal = handle.snapshot().await;
    if journal.deleter.is_some() {
        // A deleter's lock, abandoned: its links go back if the revision
        // is published, and the journal is retired.
        let mut report = Report::new(Status::RolledBack, journal.id(), &journal.revision, &*store);
        report.keys_written = crate::repair::finish_abandoned(&*store, handle).await?;
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(Ended::Done(report));
    }
    let options = Options {
        part_size: journal.tarball.part_size as usize,
        ..options.clone()
    };
    // Fence the previous owner out before anything is decided: its staged
    // uploads are aborted, so the tarball read next stays as it is unless
    // this process publishes it. A dead owner's can be resumed (its
    // completion in flight would publish this very transaction).
    let resumes_staged = handle.previous_owner() == Some(Liveness::OwnerDead)
        && intent == Intent::Forward
        && local.is_some_and(|local| mismatch(&journal, local).is_none());
    undo::fence(&*store, &journal, resumes_staged).await?;
    let tarball = undo::tarball_now(&*store, &journal).await?;
    let staging = Staging::Recorded;
    let mut ended = drive(store, handle, local, staging, tarball, intent, &options).await?;
    let (Ended::Done(report) | Ended::Undone { report, .. }) = &mut ended;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(ended)
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

/// Drive an owned transaction to its end, with the lease renewed meanwhile:
/// execute [`plan::plan`], and on failure what [`plan::aftermath`] says.
pub(super) async fn drive(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    staging: Staging,
    tarball: Tarball,
    intent: Intent,
    options: &Options,
) -> Result<Ended> {
    let _renewals = handle.keep_alive();
    let journal = handle.snapshot().await;
    let local_files = match local.map(|local| (local, mismatch(&journal, local))) {
        Some((_, None)) => LocalFiles::Match,
        Some((_, Some(why))) => LocalFiles::Mismatch(why),
        None => LocalFiles::None,
    };
    let result = match plan::plan(tarball, intent, local_files) {
        Plan::FinishPublished => commit::finish_published(&*store, handle, options).await,
        Plan::LeaveToForeign => return Err(undo::leave_to_foreign(&*store, handle, &journal).await),
        Plan::RollForward => {
            let local = local.expect("a matching work dir");
            publish::roll_forward(store.clone(), handle, local, staging, options).await
        }
        Plan::RollBack(why) => {
            match why {
                plan::RollBackWhy::Asked => {}
                plan::RollBackWhy::LocalMismatch(why) => {
                    warn!("rolling back {}: {why}", journal.id())
                }
                plan::RollBackWhy::NoWorkDir => info!(
                    "rolling back {}: no work dir with its files was given",
                    journal.id()
                ),
            }
            undo::roll_back(&*store, handle).await
        }
    };
    let err = match result {
        Ok(report) => return Ok(Ended::Done(report)),
        Err(err) => err,
    };
    let (facts, now) = undo::failure_facts(&*store, handle, &journal, err.kind).await;
    // Failing because another process took over or retired the journal
    // (its completion removed our staged upload, say) is losing it,
    // whatever the request said.
    let err = match (&now, err.kind) {
        (_, ErrorKind::LostOwnership) | (None, _) => err,
        (Some(now), _) => {
            debug!("{err}");
            undo::lost_error(handle.key(), now)
        }
    };
    match plan::aftermath(facts) {
        Aftermath::AlreadyPublished => {
            info!("{err}");
            let mut report = Report::new(
                Status::AlreadyPublished,
                journal.id(),
                &journal.revision,
                &*store,
            );
            report.txn = Some(journal.txn.clone());
            report.tarball_bytes = journal.tarball.size;
            report.tarball_sha256 = journal.tarball.sha256.clone();
            Ok(Ended::Done(report))
        }
        Aftermath::KeepForResume => Err(kept_for_resume(err, &journal)),
        Aftermath::LeaveToForeign => Err(undo::leave_to_foreign(&*store, handle, &journal).await),
        // Rolled back by another process while this one still wrote: what
        // it wrote since is swept, under the one deletion rule.
        Aftermath::SweepLateLinks => Err(match undo::sweep_late_links(&*store, &journal).await {
            Ok(0) => err,
            Ok(n) => err.context_after(format!(
                "its transaction was rolled back; the {} this process wrote after that were deleted",
                crate::counted(n, "link")
            )),
            Err(e) => err.context_after(format!("removing the links it wrote late failed ({e})")),
        }),
        Aftermath::Undo => {
            warn!("undoing {}: {err}", journal.id());
            match undo::roll_back(&*store, handle).await {
                Ok(report) => Ok(Ended::Undone { report, cause: err }),
                Err(undo) if undo.kind == ErrorKind::ForeignPublished => Err(undo),
                Err(undo) => Err(Error::store(format!(
                    "{err}; undoing it failed too ({undo}); run `alitx rollback {}`",
                    journal.id()
                ))),
            }
        }
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
