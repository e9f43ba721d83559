//! `alitx check`: walk a store's `TARS/` and classify every package revision
//! as complete, partial, unpublished, in flight or abandoned, beside the
//! journals and the staged uploads older than a threshold. Read-only;
//! `repair` acts on what it finds (see `docs/check-repair.md`).
//!
//! The walk lists one level at a time (`TARS/` → architectures → package,
//! dist and store directories), then each package's dist directory and each
//! store `<h2>/` prefix in full, many listings in parallel. Link bodies are
//! untrusted: a package link must name a store tarball of its own revision
//! (known from the MD5 the listing reports when it matches such a body, else
//! read); a dist link is matched to a store tarball by its file name.

mod classify;
mod walk;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use futures::{StreamExt, TryStreamExt};

use crate::deletion::{self, Named};
use crate::error::{Error, ErrorKind, Result};
use crate::journal::State as JournalState;
use crate::layout;
use crate::record::{self, Record};
use crate::recovery::{self, JournalEntry};
use crate::storage::Store;

use classify::{classify, guess_package};
pub use classify::{LeftAlone, Reason};
use walk::{known_packages, walk_architecture, Found};

/// What to scan, and the thresholds that decide what is old enough to act on.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub architecture: Option<String>,
    pub package: Option<String>,
    pub journal_prefix: String,
    /// A partial revision touched more recently than this may belong to a
    /// stock upload that is still running: reported as `recent`.
    pub min_age: Duration,
    /// Staged uploads older than this, that no pending journal references.
    pub stale_uploads_after: Duration,
    /// Listings and reads in flight at once.
    pub concurrency: usize,
}

/// The class of one package revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Tarball, package link and all three dist directories, all consistent.
    Complete,
    /// Leftovers of an upload that stopped half-way, without a store
    /// tarball (see `reasons`): the store proves it was never complete, so
    /// never published; repair removes them.
    Partial,
    /// A package link naming its own store tarball and the revision's own
    /// link in every dist directory, but no tarball and no journal: it may
    /// have been published and its tarball retired by a clean-up, which
    /// keeps the links to reserve the number; or, whatever its links, its
    /// package's manifest or its publication record says it was published.
    /// Its number stays reserved; a rebuild of the same hash completes it;
    /// only `repair --unpublish` naming it removes it.
    Unpublished,
    /// The store tarball exists, so the revision is published and final,
    /// but a link that the store alone determines is missing or wrong (see
    /// `reasons`): repair re-creates what it can, never deletes.
    PublishedIncomplete,
    /// A pending alitx journal whose owner is alive covers it.
    InFlight,
    /// A pending alitx journal whose owner is gone covers it.
    Abandoned,
}

/// One package revision, as `check` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionReport {
    pub architecture: String,
    pub package: String,
    pub version: Option<String>,
    pub revision: Option<String>,
    /// `<pkg>-<ver>-<rev>.<arch>.tar.gz`
    pub tarball: String,
    pub hash: Option<String>,
    pub state: State,
    /// Touched less than `--min-age` ago: repair leaves it alone.
    pub recent: bool,
    /// Whether `repair` would remove it (partial, not recent), restore its
    /// links (published-incomplete, package known), or roll it back
    /// (abandoned).
    pub repairable: bool,
    /// Seconds since its newest key was written.
    pub age_seconds: Option<i64>,
    pub reasons: Vec<Reason>,
    /// What is odd but no reason to change anything: a dist link to a
    /// dependency tarball that is not in the store (cleaned up, or
    /// published elsewhere).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The journal covering it, if any.
    pub journal: Option<String>,
    /// For a revision that is not complete: its keys in the store, in the
    /// order repair deletes a partial one's (dist links, package link).
    pub keys: Vec<String>,
}

impl RevisionReport {
    /// `<arch>/<tarball>`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.architecture, self.tarball)
    }

    /// `TARS/<arch>/<pkg>/<tarball>`
    pub fn package_link_key(&self) -> String {
        format!(
            "TARS/{}/{}/{}",
            self.architecture, self.package, self.tarball
        )
    }

    /// The revision, as the deletion guard takes it.
    pub fn named(&self) -> Named<'_> {
        Named {
            architecture: &self.architecture,
            package: &self.package,
            tarball: &self.tarball,
        }
    }

    /// Its store tarball under the hash the scan found, if it found one.
    pub fn expected_tarball(&self) -> Option<String> {
        let hash = self.hash.as_deref()?;
        Some(layout::store_key(&self.architecture, hash, &self.tarball))
    }
}

