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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::Md5;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{self, Revision, DIST_DIRS};
use crate::record::{self, LinksDigest, Record};
use crate::storage::{Listing, Segments, Store};
use crate::tarball::{Piece, Verifier};

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
const PERMIT_BYTES: u64 = 1 << 20;

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
        permits: Arc::new(Semaphore::new((memory / PERMIT_BYTES) as usize)),
        concurrency,
        chunk_size: options.chunk_size.clamp(1, memory),
        bytes_read: AtomicU64::new(0),
        bar: progress_bar(options.progress),
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

/// A revision found by name: from its package link, its record, or both.
#[derive(Debug, Clone)]
struct Candidate {
    architecture: String,
    package: String,
    version: String,
    revision: String,
    has_package_link: bool,
    /// `Some` for a record found without a package link: it was read to
    /// learn its revision.
    orphan_record: Option<std::result::Result<Record, String>>,
}

impl Candidate {
    fn full_version(&self) -> String {
        format!("{}-{}-{}", self.package, self.version, self.revision)
    }

    fn id(&self) -> String {
        format!("{}/{}", self.architecture, self.full_version())
    }

    fn tarball_name(&self) -> String {
        format!("{}.{}.tar.gz", self.full_version(), self.architecture)
    }

    fn wanted(&self, options: &VerifyOptions) -> bool {
        let matches = |filter: &Option<String>, value: &str| {
            filter.as_deref().is_none_or(|wanted| wanted == value)
        };
        matches(&options.package, &self.package)
            && matches(&options.version, &self.version)
            && matches(&options.revision, &self.revision)
    }
}

/// Every revision the options select, sorted.
async fn select(store: &dyn Store, options: &VerifyOptions) -> Result<Vec<Candidate>> {
    check_filters(options)?;
    // An architecture asked for is looked for only if nothing is found in
    // it: one listing less before the first tarball streams.
    let arches = match &options.architecture {
        Some(arch) => vec![arch.clone()],
        None => architectures(store, options).await?,
    };
    let mut selected = Vec::new();
    for arch in &arches {
        let records = format!("{}{arch}/", record::PREFIX);
        let (linked, records) = tokio::join!(
            linked_revisions(store, arch, options),
            store.list_dir(&records, false)
        );
        let linked = linked?;
        let linked_names: BTreeSet<String> = linked.iter().map(Candidate::full_version).collect();
        selected.extend(linked);
        selected.extend(orphan_records(store, arch, records?, &linked_names, options).await?);
    }
    selected.sort_by_key(Candidate::id);
    if selected.is_empty() && options.architecture.is_some() {
        architectures(store, options).await?; // Says so if it is unknown.
    }
    let filtered =
        options.package.is_some() || options.version.is_some() || options.revision.is_some();
    if selected.is_empty() && filtered {
        let given: Vec<String> = [
            ("architecture", &options.architecture),
            ("package", &options.package),
            ("version", &options.version),
            ("revision", &options.revision),
        ]
        .into_iter()
        .filter_map(|(flag, value)| value.as_ref().map(|v| format!("--{flag} {v}")))
        .collect();
        return Err(Error::input(format!(
            "no revision in {} matches {}: check the names (`alitx check` lists the store's revisions)",
            store.describe(),
            given.join(" ")
        )));
    }
    Ok(selected)
}

/// The filters are names as aliBuild allows them: say which is not.
fn check_filters(options: &VerifyOptions) -> Result<()> {
    let placeholder = "x";
    Revision::new(
        options.architecture.as_deref().unwrap_or(placeholder),
        options.package.as_deref().unwrap_or(placeholder),
        options.version.as_deref().unwrap_or(placeholder),
        options.revision.as_deref().unwrap_or(placeholder),
        &"0".repeat(40),
    )
    .map(|_| ())
}

/// The architectures to walk: the one asked for, else every one with a
/// `TARS/<arch>/` or records.
async fn architectures(store: &dyn Store, options: &VerifyOptions) -> Result<Vec<String>> {
    let roots = ["TARS/", record::PREFIX];
    let listings =
        futures::future::try_join_all(roots.map(|root| store.list_dir(root, false))).await?;
    let mut present = BTreeSet::new();
    for (root, listing) in roots.iter().zip(listings) {
        for prefix in listing.prefixes {
            present.insert(prefix[root.len()..].trim_end_matches('/').to_string());
        }
    }
    match &options.architecture {
        Some(arch) if !present.contains(arch) => Err(Error::input(format!(
            "unknown architecture {arch:?}: {} holds {}; pass one of those to --architecture, or none",
            store.describe(),
            if present.is_empty() {
                "no architectures (no TARS/<arch>/ at all)".to_string()
            } else {
                present.into_iter().collect::<Vec<_>>().join(", ")
            }
        ))),
        Some(arch) => Ok(vec![arch.clone()]),
        None => Ok(present.into_iter().collect()),
    }
}

