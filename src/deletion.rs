//! Published is final: the one rule every path that deletes part of a
//! revision goes through (rollback, resume, repair, an upload undoing
//! itself).
//!
//! alitx deletes an object only if it is the deleter's own (it carries the
//! transaction's id and still has the body the journal records for it, or,
//! for `repair` of a stock upload's leftovers, it is a key of a revision
//! that has no tarball) *and* the revision's store tarball does not exist.
//! A transaction also checks, once before it deletes, that the revision's
//! package link does not name another, published tarball
//! (`txn::undo::tarball_now`): a journal is untrusted input, and one that
//! names a published revision under another hash must delete nothing. Once the tarball exists, readers (the CVMFS
//! publisher, every builder) may already use the revision, and aliBuild
//! never reuses its number. Both conditions are read from the store right
//! before each delete. The one exception is the explicit operator command
//! `alitx repair --unpublish`, which does not come through here.

use crate::error::Result;
use crate::journal::TXN_METADATA;
use crate::storage::{get_small, ObjectInfo, Small, Store};

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

/// Delete `key`, an object of `store_key`'s revision, if the rule allows.
pub async fn delete_unpublished(
    store: &dyn Store,
    store_key: &str,
    key: &str,
    deleter: Deleter<'_>,
) -> Result<Deletion> {
    if store.head(store_key).await?.is_some() {
        return Ok(Deletion::Published);
    }
    if key == store_key {
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
    store.delete(key).await?;
    Ok(Deletion::Deleted)
}

/// Whether the object `info` describes was written by transaction `txn`.
pub fn written_by(info: &ObjectInfo, txn: &str) -> bool {
    info.metadata.get(TXN_METADATA).map(String::as_str) == Some(txn)
}
