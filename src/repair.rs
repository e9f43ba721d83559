//! `alitx repair`: remove what `check` found to be leftovers, and nothing
//! else. A partial revision (one without a store tarball) loses exactly its
//! own keys, dist links first, package link last, each through the one
//! deletion rule (`deletion`): never once its tarball exists. A published
//! revision is final: repair only re-creates, with put-if-absent, the links
//! the store alone determines (its package link, its own link in each dist
//! directory). An abandoned journal is rolled back by the very code
//! `alitx rollback` runs; staged uploads older than the threshold that no
//! pending journal references are aborted. `--unpublish` is the one
//! deliberate exception: it removes one named revision, tarball included.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::check::{CheckReport, RevisionReport, State};
use crate::deletion::{delete_unpublished, Deleter, Deletion};
use crate::error::{Error, Result};
use crate::layout::{Revision, DIST_DIRS};
use crate::recovery::{self, Selection};
use crate::storage::{Created, Metadata, Store};
use crate::txn::{self, Options};

/// What repair did (or, in a dry run, would do) to one revision.
#[derive(Debug, Serialize)]
pub struct Action {
    /// `<arch>/<tarball>`
    pub revision: String,
    pub state: State,
    /// `deleted`, `restored`, `rolled-back`, `left-alone`, `failed`, or
    /// with --dry-run `would-delete`, `would-restore`, `would-roll-back`.
    pub action: String,
    pub message: String,
    /// Keys deleted (or that would be).
    pub keys: Vec<String>,
    /// Links re-created (or that would be).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<String>,
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
                    _ => delete_partial(&*store, revision, dry_run).await,
                };
                result.unwrap_or_else(|e| Action {
                    revision: revision.id(),
                    state: revision.state,
                    action: "failed".into(),
                    message: e.message,
                    keys: Vec::new(),
                    restored: Vec::new(),
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
    let restored: Vec<String> = actions.iter().flat_map(|a| a.restored.clone()).collect();
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
        revision.reasons.last().cloned().unwrap_or_default()
    };
    Action {
        revision: revision.id(),
        state: revision.state,
        action: "left-alone".into(),
        message: why,
        keys: Vec::new(),
        restored: Vec::new(),
    }
}

/// Delete a partial revision's own keys, in the order `check` listed them
/// (dist links, package link), each through the one deletion rule: a
/// tarball that appeared since the scan (an upload finishing) stops it.
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
        restored: Vec::new(),
    };
    if dry_run {
        return Ok(action(
            "would-delete",
            revision.reasons.join("; "),
            revision.keys.clone(),
        ));
    }
    let tarball = expected_tarball(revision);
    let mut deleted = Vec::new();
    for key in &revision.keys {
        if !owned(revision, key) {
            return Err(Error::store(format!(
                "refusing to delete {key}: not a key of {}",
                revision.id()
            )));
        }
        let deletion = match &tarball {
            Some(tarball) => delete_unpublished(store, tarball, key, Deleter::Repair).await?,
            // No link names its tarball, and the scan found none of its
            // name: nothing to check against.
            None => {
                store.delete(key).await?;
                Deletion::Deleted
            }
        };
        match deletion {
            Deletion::Deleted => deleted.push(key.clone()),
            Deletion::Published => {
                return Ok(action(
                    "left-alone",
                    format!(
                        "{} appeared since the scan: an upload finished it, and published is final; run check again",
                        tarball.unwrap_or_default()
                    ),
                    deleted,
                ))
            }
            Deletion::Missing | Deletion::NotOurs => {}
        }
    }
    Ok(action("deleted", revision.reasons.join("; "), deleted))
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
    Ok(Action {
        revision: revision.id(),
        state: revision.state,
        action: if dry_run { "would-restore" } else { "restored" }.into(),
        message: format!(
            "published, so final: {}; {} the links the store determines",
            revision.reasons.join("; "),
            if dry_run {
                "would re-create"
            } else {
                "re-created"
            }
        ),
        keys: Vec::new(),
        restored,
    })
}

