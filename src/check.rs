//! `alitx check`: walk a store's `TARS/` and classify every package revision
//! as complete, partial, in flight or abandoned, beside the journals and the
//! staged uploads older than a threshold. Read-only; `repair` acts on what it
//! finds (see `docs/check-repair.md`).
//!
//! The walk lists one level at a time (`TARS/` → architectures → package,
//! dist and store directories), then each package's dist directory and each
//! store `<h2>/` prefix in full, many listings in parallel. Link bodies are
//! untrusted: a package link must name a store tarball of its own revision
//! (known from the MD5 the listing reports when it matches such a body, else
//! read); a dist link is matched to a store tarball by its file name.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::journal::State as JournalState;
use crate::layout::{self, DIST_DIRS};
use crate::recovery::{self, JournalEntry};
use crate::storage::{ObjectMeta, Store};

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
    /// Leftovers of an upload that stopped half-way (see `reasons`).
    Partial,
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
    /// Whether `repair` would remove it (partial, not recent, and its
    /// tarball no other revision's dist link needs), or roll it back
    /// (abandoned).
    pub repairable: bool,
    /// Its tarball is a dependency (a dist link's target) of other
    /// revisions: repair leaves it alone whatever its age.
    pub needed_by_others: bool,
    /// Seconds since its newest key was written.
    pub age_seconds: Option<i64>,
    pub reasons: Vec<String>,
    /// The journal covering it, if any.
    pub journal: Option<String>,
    /// For a revision that is not complete: its keys in the store, in the
    /// order repair deletes them (tarball, dist links, package link).
    pub keys: Vec<String>,
}

