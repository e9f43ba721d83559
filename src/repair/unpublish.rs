//! `repair --unpublish`: the deliberate exception to "published is final".
//! It removes one revision named exactly, published, unpublished (every
//! link without its tarball, e.g. retired by a clean-up) or partial, unless
//! a journal covers it or other revisions depend on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use super::{Action, ActionKind, RepairReport};
use crate::check::{CheckReport, Reason, RevisionReport};
use crate::error::{Error, ErrorKind, Result};
use crate::journal::DeleterKind;
use crate::layout::{self, DIST_DIRS};
use crate::storage::Store;
use crate::txn::Options;

/// The one revision `repair --unpublish` removes, named exactly.
#[derive(Debug, Clone)]
pub struct Unpublish {
    pub package: String,
    pub version: String,
    pub revision: String,
    /// Remove it even while other revisions' dist links name its tarball.
    pub ignore_dependents: bool,
    /// Listings in flight at once while looking for dependents.
    pub concurrency: usize,
}

/// Removes the named revision: its tarball first (readers stop finding
/// it), then its publication record, then its dist links, then its package
/// link (the revision number is free again). Refused while a journal covers
/// it, and (unless `ignore_dependents`) while other revisions' dist links
/// name its tarball. It deletes holding the revision's journal as its lock
/// (`lock`): refused if another journal appeared since the scan. A failure
/// half-way reports the keys already deleted.
pub async fn unpublish(
    store: Arc<dyn Store>,
    check: CheckReport,
    target: &Unpublish,
    options: &Options,
    dry_run: bool,
) -> Result<RepairReport> {
    let name = format!("{}-{}-{}", target.package, target.version, target.revision);
    let revision = named_revision(&check, target, &name)?;
    crate::failpoint::failpoint("repair-scanned");
    if let Some(journal) = &revision.journal {
        let why = revision
            .reasons
            .iter()
            .find(|r| matches!(r, Reason::Journal { .. }))
            .map(Reason::to_string)
            .unwrap_or_default();
        return Err(Error::new(
            ErrorKind::LiveLease,
            format!(
                "{} is covered by the journal {journal} ({why}): finish it first with `alitx resume` or `alitx rollback {journal}`",
                revision.id()
            ),
        ));
    }
    let arch = &revision.architecture;
    if !target.ignore_dependents {
        let dependents = dependents(&*store, revision, &name, target.concurrency.max(1)).await?;
        if !dependents.is_empty() {
            return Err(dependents_error(revision, &dependents));
        }
    }
    let keys = keys_of(&*store, revision, &name).await?;
    let after = format!(
        "TARS/{arch}/{}.manifest is left alone: its line for {} keeps the revision number \
         reserved for aliBuild (no other hash takes it), and a rebuild of the same hash publishes it again",
        target.package, revision.tarball
    );
    let action = match dry_run {
        true => Action::new(
            revision,
            ActionKind::Unpublished,
            format!("{name} would be removed on request (--unpublish), tarball included; {after}"),
        )
        .with_keys(keys.all()),
        false => match remove(store, revision, &keys, options).await? {
            (deleted, None) => Action::new(
                revision,
                ActionKind::Unpublished,
                format!("{name} removed on request (--unpublish), tarball included; {after}"),
            )
            .with_keys(deleted),
            (deleted, Some(e)) => Action::new(
                revision,
                ActionKind::Failed,
                format!(
                    "{} (after deleting {} of {}); run the same command again to finish",
                    e.message,
                    deleted.len(),
                    crate::counted(keys.all().len(), "key")
                ),
            )
            .with_keys(deleted),
        },
    };
    Ok(RepairReport {
        dry_run,
        unpublish: true,
        store: check.store.clone(),
        actions: vec![action],
        aborted_uploads: Vec::new(),
        left_over: false,
        check,
    })
}

/// Delete the tarball and the record, then the links under the deletion
/// rule, holding the revision's journal, which records the links and their
/// bodies (`super::delete_keys`): a tarball of the revision that appears
/// meanwhile (a stock upload of the same hash publishing it again) stops
/// it, and the links it deleted are put back. The keys deleted, and what
/// stopped it, if something did; an error (exit 4) if another journal
/// holds the revision.
async fn remove(
    store: Arc<dyn Store>,
    revision: &RevisionReport,
    keys: &Keys,
    options: &Options,
) -> Result<(Vec<String>, Option<Error>)> {
    let mut deleted = Vec::new();
    let deleter = super::Locked {
        kind: DeleterKind::Unpublish,
        first: &keys.first,
    };
    let removed = super::delete_keys(store, revision, &keys.links, options, deleter, &mut deleted);
    let stopped = match removed.await {
        Ok(super::Deletes::Done) => None,
        Ok(super::Deletes::Busy(e)) => return Err(e),
        Ok(super::Deletes::Published { tarball, restored }) => Some(Error::conflict(format!(
            "{tarball} appeared while this removed the revision (an upload of the same hash \
             published it again): it stopped and put back {}",
            crate::counted(restored.len(), "link")
        ))),
        Err(e) => Some(e),
    };
    Ok((deleted, stopped))
}

