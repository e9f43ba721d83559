//! Adoption: a rebuild of the same hash completes a revision that an
//! earlier upload (stock aliBuild killed after its links, or ALICE's
//! clean-up retiring its tarball) left with links and no tarball. This
//! module reads what [`plan::adoption`](super::plan::adoption) decides on.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Link, Revision, DIST_DIRS};
use crate::storage::{get_small, md5_hex, newest_time, ObjectMeta, Small, Store};
use crate::workdir::LocalRevision;

use super::plan::{AdoptionFacts, PackageLinkNow};

/// Compare the revision's keys in the store with what `local` would write,
/// and find when anything of it last moved: its newest key, or a part
/// received by a staged upload of its tarball.
pub(super) async fn facts(store: &dyn Store, local: &LocalRevision) -> Result<AdoptionFacts> {
    let revision = &local.revision;
    let package_link = revision.package_link();
    let link_now = match get_small(store, &package_link.key, Small::Link).await? {
        None => PackageLinkNow::Gone,
        Some(body) if body != package_link.body.as_bytes() => PackageLinkNow::Other,
        Some(_) => PackageLinkNow::Ours,
    };
    if link_now != PackageLinkNow::Ours {
        return Ok(AdoptionFacts {
            package_link: link_now,
            differing: Vec::new(),
            quiet_for: 0,
        });
    }
    let listings = futures::future::try_join_all(
        std::iter::once(revision.package_dir())
            .chain(DIST_DIRS.iter().map(|dir| revision.dist_prefix(dir)))
            .map(|prefix| async move { store.list_dir(&prefix, false).await }),
    );
    let (listings, last_part) = tokio::try_join!(listings, last_part_received(store, revision))?;
    let mut listings = listings.into_iter();
    let package_dir = listings.next().expect("the package directory's listing");
    let dist: Vec<ObjectMeta> = listings.flat_map(|listing| listing.objects).collect();
    let newest = newest_time(
        package_dir
            .objects
            .iter()
            .filter(|object| object.key == package_link.key)
            .chain(&dist)
            .map(|object| object.last_modified)
            .chain([last_part]),
    );
    let planned: HashMap<&str, &Link> = local.links.iter().map(|l| (l.key.as_str(), l)).collect();
    let differing: Vec<Option<String>> = futures::stream::iter(&dist)
        .map(|object| {
            let planned = planned.get(object.key.as_str()).copied();
            async move {
                let same = match planned {
                    Some(link) => is_identical(store, object, link).await?,
                    None => false,
                };
                Ok::<_, Error>((!same).then(|| object.key.clone()))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let mut differing: Vec<String> = differing.into_iter().flatten().collect();
    differing.sort();
    Ok(AdoptionFacts {
        package_link: PackageLinkNow::Ours,
        differing,
        quiet_for: newest.map_or(0, |newest| crate::now_secs() - newest),
    })
}

/// Whether the dist link found at `object` is the one this upload writes:
/// the same body, and the same redirect (stock aliBuild writes it without
/// the leading `/`; both name the same key).
async fn is_identical(store: &dyn Store, object: &ObjectMeta, link: &Link) -> Result<bool> {
    let body_md5 = md5_hex(link.body.as_bytes());
    let same_body = match &object.md5 {
        Some(md5) => *md5 == body_md5,
        None => {
            get_small(store, &object.key, Small::Link).await?.as_deref()
                == Some(link.body.as_bytes())
        }
    };
    if !same_body {
        return Ok(false);
    }
    let redirect = store
        .head(&object.key)
        .await?
        .and_then(|i| i.website_redirect);
    let path = |r: Option<&str>| r.map(|r| r.trim_start_matches('/').to_string());
    Ok(path(redirect.as_deref()) == path(link.redirect.as_deref()))
}

/// When a staged upload of the revision's tarball last received a part (or
/// was started, if it has none): `Some(0)` when there is none.
async fn last_part_received(store: &dyn Store, revision: &Revision) -> Result<Option<i64>> {
    let key = revision.store_key();
    let mut times = vec![Some(0)];
    for upload in store.list_uploads(&key).await? {
        if upload.key != key {
            continue;
        }
        let parts = store.list_parts(&key, &upload.upload_id).await?;
        times.extend(
            parts
                .unwrap_or_default()
                .iter()
                .map(|part| part.received_at),
        );
        times.push(upload.initiated);
    }
    Ok(newest_time(times))
}

/// The revision is this build's, but something of it moved too recently:
/// a stock upload may still be writing it.
pub(super) fn too_recent(revision: &Revision, retry_after: i64) -> Error {
    Error::new(
        ErrorKind::LiveLease,
        format!(
            "{} has this build's package link but no tarball, and part of it was written less than \
             --adopt-after ago: another upload of the same build may still be running; \
             re-run in {retry_after}s (or later) to complete it",
            revision.full_version()
        ),
    )
}

/// The package link is this build's, but other keys of the revision are not.
pub(super) fn differs(revision: &Revision, keys: &[String]) -> Error {
    let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
    Error::conflict(format!(
        "{} has this build's package link but no tarball, and {} of it differ from this build's ({}{}): \
         not completed; inspect it with `alitx check --package {}`",
        revision.full_version(),
        crate::counted(keys.len(), "key"),
        shown.join(", "),
        if keys.len() > shown.len() { ", ..." } else { "" },
        revision.package
    ))
}