impl RevisionReport {
    /// `<arch>/<tarball>`, for messages.
    pub fn id(&self) -> String {
        format!("{}/{}", self.architecture, self.tarball)
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
            return Err(Error::input(format!(
                "unknown architecture {arch:?}: {} holds {}; pass one of those to --architecture, or none",
                store.describe(),
                if present.is_empty() {
                    "no architectures (no TARS/<arch>/ at all)".to_string()
                } else {
                    present.join(", ")
                }
            )))
        }
        Some(arch) => vec![arch.clone()],
        None => present,
    };

    let mut found = Found::default();
    for arch in &architectures {
        requests += walk_architecture(store, arch, options, &mut found).await?;
    }
    let journals = journals(store, options).await?;
    requests += 1 + journals.len();
    let (foreign_keys, keys_listed) = (found.foreign, found.keys_listed);
    let mut revisions = classify(found, &journals, now, options);
    revisions.sort_by(|a, b| (&a.architecture, &a.tarball).cmp(&(&b.architecture, &b.tarball)));
    let stale_uploads = stale_uploads(store, &architectures, &journals, now, options).await?;
    requests += 1;

    let count = |state: State| revisions.iter().filter(|r| r.state == state).count();
    let invalid_journals = journals.iter().filter(|j| j.journal.is_none()).count();
    let summary = Summary {
        revisions: revisions.len(),
        complete: count(State::Complete),
        partial: count(State::Partial),
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

/// Which revision a key belongs to: architecture, package, tarball name.
type RevisionKey = (String, String, String);

/// The keys the walk found, grouped by revision.
#[derive(Debug, Clone, Default)]
struct Found {
    links: BTreeMap<RevisionKey, Links>,
    /// `(arch, tarball name)` → every store tarball of that name.
    tarballs: BTreeMap<(String, String), Vec<Tarball>>,
    foreign: usize,
    keys_listed: usize,
}

#[derive(Debug, Clone, Default)]
struct Links {
    package_link: Option<(ObjectMeta, Bytes)>,
    /// Per dist directory (in `DIST_DIRS` order): the links directly in it.
    dist: [Vec<ObjectMeta>; 3],
}

#[derive(Debug, Clone)]
struct Tarball {
    object: ObjectMeta,
    hash: String,
}

/// One listing of the walk, and what its keys are.
enum Job {
    /// `TARS/<arch>/store/<h2>/`, in full.
    Store(String),
    /// `TARS/<arch>/<dist>/<pkg>/`, in full.
    Dist(usize, String),
    /// `TARS/<arch>/<pkg>/`, one level.
    Package(String),
}

/// List everything of one architecture into `found`; returns the number of
/// requests made.
async fn walk_architecture(
    store: &dyn Store,
    arch: &str,
    options: &ScanOptions,
    found: &mut Found,
) -> Result<usize> {
    let root = format!("TARS/{arch}/");
    let top = store.list_dir(&root, false).await?;
    let mut requests = 1;
    found.foreign += top.objects.len();
    found.keys_listed += top.objects.len();
    let wanted = |pkg: &str| options.package.as_deref().is_none_or(|p| p == pkg);
    let mut jobs = Vec::new();
    for prefix in &top.prefixes {
        let name = prefix[root.len()..].trim_end_matches('/');
        if name == "store" {
            let h2 = store.list_dir(prefix, false).await?;
            requests += 1;
            found.foreign += h2.objects.len();
            jobs.extend(h2.prefixes.into_iter().map(Job::Store));
        } else if let Some(d) = DIST_DIRS.iter().position(|d| *d == name) {
            let packages = store.list_dir(prefix, false).await?;
            requests += 1;
            found.foreign += packages.objects.len();
            jobs.extend(
                packages
                    .prefixes
                    .into_iter()
                    .filter(|p| wanted(p[prefix.len()..].trim_end_matches('/')))
                    .map(|p| Job::Dist(d, p)),
            );
        } else if wanted(name) {
            jobs.push(Job::Package(prefix.clone()));
        }
    }
    requests += jobs.len();
    let listings: Vec<(Job, Vec<ObjectMeta>)> = futures::stream::iter(jobs)
        .map(|job| async move {
            let listing = match &job {
                Job::Store(p) | Job::Dist(_, p) => store.list_dir(p, true).await?,
                Job::Package(p) => store.list_dir(p, false).await?,
            };
            Ok::<_, Error>((job, listing.objects))
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;

    let mut package_links = Vec::new();
    for (job, objects) in listings {
        found.keys_listed += objects.len();
        for object in objects {
            let placed = match &job {
                Job::Store(_) => place_tarball(arch, object, found),
                Job::Dist(d, prefix) => place_dist_link(arch, *d, prefix, object, found),
                Job::Package(prefix) => {
                    let package = prefix[root.len()..].trim_end_matches('/');
                    match revision_of(arch, package, &object.key[prefix.len()..]) {
                        Some(key) => {
                            package_links.push((key, object));
                            true
                        }
                        None => false,
                    }
                }
            };
            if !placed {
                found.foreign += 1;
            }
        }
    }
    // A link whose listed MD5 is that of a body naming a store tarball of
    // its name needs no read; any other is read and judged by its body.
    let (known, unknown): (Vec<_>, Vec<_>) = package_links
        .into_iter()
        .map(|(key, object)| {
            let body = body_by_md5(&found.tarballs, &key, &object);
            (key, object, body)
        })
        .partition(|(_, _, body)| body.is_some());
    for (key, object, body) in known {
        found.links.entry(key).or_default().package_link = Some((object, body.unwrap_or_default()));
    }
    let package_links: Vec<_> = unknown
        .into_iter()
        .map(|(key, object, _)| (key, object))
        .collect();
    requests += package_links.len();
    let bodies: Vec<(RevisionKey, ObjectMeta, Bytes)> = futures::stream::iter(package_links)
        .map(|(key, object)| async move {
            // A link deleted since the listing reads as empty: still reported.
            let body = store.get(&object.key).await?.unwrap_or_default();
            Ok::<_, Error>((key, object, body))
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    for (key, object, body) in bodies {
        found.links.entry(key).or_default().package_link = Some((object, body));
    }
    Ok(requests)
}

/// The body of a package link whose listed MD5 matches a link to one of the
/// store tarballs of its name.
fn body_by_md5(
    tarballs: &BTreeMap<(String, String), Vec<Tarball>>,
    (arch, _, name): &RevisionKey,
    link: &ObjectMeta,
) -> Option<Bytes> {
    let md5 = link.md5.as_deref()?;
    tarballs
        .get(&(arch.clone(), name.clone()))?
        .iter()
        .map(|t| &t.object.key["TARS/".len()..])
        .find(|body| hex::encode(Md5::digest(body.as_bytes())) == md5)
        .map(|body| Bytes::copy_from_slice(body.as_bytes()))
}

/// `(arch, package, tarball name)` of `<pkg>-<ver>-<rev>.<arch>.tar.gz` in
/// `package`'s directories, if the name is one.
fn revision_of(arch: &str, package: &str, name: &str) -> Option<RevisionKey> {
    let full = layout::tarball_full_version(arch, name)?;
    full.strip_prefix(package)?.strip_prefix('-')?;
    Some((arch.into(), package.into(), name.into()))
}

fn place_tarball(arch: &str, object: ObjectMeta, found: &mut Found) -> bool {
    let Ok((_, hash, name)) = layout::parse_store_key(arch, &object.key) else {
        return false;
    };
    let (hash, name) = (hash.to_string(), name.to_string());
    found
        .tarballs
        .entry((arch.into(), name))
        .or_default()
        .push(Tarball { object, hash });
    true
}

/// A key `TARS/<arch>/<dist>/<pkg>/<pkg>-<ver>-<rev>/<dep tarball>`.
fn place_dist_link(
    arch: &str,
    dist: usize,
    prefix: &str,
    object: ObjectMeta,
    found: &mut Found,
) -> bool {
    let package = prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    let rest = &object.key[prefix.len()..];
    let Some((dir, dep)) = rest.split_once('/') else {
        return false;
    };
    let own_name = format!("{dir}.{arch}.tar.gz");
    let Some(key) = revision_of(arch, package, &own_name) else {
        return false;
    };
    if dep.contains('/') || layout::tarball_full_version(arch, dep).is_none() {
        return false;
    }
    found.links.entry(key).or_default().dist[dist].push(ObjectMeta {
        md5: None,
        ..object
    });
    true
}

/// Every journal under the prefix that the filters select.
async fn journals(store: &dyn Store, options: &ScanOptions) -> Result<Vec<JournalEntry>> {
    let all = recovery::list_journals(store, &options.journal_prefix).await?;
    Ok(all
        .into_iter()
        .filter(|j| {
            let keep = |filter: &Option<String>, value: &Option<String>| {
                filter.is_none() || value.is_none() || filter == value
            };
            keep(&options.architecture, &j.architecture) && keep(&options.package, &j.package)
        })
        .collect())
}

/// Turn what the walk found into one report per revision.
fn classify(
    found: Found,
    journals: &[JournalEntry],
    now: i64,
    options: &ScanOptions,
) -> Vec<RevisionReport> {
    let Found {
        links,
        mut tarballs,
        ..
    } = found;
    let known_packages: BTreeSet<(String, String)> = links
        .keys()
        .map(|(arch, pkg, _)| (arch.clone(), pkg.clone()))
        .collect();
    let all_names: BTreeSet<(String, String)> = tarballs.keys().cloned().collect();
    let needed = dependencies(&links);
    let mut reports = Vec::new();
    for ((arch, package, name), links) in links {
        let same_name = tarballs.get_mut(&(arch.clone(), name.clone()));
        let target = links
            .package_link
            .as_ref()
            .and_then(|(_, body)| link_target(&arch, &name, body));
        // The tarball the package link names; without a usable package link,
        // the only tarball of that name.
        let tarball = same_name.and_then(|all| {
            let at = match &target {
                Some(key) => all.iter().position(|t| t.object.key == *key),
                None if all.len() == 1 => Some(0),
                None => None,
            };
            at.map(|i| all.remove(i))
        });
        reports.push(report_for(
            &arch, &package, &name, &links, tarball, &target, &all_names,
        ));
    }
    // Tarballs no package link or dist directory claims.
    for ((arch, name), left) in &tarballs {
        for tarball in left {
            let package = guess_package(&known_packages, arch, name);
            if options.package.as_deref().is_some_and(|p| p != package) {
                continue;
            }
            reports.push(report_for(
                arch,
                &package,
                name,
                &Links::default(),
                Some(tarball.clone()),
                &None,
                &BTreeSet::new(),
            ));
        }
    }
    // A pending journal whose transaction wrote nothing yet still counts.
    for j in journals.iter().filter_map(|e| e.journal.as_ref()) {
        let r = &j.revision;
        let listed = reports.iter().any(|report| {
            (&report.architecture, &report.package, &report.tarball)
                == (&r.architecture, &r.package, &r.tarball_name())
        });
        if j.state == JournalState::Pending && !listed {
            reports.push(RevisionReport {
                architecture: r.architecture.clone(),
                package: r.package.clone(),
                version: Some(r.version.clone()),
                revision: Some(r.revision.clone()),
                tarball: r.tarball_name(),
                hash: Some(r.hash.clone()),
                state: State::Partial,
                recent: false,
                repairable: false,
                needed_by_others: false,
                age_seconds: None,
                reasons: Vec::new(),
                journal: None,
                keys: Vec::new(),
            });
        }
    }
    for report in &mut reports {
        let age = report.age_seconds;
        report.age_seconds = age.map(|newest| now - newest);
        cover_by_journal(report, journals);
        report.recent = report.state == State::Partial
            && report
                .age_seconds
                .is_some_and(|age| age < options.min_age.as_secs() as i64);
        let has_tarball = report.keys.first().is_some_and(|k| k.contains("/store/"));
        let needed_by = needed
            .get(&(report.architecture.clone(), report.tarball.clone()))
            .map(|users| {
                users
                    .iter()
                    .filter(|u| **u != report.tarball)
                    .collect::<Vec<_>>()
            })
            .filter(|users| has_tarball && !users.is_empty());
        if let (State::Partial, Some(users)) = (report.state, &needed_by) {
            report.reasons.push(format!(
                "left alone by repair: its tarball is a dependency of {} (dist links of {})",
                users.len(),
                users
                    .iter()
                    .take(3)
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        report.needed_by_others = needed_by.is_some();
        report.repairable = match report.state {
            State::Partial => !report.recent && needed_by.is_none(),
            State::Abandoned => true,
            State::Complete | State::InFlight => false,
        };
    }
    reports
}

/// `(arch, tarball name)` → the revisions whose dist links name it.
fn dependencies(
    links: &BTreeMap<RevisionKey, Links>,
) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut needed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for ((arch, _, name), links) in links {
        for link in links.dist.iter().flatten() {
            let dep = link.key.rsplit('/').next().unwrap_or("");
            needed
                .entry((arch.clone(), dep.to_string()))
                .or_default()
                .insert(name.clone());
        }
    }
    needed
}

/// The store key a package link's body names, if it is a store tarball of
/// this very revision: `<arch>/store/<h2>/<hash>/<name>`.
fn link_target(arch: &str, name: &str, body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?.trim_end_matches('\n');
    let key = format!("TARS/{}", body.trim_start_matches("../"));
    let (_, _, target_name) = layout::parse_store_key(arch, &key).ok()?;
    (target_name == name).then_some(key)
}

/// The package a lone tarball belongs to: the longest known package of its
/// architecture its name starts with, else the name up to the first `-`.
fn guess_package(known: &BTreeSet<(String, String)>, arch: &str, name: &str) -> String {
    known
        .iter()
        .filter(|(a, pkg)| a == arch && name.starts_with(&format!("{pkg}-")))
        .map(|(_, pkg)| pkg.clone())
        .max_by_key(|pkg| pkg.len())
        .unwrap_or_else(|| name.split('-').next().unwrap_or(name).to_string())
}

fn report_for(
    arch: &str,
    package: &str,
    name: &str,
    links: &Links,
    tarball: Option<Tarball>,
    target: &Option<String>,
    all_tarballs: &BTreeSet<(String, String)>,
) -> RevisionReport {
    let mut reasons = Vec::new();
    match (&links.package_link, target, &tarball) {
        (None, _, Some(_)) => reasons.push("tarball without package link".to_string()),
        (None, _, None) => reasons.push("dist links without package link or tarball".to_string()),
        (Some((link, body)), None, _) => reasons.push(format!(
            "package link {} is not a link to this revision's store tarball (body {:?}): never followed",
            link.key,
            truncate(&String::from_utf8_lossy(body))
        )),
        (Some(_), Some(key), None) => {
            reasons.push(format!("package link without tarball: {key} does not exist"))
        }
        (Some(_), Some(_), Some(_)) => {}
    }
    let has_links = links.package_link.is_some() || links.dist.iter().any(|d| !d.is_empty());
    if has_links {
        for (dir, found) in DIST_DIRS.iter().zip(&links.dist) {
            if found.is_empty() {
                reasons.push(format!("dist link missing in {dir}"));
                continue;
            }
            if !found.iter().any(|l| l.key.ends_with(&format!("/{name}"))) {
                reasons.push(format!("{dir} lacks the revision's own link"));
            }
            // The revision's own link is covered by the tarball check above.
            for link in found {
                let dep = link.key.rsplit('/').next().unwrap_or("");
                if dep != name && !all_tarballs.contains(&(arch.to_string(), dep.to_string())) {
                    reasons.push(format!("dist link to a missing tarball: {}", link.key));
                }
            }
        }
    }
    let mut keys: Vec<&ObjectMeta> = tarball.iter().map(|t| &t.object).collect();
    keys.extend(links.dist.iter().flatten());
    keys.extend(links.package_link.iter().map(|(link, _)| link));
    let newest = keys.iter().filter_map(|o| o.last_modified).max();
    let state = if reasons.is_empty() {
        State::Complete
    } else {
        State::Partial
    };
    let (version, revision) = split_version(package, name, arch);
    RevisionReport {
        architecture: arch.into(),
        package: package.into(),
        version,
        revision,
        tarball: name.into(),
        hash: tarball.as_ref().map(|t| t.hash.clone()).or_else(|| {
            target
                .as_deref()
                .and_then(|k| layout::parse_store_key(arch, k).ok())
                .map(|(_, hash, _)| hash.to_string())
        }),
        state,
        recent: false,
        repairable: false,
        needed_by_others: false,
        age_seconds: newest,
        reasons,
        journal: None,
        keys: if state == State::Complete {
            Vec::new()
        } else {
            keys.iter().map(|o| o.key.clone()).collect()
        },
    }
}

/// `(<ver>, <rev>)` of `<pkg>-<ver>-<rev>.<arch>.tar.gz`.
fn split_version(package: &str, name: &str, arch: &str) -> (Option<String>, Option<String>) {
    let split = layout::tarball_full_version(arch, name)
        .and_then(|full| full.strip_prefix(package)?.strip_prefix('-'))
        .and_then(|rest| rest.rsplit_once('-'));
    match split {
        Some((ver, rev)) => (Some(ver.into()), Some(rev.into())),
        None => (None, None),
    }
}

/// A pending journal decides the class of its revision: in flight while its
/// owner lives, abandoned once it is gone.
fn cover_by_journal(report: &mut RevisionReport, journals: &[JournalEntry]) {
    let journal = journals.iter().find_map(|entry| {
        let j = entry.journal.as_ref()?;
        let r = &j.revision;
        (r.architecture == report.architecture
            && r.package == report.package
            && r.tarball_name() == report.tarball
            && j.state == JournalState::Pending)
            .then_some(j)
    });
    if let Some(j) = journal {
        report.journal = Some(j.id());
        report.hash = Some(j.revision.hash.clone());
        report.state = if j.owner_gone() {
            State::Abandoned
        } else {
            State::InFlight
        };
        report.reasons.insert(
            0,
            format!(
                "journal {} (owner pid {} on {}: {})",
                j.id(),
                j.owner.pid,
                j.owner.host,
                j.liveness().name()
            ),
        );
    }
}

/// Staged uploads under the scanned architectures older than the threshold.
async fn stale_uploads(
    store: &dyn Store,
    architectures: &[String],
    journals: &[JournalEntry],
    now: i64,
    options: &ScanOptions,
) -> Result<Vec<StaleUpload>> {
    let uploads = store.list_uploads("TARS/").await?;
    let threshold = options.stale_uploads_after.as_secs() as i64;
    Ok(uploads
        .into_iter()
        .filter(|u| {
            let arch = u.key.split('/').nth(1).unwrap_or("");
            let name = u.key.rsplit('/').next().unwrap_or("");
            architectures.iter().any(|a| a == arch)
                && options
                    .package
                    .as_deref()
                    .is_none_or(|p| name.starts_with(&format!("{p}-")))
        })
        .filter_map(|u| {
            let age = u.initiated.map(|t| now - t);
            if age.is_some_and(|age| age < threshold) {
                return None;
            }
            let journal = journals.iter().find_map(|entry| {
                let j = entry.journal.as_ref()?;
                (j.state == JournalState::Pending
                    && j.tarball.upload_id.as_deref() == Some(&u.upload_id))
                .then(|| j.id())
            });
            Some(StaleUpload {
                key: u.key,
                upload_id: u.upload_id,
                age_seconds: age,
                journal,
            })
        })
        .collect())
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: &str = "slc9_x86-64";
    const HASH: &str = "5b82364561d097dcbef08ccc08bb1f4cf4de725c";

    #[test]
    fn package_link_bodies_must_name_their_own_store_tarball() {
        let name = format!("zlib-v1-1.{ARCH}.tar.gz");
        let own = format!("{ARCH}/store/5b/{HASH}/{name}");
        let key = format!("TARS/{own}");
        assert_eq!(link_target(ARCH, &name, own.as_bytes()), Some(key.clone()));
        assert_eq!(
            link_target(ARCH, &name, format!("../../{own}\n").as_bytes()),
            Some(key)
        );
        for bad in [
            "../../../etc/passwd".to_string(),
            format!("{ARCH}/store/5b/{HASH}/other-v1-1.{ARCH}.tar.gz"),
            format!("{ARCH}/store/5b/{HASH}/../../../../{name}"),
            format!("slc8_x86-64/store/5b/{HASH}/{name}"),
            String::new(),
        ] {
            assert_eq!(link_target(ARCH, &name, bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(link_target(ARCH, &name, &[0xff, 0xfe]), None);
    }

    #[test]
    fn versions_and_packages_from_tarball_names() {
        let name = format!("ROOT-v6-32-06-alice1-3.{ARCH}.tar.gz");
        assert_eq!(
            split_version("ROOT", &name, ARCH),
            (Some("v6-32-06-alice1".into()), Some("3".into()))
        );
        assert_eq!(split_version("O2", &name, ARCH), (None, None));
        let known = BTreeSet::from([
            (ARCH.to_string(), "defaults".to_string()),
            (ARCH.to_string(), "defaults-release".to_string()),
        ]);
        let lone = format!("defaults-release-v1-1.{ARCH}.tar.gz");
        assert_eq!(guess_package(&known, ARCH, &lone), "defaults-release");
        let unknown = format!("zlib-v1-1.{ARCH}.tar.gz");
        assert_eq!(guess_package(&known, ARCH, &unknown), "zlib");
    }
}
