//! `alitx repair`: remove what `check` found to be leftovers, and nothing
//! else. What it does is decided first, as a plan of one step per revision
//! (`plan`), from the scan alone; repair carries the plan out, and
//! `--dry-run` reports it. A partial revision (one without a store tarball) loses exactly its
//! own keys, dist links first, package link last, each through the one
//! deletion rule (`deletion`): never once its tarball exists. A published
//! revision is final: repair only re-creates, with put-if-absent, the links
//! the store alone determines that the scan found missing (its package
//! link, its own link in a dist directory). An abandoned journal is rolled back by the very code
//! `alitx rollback` runs; staged uploads older than the threshold that no
//! pending journal references are aborted. A revision whose every link is
//! in place without its tarball (`unpublished`) may have been published and
//! retired: repair keeps it. `--unpublish` is the one deliberate exception:
//! it removes one named revision, tarball included (`unpublish`).

mod lock;
mod plan;
mod report;
mod unpublish;

use std::sync::Arc;

use futures::StreamExt;

use crate::check::{CheckReport, Reason, RevisionReport};
use crate::deletion::{delete_unpublished, published, revision_tarballs, Deleter, Deletion};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::journal::{DeleterKind, Journal, UNKNOWN_HASH};
use crate::layout::{self, Link, LinkKind, Revision};
use crate::ownership::JournalHandle;
use crate::recovery::{self, Selection};
use crate::removed;
use crate::storage::{get_small, Small, Store};
use crate::txn::{self, Options};

pub use lock::finish_abandoned;
pub use plan::{plan, Planned, RepairPlan, Step, Why};
pub use report::{Action, ActionKind, RepairReport, Upload};
pub use unpublish::{unpublish, Unpublish};

