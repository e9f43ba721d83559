//! Recovery: listing journals, and resuming or rolling back the
//! transactions of uploads that died.

use std::path::Path;
use std::sync::Arc;

use futures::{stream, FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::error::{Error, ErrorKind, Result};
use crate::journal::{self, Journal, Owner, State};
use crate::ownership::{self, JournalHandle, Takeover};
use crate::storage::Store;
use crate::txn::{self, Ended, Intent, Options, Report};
use crate::workdir;

/// One journal as `alitx journals` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub id: String,
    pub key: String,
    /// `pending`, `committed`, or `invalid` for a journal alitx cannot trust.
    pub state: String,
    pub architecture: Option<String>,
    pub package: Option<String>,
    pub version: Option<String>,
    pub revision: Option<String>,
    pub hash: Option<String>,
    pub txn: Option<String>,
    pub owner: Option<Owner>,
    pub age_seconds: Option<i64>,
    /// `live`, `expired`, or `owner-dead` (same host, pid gone).
    pub lease: Option<String>,
    pub lease_remaining_seconds: Option<i64>,
    pub error: Option<String>,
    #[serde(skip)]
    pub journal: Option<Journal>,
}

impl JournalEntry {
    fn from_journal(key: String, journal: Journal) -> Self {
        let now = crate::now_secs();
        let lease = journal.liveness().name();
        let state = match journal.state {
            State::Pending => "pending",
            State::Committed => "committed",
        };
        let r = &journal.revision;
        JournalEntry {
            id: journal.id(),
            key,
            state: state.into(),
            architecture: Some(r.architecture.clone()),
            package: Some(r.package.clone()),
            version: Some(r.version.clone()),
            revision: Some(r.revision.clone()),
            hash: Some(r.hash.clone()),
            txn: Some(journal.txn.clone()),
            owner: Some(journal.owner.clone()),
            age_seconds: Some(now - journal.owner.started_at),
            lease: Some(lease.into()),
            lease_remaining_seconds: Some(journal.lease_expires_at - now),
            error: None,
            journal: Some(journal),
        }
    }

    fn invalid(prefix: &str, key: String, error: Error) -> Self {
        JournalEntry {
            id: key[prefix.len()..].trim_end_matches(".json").to_string(),
            key,
            state: "invalid".into(),
            architecture: None,
            package: None,
            version: None,
            revision: None,
            hash: None,
            txn: None,
            owner: None,
            age_seconds: None,
            lease: None,
            lease_remaining_seconds: None,
            error: Some(error.message),
            journal: None,
        }
    }
}

/// Journals read, or handled, at once: each read is a HEAD and a GET
/// (~48 ms on Ceph RGW, whose answers with a body wait for Nagle), each
/// takeover waits its settle time (together: it comes before the wait for
/// a turn to send).
pub const JOURNALS_AT_ONCE: usize = 32;

/// Journals rolled forward at once: each sends its tarball with
/// `--concurrency` parts in flight (64 MiB of buffers by default).
const SENDING_AT_ONCE: usize = 4;

/// Every journal under the prefix, valid or not, in the listing's order.
pub async fn list_journals(store: &dyn Store, prefix: &str) -> Result<Vec<JournalEntry>> {
    let keys = store.list(prefix).await?;
    let loaded: Vec<Option<JournalEntry>> =
        stream::iter(keys.iter().filter(|k| k.ends_with(".json")))
            .map(|key| load(store, prefix, key))
            .buffered(JOURNALS_AT_ONCE)
            .try_collect()
            .await?;
    // A journal retired since the listing belongs to a finished upload.
    Ok(loaded.into_iter().flatten().collect())
}

/// The journal at `key`, or `None` if there is none.
async fn load(store: &dyn Store, prefix: &str, key: &str) -> Result<Option<JournalEntry>> {
    Ok(match ownership::read_journal(store, prefix, key).await {
        Ok(Some(journal)) => Some(JournalEntry::from_journal(key.to_string(), journal)),
        Ok(None) => None,
        Err(e) if e.kind == ErrorKind::Journal => {
            Some(JournalEntry::invalid(prefix, key.to_string(), e))
        }
        Err(e) => return Err(e),
    })
}

