//! What a deleter removed from a revision without a tarball, kept past
//! its journal: `.alitx/removed/<arch>/<pkg>-<ver>-<rev>.json`. A stock
//! upload takes no lock: one stalled (past repair's `--min-age`, or while
//! a rollback of another upload of the same build ran) may still put its
//! tarball over links a deleter removed. The store alone tells only the
//! revision's own links; the record also holds its dependency links, so
//! that `repair` of the now published revision puts every one back. Read
//! back, it is untrusted: only links the revision owns, for the tarball it
//! names, are used.

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{Error, Result};
use crate::layout::{Link, Revision, DIST_DIRS};
use crate::storage::{get_small, Metadata, PutMode, Small, Store};

/// Where removal records live: beside the journals and publication records.
pub const PREFIX: &str = ".alitx/removed/";

const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Removed {
    format: u32,
    revision: Revision,
    /// The store tarball the removed links belonged to.
    tarball: String,
    links: Vec<Link>,
    removed_at: i64,
}

pub fn key_of(revision: &Revision) -> String {
    format!(
        "{PREFIX}{}/{}.json",
        revision.architecture,
        revision.full_version()
    )
}

/// Keep `links`, just removed from `revision` (whose hash is known), for a
/// later publication of it. Links removed from it before stay in the
/// record unless removed again.
pub async fn keep(store: &dyn Store, revision: &Revision, links: &[Link]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let mut kept = read(store, revision).await?;
    kept.retain(|old| links.iter().all(|new| new.key != old.key));
    kept.extend(links.iter().cloned());
    let record = Removed {
        format: FORMAT,
        revision: revision.clone(),
        tarball: revision.store_key(),
        links: kept,
        removed_at: crate::machine::current().now_secs(),
    };
    let body = serde_json::to_vec_pretty(&record).expect("a removal record serialises");
    let key = key_of(revision);
    store
        .put(&key, body.into(), &Metadata::new(), PutMode::Overwrite)
        .await?;
    Ok(())
}

/// The links removed from `revision` that the record holds for its very
/// tarball: only links the revision owns; none if the record is for
/// another hash, absent, or not a record.
pub async fn read(store: &dyn Store, revision: &Revision) -> Result<Vec<Link>> {
    let key = key_of(revision);
    let Some(body) = get_small(store, &key, Small::Journal).await? else {
        return Ok(Vec::new());
    };
    Ok(match serde_json::from_slice::<Removed>(&body) {
        Ok(record) => owned_links(&key, record, revision),
        Err(e) => {
            warn!("{key} is not a removal record ({e}): ignored");
            Vec::new()
        }
    })
}

/// The links of `record`, read from `key`, that `revision` owns, for its
/// very tarball.
fn owned_links(key: &str, record: Removed, revision: &Revision) -> Vec<Link> {
    if record.format != FORMAT || record.tarball != revision.store_key() {
        return Vec::new();
    }
    let recorded = record.links.len();
    let owned: Vec<Link> = record
        .links
        .iter()
        .filter_map(|link| as_written(revision, link))
        .collect();
    if owned.len() < recorded {
        warn!(
            "{key}: {} of its links are not links of {}: ignored",
            recorded - owned.len(),
            revision.full_version()
        );
    }
    owned
}

/// `link`, recorded as removed from `revision`, as an upload of it writes
/// it, if it is one of the revision's keys with a body it may have.
fn as_written(revision: &Revision, link: &Link) -> Option<Link> {
    let package_link = revision.package_link();
    if link.key == package_link.key {
        return (link.body.trim_start_matches("../../") == package_link.body)
            .then_some(package_link);
    }
    DIST_DIRS.iter().find_map(|dir| {
        let own = revision.dist_link(dir, &link.body).ok()?;
        (own.key == link.key).then_some(own)
    })
}

/// Every revision of `architecture` (every one, for `None`) whose removal
/// record names a store tarball that exists now, with the recorded links
/// the store lacks: a stock upload published it after repair removed them.
pub async fn published_since(
    store: &dyn Store,
    architecture: Option<&str>,
) -> Result<Vec<(Revision, Vec<Link>)>> {
    let prefix = match architecture {
        Some(arch) => format!("{PREFIX}{arch}/"),
        None => PREFIX.to_string(),
    };
    let mut found = Vec::new();
    for key in store.list(&prefix).await? {
        let Some(body) = get_small(store, &key, Small::Journal).await? else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Removed>(&body) else {
            warn!("{key} is not a removal record: ignored");
            continue;
        };
        let revision = record.revision.clone();
        if key != key_of(&revision) || revision.validated().is_err() {
            warn!("{key} is not where its revision's removal record goes: ignored");
            continue;
        }
        if store.head(&revision.store_key()).await?.is_none() {
            continue;
        }
        let mut missing = Vec::new();
        for link in owned_links(&key, record, &revision) {
            if store.head(&link.key).await?.is_none() {
                missing.push(link);
            }
        }
        found.push((revision, missing));
    }
    Ok(found)
}

/// Forget what was removed from `revision`: its links are back.
pub async fn forget(store: &dyn Store, revision: &Revision) -> Result<()> {
    store.delete(&key_of(revision)).await.map_err(|e| {
        Error::store(format!(
            "the links of {} are back, but deleting {} failed: {e}",
            revision.full_version(),
            key_of(revision)
        ))
    })
}
