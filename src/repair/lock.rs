//! One lock for every deleter: `repair` and `repair --unpublish` claim the
//! revision's journal key, with put-if-absent as an upload does, before
//! they delete anything of it, record in it the links they remove (key,
//! body, redirect), and retire it afterwards. An upload that meets such a
//! journal sees a live owner; a deleter that finds a journal it does not
//! own deletes nothing of that revision. A deleter that finds the revision
//! published after it deleted puts back every link it removed.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::journal::{DeleterKind, Journal};
use crate::layout::{Link, LinkKind, Revision};
use crate::ownership::{read_journal, JournalHandle};
use crate::storage::{get_small, Created, Metadata, PutMode, Small, Store};

/// What a deleter's attempt to claim a revision found.
pub enum Claim {
    /// This process holds the revision's journal: it may delete.
    Held(Arc<JournalHandle>),
    /// Another process's journal covers the revision (`None`: one that was
    /// retired while it was read).
    Busy(Option<Box<Journal>>),
}

/// Create the deleter's journal of `revision`, recording `removes`.
pub async fn claim(store: Arc<dyn Store>, prefix: &str, journal: Journal) -> Result<Claim> {
    let key = Journal::key_of(prefix, &journal.revision);
    let created = store
        .put(
            &key,
            journal.to_bytes(),
            &journal.journal_metadata(),
            PutMode::Create,
        )
        .await?;
    if created == Created::AlreadyExists {
        match read_journal(&*store, prefix, &key).await? {
            // A retried request whose first answer was lost: ours.
            Some(stored) if stored.txn == journal.txn => {}
            other => return Ok(Claim::Busy(other.map(Box::new))),
        }
    }
    Ok(Claim::Held(JournalHandle::created(store, prefix, journal)))
}

/// The error of a deleter that found another process's journal.
pub fn busy_error(revision: &str, kind: DeleterKind, other: Option<&Journal>) -> Error {
    let by = match other {
        Some(journal) => format!(
            "the journal {} of {} (pid {} on {})",
            journal.id(),
            journal.owner.tool,
            journal.owner.pid,
            journal.owner.host
        ),
        None => "a journal that came and went".into(),
    };
    Error::new(
        ErrorKind::LiveLease,
        format!("{revision} is covered by {by} since the scan: {kind} deleted nothing of it; run it again later"),
    )
}

/// `key`'s link as the store holds it now, to record before deleting it:
/// its body and redirect; `None` if it is gone.
pub async fn current_link(store: &dyn Store, key: &str, kind: LinkKind) -> Result<Option<Link>> {
    let Some(info) = store.head(key).await? else {
        return Ok(None);
    };
    let Some(body) = get_small(store, key, Small::Link).await? else {
        return Ok(None);
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let up = match kind {
        LinkKind::Package => "../../",
        LinkKind::Dist => "../../../../../",
    };
    Ok(Some(Link {
        key: key.to_string(),
        symlink_target: format!("{up}{}", body.trim_start_matches("../../")),
        body,
        redirect: info.website_redirect,
    }))
}

/// Put back, with put-if-absent, every link of `removed`: the revision was
/// published after they were deleted. Returns the keys re-created.
pub async fn restore(store: &dyn Store, removed: &[Link]) -> Result<Vec<String>> {
    let mut restored = Vec::new();
    for link in removed {
        if store.put_link_if_absent(link, &Metadata::new()).await? == Created::Yes {
            restored.push(link.key.clone());
        }
    }
    Ok(restored)
}

/// Finish a deleter's journal whose owner is gone: if a tarball of the
/// revision exists now, put back every link it recorded; then retire it.
/// Returns the keys put back.
pub async fn finish_abandoned(store: &dyn Store, handle: &JournalHandle) -> Result<Vec<String>> {
    let journal = handle.snapshot().await;
    let revision: &Revision = &journal.revision;
    let tarball = revision.tarball_name();
    let named = crate::deletion::Named {
        architecture: &revision.architecture,
        package: &revision.package,
        tarball: &tarball,
    };
    let mut tarballs = crate::deletion::revision_tarballs(store, named, None).await?;
    tarballs.push(revision.store_key());
    tarballs.extend(journal.removes.iter().filter_map(|link| {
        let kind = match link.redirect {
            Some(_) => LinkKind::Dist,
            None => LinkKind::Package,
        };
        crate::layout::link_target(&revision.architecture, kind, link.body.as_bytes())
            .filter(|key| key.ends_with(&format!("/{tarball}")))
    }));
    let restored = match crate::deletion::published(store, &tarballs).await? {
        Some(_) => restore(store, &journal.removes).await?,
        None => Vec::new(),
    };
    handle.confirm().await?;
    handle.retire().await?;
    Ok(restored)
}
