//! `alitx repair`: remove what `check` found to be leftovers, and nothing
//! else. A partial revision loses exactly its own keys, tarball first, dist
//! links next, package link last, so that readers never see a tarball
//! without its links; an abandoned journal is rolled back by the very code
//! `alitx rollback` runs; staged uploads older than the threshold that no
//! pending journal references are aborted.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::check::{CheckReport, RevisionReport, State};
use crate::error::{Error, Result};
use crate::recovery::{self, Selection};
use crate::storage::Store;
use crate::txn::{self, Options};

/// What repair did (or, in a dry run, would do) to one revision.
#[derive(Debug, Serialize)]
pub struct Action {
    /// `<arch>/<tarball>`
    pub revision: String,
    pub state: State,
    /// `deleted`, `rolled-back`, `left-alone`, `failed`, or with --dry-run
    /// `would-delete`, `would-roll-back`.
    pub action: String,
    pub message: String,
    pub keys: Vec<String>,
}

/// A stale staged upload repair aborted (or would abort).
#[derive(Debug, Clone, Serialize)]
pub struct AbortedUpload {
    pub key: String,
    pub upload_id: String,
}

#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    pub store: String,
    pub actions: Vec<Action>,
    /// Every key deleted, in order (`would_delete` in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_delete: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted_uploads: Option<Vec<AbortedUpload>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_abort_uploads: Option<Vec<AbortedUpload>>,
    /// Whether something found is still there for a later run or a person:
    /// a recent partial revision, a needed tarball, an invalid journal, a
    /// failure.
    pub left_over: bool,
    pub check: CheckReport,
}

