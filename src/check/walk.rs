//! The walk of `check`: list one architecture's package, dist and store
//! directories, in parallel, and group the keys found by revision. Package
//! link bodies are known from the MD5 a listing reports when it is that of
//! a link to a store tarball of its name, else read.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::ScanOptions;
use crate::error::{Error, Result};
use crate::layout::{self, DIST_DIRS};
use crate::storage::{get_small, md5_hex, ObjectMeta, Small, Store};

/// Which revision a key belongs to: architecture, package, tarball name.
pub(super) type RevisionKey = (String, String, String);

/// The keys the walk found, grouped by revision.
#[derive(Debug, Clone, Default)]
pub(super) struct Found {
    pub(super) links: BTreeMap<RevisionKey, Links>,
    /// `(arch, tarball name)` → every store tarball of that name.
    pub(super) tarballs: BTreeMap<(String, String), Vec<Tarball>>,
    pub(super) foreign: usize,
    pub(super) keys_listed: usize,
    /// Revisions without a tarball that their package's
    /// `TARS/<arch>/<pkg>.manifest` lists: evidence they were published.
    pub(super) in_manifest: BTreeSet<RevisionKey>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Links {
    pub(super) package_link: Option<(ObjectMeta, Bytes)>,
    /// Per dist directory (in `DIST_DIRS` order): the links directly in it.
    pub(super) dist: [Vec<ObjectMeta>; 3],
}

#[derive(Debug, Clone)]
pub(super) struct Tarball {
    pub(super) object: ObjectMeta,
    pub(super) hash: String,
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
pub(super) async fn walk_architecture(
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
            let body = get_small(store, &object.key, Small::Link)
                .await?
                .unwrap_or_default();
            Ok::<_, Error>((key, object, body))
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    for (key, object, body) in bodies {
        found.links.entry(key).or_default().package_link = Some((object, body));
    }
    requests += read_manifests(store, arch, &top.objects, options, found).await?;
    Ok(requests)
}

/// Read the manifest of every package of `arch` that has a revision
/// without a tarball, and note which of those it lists. aliBuild's
/// manifest holds one line per revision, `<tarball name>\t<link body>`.
/// Returns the number of requests made.
async fn read_manifests(
    store: &dyn Store,
    arch: &str,
    top: &[ObjectMeta],
    options: &ScanOptions,
    found: &mut Found,
) -> Result<usize> {
    let without_tarball: BTreeSet<&str> = found
        .links
        .keys()
        .filter(|(a, _, name)| {
            a == arch && !found.tarballs.contains_key(&(a.clone(), name.clone()))
        })
        .map(|(_, package, _)| package.as_str())
        .collect();
    let manifests: Vec<(String, String)> = top
        .iter()
        .filter_map(|object| {
            let package = object
                .key
                .strip_prefix(&format!("TARS/{arch}/"))?
                .strip_suffix(".manifest")?;
            without_tarball
                .contains(package)
                .then(|| (package.to_string(), object.key.clone()))
        })
        .collect();
    let requests = manifests.len();
    let bodies: Vec<(String, Bytes)> = futures::stream::iter(manifests)
        .map(|(package, key)| async move {
            Ok::<_, Error>((package, store.get(&key).await?.unwrap_or_default()))
        })
        .buffer_unordered(options.concurrency.max(1))
        .try_collect()
        .await?;
    for (package, body) in bodies {
        for line in String::from_utf8_lossy(&body).lines() {
            if let Some((name, _)) = line.split_once('\t') {
                let key = (arch.to_string(), package.clone(), name.trim().to_string());
                if found.links.contains_key(&key) {
                    found.in_manifest.insert(key);
                }
            }
        }
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
        .find(|body| md5_hex(body.as_bytes()) == md5)
        .map(|body| Bytes::copy_from_slice(body.as_bytes()))
}

/// `(arch, package, tarball name)` of `<pkg>-<ver>-<rev>.<arch>.tar.gz` in
/// `package`'s directories, if the name is one.
fn revision_of(arch: &str, package: &str, name: &str) -> Option<RevisionKey> {
    layout::split_full_version(package, layout::tarball_full_version(arch, name)?)?;
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

/// `(arch, package)` of every package the walk found links of.
pub(super) fn known_packages(found: &Found) -> BTreeSet<(String, String)> {
    found
        .links
        .keys()
        .map(|(arch, pkg, _)| (arch.clone(), pkg.clone()))
        .collect()
}