/// The journal a user named, which must exist.
async fn load_named(store: &dyn Store, prefix: &str, key: &str) -> Result<JournalEntry> {
    load(store, prefix, key).await?.ok_or_else(|| {
        Error::input(format!(
            "no journal {} in {}; `alitx journals` lists them",
            key[prefix.len()..].trim_end_matches(".json"),
            store.describe()
        ))
    })
}

/// What `resume` or `rollback` did with one journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    RolledForward,
    RolledBack,
    /// A committed journal: its revision is published; only retired.
    Retired,
    /// Left to its live owner, or finished by another process meanwhile.
    Skipped,
    Failed,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::RolledForward => "rolled-forward",
            Action::RolledBack => "rolled-back",
            Action::Retired => "retired",
            Action::Skipped => "skipped",
            Action::Failed => "failed",
        })
    }
}

/// What happened to one journal in `resume` or `rollback`.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub id: String,
    pub action: Action,
    pub message: String,
    pub report: Option<Report>,
    #[serde(skip)]
    pub error: Option<Error>,
}

impl Outcome {
    fn skipped(id: &str, message: String) -> Self {
        Outcome {
            id: id.into(),
            action: Action::Skipped,
            message,
            report: None,
            error: None,
        }
    }

    fn failed(id: String, error: Error) -> Self {
        Outcome {
            id,
            action: Action::Failed,
            message: error.message.clone(),
            report: None,
            error: Some(error),
        }
    }
}

/// Which journals a `resume` or `rollback` acts on.
pub struct Selection<'a> {
    pub ids: &'a [String],
    pub architecture: Option<&'a str>,
    pub force: bool,
}

async fn select(
    store: &dyn Store,
    prefix: &str,
    selection: &Selection<'_>,
) -> Result<Vec<std::result::Result<JournalEntry, Outcome>>> {
    if selection.ids.is_empty() {
        let all = list_journals(store, prefix).await?;
        return Ok(all
            .into_iter()
            .filter(|e| {
                selection.architecture.is_none()
                    || e.architecture.as_deref() == selection.architecture
            })
            .map(Ok)
            .collect());
    }
    // A journal named twice is handled once.
    let mut seen = std::collections::HashSet::new();
    let named = selection
        .ids
        .iter()
        .filter(|id| journal::key_from_arg(prefix, id).map_or(true, |key| seen.insert(key)));
    Ok(stream::iter(named)
        .map(|id| async move {
            match journal::key_from_arg(prefix, id) {
                Ok(key) => load_named(store, prefix, &key)
                    .await
                    .map_err(|e| Outcome::failed(id.clone(), e)),
                Err(e) => Err(Outcome::failed(id.clone(), e)),
            }
        })
        .buffered(JOURNALS_AT_ONCE)
        .collect()
        .await)
}

/// The live-lease guard shared by `resume` and `rollback`, on the listed
/// copy: a journal whose owner may still be running is refused unless
/// forced. With no explicit ids, `resume` skips such journals quietly
/// (they belong to running jobs). The takeover decides again on a fresh copy.
fn guard(entry: &JournalEntry, journal: &Journal, selection: &Selection<'_>) -> Option<Outcome> {
    if journal.state != State::Pending || journal.owner_gone() || selection.force {
        return None;
    }
    Some(busy(&entry.id, journal, selection))
}

/// The outcome for a journal a live process owns: an upload, or another
/// resume or rollback.
fn busy(id: &str, journal: &Journal, selection: &Selection<'_>) -> Outcome {
    let message = format!(
        "{id} is owned by a running {} process (pid {} on {}, lease valid {}s more); pass --force only if you know it is dead",
        journal.owner.tool,
        journal.owner.pid,
        journal.owner.host,
        journal.lease_expires_at - crate::now_secs()
    );
    if selection.ids.is_empty() {
        Outcome::skipped(id, message)
    } else {
        Outcome::failed(id.into(), Error::new(ErrorKind::LiveLease, message))
    }
}

