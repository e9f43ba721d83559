//! `alitx fetch`: fetch what a build needs from a store into an aliBuild
//! work dir, laid out exactly as aliBuild's own `b3://` fetch lays it: each
//! package's links (`links`) and the tarball of its first candidate hash
//! the store has (`tarball`). Every package at once, within one budget of
//! requests in flight and one of memory, both served in the order the
//! packages are given (a build's order), so that the first ones finish
//! first; each package reported as it finishes; each tarball read in parallel
//! ranges, checked as it streams, renamed into place only when complete and
//! checked: a killed fetch leaves nothing where aliBuild looks, and the
//! re-run fetches only what is missing. See `docs/fetch.md`.

mod links;
mod tarball;
mod wanted;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::budget::Budget;
use crate::error::Result;
use crate::storage::Store;
use crate::verify::{Reader, PERMIT_BYTES};

pub use wanted::Wanted;

/// Where to fetch into, and how hard to pull.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The store as the command line named it, for the commands a refusal
    /// suggests.
    pub remote_store: String,
    pub work_dir: PathBuf,
    pub architecture: String,
    /// Requests in flight to the store at once, all packages together.
    pub concurrency: usize,
    /// Tarball bytes held in memory at once (ranged GETs in flight, pieces
    /// not yet written and checked).
    pub memory: u64,
    /// Bytes per ranged GET of a tarball.
    pub chunk_size: u64,
    /// Draw a progress bar of the bytes read on stderr.
    pub progress: bool,
}

impl FetchOptions {
    pub fn new(remote_store: &str, work_dir: PathBuf, architecture: &str) -> Self {
        FetchOptions {
            remote_store: remote_store.to_string(),
            work_dir,
            architecture: architecture.to_string(),
            concurrency: 32,
            memory: 96 << 20,
            chunk_size: 8 << 20,
            progress: false,
        }
    }
}

/// What became of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Its tarball was read, checked and put in place.
    Fetched,
    /// The work dir already held its tarball, with the right size (and
    /// SHA-256, where a record tells it).
    Present,
    /// The store has no tarball of any of its hashes: the build builds it.
    NotInStore,
    /// No hash was asked for: its links only.
    LinksOnly,
    /// The store's tarball is not what was published, or not a tarball of
    /// its revision: nothing was left in the work dir (see `reasons`).
    Corrupt,
    /// The store or the work dir failed (see `reasons`).
    Failed,
}

/// One package, as `fetch` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PackageReport {
    pub package: String,
    /// The candidate hashes, in the order given.
    pub hashes: Vec<String>,
    pub state: State,
    /// Links laid out in `TARS/<arch>/<pkg>/` (`None` if that failed).
    pub links: Option<usize>,
    /// The candidate the store has a tarball of.
    pub hash: Option<String>,
    /// The tarball's path in the work dir (its store key).
    pub path: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// For a tarball fetched: whether a publication record was there to
    /// check it against (else only the gzip+tar check applied).
    pub checked_against_record: Option<bool>,
    /// For a corrupt tarball: what is wrong with it (e.g. its SHA-256
    /// differs from its publication record's), for a caller that words its
    /// own message; `reasons` holds alitx's.
    pub corruption: Option<String>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub packages: usize,
    pub fetched: usize,
    pub present: usize,
    pub not_in_store: usize,
    pub corrupt: usize,
    pub failed: usize,
    pub links: usize,
    pub bytes_read: u64,
    pub seconds: f64,
}

/// What `fetch` did.
#[derive(Debug, Clone, Serialize)]
pub struct FetchReport {
    /// Nothing corrupt, nothing failed.
    pub clean: bool,
    pub store: String,
    pub work_dir: String,
    pub architecture: String,
    pub packages: Vec<PackageReport>,
    pub summary: Summary,
}

/// What every package's fetch shares.
struct Fetcher {
    store: Arc<dyn Store>,
    remote_store: String,
    architecture: String,
    work_dir: PathBuf,
    /// Requests in flight, shared with the reader's ranged GETs.
    requests: Arc<Budget>,
    reader: Reader,
}

impl Fetcher {
    /// `work`, a request to the store for the package at `priority` (its
    /// place in the order given), once the budget serves it.
    async fn request<T>(&self, priority: u64, work: impl Future<Output = T>) -> T {
        let _request = self.requests.acquire(priority, 1).await;
        work.await
    }

    async fn fetch_package(&self, priority: u64, wanted: Wanted) -> PackageReport {
        let mut report = PackageReport {
            package: wanted.package,
            hashes: wanted.hashes,
            state: State::Failed,
            links: None,
            hash: None,
            path: None,
            size: None,
            sha256: None,
            checked_against_record: None,
            corruption: None,
            reasons: Vec::new(),
        };
        let package = report.package.clone();
        let (links, tarball) = tokio::join!(
            self.fetch_links(priority, &package),
            self.fetch_tarball(priority, &mut report)
        );
        if let Err(e) = tarball {
            report.state = State::Failed;
            report.reasons.push(e.message);
        }
        match links {
            Ok(count) => report.links = Some(count),
            Err(e) => {
                if report.state != State::Corrupt {
                    report.state = State::Failed;
                }
                report.reasons.push(format!("its links: {}", e.message));
            }
        }
        report
    }
}

/// Fetch every package of `wanted` into the work dir, the first ones
/// first.
pub async fn fetch(
    store: Arc<dyn Store>,
    wanted: Vec<Wanted>,
    options: &FetchOptions,
) -> Result<FetchReport> {
    fetch_each(store, wanted, options, |_| {}).await
}

/// [`fetch`], calling `finished` with each package's report as soon as
/// that package is done.
pub async fn fetch_each(
    store: Arc<dyn Store>,
    wanted: Vec<Wanted>,
    options: &FetchOptions,
    finished: impl Fn(&PackageReport),
) -> Result<FetchReport> {
    let started = Instant::now();
    let requests = Budget::new(options.concurrency.max(1));
    let memory = options.memory.max(PERMIT_BYTES);
    let fetcher = Fetcher {
        store: store.clone(),
        remote_store: options.remote_store.clone(),
        architecture: options.architecture.clone(),
        work_dir: options.work_dir.clone(),
        requests: requests.clone(),
        reader: Reader {
            store: store.clone(),
            memory: Budget::new((memory / PERMIT_BYTES) as usize),
            concurrency: options.concurrency.max(1),
            requests,
            chunk_size: options.chunk_size.clamp(1, memory),
            bytes_read: AtomicU64::new(0),
            bar: crate::progress::bar(
                options.progress,
                0,
                "fetch {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            ),
        },
    };
    let (shared, finished) = (&fetcher, &finished);
    let packages: Vec<PackageReport> =
        futures::future::join_all(wanted.into_iter().enumerate().map(|(i, w)| async move {
            let report = shared.fetch_package(i as u64, w).await;
            finished(&report);
            report
        }))
        .await;
    fetcher.reader.bar.finish_and_clear();
    let count = |state: State| packages.iter().filter(|p| p.state == state).count();
    let summary = Summary {
        packages: packages.len(),
        fetched: count(State::Fetched),
        present: count(State::Present),
        not_in_store: count(State::NotInStore),
        corrupt: count(State::Corrupt),
        failed: count(State::Failed),
        links: packages.iter().filter_map(|p| p.links).sum(),
        bytes_read: fetcher.reader.bytes_read.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(FetchReport {
        clean: summary.corrupt == 0 && summary.failed == 0,
        store: store.describe(),
        work_dir: options.work_dir.display().to_string(),
        architecture: options.architecture.clone(),
        packages,
        summary,
    })
}
