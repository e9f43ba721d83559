//! `alitx verify`: read published revisions back from the store and check
//! them end to end. Each selected revision's tarball is streamed once
//! (ranged GETs in parallel, in bounded memory), hashed, and checked by the
//! same gzip+tar verifier that guards uploads; its size and SHA-256 are
//! compared with its publication record, and its package link and its own
//! link in each dist directory must name it. Read-only.
//!
//! Revisions are found by their package links (`TARS/<arch>/<pkg>/`) and by
//! their records (`.alitx/published/<arch>/`): a record whose revision lost
//! its package link or tarball is corrupt too. A revision with a package
//! link but neither tarball nor record is not published (an upload in
//! flight, or the leftovers `alitx check` reports) and is only counted.

mod judge;
mod read;
mod select;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::budget::Budget;
use crate::error::Result;
use crate::record::{self, Record};
use crate::storage::Store;

pub(crate) use read::Reader;
use select::select;

/// What to verify, and how hard to pull.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub architecture: Option<String>,
    pub package: Option<String>,
    pub version: Option<String>,
    pub revision: Option<String>,
    /// Revisions read at once, and the tarball bytes held in memory: at most
    /// `concurrency × MEMORY_UNIT`, in ranged GETs in flight and
    /// pieces not yet verified, whatever the size of the store.
    pub concurrency: usize,
    /// Bytes per ranged GET of a tarball (at most the memory allowed).
    pub chunk_size: u64,
    /// Draw a progress bar of the bytes read on stderr.
    pub progress: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            architecture: None,
            package: None,
            version: None,
            revision: None,
            concurrency: 8,
            // Two memory units per GET: half as many GETs, each of which
            // costs the gateway CPU of its own (docs/benchmarks.md).
            chunk_size: 2 * MEMORY_UNIT,
            progress: false,
        }
    }
}

/// Tarball bytes `verify` may hold in memory per unit of `--concurrency`.
pub const MEMORY_UNIT: u64 = 8 << 20;

/// The memory budget is counted in permits of this many bytes.
pub(crate) const PERMIT_BYTES: u64 = 1 << 20;

/// The verdict on one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Its tarball, links and record agree.
    Verified,
    /// Something differs from what was published, or is not a complete
    /// tarball of this revision: see `reasons`.
    Corrupt,
    /// No publication record (a stock upload): its tarball and links were
    /// checked, its SHA-256 is reported.
    NoRecord,
    /// The store could not be read: see `reasons`.
    Unreadable,
}

/// One revision, as `verify` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct RevisionReport {
    /// `<arch>/<pkg>-<ver>-<rev>`
    pub id: String,
    pub architecture: String,
    pub package: String,
    pub version: String,
    pub revision: String,
    pub hash: Option<String>,
    pub class: Class,
    /// Why it is corrupt or unreadable.
    pub reasons: Vec<String>,
    /// The store tarball's key.
    pub tarball: Option<String>,
    /// Bytes of the tarball the store holds, and, when all of them were
    /// read, their SHA-256.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Entries of a tarball that passed the gzip+tar check.
    pub entries: Option<u64>,
    /// The publication record, when there is one that can be trusted.
    pub record: Option<Record>,
    /// What the reasons of a corrupt revision concern: decides the remedy.
    #[serde(skip)]
    pub damaged: Damaged,
}

/// What of a corrupt revision failed its checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Damaged {
    /// The tarball itself: missing, unreadable as a gzip'd tar of this
    /// revision, or other bytes than it was uploaded with.
    pub tarball: bool,
    /// The publication record: untrusted, or it describes other bytes than
    /// the intact tarball's.
    pub record: bool,
    /// The package link or the revision's own dist links.
    pub links: bool,
}

impl RevisionReport {
    /// What a person does about it, when it is corrupt.
    pub fn remedy(&self) -> Option<Remedy> {
        if self.class != Class::Corrupt {
            return None;
        }
        Some(if self.damaged.tarball {
            Remedy::Unpublish
        } else if self.damaged.record {
            Remedy::DeleteRecord {
                key: record::key_for(
                    &self.architecture,
                    &format!("{}-{}-{}", self.package, self.version, self.revision),
                ),
            }
        } else {
            Remedy::RepairLinks
        })
    }
}

/// The remedy for a corrupt revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// Its tarball fails: remove the revision and build it again.
    Unpublish,
    /// Its tarball is intact and its record wrong: delete the record (no
    /// command rewrites the record of a published revision).
    DeleteRecord { key: String },
    /// Only its links are wrong: `check` and `repair`.
    RepairLinks,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub revisions: usize,
    pub verified: usize,
    pub corrupt: usize,
    pub no_record: usize,
    pub unreadable: usize,
    /// Package links with neither tarball nor record: not published, not
    /// verified.
    pub not_published: usize,
    pub bytes_read: u64,
    pub seconds: f64,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Nothing corrupt or unreadable.
    pub clean: bool,
    pub store: String,
    pub revisions: Vec<RevisionReport>,
    pub summary: Summary,
}

/// Verify every published revision the options select.
pub async fn verify(store: Arc<dyn Store>, options: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let selected = select(&*store, options).await?;
    let concurrency = options.concurrency.max(1);
    let memory = concurrency as u64 * MEMORY_UNIT;
    let reader = Reader {
        store: store.clone(),
        memory: Budget::new((memory / PERMIT_BYTES) as usize),
        concurrency,
        // The memory budget alone bounds verify's GETs.
        requests: Budget::new(usize::MAX),
        chunk_size: options.chunk_size.clamp(1, memory),
        bytes_read: AtomicU64::new(0),
        bar: crate::progress::bar(
            options.progress,
            0,
            "verify {prefix} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        ),
    };
    let total = selected.len();
    let done = AtomicUsize::new(0);
    reader.bar.set_prefix(format!("0/{total} revisions"));
    let verdicts: Vec<Option<RevisionReport>> = futures::stream::iter(selected)
        .map(|candidate| {
            let (reader, done) = (&reader, &done);
            async move {
                let verdict = reader.verify_revision(candidate).await;
                let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                reader.bar.set_prefix(format!("{done}/{total} revisions"));
                verdict
            }
        })
        .buffer_unordered(reader.concurrency)
        .collect()
        .await;
    reader.bar.finish_and_clear();

    let not_published = verdicts.iter().filter(|v| v.is_none()).count();
    let mut revisions: Vec<RevisionReport> = verdicts.into_iter().flatten().collect();
    revisions.sort_by(|a, b| a.id.cmp(&b.id));
    let count = |class: Class| revisions.iter().filter(|r| r.class == class).count();
    let summary = Summary {
        revisions: revisions.len(),
        verified: count(Class::Verified),
        corrupt: count(Class::Corrupt),
        no_record: count(Class::NoRecord),
        unreadable: count(Class::Unreadable),
        not_published,
        bytes_read: reader.bytes_read.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(VerifyReport {
        clean: summary.corrupt == 0 && summary.unreadable == 0,
        store: store.describe(),
        revisions,
        summary,
    })
}
