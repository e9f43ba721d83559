//! `alitx repair`: remove what `check` found to be leftovers, and nothing
//! else. A partial revision (one without a store tarball) loses exactly its
//! own keys, dist links first, package link last, each through the one
//! deletion rule (`deletion`): never once its tarball exists. A published
//! revision is final: repair only re-creates, with put-if-absent, the links
//! the store alone determines (its package link, its own link in each dist
//! directory). An abandoned journal is rolled back by the very code
//! `alitx rollback` runs; staged uploads older than the threshold that no
//! pending journal references are aborted. A revision whose every link is
//! in place without its tarball (`unpublished`) may have been published and
//! retired: repair keeps it. `--unpublish` is the one deliberate exception:
//! it removes one named revision, tarball included (`unpublish`).

mod lock;
mod unpublish;

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::check::{CheckReport, Reason, RevisionReport, State};
use crate::deletion::{delete_unpublished, published, revision_tarballs, Deleter, Deletion, Named};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::journal::{DeleterKind, Journal, UNKNOWN_HASH};
use crate::layout::{self, LinkKind, Revision, DIST_DIRS};
use crate::ownership::JournalHandle;
use crate::recovery::{self, Selection};
use crate::storage::{get_small, Created, Metadata, Small, Store};
use crate::txn::{self, Options};

pub use lock::finish_abandoned;
pub use unpublish::{unpublish, Unpublish};

/// What repair did (or, in a dry run, would do) to one revision.
#[derive(Debug, Serialize)]
pub struct Action {
    /// `<arch>/<tarball>`
    pub revision: String,
    pub state: State,
    pub action: ActionKind,
    pub message: String,
    /// Keys deleted (or that would be); for a failed repair, those deleted
    /// before it failed.
    pub keys: Vec<String>,
    /// Links re-created (or that would be).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
}

/// What repair did to one revision; the JSON names are a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Deleted,
    Restored,
    RolledBack,
    LeftAlone,
    Failed,
    Unpublished,
    WouldDelete,
    WouldRestore,
    WouldRollBack,
    WouldUnpublish,
}

impl std::fmt::Display for ActionKind {
    /// The JSON name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("an action serialises");
        f.write_str(name.as_str().unwrap_or_default())
    }
}

impl Action {
    fn new(revision: &RevisionReport, action: ActionKind, message: String) -> Self {
        Action {
            revision: revision.id(),
            state: revision.state,
            action,
            message,
            keys: Vec::new(),
            restored: Vec::new(),
        }
    }

