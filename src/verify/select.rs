//! Which revisions `verify` reads: found by their package links and by
//! their publication records, narrowed by the options.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};

use super::VerifyOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{self, Revision, DIST_DIRS};
use crate::record::{self, Record};
use crate::storage::{Listing, Store};

/// A revision found by name: from its package link, its record, or both.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) architecture: String,
    pub(super) package: String,
    pub(super) version: String,
    pub(super) revision: String,
    pub(super) has_package_link: bool,
    /// `Some` for a record found without a package link: it was read to
    /// learn its revision.
    pub(super) orphan_record: Option<std::result::Result<Record, String>>,
}

impl Candidate {
    pub(super) fn full_version(&self) -> String {
        format!("{}-{}-{}", self.package, self.version, self.revision)
    }

    pub(super) fn id(&self) -> String {
        format!("{}/{}", self.architecture, self.full_version())
    }

    pub(super) fn tarball_name(&self) -> String {
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
pub(super) async fn select(store: &dyn Store, options: &VerifyOptions) -> Result<Vec<Candidate>> {
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
    let present: Vec<String> = present.into_iter().collect();
    match &options.architecture {
        Some(arch) if !present.contains(arch) => Err(layout::unknown_architecture(
            arch,
            &store.describe(),
            &present,
        )),
        Some(arch) => Ok(vec![arch.clone()]),
        None => Ok(present),
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
            let Some((version, revision)) = layout::split_full_version(&package, full) else {
                continue;
            };
            let candidate = Candidate {
                architecture: arch.into(),
                package: package.clone(),
                version: version.into(),
                revision: revision.into(),
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
pub(super) async fn read_record(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_untrusted_records() {
        assert_eq!(
            guess_names("zlib-v1.2-1"),
            ("zlib".into(), "v1.2".into(), "1".into())
        );
    }
}