/// A staged upload older than the threshold.
#[derive(Debug, Clone, Serialize)]
pub struct StaleUpload {
    pub key: String,
    pub upload_id: String,
    pub age_seconds: Option<i64>,
    /// The pending journal that references it: repair leaves it to that
    /// journal's rollback.
    pub journal: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub revisions: usize,
    pub complete: usize,
    pub partial: usize,
    pub published_incomplete: usize,
    /// Every link, no tarball: kept (see [`State::Unpublished`]).
    pub unpublished: usize,
    /// Revisions with warnings.
    pub warnings: usize,
    pub recent: usize,
    pub in_flight: usize,
    pub abandoned: usize,
    pub journals: usize,
    pub invalid_journals: usize,
    pub stale_uploads: usize,
    /// Keys under `TARS/` that belong to no revision (manifests, odd names).
    pub foreign_keys: usize,
    pub keys_listed: usize,
    pub requests: usize,
    pub seconds: f64,
}

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Nothing partial, abandoned or invalid, and no stale upload that no
    /// pending journal references.
    pub clean: bool,
    pub store: String,
    pub architectures: Vec<String>,
    pub revisions: Vec<RevisionReport>,
    pub journals: Vec<JournalEntry>,
    pub stale_uploads: Vec<StaleUpload>,
    pub summary: Summary,
}