    fn with_keys(mut self, keys: Vec<String>) -> Self {
        self.keys = keys;
        self
    }
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
    /// Every link re-created (`would_restore` in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_restore: Option<Vec<String>>,
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
    failpoint("repair-scanned");
    let chosen: Vec<&RevisionReport> = check
        .revisions
        .iter()
        .filter(|r| {
            matches!(
                r.state,
                State::Partial | State::Abandoned | State::PublishedIncomplete
            )
        })
        .collect();
    let mut actions: Vec<Action> = futures::stream::iter(chosen)
        .map(|revision| {
            let store = store.clone();
            async move {
                let result = match (revision.state, revision.repairable) {
                    (_, false) => Ok(left_alone(revision)),
                    (State::Abandoned, true) => roll_back(store, revision, options, dry_run).await,
                    (State::PublishedIncomplete, true) => {
                        restore_links(&*store, revision, dry_run).await
                    }
                    _ => Ok(delete_partial(store, revision, options, dry_run).await),
                };
                result.unwrap_or_else(|e| Action::new(revision, ActionKind::Failed, e.message))
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
    let restored: Vec<String> = actions.iter().flat_map(|a| a.restored.clone()).collect();
    let left_over = check.summary.invalid_journals > 0
        || actions
            .iter()
            .any(|a| matches!(a.action, ActionKind::LeftAlone | ActionKind::Failed));
    Ok(RepairReport {
        dry_run,
        store: check.store.clone(),
        actions,
        deleted: (!dry_run).then(|| keys.clone()),
        would_delete: dry_run.then_some(keys),
        restored: (!dry_run).then(|| restored.clone()),
        would_restore: dry_run.then_some(restored),
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
        revision
            .reasons
            .iter()
            .find(|r| matches!(r, Reason::LeftAlone(_)))
            .map(Reason::to_string)
            .unwrap_or_default()
    };
    Action::new(revision, ActionKind::LeftAlone, why)
}

fn joined(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(Reason::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Delete a partial revision's own keys, in the order `check` listed them
/// (dist links, package link), holding the revision's journal as its lock
/// (`lock`), each through the one deletion rule: a tarball that appeared
/// since the scan (an upload finishing) stops it, and every link deleted
/// is put back. A failure half-way says which keys were deleted before it.
async fn delete_partial(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    options: &Options,
    dry_run: bool,
) -> Action {
    if dry_run {
        return Action::new(revision, ActionKind::WouldDelete, joined(&revision.reasons))
            .with_keys(revision.keys.clone());
    }
    let mut deleted = Vec::new();
    match delete_keys(store, revision, options, &mut deleted).await {
        Ok(Deletes::Done) => Action::new(revision, ActionKind::Deleted, joined(&revision.reasons)),
        Ok(Deletes::Busy(e)) => Action::new(revision, ActionKind::LeftAlone, e.message),
        Ok(Deletes::Published { tarball, restored }) => {
            let mut action = Action::new(
                revision,
                ActionKind::LeftAlone,
                format!(
                    "{tarball} exists (an upload finished it since the scan, or its links name it): \
                     the revision is published, and published is final; {}run check again",
                    match (deleted.len(), restored.len()) {
                        (0, _) => String::new(),
                        (n, r) => format!(
                            "{} deleted before it appeared, {r} put back; ",
                            crate::counted(n, "link")
                        ),
                    }
                ),
            );
            action.restored = restored;
            action
        }
        Err(e) => Action::new(
            revision,
            ActionKind::Failed,
            match deleted.len() {
                0 => e.message,
                n => format!(
                    "{} (after deleting {})",
                    e.message,
                    crate::counted(n, "key")
                ),
            },
        ),
    }
    .with_keys(deleted)
}

/// How [`delete_keys`] ended.
enum Deletes {
    /// Every key went, or was gone.
    Done,
    /// Another process's journal covers the revision: nothing deleted.
    Busy(Error),
    /// A tarball of the revision exists: the deletes stopped, and what
    /// went was put back (`restored`).
    Published {
        tarball: String,
        restored: Vec<String>,
    },
}

/// [`delete_partial`]'s deletes, each key pushed to `deleted` once gone.
async fn delete_keys(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    options: &Options,
    deleted: &mut Vec<String>,
) -> Result<Deletes> {
    let expected = expected_tarball(revision);
    let tarballs = revision_tarballs(&*store, named(revision), expected.as_deref()).await?;
    let mut removes = Vec::new();
    for key in &revision.keys {
        if !owned(revision, key) {
            return Err(Error::store(format!(
                "refusing to delete {key}: not a key of {}",
                revision.id()
            )));
        }
        removes.extend(lock::current_link(&*store, key, link_kind(revision, key)).await?);
    }
    let journal = Journal::for_deleter(
        DeleterKind::Repair,
        &locked_revision(revision, &tarballs)?,
        removes,
        options.lease,
    );
    let handle = match lock::claim(store.clone(), &options.journal_prefix, journal).await? {
        lock::Claim::Held(handle) => handle,
        lock::Claim::Busy(other) => {
            return Ok(Deletes::Busy(lock::busy_error(
                &revision.id(),
                DeleterKind::Repair,
                other.as_deref(),
            )))
        }
    };
    failpoint("repair-claimed");
    let result = delete_claimed(&*store, revision, &handle, &tarballs, deleted).await;
    let retired = handle.retire().await;
    let ended = result?;
    retired?;
    Ok(ended)
}

/// The deletes themselves, under the claimed journal `handle`: ownership
/// proven right before each; at the end, a tarball of the revision found
/// published (now named by its links or expected) puts back what went.
async fn delete_claimed(
    store: &dyn Store,
    revision: &RevisionReport,
    handle: &Arc<JournalHandle>,
    tarballs: &[String],
    deleted: &mut Vec<String>,
) -> Result<Deletes> {
    let _renewals = handle.keep_alive();
    for key in &revision.keys {
        let deletion = match tarballs.is_empty() {
            false => {
                delete_unpublished(store, tarballs, key, Deleter::Repair, Some(handle)).await?
            }
            true => delete_naming_nothing(store, revision, key, handle).await?,
        };
        match deletion {
            Deletion::Deleted => deleted.push(key.clone()),
            Deletion::Published => break,
            Deletion::Missing | Deletion::NotOurs => {}
        }
    }
    let mut now = revision_tarballs(store, named(revision), None).await?;
    now.extend(tarballs.iter().cloned());
    let Some(tarball) = published(store, &now).await? else {
        return Ok(Deletes::Done);
    };
    let journal = handle.snapshot().await;
    let restored = lock::restore(store, &journal.removes).await?;
    Ok(Deletes::Published { tarball, restored })
}

/// The revision a deleter's journal names: the hash `check` found, else
/// the one its links name, else [`UNKNOWN_HASH`].
fn locked_revision(revision: &RevisionReport, tarballs: &[String]) -> Result<Revision> {
    let named_hash = tarballs
        .first()
        .and_then(|key| layout::parse_store_key(&revision.architecture, key).ok())
        .map(|(_, hash, _)| hash);
    let hash = revision
        .hash
        .as_deref()
        .or(named_hash)
        .unwrap_or(UNKNOWN_HASH);
    revision_with_hash(revision, Some(hash))
}

/// The revision, as the deletion guard takes it.
fn named(revision: &RevisionReport) -> Named<'_> {
    Named {
        architecture: &revision.architecture,
        package: &revision.package,
        tarball: &revision.tarball,
    }
}

/// Whether `key`, a key of `revision`, is its package link or a dist link.
fn link_kind(revision: &RevisionReport, key: &str) -> LinkKind {
    match key == revision.package_link_key() {
        true => LinkKind::Package,
        false => LinkKind::Dist,
    }
}

/// Delete `key` of a revision none of whose links names a store tarball of
/// it, if its body still names none right before the delete: nothing can
/// publish the revision through it.
async fn delete_naming_nothing(
    store: &dyn Store,
    revision: &RevisionReport,
    key: &str,
    owner: &JournalHandle,
) -> Result<Deletion> {
    let Some(body) = get_small(store, key, Small::Link).await? else {
        return Ok(Deletion::Missing);
    };
    let own = format!("/{}", revision.tarball);
    if layout::link_target(&revision.architecture, link_kind(revision, key), &body)
        .is_some_and(|t| t.ends_with(&own))
    {
        return Err(Error::conflict(format!(
            "{key} now names a store tarball of {}: run check again",
            revision.id()
        )));
    }
    owner.delete_as_owner(key).await?;
    Ok(Deletion::Deleted)
}

/// Re-create, with put-if-absent, what the store alone determines of a
/// published revision: its package link and its own link in each dist
/// directory.
async fn restore_links(
    store: &dyn Store,
    revision: &RevisionReport,
    dry_run: bool,
) -> Result<Action> {
    let published = published_revision(revision)?;
    let own = published.store_key();
    let mut links = vec![published.package_link()];
    for dir in DIST_DIRS {
        links.push(published.dist_link(dir, &own)?);
    }
    let mut restored = Vec::new();
    for link in links {
        let created = match dry_run {
            true => store.head(&link.key).await?.is_none(),
            false => store.put_link_if_absent(&link, &Metadata::new()).await? == Created::Yes,
        };
        if created {
            restored.push(link.key);
        }
    }
    let (kind, verb) = match dry_run {
        true => (ActionKind::WouldRestore, "would re-create"),
        false => (ActionKind::Restored, "re-created"),
    };
    let mut action = Action::new(
        revision,
        kind,
        format!(
            "published, so final: {}; {verb} the links the store determines",
            joined(&revision.reasons)
        ),
    );
    action.restored = restored;
    Ok(action)
}

/// The revision a published report describes.
fn published_revision(revision: &RevisionReport) -> Result<Revision> {
    revision_with_hash(revision, revision.hash.as_deref())
}

/// The revision `revision` reports, under `hash`.
fn revision_with_hash(revision: &RevisionReport, hash: Option<&str>) -> Result<Revision> {
    match (&revision.version, &revision.revision, hash) {
        (Some(version), Some(number), Some(hash)) => Revision::new(
            &revision.architecture,
            &revision.package,
            version,
            number,
            hash,
        ),
        _ => Err(Error::input(format!(
            "{}: its version, revision or hash is not known",
            revision.id()
        ))),
    }
}

/// The store tarball a partial revision lacks, if `check` knew its hash.
fn expected_tarball(revision: &RevisionReport) -> Option<String> {
    let hash = revision.hash.as_deref()?;
    Some(layout::store_key(
        &revision.architecture,
        hash,
        &revision.tarball,
    ))
}

/// A last guard: `key` is the revision's store tarball, package link, or a
/// link directly inside one of its dist directories.
fn owned(revision: &RevisionReport, key: &str) -> bool {
    let arch = &revision.architecture;
    let Some(full) = layout::tarball_full_version(arch, &revision.tarball) else {
        return false;
    };
    let tarball =
        layout::parse_store_key(arch, key).is_ok_and(|(_, _, name)| name == revision.tarball);
    let package_link = key == revision.package_link_key();
    let dist_link = layout::DIST_DIRS.iter().any(|dir| {
        key.strip_prefix(&format!("TARS/{arch}/{dir}/{}/{full}/", revision.package))
            .is_some_and(|name| layout::tarball_full_version(arch, name).is_some())
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
        return Ok(Action::new(
            revision,
            ActionKind::WouldRollBack,
            format!("as `alitx rollback {id}`"),
        )
        .with_keys(keys));
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
    Ok(Action::new(revision, ActionKind::RolledBack, outcome.message).with_keys(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON names of repair's actions are a contract.
    #[test]
    fn action_names_are_pinned() {
        let names: Vec<String> = [
            ActionKind::Deleted,
            ActionKind::Restored,
            ActionKind::RolledBack,
            ActionKind::LeftAlone,
            ActionKind::Failed,
            ActionKind::Unpublished,
            ActionKind::WouldDelete,
            ActionKind::WouldRestore,
            ActionKind::WouldRollBack,
            ActionKind::WouldUnpublish,
        ]
        .iter()
        .map(|kind| {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json.as_str(), Some(&*kind.to_string()));
            kind.to_string()
        })
        .collect();
        assert_eq!(
            names,
            [
                "deleted",
                "restored",
                "rolled-back",
                "left-alone",
                "failed",
                "unpublished",
                "would-delete",
                "would-restore",
                "would-roll-back",
                "would-unpublish"
            ]
        );
    }
}