/// The loop `resume` and `rollback` share: select the journals, refuse the
/// ones that cannot be trusted or whose owner still runs, finish committed
/// ones, take the others over and continue them as `intent` says. Up to
/// [`JOURNALS_AT_ONCE`] journals at a time, each taken over on its own
/// (read, settle, re-read); only [`SENDING_AT_ONCE`] of those whose files
/// are in the work dir continue at once, since rolling forward sends a
/// tarball with all of `--concurrency`.
/// `on_outcome` hears of each journal as it ends; the outcomes are returned
/// in the selection's order.
async fn each_journal(
    store: Arc<dyn Store>,
    options: &Options,
    selection: &Selection<'_>,
    intent: Intent,
    work_dir: Option<&Path>,
    on_outcome: &(dyn Fn(&Outcome) + Sync),
) -> Result<Vec<Outcome>> {
    store.preflight().await?;
    let sending = Semaphore::new(SENDING_AT_ONCE);
    let handle_one = |entry: std::result::Result<JournalEntry, Outcome>| {
        let (store, sending) = (store.clone(), &sending);
        async move {
            let outcome = match entry {
                Err(refused) => refused,
                Ok(entry) => match entry.journal.clone() {
                    None => Outcome::failed(
                        entry.id.clone(),
                        Error::journal(entry.error.clone().unwrap_or_default()).context_after(
                            "it was left alone; inspect it, and delete it by hand if it is not alitx's",
                        ),
                    ),
                    Some(journal) => match guard(&entry, &journal, selection) {
                        Some(refused) => refused,
                        None => {
                            let sends = work_dir.is_some_and(|dir| {
                                workdir::read_revision(dir, journal.revision.clone()).is_ok()
                            });
                            continue_journal(
                                store,
                                &entry,
                                journal,
                                options,
                                selection,
                                intent,
                                work_dir,
                                sends.then_some(sending),
                            )
                            .await
                        }
                    },
                },
            };
            on_outcome(&outcome);
            outcome
        }
    };
    let selected = select(&*store, &options.journal_prefix, selection).await?;
    let mut outcomes: Vec<(usize, Outcome)> = stream::iter(selected.into_iter().enumerate())
        .map(|(i, entry)| handle_one(entry).map(move |outcome| (i, outcome)))
        .buffer_unordered(JOURNALS_AT_ONCE)
        .collect()
        .await;
    outcomes.sort_by_key(|(i, _)| *i);
    Ok(outcomes.into_iter().map(|(_, outcome)| outcome).collect())
}

/// Take one journal over and continue its transaction, once `sending`
/// (if given) has a turn for it.
#[allow(clippy::too_many_arguments)]
async fn continue_journal(
    store: Arc<dyn Store>,
    entry: &JournalEntry,
    journal: Journal,
    options: &Options,
    selection: &Selection<'_>,
    intent: Intent,
    work_dir: Option<&Path>,
    sending: Option<&Semaphore>,
) -> Outcome {
    let id = entry.id.clone();
    if journal.state == State::Committed {
        return match txn::retire_committed(&*store, &journal, &options.journal_prefix).await {
            Ok(()) => Outcome {
                id,
                action: Action::Retired,
                message: "already committed: the revision is published and stays; journal retired"
                    .into(),
                report: None,
                error: None,
            },
            Err(e) => Outcome::failed(id, e),
        };
    }
    let takeover = JournalHandle::take_over(
        store.clone(),
        &options.journal_prefix,
        &entry.key,
        options.lease,
        selection.force,
    )
    .await;
    let handle = match takeover {
        Err(e) => return Outcome::failed(id, e),
        Ok(Takeover::Retired) => {
            return Outcome::skipped(
                &id,
                "retired meanwhile: its upload, or another resume, finished it".into(),
            )
        }
        Ok(Takeover::Busy(owner)) => return busy(&id, &owner, selection),
        Ok(Takeover::Owned(handle)) => handle,
    };
    // Taken over (settle included) before waiting for a turn, with the lease
    // renewed while it waits.
    let _turn = match sending {
        Some(sending) => {
            let _renewals = handle.keep_alive();
            Some(sending.acquire().await.expect("never closed"))
        }
        None => None,
    };
    let local = work_dir.and_then(|dir| workdir::read_revision(dir, journal.revision.clone()).ok());
    match txn::continue_owned(store, &handle, local.as_ref(), intent, options).await {
        Ok(Ended::Done(report)) => Outcome {
            id,
            action: match report.status {
                txn::Status::RolledBack => Action::RolledBack,
                _ => Action::RolledForward,
            },
            message: summary(&report),
            report: Some(report),
            error: None,
        },
        // Undone: the designed outcome when another writer holds one of
        // its links, or its tarball failed verification.
        Ok(Ended::Undone { report, cause }) => Outcome {
            id,
            action: Action::RolledBack,
            message: format!("{cause}; {}", summary(&report)),
            report: Some(report),
            error: None,
        },
        Err(e) => Outcome::failed(id, e),
    }
}