/// The revision a published report describes.
fn published_revision(revision: &RevisionReport) -> Result<Revision> {
    match (&revision.version, &revision.revision, &revision.hash) {
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
    Some(crate::layout::store_key(
        &revision.architecture,
        hash,
        &revision.tarball,
    ))
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
            restored: Vec::new(),
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
        restored: Vec::new(),
    })
}

/// The one revision `repair --unpublish` removes, named exactly.
#[derive(Debug, Clone)]
pub struct Unpublish {
    pub package: String,
    pub version: String,
    pub revision: String,
}

/// `repair --unpublish`: the deliberate exception to "published is final".
/// Removes one named revision: its tarball first (readers stop finding
/// it), then its dist links, then its package link (the revision number is
/// free again), then its publication record. Refused while a journal
/// covers it.
pub async fn unpublish(
    store: Arc<dyn Store>,
    check: CheckReport,
    target: &Unpublish,
    dry_run: bool,
) -> Result<RepairReport> {
    let name = format!("{}-{}-{}", target.package, target.version, target.revision);
    let found: Vec<&RevisionReport> = check
        .revisions
        .iter()
        .filter(|r| {
            r.package == target.package
                && r.version.as_deref() == Some(&target.version)
                && r.revision.as_deref() == Some(&target.revision)
        })
        .collect();
    let revision = match found[..] {
        [one] => one,
        [] => {
            return Err(Error::input(format!(
                "{} holds no revision {name}{}: nothing to unpublish; `alitx check --package {}` lists what it holds",
                check.store,
                match check.architectures[..] {
                    [ref one] => format!(" for {one}"),
                    _ => String::new(),
                },
                target.package
            )))
        }
        _ => {
            return Err(Error::input(format!(
                "{name} is in several architectures ({}): name one with --architecture",
                found
                    .iter()
                    .map(|r| r.architecture.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if let Some(journal) = &revision.journal {
        return Err(Error::new(
            crate::error::ErrorKind::LiveLease,
            format!(
                "{} is covered by the journal {journal} ({}): finish it first with `alitx resume` or `alitx rollback {journal}`",
                revision.id(),
                revision.reasons.first().cloned().unwrap_or_default()
            ),
        ));
    }
    let arch = &revision.architecture;
    let mut keys = Vec::new();
    if let Some(hash) = &revision.hash {
        let tarball = crate::layout::store_key(arch, hash, &revision.tarball);
        if store.head(&tarball).await?.is_some() {
            keys.push(tarball);
        }
    }
    for dir in DIST_DIRS {
        let prefix = format!("TARS/{arch}/{dir}/{}/{name}/", target.package);
        keys.extend(
            store
                .list_dir(&prefix, false)
                .await?
                .objects
                .into_iter()
                .map(|o| o.key),
        );
    }
    let package_link = format!("TARS/{arch}/{}/{}", target.package, revision.tarball);
    if store.head(&package_link).await?.is_some() {
        keys.push(package_link);
    }
    let record = crate::record::key_for(arch, &name);
    if store.head(&record).await?.is_some() {
        keys.push(record);
    }
    if !dry_run {
        for key in &keys {
            store.delete(key).await?;
        }
    }
    let action = Action {
        revision: revision.id(),
        state: revision.state,
        action: if dry_run {
            "would-unpublish"
        } else {
            "unpublished"
        }
        .into(),
        message: format!("{name} removed on request (--unpublish), tarball included"),
        keys: keys.clone(),
        restored: Vec::new(),
    };
    Ok(RepairReport {
        dry_run,
        store: check.store.clone(),
        actions: vec![action],
        deleted: (!dry_run).then(|| keys.clone()),
        would_delete: dry_run.then_some(keys),
        restored: None,
        would_restore: None,
        aborted_uploads: (!dry_run).then(Vec::new),
        would_abort_uploads: dry_run.then(Vec::new),
        left_over: false,
        check,
    })
}