/// The revisions of `arch` that have a package link.
async fn linked_revisions(
    store: &dyn Store,
    arch: &str,
    options: &VerifyOptions,
) -> Result<Vec<Candidate>> {
    let root = format!("TARS/{arch}/");
    let packages: Vec<String> = match &options.package {
        Some(package) => vec![package.clone()],
        None => store
            .list_dir(&root, false)
            .await?
            .prefixes
            .iter()
            .map(|p| p[root.len()..].trim_end_matches('/').to_string())
            .filter(|name| name != "store" && !DIST_DIRS.contains(&name.as_str()))
            .collect(),
    };
    let listings: Vec<(String, Vec<String>)> = futures::stream::iter(packages)
        .map(|package| {
            let dir = format!("{root}{package}/");
            async move {
                let listing = store.list_dir(&dir, false).await?;
                let names = listing
                    .objects
                    .into_iter()
                    .map(|o| o.key[dir.len()..].to_string())
                    .collect();
                Ok::<_, Error>((package, names))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut found = Vec::new();
    for (package, names) in listings {
        for name in names {
            let Some(full) = layout::tarball_full_version(arch, &name) else {
                continue;
            };
            let Some((version, revision)) = split_version(&package, full) else {
                continue;
            };
            let candidate = Candidate {
                architecture: arch.into(),
                package: package.clone(),
                version,
                revision,
                has_package_link: true,
                orphan_record: None,
            };
            if candidate.wanted(options) && valid_names(&candidate) {
                found.push(candidate);
            }
        }
    }
    Ok(found)
}

/// `<ver>`, `<rev>` of `<pkg>-<ver>-<rev>` (a revision has no `-`).
fn split_version(package: &str, full: &str) -> Option<(String, String)> {
    let (version, revision) = full
        .strip_prefix(package)?
        .strip_prefix('-')?
        .rsplit_once('-')?;
    Some((version.to_string(), revision.to_string()))
}

/// Whether a name found in the store is one aliBuild could have written.
fn valid_names(c: &Candidate) -> bool {
    Revision::new(
        &c.architecture,
        &c.package,
        &c.version,
        &c.revision,
        &"0".repeat(40),
    )
    .is_ok()
}

/// Records of `arch` (`listing`, its record directory) whose revision has
/// no package link: each is read to learn which revision it describes.
async fn orphan_records(
    store: &dyn Store,
    arch: &str,
    listing: Listing,
    linked: &BTreeSet<String>,
    options: &VerifyOptions,
) -> Result<Vec<Candidate>> {
    let dir = format!("{}{arch}/", record::PREFIX);
    let orphans: Vec<(String, String)> = listing
        .objects
        .into_iter()
        .filter_map(|o| {
            let full = o.key[dir.len()..].strip_suffix(".json")?.to_string();
            let package_may_match = options
                .package
                .as_deref()
                .is_none_or(|p| full.starts_with(&format!("{p}-")));
            (package_may_match && !linked.contains(&full)).then_some((o.key, full))
        })
        .collect();
    let read: Vec<Candidate> = futures::stream::iter(orphans)
        .map(|(key, full)| async move {
            let Some(parsed) = read_record(store, &key).await? else {
                return Ok(None); // deleted since the listing
            };
            // A record that cannot be trusted names its revision only by
            // its key: split it as well as can be, for the report.
            let (package, version, revision) = match &parsed {
                Ok(r) => (
                    r.revision.package.clone(),
                    r.revision.version.clone(),
                    r.revision.revision.clone(),
                ),
                Err(_) => guess_names(&full),
            };
            Ok::<_, Error>(Some(Candidate {
                architecture: arch.into(),
                package,
                version,
                revision,
                has_package_link: false,
                orphan_record: Some(parsed),
            }))
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .filter(|c| c.wanted(options))
        .collect();
    Ok(read)
}

/// The record at `key`: `None` if there is none, `Some(Err(why))` if it
/// cannot be trusted; an error if the store cannot be read.
async fn read_record(
    store: &dyn Store,
    key: &str,
) -> Result<Option<std::result::Result<Record, String>>> {
    match record::read_key(store, key).await {
        Ok(found) => Ok(found.map(Ok)),
        Err(e) if e.kind == ErrorKind::Verification => Ok(Some(Err(e.message))),
        Err(e) => Err(e),
    }
}

/// `<pkg>-<ver>-<rev>` split at its last two dashes.
fn guess_names(full: &str) -> (String, String, String) {
    let mut parts = full.rsplitn(3, '-');
    let revision = parts.next().unwrap_or_default().to_string();
    let version = parts.next().unwrap_or_default().to_string();
    let package = parts.next().unwrap_or_default().to_string();
    (package, version, revision)
}

/// One ranged GET's bytes in memory, as they arrived: it holds its memory
/// permits until the verifier has consumed it, which bounds memory.
struct Range {
    data: Segments,
    _permit: OwnedSemaphorePermit,
}

impl Piece for Range {
    fn slices(&self) -> &[Bytes] {
        self.data.as_slices()
    }
}

/// A spawned task that is aborted when its handle is dropped: the ranged
/// GETs still in flight when a tarball's reading stops early (a corrupt
/// piece, an error) end with it instead of running to completion.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What reading a tarball through the verifier found.
struct TarballRead {
    /// `Some` when every byte was read.
    sha256: Option<String>,
    /// The gzip+tar verdict: entries, or why not.
    verdict: Result<u64>,
}

struct Reader {
    store: Arc<dyn Store>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    chunk_size: u64,
    bytes_read: AtomicU64,
    bar: indicatif::ProgressBar,
}

impl Reader {
    /// The verdict on one revision; `None` if it is not published.
    async fn verify_revision(&self, candidate: Candidate) -> Option<RevisionReport> {
        let mut report = RevisionReport {
            id: candidate.id(),
            architecture: candidate.architecture.clone(),
            package: candidate.package.clone(),
            version: candidate.version.clone(),
            revision: candidate.revision.clone(),
            hash: None,
            class: Class::Corrupt,
            reasons: Vec::new(),
            tarball: None,
            size: None,
            sha256: None,
            entries: None,
            record: None,
        };
        match self.check(&candidate, &mut report).await {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) if matches!(e.kind, ErrorKind::Store | ErrorKind::Io) => {
                report.reasons.push(e.message);
                report.class = Class::Unreadable;
                return Some(report);
            }
            Err(e) => report.reasons.push(e.message),
        }
        report.class = if !report.reasons.is_empty() {
            Class::Corrupt
        } else if report.record.is_some() {
            Class::Verified
        } else {
            Class::NoRecord
        };
        Some(report)
    }

    /// Fill in `report`, pushing every reason the revision is corrupt; an
    /// error when the store could not be read. `Ok(false)` when the
    /// revision is not published.
    async fn check(&self, candidate: &Candidate, report: &mut RevisionReport) -> Result<bool> {
        let store = &*self.store;
        let arch = &candidate.architecture;
        let link_key = format!(
            "TARS/{arch}/{}/{}",
            candidate.package,
            candidate.tarball_name()
        );
        let record_key = record::key_for(arch, &candidate.full_version());
        let (link_body, record) = tokio::join!(
            async {
                match candidate.has_package_link {
                    true => store.get(&link_key).await,
                    false => Ok(None),
                }
            },
            async {
                match &candidate.orphan_record {
                    Some(parsed) => Ok(Some(parsed.clone())),
                    None => read_record(store, &record_key).await,
                }
            }
        );
        let (link_body, record) = (link_body?, record?);
        let record = match record {
            Some(Ok(record)) => Some(record),
            Some(Err(why)) => {
                report.reasons.push(why);
                None
            }
            None => None,
        };

        // The hash: the record's, else the package link's.
        let linked_hash = link_body
            .as_deref()
            .and_then(|body| hash_named_by(arch, &candidate.tarball_name(), body));
        match (&link_body, &linked_hash, &record) {
            (None, _, Some(_)) => report
                .reasons
                .push(format!("its package link {link_key} is missing")),
            (Some(body), None, _) => report.reasons.push(format!(
                "its package link {link_key} does not name a store tarball of this revision (it says {:?})",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            (Some(_), Some(linked), Some(record)) if *linked != record.revision.hash => {
                report.reasons.push(format!(
                    "its package link names hash {linked}, its publication record hash {}",
                    record.revision.hash
                ))
            }
            _ => {}
        }
        let Some(hash) = record
            .as_ref()
            .map(|r| r.revision.hash.clone())
            .or(linked_hash)
        else {
            // Nothing says which tarball: corrupt if the package link
            // exists (said above), else gone since the listing.
            return Ok(!report.reasons.is_empty());
        };
        let revision = Revision::new(
            arch,
            &candidate.package,
            &candidate.version,
            &candidate.revision,
            &hash,
        )?;
        report.hash = Some(hash);
        report.record = record.clone();
        let store_key = revision.store_key();
        report.tarball = Some(store_key.clone());

        let Some(info) = store.head(&store_key).await? else {
            if record.is_none() && report.reasons.is_empty() {
                return Ok(false);
            }
            report
                .reasons
                .push(format!("its store tarball {store_key} is missing"));
            return Ok(true);
        };
        // aliBuild follows a store object that redirects to another key.
        let source = match info
            .website_redirect
            .as_deref()
            .map(|r| r.trim_start_matches('/'))
        {
            Some(target)
                if target.starts_with("TARS/") && !target.split('/').any(|c| c == "..") =>
            {
                self.store
                    .head(target)
                    .await?
                    .map(|i| (target.to_string(), i.size))
            }
            Some(target) => {
                report.reasons.push(format!(
                    "its store tarball redirects to {target:?}, not a key of this store"
                ));
                return Ok(true);
            }
            None => Some((store_key.clone(), info.size)),
        };
        let Some((source, size)) = source else {
            report
                .reasons
                .push("its store tarball redirects to a key that does not exist".into());
            return Ok(true);
        };
        report.size = Some(size);
        self.bar.inc_length(size);
        let (read, link_problems) = tokio::join!(
            self.read_tarball(&source, size, &revision),
            self.check_links(&revision, &link_key, link_body.is_some(), record.as_ref())
        );
        let (read, link_problems) = (read?, link_problems?);
        report.sha256 = read.sha256.clone();
        if let Some(record) = &record {
            if record.size != size {
                report.reasons.push(format!(
                    "the store tarball has {size} bytes, its publication record {}",
                    record.size
                ));
            }
            if let Some(sha256) = read.sha256.as_ref().filter(|s| **s != record.sha256) {
                report.reasons.push(format!(
                    "the store tarball's SHA-256 is {sha256}, its publication record's {} \
                     (published by transaction {} on {} at {})",
                    record.sha256, record.txn, record.owner.host, record.published_at
                ));
            }
        }
        match read.verdict {
            Ok(entries) => report.entries = Some(entries),
            Err(e) => report
                .reasons
                .push(format!("the store tarball: {}", e.message)),
        }
        report.reasons.extend(link_problems);
        Ok(true)
    }

    /// Why its links are wrong, if they are: its own link in each dist
    /// directory must name the tarball, and its links be the ones published.
    async fn check_links(
        &self,
        revision: &Revision,
        link_key: &str,
        has_package_link: bool,
        record: Option<&Record>,
    ) -> Result<Vec<String>> {
        let store_key = revision.store_key();
        let own_body_md5 = hex::encode(Md5::digest(store_key.as_bytes()));
        let mut reasons = Vec::new();
        let mut keys: Vec<String> = has_package_link
            .then(|| link_key.to_string())
            .into_iter()
            .collect();
        let listings = futures::future::try_join_all(DIST_DIRS.map(|dir| {
            let prefix = revision.dist_prefix(dir);
            async move { self.store.list_dir(&prefix, false).await }
        }))
        .await?;
        for (dir, listing) in DIST_DIRS.iter().zip(listings) {
            let own = revision.dist_link(dir, &store_key)?;
            match listing.objects.iter().find(|o| o.key == own.key) {
                None => reasons.push(format!("its own {dir} link {} is missing", own.key)),
                Some(found) => {
                    let names_it = match &found.md5 {
                        Some(md5) => *md5 == own_body_md5,
                        None => {
                            self.store.get(&own.key).await?.as_deref() == Some(store_key.as_bytes())
                        }
                    };
                    if !names_it {
                        reasons.push(format!(
                            "its own {dir} link {} does not name {store_key}",
                            own.key
                        ));
                    }
                }
            }
            keys.extend(listing.objects.into_iter().map(|o| o.key));
        }
        if let Some(record) = record {
            let now = LinksDigest::of(keys.iter().map(String::as_str));
            if now != record.links {
                reasons.push(format!(
                    "its links are not the ones published ({} now, {} when published)",
                    now.count, record.links.count
                ));
            }
        }
        Ok(reasons)
    }

    /// Stream `key` (`size` bytes) once through SHA-256 and the gzip+tar
    /// verifier, in ranged GETs of `chunk_size`, several in flight.
    async fn read_tarball(&self, key: &str, size: u64, revision: &Revision) -> Result<TarballRead> {
        let verifier = Verifier::<Range>::start(revision)?;
        // A dispatcher takes memory permits for the pieces in order and
        // starts each ranged GET as a task of its own, so that bodies keep
        // arriving while earlier pieces are hashed and verified. In order:
        // a piece holds memory only after every earlier piece of its tarball
        // does, so the piece consumed next can always arrive, however many
        // tarballs share the permits.
        let (gets, mut arrivals) = tokio::sync::mpsc::channel(self.concurrency);
        let (store, permits, key) = (self.store.clone(), self.permits.clone(), key.to_string());
        let chunk = self.chunk_size;
        let dispatcher = AbortOnDrop(tokio::spawn(async move {
            for offset in (0..size.div_ceil(chunk)).map(|i| i * chunk) {
                let expected = chunk.min(size - offset);
                let permit = permits
                    .clone()
                    .acquire_many_owned(expected.div_ceil(PERMIT_BYTES) as u32)
                    .await
                    .expect("the semaphore is never closed");
                let (store, key) = (store.clone(), key.clone());
                let get = AbortOnDrop(tokio::spawn(async move {
                    match store.get_range(&key, offset, expected).await? {
                        Some(data) if data.len() as u64 == expected => Ok(Range {
                            data,
                            _permit: permit,
                        }),
                        _ => Err(Error::store(format!(
                            "{key} changed while it was read (it had {size} bytes); run verify again"
                        ))),
                    }
                }));
                if gets.send(get).await.is_err() {
                    return; // The reading stopped early.
                }
            }
        }));
        let mut sha = Sha256::new();
        let mut read = 0u64;
        let mut failure = None;
        while let Some(get) = arrivals.recv().await {
            let joined = get
                .await
                .map_err(|e| Error::new(ErrorKind::Io, format!("reading task: {e}")));
            let piece = match joined.and_then(|piece| piece) {
                Ok(piece) => piece,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let len = piece.data.len() as u64;
            let (hashed, piece) = tokio::task::spawn_blocking(move || {
                piece.slices().iter().for_each(|slice| sha.update(slice));
                (sha, piece)
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("hashing task: {e}")))?;
            sha = hashed;
            read += len;
            self.bytes_read.fetch_add(len, Ordering::Relaxed);
            self.bar.inc(len);
            if !verifier.feed(piece).await {
                break; // It failed: its verdict says why.
            }
        }
        drop((arrivals, dispatcher));
        let verdict = tokio::task::spawn_blocking(move || verifier.finish())
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("verifier task: {e}")))?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(TarballRead {
            sha256: (read == size).then(|| hex::encode(sha.finalize())),
            verdict,
        })
    }
}

/// The hash in a package link body `<arch>/store/<h2>/<hash>/<tarball>`,
/// if it names a store tarball called `tarball`.
fn hash_named_by(arch: &str, tarball: &str, body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let key = format!("TARS/{body}");
    let (_, hash, name) = layout::parse_store_key(arch, &key).ok()?;
    (name == tarball).then(|| hash.to_string())
}

fn progress_bar(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verify {prefix} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("valid template"),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_store_keys() {
        assert_eq!(
            split_version("Python-modules", "Python-modules-v1-2-3"),
            Some(("v1-2".into(), "3".into()))
        );
        assert_eq!(split_version("Python", "Pythonx-v1-1"), None);
        assert_eq!(
            guess_names("zlib-v1.2-1"),
            ("zlib".into(), "v1.2".into(), "1".into())
        );
        let arch = "slc9_x86-64";
        let hash = "5b82364561d097dcbef08ccc08bb1f4cf4de725c";
        let body = format!("{arch}/store/5b/{hash}/zlib-v1-1.{arch}.tar.gz");
        let tarball = format!("zlib-v1-1.{arch}.tar.gz");
        assert_eq!(
            hash_named_by(arch, &tarball, body.as_bytes()),
            Some(hash.into())
        );
        assert_eq!(
            hash_named_by(arch, "other-v1-1.tar.gz", body.as_bytes()),
            None
        );
        assert_eq!(hash_named_by(arch, &tarball, b"../../etc/passwd"), None);
    }
}