/// `alitx resume`: roll each abandoned journal forward when the work dir
/// still holds its exact files, back otherwise; a published one is
/// finished, never undone. `on_outcome` hears of each as it ends.
pub async fn resume(
    store: Arc<dyn Store>,
    options: &Options,
    work_dir: Option<&Path>,
    selection: &Selection<'_>,
    on_outcome: &(dyn Fn(&Outcome) + Sync),
) -> Result<Vec<Outcome>> {
    each_journal(
        store,
        options,
        selection,
        Intent::Forward,
        work_dir,
        on_outcome,
    )
    .await
}

/// `alitx rollback`: undo the given journals; a published one is finished
/// instead (published is final).
pub async fn rollback(
    store: Arc<dyn Store>,
    options: &Options,
    selection: &Selection<'_>,
) -> Result<Vec<Outcome>> {
    each_journal(store, options, selection, Intent::Back, None, &|_| {}).await
}

/// One line saying what a transaction did.
pub fn summary(report: &Report) -> String {
    match report.status {
        // Nothing sent: the tarball was published before this run.
        txn::Status::Committed if report.parts_total == 0 => format!(
            "{} is published and stays (readers may already use it): {} restored, journal retired, in {:.1}s",
            report.revision.full_version(),
            crate::counted(report.keys_written.len(), "missing link"),
            report.duration_seconds
        ),
        txn::Status::Committed if report.adopted => format!(
            "published {}: completed the revision an earlier upload of this build left unpublished \
             ({} written, {} of {} bytes sent) in {:.1}s",
            report.revision.full_version(),
            crate::counted(report.keys_written.len(), "key"),
            report.bytes_sent,
            report.tarball_bytes,
            report.duration_seconds
        ),
        txn::Status::Committed => format!(
            "published {} ({} written, {} of {} bytes sent, {} of {} reused) in {:.1}s",
            report.revision.full_version(),
            crate::counted(report.keys_written.len(), "key"),
            report.bytes_sent,
            report.tarball_bytes,
            report.parts_reused,
            crate::counted(report.parts_total as usize, "part"),
            report.duration_seconds
        ),
        txn::Status::AlreadyPublished => format!(
            "{} is already published in {} (by this transaction's other owner, or an earlier run); nothing more written",
            report.revision.full_version(),
            report.store
        ),
        txn::Status::RolledBack => format!(
            "rolled back {}: deleted {}, aborted the staged upload, retired the journal",
            report.revision.full_version(),
            crate::counted(report.keys_deleted.len(), "key")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Action;

    /// Scripts read `action` from `--json` and from the text lines: both
    /// spell it the same, and the names never change.
    #[test]
    fn action_names_are_a_contract() {
        let names = [
            (Action::RolledForward, "rolled-forward"),
            (Action::RolledBack, "rolled-back"),
            (Action::Retired, "retired"),
            (Action::Skipped, "skipped"),
            (Action::Failed, "failed"),
        ];
        for (action, name) in names {
            assert_eq!(serde_json::to_value(action).unwrap(), name);
            assert_eq!(action.to_string(), name);
        }
    }
}