/// The one revision of the scan with that package, version and revision.
fn named_revision<'a>(
    check: &'a CheckReport,
    target: &Unpublish,
    name: &str,
) -> Result<&'a RevisionReport> {
    let found: Vec<&RevisionReport> = check
        .revisions
        .iter()
        .filter(|r| {
            r.package == target.package
                && r.version.as_deref() == Some(&target.version)
                && r.revision.as_deref() == Some(&target.revision)
        })
        .collect();
    match found[..] {
        [one] => Ok(one),
        [] => Err(Error::input(format!(
            "{} holds no revision {name}{}: nothing to unpublish; `alitx check --package {}` lists what it holds",
            check.store,
            match check.architectures[..] {
                [ref one] => format!(" for {one}"),
                _ => String::new(),
            },
            target.package
        ))),
        _ => Err(Error::input(format!(
            "{name} is in several architectures ({}): name one with --architecture",
            found
                .iter()
                .map(|r| r.architecture.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every key of the revision, in the order they go.
#[derive(Debug)]
struct Keys {
    /// Its store tarball, then its publication record (evidence of
    /// publication, which would keep the rest from `repair` if this stopped
    /// half-way): deleted as they are.
    first: Vec<String>,
    /// Its dist links, then its package link: each deleted only while no
    /// store tarball of the revision exists, as every deleter does.
    links: Vec<String>,
}

impl Keys {
    fn all(&self) -> Vec<String> {
        self.first.iter().chain(&self.links).cloned().collect()
    }
}

async fn keys_of(store: &dyn Store, revision: &RevisionReport, name: &str) -> Result<Keys> {
    let arch = &revision.architecture;
    let mut first = Vec::new();
    if let Some(hash) = &revision.hash {
        let tarball = layout::store_key(arch, hash, &revision.tarball);
        if store.head(&tarball).await?.is_some() {
            first.push(tarball);
        }
    }
    let record = crate::record::key_for(arch, name);
    if store.head(&record).await?.is_some() {
        first.push(record);
    }
    let mut links = Vec::new();
    for dir in DIST_DIRS {
        let prefix = format!("TARS/{arch}/{dir}/{}/{name}/", revision.package);
        links.extend(
            store
                .list_dir(&prefix, false)
                .await?
                .objects
                .into_iter()
                .map(|o| o.key),
        );
    }
    let package_link = revision.package_link_key();
    if store.head(&package_link).await?.is_some() {
        links.push(package_link);
    }
    Ok(Keys { first, links })
}

/// Other revisions whose dist links name the revision's tarball (matched
/// by file name, as `check` matches them): `<arch>/<pkg>-<ver>-<rev>` →
/// those links. Lists every package's three dist directories in full.
async fn dependents(
    store: &dyn Store,
    revision: &RevisionReport,
    name: &str,
    concurrency: usize,
) -> Result<BTreeMap<String, Vec<String>>> {
    let arch = &revision.architecture;
    let mut packages = Vec::new();
    for dir in DIST_DIRS {
        let root = format!("TARS/{arch}/{dir}/");
        packages.extend(store.list_dir(&root, false).await?.prefixes);
    }
    let listings: Vec<Vec<String>> = futures::stream::iter(packages)
        .map(|prefix| async move {
            let listing = store.list_dir(&prefix, true).await?;
            Ok::<_, Error>(listing.objects.into_iter().map(|o| o.key).collect())
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let own = format!("/{}/{name}/", revision.package);
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in listings.into_iter().flatten() {
        let Some((dir, file)) = key.rsplit_once('/') else {
            continue;
        };
        let full = dir.rsplit('/').next().unwrap_or_default();
        if file == revision.tarball && !key.contains(&own) {
            found.entry(format!("{arch}/{full}")).or_default().push(key);
        }
    }
    Ok(found)
}

fn dependents_error(
    revision: &RevisionReport,
    dependents: &BTreeMap<String, Vec<String>>,
) -> Error {
    const SHOWN: usize = 20;
    let mut list: Vec<String> = dependents
        .iter()
        .take(SHOWN)
        .map(|(id, links)| format!("  {id} ({})", links.join(", ")))
        .collect();
    if dependents.len() > SHOWN {
        list.push(format!("  and {} more", dependents.len() - SHOWN));
    }
    Error::conflict(format!(
        "refusing to unpublish {}: the dist links of {} name its tarball, and removing it \
         breaks them for the publisher and for builders; nothing was deleted. Unpublish those \
         first, or pass --ignore-dependents to remove it anyway:\n{}",
        revision.id(),
        crate::counted(dependents.len(), "other revision"),
        list.join("\n")
    ))
}
