//! Published is final: the one rule every path that deletes part of a
//! revision goes through (rollback, resume, repair, an upload undoing
//! itself).
//!
//! alitx deletes an object only if it is the deleter's own (it carries the
//! transaction's id and still has the body the journal records for it, or,
//! for `repair` of a stock upload's leftovers, it is a key of a revision
//! that has no tarball) *and* no store tarball of the revision exists: not
//! the one the deleter expects, nor any its own links (package link, its
//! own link in each dist directory) name under another hash
//! ([`revision_tarballs`]), nor did (its publication record names it: the
//! tarball was retired by a clean-up). A journal is untrusted input, and one that
//! names a published revision under another hash must delete nothing. Once
//! the tarball exists, readers (the CVMFS publisher, every builder) may
//! already use the revision, and aliBuild never reuses its number. The
//! tarballs are read from the store right before each delete. The one
//! exception is the explicit operator command `alitx repair --unpublish`,
//! which does not come through here.

use crate::error::Result;
use crate::journal::TXN_METADATA;
use crate::layout::{self, LinkKind, DIST_DIRS};
use crate::ownership::JournalHandle;
use crate::record::Record;
use crate::storage::{get_small, ObjectInfo, Small, Store};

/// A revision as every deleter can name it, its hash known or not.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    pub architecture: &'a str,
    pub package: &'a str,
    /// `<pkg>-<ver>-<rev>.<arch>.tar.gz`
    pub tarball: &'a str,
}

impl Named<'_> {
    /// Its own links, whose bodies name its store tarball: the package
    /// link and its own link in each dist directory.
    fn own_links(&self) -> Vec<(String, LinkKind)> {
        let (arch, package, tarball) = (self.architecture, self.package, self.tarball);
        let full = layout::tarball_full_version(arch, tarball).unwrap_or_default();
        std::iter::once((
            format!("TARS/{arch}/{package}/{tarball}"),
            LinkKind::Package,
        ))
        .chain(DIST_DIRS.iter().map(|dir| {
            let key = format!("TARS/{arch}/{dir}/{package}/{full}/{tarball}");
            (key, LinkKind::Dist)
        }))
        .collect()
    }
}

/// Every store tarball the revision may be published as: `expected` (the
/// deleter's, if it knows the hash) and each one of its name that its own
/// links name now, whatever the hash. Read once before a deleter starts;
/// [`delete_unpublished`] checks them all before each delete.
pub async fn revision_tarballs(
    store: &dyn Store,
    revision: Named<'_>,
    expected: Option<&str>,
) -> Result<Vec<String>> {
    let own = format!("/{}", revision.tarball);
    let bodies = futures::future::try_join_all(revision.own_links().into_iter().map(
        |(key, kind)| async move {
            Ok::<_, crate::error::Error>((get_small(store, &key, Small::Link).await?, kind))
        },
    ))
    .await?;
    let mut tarballs: Vec<String> = expected.map(str::to_string).into_iter().collect();
    for (body, kind) in bodies {
        let named = body.and_then(|body| layout::link_target(revision.architecture, kind, &body));
        if let Some(key) = named.filter(|key| key.ends_with(&own)) {
            if !tarballs.contains(&key) {
                tarballs.push(key);
            }
        }
    }
    Ok(tarballs)
}

/// The first of `tarballs` that exists now, else the one the revision's
/// publication record names: published, then retired by ALICE's clean-up,
/// which deletes old store tarballs and keeps their links. A record that
/// cannot be trusted stops the deleter (deleting nothing).
pub async fn published(store: &dyn Store, tarballs: &[String]) -> Result<Option<String>> {
    for key in tarballs {
        if store.head(key).await?.is_some() {
            return Ok(Some(key.clone()));
        }
    }
    Ok(retired(store, tarballs).await?.map(|record| record.key))
}

/// The revision's publication record, if it names one of `tarballs` (all
/// of one revision): the tarball was published, whether or not it still
/// exists. An error for a record that cannot be trusted.
pub async fn retired(store: &dyn Store, tarballs: &[String]) -> Result<Option<Record>> {
    let Some(record_key) = tarballs.first().and_then(|key| record_key_of(key)) else {
        return Ok(None);
    };
    let record = crate::record::read_key(store, &record_key).await?;
    Ok(record.filter(|record| tarballs.contains(&record.key)))
}

/// The key of the publication record of the revision whose store tarball is
/// `tarball` (`TARS/<arch>/store/<h2>/<hash>/<name>`).
fn record_key_of(tarball: &str) -> Option<String> {
    let architecture = tarball.split('/').nth(1)?;
    let (_, _, name) = layout::parse_store_key(architecture, tarball).ok()?;
    let full_version = layout::tarball_full_version(architecture, name)?;
    Some(crate::record::key_for(architecture, full_version))
}

/// Whose objects a deleter may remove.
#[derive(Debug, Clone, Copy)]
pub enum Deleter<'a> {
    /// A transaction: only objects carrying its id whose body is still
    /// `body`, the one its journal records for that key.
    Txn { txn: &'a str, body: &'a str },
    /// `repair` of a partial revision no live journal covers: any object
    /// at one of the revision's own keys.
    Repair,
}

/// What [`delete_unpublished`] did with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// Nothing at that key.
    Missing,
    /// Another writer's object: kept.
    NotOurs,
    /// The revision's store tarball exists: nothing of it may go.
    Published,
}

/// Delete `key`, an object of the revision whose possible store tarballs
/// are `tarballs` ([`revision_tarballs`]), if the rule allows; as `owner`
/// of the revision's journal ([`JournalHandle::delete_as_owner`]) where
/// the deleter holds it.
pub async fn delete_unpublished(
    store: &dyn Store,
    tarballs: &[String],
    key: &str,
    deleter: Deleter<'_>,
    owner: Option<&JournalHandle>,
) -> Result<Deletion> {
    if published(store, tarballs).await?.is_some() {
        return Ok(Deletion::Published);
    }
    if tarballs.iter().any(|tarball| tarball == key) {
        return Ok(Deletion::Missing);
    }
    let Some(info) = store.head(key).await? else {
        return Ok(Deletion::Missing);
    };
    if let Deleter::Txn { txn, body } = deleter {
        if !written_by(&info, txn)
            || get_small(store, key, Small::Link).await?.as_deref() != Some(body.as_bytes())
        {
            return Ok(Deletion::NotOurs);
        }
    }
    match owner {
        Some(handle) => handle.delete_as_owner(key).await?,
        None => store.delete(key).await?,
    }
    Ok(Deletion::Deleted)
}

/// Whether the object `info` describes was written by transaction `txn`.
pub fn written_by(info: &ObjectInfo, txn: &str) -> bool {
    info.metadata.get(TXN_METADATA).map(String::as_str) == Some(txn)
}