/// Walk the store and classify every revision.
pub async fn scan(store: &dyn Store, options: &ScanOptions) -> Result<CheckReport> {
    let started = Instant::now();
    let now = crate::now_secs();
    let mut requests = 1;
    let present: Vec<String> = store
        .list_dir("TARS/", false)
        .await?
        .prefixes
        .iter()
        .map(|p| p["TARS/".len()..].trim_end_matches('/').to_string())
        .collect();
    let architectures = match &options.architecture {
        Some(arch) if !present.contains(arch) => {
            return Err(layout::unknown_architecture(
                arch,
                &store.describe(),
                &present,
            ))
        }
        Some(arch) => vec![arch.clone()],
        None => present,
    };

    let mut found = Found::default();
    for arch in &architectures {
        requests += walk_architecture(store, arch, options, &mut found).await?;
    }
    let all_journals = recovery::list_journals(store, &options.journal_prefix).await?;
    requests += 1 + all_journals.len();
    let journals = selected_journals(&all_journals, options);
    let (foreign_keys, keys_listed) = (found.foreign, found.keys_listed);
    let known = known_packages(&found);
    let mut revisions = classify(found, &journals, now, options);
    requests += recorded_as_published(store, &mut revisions, options.concurrency).await?;
    revisions.sort_by(|a, b| (&a.architecture, &a.tarball).cmp(&(&b.architecture, &b.tarball)));
    let stale_uploads = stale_uploads(store, &all_journals, &known, now, options).await?;
    requests += 1;

    let count = |state: State| revisions.iter().filter(|r| r.state == state).count();
    let invalid_journals = journals.iter().filter(|j| j.journal.is_none()).count();
    let summary = Summary {
        revisions: revisions.len(),
        complete: count(State::Complete),
        partial: count(State::Partial),
        published_incomplete: count(State::PublishedIncomplete),
        unpublished: count(State::Unpublished),
        warnings: revisions.iter().filter(|r| !r.warnings.is_empty()).count(),
        recent: revisions.iter().filter(|r| r.recent).count(),
        in_flight: count(State::InFlight),
        abandoned: count(State::Abandoned),
        journals: journals.len(),
        invalid_journals,
        stale_uploads: stale_uploads.len(),
        foreign_keys,
        keys_listed,
        requests,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(CheckReport {
        clean: summary.partial == 0
            && summary.published_incomplete == 0
            && summary.abandoned == 0
            && invalid_journals == 0
            && stale_uploads.iter().all(|u| u.journal.is_some()),
        store: store.describe(),
        architectures,
        revisions,
        journals,
        stale_uploads,
        summary,
    })
}

/// The journals the filters select.
fn selected_journals(all: &[JournalEntry], options: &ScanOptions) -> Vec<JournalEntry> {
    all.iter()
        .filter(|j| {
            let keep = |filter: &Option<String>, value: &Option<String>| {
                filter.is_none() || value.is_none() || filter == value
            };
            keep(&options.architecture, &j.architecture) && keep(&options.package, &j.package)
        })
        .cloned()
        .collect()
}

/// Staged uploads of the scanned architecture (`--architecture`, else any:
/// an upload killed before it wrote anything else has no `TARS/<arch>/`
/// listing to be found through) older than the threshold. Each is matched to a pending journal (of any package) by key and upload
/// id; with `--package`, an upload belongs to the package of its journal,
/// or, with none, to the package its tarball name names.
async fn stale_uploads(
    store: &dyn Store,
    journals: &[JournalEntry],
    known: &BTreeSet<(String, String)>,
    now: i64,
    options: &ScanOptions,
) -> Result<Vec<StaleUpload>> {
    let uploads = store.list_uploads("TARS/").await?;
    let threshold = options.stale_uploads_after.as_secs() as i64;
    Ok(uploads
        .into_iter()
        .filter_map(|u| {
            let arch = u.key.split('/').nth(1).unwrap_or("").to_string();
            if options.architecture.as_ref().is_some_and(|a| *a != arch) {
                return None;
            }
            let journal = journals.iter().find_map(|entry| {
                let j = entry.journal.as_ref()?;
                (j.state == JournalState::Pending
                    && j.tarball.key == u.key
                    && j.tarball.upload_id.as_deref() == Some(&u.upload_id))
                .then_some(j)
            });
            let package = match journal {
                Some(j) => j.revision.package.clone(),
                None => guess_package(known, &arch, u.key.rsplit('/').next().unwrap_or("")),
            };
            if options.package.as_deref().is_some_and(|p| p != package) {
                return None;
            }
            let age = u.initiated.map(|t| now - t);
            // An unknown time is recent (see `storage::newest_time`).
            if age.is_none_or(|age| age < threshold) {
                return None;
            }
            Some(StaleUpload {
                journal: journal.map(|j| j.id()),
                key: u.key,
                upload_id: u.upload_id,
                age_seconds: age,
            })
        })
        .collect())
}

/// A partial revision whose publication record names its store tarball was
/// published, and its tarball removed since (by a clean-up, or by an
/// `--unpublish` that stopped half-way): unpublished, as every deleter
/// judges it ([`deletion::retired`]). A record that cannot be trusted is a
/// warning (repair then deletes nothing of the revision). The requests it
/// sent.
async fn recorded_as_published(
    store: &dyn Store,
    revisions: &mut [RevisionReport],
    concurrency: usize,
) -> Result<usize> {
    let partial: Vec<usize> = (0..revisions.len())
        .filter(|&i| revisions[i].state == State::Partial)
        .collect();
    let shared: &[RevisionReport] = revisions;
    let records: Vec<(usize, Result<Option<Record>>)> =
        futures::stream::iter(partial.iter().copied())
            .map(|i| async move {
                let revision = &shared[i];
                let expected = revision.expected_tarball();
                let tarballs =
                    deletion::revision_tarballs(store, revision.named(), expected.as_deref())
                        .await?;
                Ok::<_, Error>((i, deletion::retired(store, &tarballs).await))
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
    for (i, record) in records {
        let revision = &mut revisions[i];
        match record {
            Ok(Some(record)) => {
                revision.state = State::Unpublished;
                revision.recent = false;
                revision.repairable = false;
                revision.reasons.push(Reason::Recorded {
                    record: record::key_of(&record.revision),
                });
            }
            Ok(None) => {}
            Err(e) if e.kind == ErrorKind::Verification => revision.warnings.push(e.message),
            Err(e) => return Err(e),
        }
    }
    // Its own links (package link, three dist links) and the record.
    Ok(partial.len() * 5)
}