/// Repair what `check` found. With `dry_run`, only say what would go.
pub async fn repair(
    store: Arc<dyn Store>,
    check: CheckReport,
    options: &Options,
    dry_run: bool,
    concurrency: usize,
) -> Result<RepairReport> {
    if !dry_run {
        store.preflight().await?;
    }
    let chosen: Vec<&RevisionReport> = check
        .revisions
        .iter()
        .filter(|r| matches!(r.state, State::Partial | State::Abandoned))
        .collect();
    let mut actions: Vec<Action> = futures::stream::iter(chosen)
        .map(|revision| {
            let store = store.clone();
            async move {
                let result = match (revision.state, revision.repairable) {
                    (_, false) => Ok(left_alone(revision)),
                    (State::Abandoned, true) => roll_back(store, revision, options, dry_run).await,
                    _ => delete_partial(&*store, revision, dry_run).await,
                };
                result.unwrap_or_else(|e| Action {
                    revision: revision.id(),
                    state: revision.state,
                    action: "failed".into(),
                    message: e.message,
                    keys: Vec::new(),
                })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    actions.sort_by(|a, b| a.revision.cmp(&b.revision));

    let mut aborted = Vec::new();
    for upload in check.stale_uploads.iter().filter(|u| u.journal.is_none()) {
        if !dry_run {
            store.abort_upload(&upload.key, &upload.upload_id).await?;
        }
        aborted.push(AbortedUpload {
            key: upload.key.clone(),
            upload_id: upload.upload_id.clone(),
        });
    }
    let keys: Vec<String> = actions.iter().flat_map(|a| a.keys.clone()).collect();
    let left_over = check.summary.invalid_journals > 0
        || actions
            .iter()
            .any(|a| a.action == "left-alone" || a.action == "failed");
    Ok(RepairReport {
        dry_run,
        store: check.store.clone(),
        actions,
        deleted: (!dry_run).then(|| keys.clone()),
        would_delete: dry_run.then_some(keys),
        aborted_uploads: (!dry_run).then(|| aborted.clone()),
        would_abort_uploads: dry_run.then_some(aborted),
        left_over,
        check,
    })
}

fn left_alone(revision: &RevisionReport) -> Action {
    let why = if revision.recent {
        format!(
            "touched {}s ago, less than --min-age: it may be a stock upload still running; \
             run repair later, or pass --min-age 0 if no upload of it is running",
            revision.age_seconds.unwrap_or(0)
        )
    } else {
        revision.reasons.last().cloned().unwrap_or_default()
    };
    Action {
        revision: revision.id(),
        state: revision.state,
        action: "left-alone".into(),
        message: why,
        keys: Vec::new(),
    }
}

/// Delete a partial revision's own keys, in the order `check` listed them
/// (tarball, dist links, package link), unless it became complete since the
/// scan (a stock upload finishing).
async fn delete_partial(
    store: &dyn Store,
    revision: &RevisionReport,
    dry_run: bool,
) -> Result<Action> {
    let action = |action: &str, message: String, keys: Vec<String>| Action {
        revision: revision.id(),
        state: revision.state,
        action: action.into(),
        message,
        keys,
    };
    if dry_run {
        return Ok(action(
            "would-delete",
            revision.reasons.join("; "),
            revision.keys.clone(),
        ));
    }
    if let Some(tarball) = expected_tarball(revision) {
        if store.head(&tarball).await?.is_some() {
            return Ok(action(
                "left-alone",
                format!(
                    "{tarball} appeared since the scan: an upload finished it; run check again"
                ),
                Vec::new(),
            ));
        }
    }
    let mut deleted = Vec::new();
    for key in &revision.keys {
        if !owned(revision, key) {
            return Err(Error::store(format!(
                "refusing to delete {key}: not a key of {}",
                revision.id()
            )));
        }
        store.delete(key).await?;
        deleted.push(key.clone());
    }
    Ok(action("deleted", revision.reasons.join("; "), deleted))
}

/// The store tarball a partial revision lacks, if `check` knew its hash.
fn expected_tarball(revision: &RevisionReport) -> Option<String> {
    let hash = revision.hash.as_deref()?;
    let key = crate::layout::store_key(&revision.architecture, hash, &revision.tarball);
    (!revision.keys.contains(&key)).then_some(key)
}

/// A last guard: `key` is the revision's store tarball, package link, or a
/// link directly inside one of its dist directories.
fn owned(revision: &RevisionReport, key: &str) -> bool {
    let arch = &revision.architecture;
    let Some(full) = crate::layout::tarball_full_version(arch, &revision.tarball) else {
        return false;
    };
    let tarball = crate::layout::parse_store_key(arch, key)
        .is_ok_and(|(_, _, name)| name == revision.tarball);
    let package_link = key == format!("TARS/{arch}/{}/{}", revision.package, revision.tarball);
    let dist_link = crate::layout::DIST_DIRS.iter().any(|dir| {
        key.strip_prefix(&format!("TARS/{arch}/{dir}/{}/{full}/", revision.package))
            .is_some_and(|name| crate::layout::tarball_full_version(arch, name).is_some())
    });
    tarball || package_link || dist_link
}

/// Roll an abandoned journal back, exactly as `alitx rollback` does.
async fn roll_back(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    options: &Options,
    dry_run: bool,
) -> Result<Action> {
    let id = revision
        .journal
        .clone()
        .expect("abandoned revisions have a journal");
    if dry_run {
        let key = crate::journal::key_from_arg(&options.journal_prefix, &id)?;
        let journal = crate::ownership::read_journal(&*store, &options.journal_prefix, &key)
            .await?
            .ok_or_else(|| Error::input(format!("journal {id} disappeared since the scan")))?;
        let mut keys = txn::rollback_keys(&*store, &journal).await?;
        keys.push(key);
        return Ok(Action {
            revision: revision.id(),
            state: revision.state,
            action: "would-roll-back".into(),
            message: format!("as `alitx rollback {id}`"),
            keys,
        });
    }
    let ids = [id.clone()];
    let selection = Selection {
        ids: &ids,
        architecture: None,
        force: false,
    };
    let outcome = recovery::rollback(store, options, &selection)
        .await?
        .pop()
        .expect("one journal named, one outcome");
    if let Some(error) = outcome.error {
        return Err(error);
    }
    let mut keys = outcome.report.map(|r| r.keys_deleted).unwrap_or_default();
    keys.push(crate::journal::key_from_arg(&options.journal_prefix, &id)?);
    Ok(Action {
        revision: revision.id(),
        state: revision.state,
        action: "rolled-back".into(),
        message: outcome.message,
        keys,
    })
}