/// Repair what `check` found: carry out its plan ([`plan()`]), or with
/// `dry_run` report the plan and change nothing.
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
    let RepairPlan { steps, abort } = plan(&check);
    let mut actions: Vec<Action> = futures::stream::iter(&steps)
        .map(|planned| {
            let store = store.clone();
            async move {
                let result = match dry_run {
                    true => preview(&*store, planned, options).await,
                    false => carry_out(store, planned, options).await,
                };
                result.unwrap_or_else(|e| {
                    Action::new(planned.revision, ActionKind::Failed, e.message)
                })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let returned = put_back_removed(&*store, &check, &steps, dry_run).await?;
    actions.retain(|a| {
        a.action != ActionKind::LeftAlone || returned.iter().all(|r| r.revision != a.revision)
    });
    actions.extend(returned);
    actions.sort_by(|a, b| a.revision.cmp(&b.revision));
    if !dry_run {
        for upload in &abort {
            store.abort_upload(&upload.key, &upload.upload_id).await?;
        }
    }
    let left_over = check.summary.invalid_journals > 0
        || actions
            .iter()
            .any(|a| matches!(a.action, ActionKind::LeftAlone | ActionKind::Failed));
    Ok(RepairReport {
        dry_run,
        unpublish: false,
        store: check.store.clone(),
        actions,
        aborted_uploads: abort,
        left_over,
        check,
    })
}

/// Put back, on revisions the plan has no step for or leaves alone, the
/// links a deleter removed before a stock upload published them after all
/// (their removal records): the dependency links among them, which the
/// store alone does not tell, and every link of a tarball left with none
/// (whose package its name alone does not tell).
async fn put_back_removed(
    store: &dyn Store,
    check: &CheckReport,
    steps: &[Planned<'_>],
    dry_run: bool,
) -> Result<Vec<Action>> {
    let architecture = check
        .architectures
        .first()
        .filter(|_| check.architectures.len() == 1);
    let mut actions = Vec::new();
    for (published, missing) in
        removed::published_since(store, architecture.map(String::as_str)).await?
    {
        let scanned = check.revisions.iter().find(|r| {
            r.architecture == published.architecture
                && r.tarball == published.tarball_name()
                && r.hash.as_deref() == Some(&published.hash)
        });
        let Some(revision) = scanned else {
            continue;
        };
        let planned = steps.iter().find(|s| s.revision.id() == revision.id());
        if planned.is_some_and(|s| !matches!(s.step, Step::LeaveAlone { .. })) {
            continue;
        }
        let keys = match dry_run {
            true => missing.iter().map(|l| l.key.clone()).collect(),
            false => {
                let keys = lock::restore(store, &missing).await?;
                removed::forget(store, &published).await?;
                keys
            }
        };
        if !keys.is_empty() {
            let verb = match dry_run {
                true => "would re-create",
                false => "re-created",
            };
            let mut action = Action::new(
                revision,
                ActionKind::Restored,
                format!(
                    "published after an earlier repair removed its links (a stock upload stalled \
                     past --min-age): {verb} them from {}",
                    removed::key_of(&published)
                ),
            );
            action.restored = keys;
            actions.push(action);
        }
    }
    Ok(actions)
}

/// A step as a dry run reports it: what the plan says, and for a rollback
/// the links the store holds with the journal's transaction id (what
/// `alitx rollback` would delete now). Reads, never writes.
async fn preview(store: &dyn Store, planned: &Planned<'_>, options: &Options) -> Result<Action> {
    let revision = planned.revision;
    Ok(match &planned.step {
        Step::DeleteLeftovers { keys } => {
            Action::new(revision, ActionKind::Deleted, joined(&revision.reasons))
                .with_keys(keys.clone())
        }
        Step::RestoreLinks { links } => {
            let (links, _) = with_removed(store, revision, links).await?;
            let absent = futures::future::try_join_all(links.iter().map(|l| store.head(&l.key)));
            let keys = links
                .iter()
                .zip(absent.await?)
                .filter(|(_, now)| now.is_none())
                .map(|(l, _)| l.key.clone())
                .collect();
            restored(revision, "would re-create", keys)
        }
        Step::RollBack { journal } => Action::new(
            revision,
            ActionKind::RolledBack,
            format!("as `alitx rollback {journal}`"),
        )
        .with_keys(rollback_keys(store, journal, options).await?),
        Step::LeaveAlone { why } => Action::new(revision, ActionKind::LeftAlone, why.to_string()),
    })
}

/// Carry out one step of the plan.
async fn carry_out(
    store: Arc<dyn Store>,
    planned: &Planned<'_>,
    options: &Options,
) -> Result<Action> {
    let revision = planned.revision;
    Ok(match &planned.step {
        Step::DeleteLeftovers { keys } => delete_partial(store, revision, keys, options).await,
        Step::RestoreLinks { links } => restore_links(&*store, revision, links).await?,
        Step::RollBack { journal } => roll_back(store, revision, journal, options).await?,
        Step::LeaveAlone { why } => Action::new(revision, ActionKind::LeftAlone, why.to_string()),
    })
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
    keys: &[String],
    options: &Options,
) -> Action {
    let mut deleted = Vec::new();
    let deleter = Locked {
        kind: DeleterKind::Repair,
        first: &[],
    };
    match delete_keys(store, revision, keys, options, deleter, &mut deleted).await {
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

/// Who deletes under the revision's journal, and what it deletes before
/// the links without the deletion rule: `--unpublish`'s tarball and record.
#[derive(Debug, Clone, Copy)]
struct Locked<'a> {
    kind: DeleterKind,
    first: &'a [String],
}

/// Delete `deleter.first`, then the links `keys` under the deletion rule,
/// holding the revision's journal (which records the links and their
/// bodies); each key pushed to `deleted` once gone.
async fn delete_keys(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    keys: &[String],
    options: &Options,
    deleter: Locked<'_>,
    deleted: &mut Vec<String>,
) -> Result<Deletes> {
    let expected = revision.expected_tarball();
    let tarballs = revision_tarballs(&*store, revision.named(), expected.as_deref()).await?;
    let mut removes = Vec::new();
    for key in keys {
        if !owned(revision, key) {
            return Err(Error::store(format!(
                "refusing to delete {key}: not a key of {}",
                revision.id()
            )));
        }
        removes.extend(lock::current_link(&*store, key, link_kind(revision, key)).await?);
    }
    let journal = Journal::for_deleter(
        deleter.kind,
        &locked_revision(revision, &tarballs)?,
        removes,
        options.lease,
    );
    let handle = match lock::claim(store.clone(), &options.journal_prefix, journal).await? {
        lock::Claim::Held(handle) => handle,
        lock::Claim::Busy(other) => {
            return Ok(Deletes::Busy(lock::busy_error(
                &revision.id(),
                deleter.kind,
                other.as_deref(),
            )))
        }
    };
    failpoint("repair-claimed");
    keep_removed(&*store, &handle).await?;
    let result = async {
        for key in deleter.first {
            handle.delete_as_owner(key).await?;
            deleted.push(key.clone());
        }
        failpoint("after-first-deletes");
        delete_claimed(&*store, revision, keys, &handle, &tarballs, deleted).await
    }
    .await;
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
    keys: &[String],
    handle: &Arc<JournalHandle>,
    tarballs: &[String],
    deleted: &mut Vec<String>,
) -> Result<Deletes> {
    let _renewals = handle.keep_alive();
    for key in keys {
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
    let mut now = revision_tarballs(store, revision.named(), None).await?;
    now.extend(tarballs.iter().cloned());
    let Some(tarball) = published(store, &now).await? else {
        return Ok(Deletes::Done);
    };
    let journal = handle.snapshot().await;
    let restored = lock::restore(store, &journal.removes).await?;
    Ok(Deletes::Published { tarball, restored })
}

/// Before repair or `--unpublish` deletes them, keep the links its journal
/// records (with their bodies) past the journal, for a later publication
/// of the revision (a stock upload stalled past `--min-age`), when the hash
/// they belong to is known.
async fn keep_removed(store: &dyn Store, handle: &JournalHandle) -> Result<()> {
    let journal = handle.snapshot().await;
    if journal.revision.hash == UNKNOWN_HASH {
        return Ok(());
    }
    removed::keep(store, &journal.revision, &journal.removes).await
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

/// Re-create, with put-if-absent, the links the plan names of a published
/// revision, and those an earlier repair removed from it (its dependency
/// links among them), then forget that removal.
async fn restore_links(
    store: &dyn Store,
    revision: &RevisionReport,
    links: &[Link],
) -> Result<Action> {
    let (links, removed) = with_removed(store, revision, links).await?;
    let restored_keys = lock::restore(store, &links).await?;
    if let Some(published) = removed {
        removed::forget(store, &published).await?;
    }
    Ok(restored(revision, "re-created", restored_keys))
}

/// `links`, and the links an earlier repair removed from the published
/// `revision` before its tarball came (with the revision, if there were).
async fn with_removed(
    store: &dyn Store,
    revision: &RevisionReport,
    links: &[Link],
) -> Result<(Vec<Link>, Option<Revision>)> {
    let mut all = links.to_vec();
    let Ok(published) = revision_with_hash(revision, revision.hash.as_deref()) else {
        return Ok((all, None));
    };
    let removed = removed::read(store, &published).await?;
    if removed.is_empty() {
        return Ok((all, None));
    }
    for link in removed {
        if all.iter().all(|l| l.key != link.key) {
            all.push(link);
        }
    }
    Ok((all, Some(published)))
}

/// The action of re-creating `links` of a published revision.
fn restored(revision: &RevisionReport, verb: &str, links: Vec<String>) -> Action {
    let mut action = Action::new(
        revision,
        ActionKind::Restored,
        format!(
            "published, so final: {}; {verb} the links the store determines",
            joined(&revision.reasons)
        ),
    );
    action.restored = links;
    action
}

/// The revision `revision` reports, under `hash`.
pub(super) fn revision_with_hash(
    revision: &RevisionReport,
    hash: Option<&str>,
) -> Result<Revision> {
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

/// What rolling the journal `id` back would delete now: the links the
/// store holds with its transaction id and body, then the journal.
async fn rollback_keys(store: &dyn Store, id: &str, options: &Options) -> Result<Vec<String>> {
    let key = crate::journal::key_from_arg(&options.journal_prefix, id)?;
    let journal = crate::ownership::read_journal(store, &options.journal_prefix, &key)
        .await?
        .ok_or_else(|| Error::input(format!("journal {id} disappeared since the scan")))?;
    let mut keys = txn::rollback_keys(store, &journal).await?;
    keys.push(key);
    Ok(keys)
}

/// Roll an abandoned journal back, exactly as `alitx rollback` does.
async fn roll_back(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    id: &str,
    options: &Options,
) -> Result<Action> {
    let ids = [id.to_string()];
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
    keys.push(crate::journal::key_from_arg(&options.journal_prefix, id)?);
    Ok(Action::new(revision, ActionKind::RolledBack, outcome.message).with_keys(keys))
}
