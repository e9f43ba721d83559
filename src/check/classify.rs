//! The classes of `check`: what the keys of one revision, its store
//! tarball and the journals covering it say about it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Serialize, Serializer};

use super::walk::{known_packages, Found, Links, Tarball};
use super::{RevisionReport, ScanOptions, State};
use crate::journal::State as JournalState;
use crate::layout::{self, LinkKind, DIST_DIRS};
use crate::recovery::JournalEntry;
use crate::storage::ObjectMeta;

/// Why a revision is in its class. Serialised as the sentence it prints:
/// the JSON `reasons` are strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    TarballWithoutPackageLink,
    DistLinksWithoutPackageLinkOrTarball,
    /// A package link whose body is no link to this revision's store
    /// tarball: another writer's object, never followed.
    ForeignPackageLink {
        key: String,
        body: String,
    },
    /// The package link names `tarball`, which does not exist.
    PackageLinkWithoutTarball {
        tarball: String,
    },
    DistLinkMissing {
        dir: &'static str,
    },
    OwnDistLinkMissing {
        dir: &'static str,
    },
    /// Every link, no tarball: see [`State::Unpublished`].
    MayBeRetired,
    /// No tarball, but its package's manifest lists it: see
    /// [`State::Unpublished`].
    InManifest {
        manifest: String,
    },
    /// No tarball, but its publication record names it: see
    /// [`State::Unpublished`].
    Recorded {
        record: String,
    },
    /// Why repair leaves a published revision alone.
    LeftAlone(LeftAlone),
    /// The pending journal covering the revision.
    Journal {
        id: String,
        pid: u32,
        host: String,
        liveness: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftAlone {
    PackageLinkNamesSomethingElse,
    PackageUncertain { name: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::TarballWithoutPackageLink => write!(f, "tarball without package link"),
            Reason::DistLinksWithoutPackageLinkOrTarball => {
                write!(f, "dist links without package link or tarball")
            }
            Reason::ForeignPackageLink { key, body } => write!(
                f,
                "package link {key} is not a link to this revision's store tarball (body {body:?}): never followed"
            ),
            Reason::PackageLinkWithoutTarball { tarball } => {
                write!(f, "package link without tarball: {tarball} does not exist")
            }
            Reason::DistLinkMissing { dir } => write!(f, "dist link missing in {dir}"),
            Reason::OwnDistLinkMissing { dir } => {
                write!(f, "{dir} lacks the revision's own link")
            }
            Reason::InManifest { manifest } => write!(
                f,
                "listed in {manifest}: it was published and its tarball retired by a clean-up, so its \
                 revision number stays reserved and repair keeps it; only `alitx repair ... --unpublish` \
                 naming it removes it"
            ),
            Reason::Recorded { record } => write!(
                f,
                "its publication record {record} names its tarball: it was published and its tarball \
                 removed since (by a clean-up, or by an `--unpublish` that stopped half-way), so repair \
                 keeps it; only `alitx repair ... --unpublish` naming it removes it"
            ),
            Reason::MayBeRetired => write!(
                f,
                "every link is in place: it may have been published and its tarball retired by a clean-up, \
                 so its revision number stays reserved and repair keeps it; a rebuild of the same hash \
                 completes it, and only `alitx repair ... --unpublish` naming it removes it"
            ),
            Reason::LeftAlone(LeftAlone::PackageLinkNamesSomethingElse) => {
                write!(f, "left alone by repair: its package link names something else")
            }
            Reason::LeftAlone(LeftAlone::PackageUncertain { name }) => write!(
                f,
                "left alone by repair: its package is not certain from the name {name}"
            ),
            Reason::Journal {
                id,
                pid,
                host,
                liveness,
            } => write!(f, "journal {id} (owner pid {pid} on {host}: {liveness})"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Turn what the walk found into one report per revision.
pub(super) fn classify(
    found: Found,
    journals: &[JournalEntry],
    now: i64,
    options: &ScanOptions,
) -> Vec<RevisionReport> {
    let known_packages = known_packages(&found);
    let Found {
        links,
        mut tarballs,
        in_manifest,
        ..
    } = found;
    let all_names: BTreeSet<(String, String)> = tarballs.keys().cloned().collect();
    let mut reports = Vec::new();
    for ((arch, package, name), links) in links {
        let same_name = tarballs.get_mut(&(arch.clone(), name.clone()));
        let target = links
            .package_link
            .as_ref()
            .and_then(|(_, body)| package_link_target(&arch, &name, body));
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
        let listed = in_manifest.contains(&(arch.clone(), package.clone(), name.clone()));
        let mut report = report_for(
            &arch, &package, true, &name, &links, tarball, &target, &all_names,
        );
        if listed && report.state == State::Partial {
            report.state = State::Unpublished;
            report.reasons.push(Reason::InManifest {
                manifest: format!("TARS/{arch}/{package}.manifest"),
            });
        }
        reports.push(report);
    }
    // Tarballs no package link or dist directory claims.
    for ((arch, name), left) in &tarballs {
        for tarball in left {
            let package = guess_package(&known_packages, arch, name);
            if options.package.as_deref().is_some_and(|p| p != package) {
                continue;
            }
            let known = known_packages.contains(&(arch.clone(), package.clone()));
            reports.push(report_for(
                arch,
                &package,
                known,
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
                age_seconds: None,
                reasons: Vec::new(),
                warnings: Vec::new(),
                journal: None,
                keys: Vec::new(),
            });
        }
    }
    for report in &mut reports {
        let age = report.age_seconds;
        report.age_seconds = age.map(|newest| now - newest);
        cover_by_journal(report, journals);
        // An age the store does not tell is recent (see `newest_time`).
        report.recent = report.state == State::Partial
            && report
                .age_seconds
                .is_none_or(|age| age < options.min_age.as_secs() as i64);
        report.repairable = match report.state {
            State::Partial => !report.recent,
            State::Abandoned => true,
            // Decided by `report_for`.
            State::PublishedIncomplete => report.repairable,
            State::Complete | State::Unpublished | State::InFlight => false,
        };
    }
    reports
}

/// The store key a package link's body names, if it is a store tarball of
/// this very revision (read as aliBuild's readers read it).
fn package_link_target(arch: &str, name: &str, body: &[u8]) -> Option<String> {
    let key = layout::link_target(arch, LinkKind::Package, body)?;
    key.ends_with(&format!("/{name}")).then_some(key)
}

/// The package a lone tarball belongs to: the longest known package of its
/// architecture its name starts with, else the name up to the first `-`.
pub(super) fn guess_package(known: &BTreeSet<(String, String)>, arch: &str, name: &str) -> String {
    known
        .iter()
        .filter(|(a, pkg)| a == arch && name.starts_with(&format!("{pkg}-")))
        .map(|(_, pkg)| pkg.clone())
        .max_by_key(|pkg| pkg.len())
        .unwrap_or_else(|| name.split('-').next().unwrap_or(name).to_string())
}

/// The report of one revision: `package_known` says whether its package
/// name is certain (from its links, or a known package's name), which
/// repair needs to re-create its package link.
#[allow(clippy::too_many_arguments)]
fn report_for(
    arch: &str,
    package: &str,
    package_known: bool,
    name: &str,
    links: &Links,
    tarball: Option<Tarball>,
    target: &Option<String>,
    all_tarballs: &BTreeSet<(String, String)>,
) -> RevisionReport {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    match (&links.package_link, target, &tarball) {
        (None, _, Some(_)) => reasons.push(Reason::TarballWithoutPackageLink),
        (None, _, None) => reasons.push(Reason::DistLinksWithoutPackageLinkOrTarball),
        (Some((link, body)), None, _) => reasons.push(Reason::ForeignPackageLink {
            key: link.key.clone(),
            body: truncate(&String::from_utf8_lossy(body)),
        }),
        (Some(_), Some(key), None) => reasons.push(Reason::PackageLinkWithoutTarball {
            tarball: key.clone(),
        }),
        (Some(_), Some(_), Some(_)) => {}
    }
    let has_links = links.package_link.is_some() || links.dist.iter().any(|d| !d.is_empty());
    if has_links || tarball.is_some() {
        for (dir, found) in DIST_DIRS.iter().zip(&links.dist) {
            if found.is_empty() {
                reasons.push(Reason::DistLinkMissing { dir });
                continue;
            }
            if !found.iter().any(|l| l.key.ends_with(&format!("/{name}"))) {
                reasons.push(Reason::OwnDistLinkMissing { dir });
            }
            // The revision's own link is covered by the tarball check above.
            for link in found {
                let dep = link.key.rsplit('/').next().unwrap_or("");
                if dep != name && !all_tarballs.contains(&(arch.to_string(), dep.to_string())) {
                    warnings.push(format!("dist link to a missing tarball: {}", link.key));
                }
            }
        }
    }
    let mut keys: Vec<&ObjectMeta> = tarball.iter().map(|t| &t.object).collect();
    keys.extend(links.dist.iter().flatten());
    keys.extend(links.package_link.iter().map(|(link, _)| link));
    let newest = crate::storage::newest_time(keys.iter().map(|o| o.last_modified));
    // Without a tarball, only a package link naming its own store tarball
    // beside the revision's own link in every dist directory may have been
    // published: anything less proves the upload never completed.
    let every_link = matches!(reasons[..], [Reason::PackageLinkWithoutTarball { .. }]);
    let state = match (&tarball, reasons.is_empty()) {
        (Some(_), true) => State::Complete,
        (Some(_), false) => State::PublishedIncomplete,
        (None, _) if every_link => State::Unpublished,
        (None, _) => State::Partial,
    };
    if state == State::Unpublished {
        reasons.push(Reason::MayBeRetired);
    }
    // A wrong package link is another writer's object: never replaced.
    let restorable = package_known && (links.package_link.is_none() || target.is_some());
    if state == State::PublishedIncomplete && !restorable {
        reasons.push(Reason::LeftAlone(if package_known {
            LeftAlone::PackageLinkNamesSomethingElse
        } else {
            LeftAlone::PackageUncertain {
                name: name.to_string(),
            }
        }));
    }
    let split = layout::tarball_full_version(arch, name)
        .and_then(|full| layout::split_full_version(package, full));
    RevisionReport {
        architecture: arch.into(),
        package: package.into(),
        version: split.map(|(version, _)| version.to_string()),
        revision: split.map(|(_, revision)| revision.to_string()),
        tarball: name.into(),
        hash: tarball.as_ref().map(|t| t.hash.clone()).or_else(|| {
            target
                .as_deref()
                .and_then(|k| layout::parse_store_key(arch, k).ok())
                .map(|(_, hash, _)| hash.to_string())
        }),
        state,
        recent: false,
        repairable: state == State::PublishedIncomplete && restorable,
        age_seconds: newest,
        reasons,
        warnings,
        journal: None,
        keys: if state == State::Complete {
            Vec::new()
        } else {
            keys.iter().map(|o| o.key.clone()).collect()
        },
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
            Reason::Journal {
                id: j.id(),
                pid: j.owner.pid,
                host: j.owner.host.clone(),
                liveness: j.liveness().name(),
            },
        );
    }
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
        let target = |body: &str| package_link_target(ARCH, &name, body.as_bytes());
        assert_eq!(target(&own), Some(key.clone()));
        assert_eq!(target(&format!("../../{own}\n")), Some(key));
        for bad in [
            "../../../etc/passwd".to_string(),
            format!("{ARCH}/store/5b/{HASH}/other-v1-1.{ARCH}.tar.gz"),
            format!("{ARCH}/store/5b/{HASH}/x{name}"),
            format!("{ARCH}/store/5b/{HASH}/../../../../{name}"),
            format!("slc8_x86-64/store/5b/{HASH}/{name}"),
            String::new(),
        ] {
            assert_eq!(target(&bad), None, "{bad}");
        }
    }

    #[test]
    fn packages_of_lone_tarballs() {
        let known = BTreeSet::from([
            (ARCH.to_string(), "defaults".to_string()),
            (ARCH.to_string(), "defaults-release".to_string()),
        ]);
        let lone = format!("defaults-release-v1-1.{ARCH}.tar.gz");
        assert_eq!(guess_package(&known, ARCH, &lone), "defaults-release");
        let unknown = format!("zlib-v1-1.{ARCH}.tar.gz");
        assert_eq!(guess_package(&known, ARCH, &unknown), "zlib");
    }

    /// The JSON `reasons` are the sentences printed today: a contract.
    #[test]
    fn reasons_serialise_as_their_sentences() {
        let json = |reason: Reason| serde_json::to_value(reason).unwrap();
        assert_eq!(
            json(Reason::DistLinkMissing {
                dir: "dist-runtime"
            }),
            "dist link missing in dist-runtime"
        );
        assert_eq!(
            json(Reason::TarballWithoutPackageLink),
            "tarball without package link"
        );
        assert_eq!(
            json(Reason::PackageLinkWithoutTarball {
                tarball: "TARS/a/store/x".into()
            }),
            "package link without tarball: TARS/a/store/x does not exist"
        );
        assert_eq!(
            json(Reason::Journal {
                id: "a/p-v-1".into(),
                pid: 7,
                host: "h".into(),
                liveness: "owner-dead"
            }),
            "journal a/p-v-1 (owner pid 7 on h: owner-dead)"
        );
    }
}
