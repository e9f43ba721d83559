//! Reading an aliBuild work directory (`sw/`): the tarball and the symlinks
//! that one package revision left under `TARS/<arch>/`, validated before
//! anything is written anywhere.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::{Link, Revision, DIST_DIRS};

/// What one revision's upload will write, read from the work dir.
#[derive(Debug, Clone)]
pub struct LocalRevision {
    pub revision: Revision,
    pub tarball_path: PathBuf,
    pub tarball: FileIdentity,
    /// The package link first, then every dist link, sorted by key.
    pub links: Vec<Link>,
}

/// Size and modification time: how a later `resume` tells that the file is
/// still the one the journal describes, before it re-hashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileIdentity {
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
        let mtime = meta
            .modified()
            .map_err(|e| Error::io(path.display(), e))?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Ok(FileIdentity {
            size: meta.len(),
            mtime_ns: mtime,
        })
    }
}

/// Read and validate the revision's files under `work_dir`.
pub fn read_revision(work_dir: &Path, revision: Revision) -> Result<LocalRevision> {
    check_architecture_dir(work_dir, &revision.architecture)?;
    let tarball_path = work_dir.join(revision.store_key());
    let meta = fs::symlink_metadata(&tarball_path).map_err(|e| {
        Error::input(format!(
            "cannot read the tarball {}: {e}; was {} {} {} built with hash {} in this work dir?",
            tarball_path.display(),
            revision.package,
            revision.version,
            revision.revision,
            revision.hash
        ))
    })?;
    if !meta.is_file() {
        return Err(Error::input(format!(
            "{} is not a regular file",
            tarball_path.display()
        )));
    }
    let package_link = revision.package_link();
    check_package_link(work_dir, &package_link)?;

    let mut links = vec![package_link];
    for dist_dir in DIST_DIRS {
        let dir = work_dir.join(revision.dist_prefix(dist_dir));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == IoKind::NotFound => continue,
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        let mut dist_links = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
            dist_links.push(read_dist_link(&revision, dist_dir, &entry.path())?);
        }
        dist_links.sort_by(|a, b| a.key.cmp(&b.key));
        links.extend(dist_links);
    }
    let own_dist_target = revision.store_key();
    for link in &links[1..] {
        if link
            .body
            .ends_with(&format!("/{}", revision.tarball_name()))
            && link.body != own_dist_target
        {
            return Err(Error::input(format!(
                "{} points at {}, but this revision's tarball is {own_dist_target}: the work dir mixes two builds of {}",
                work_dir.join(&link.key).display(),
                link.body,
                revision.full_version()
            )));
        }
    }
    Ok(LocalRevision {
        tarball: FileIdentity::of(&tarball_path)?,
        tarball_path,
        revision,
        links,
    })
}

/// `TARS/<arch>` must exist; if it does not, name the ones that do.
fn check_architecture_dir(work_dir: &Path, architecture: &str) -> Result<()> {
    let tars = work_dir.join("TARS");
    if !work_dir.is_dir() {
        return Err(Error::input(format!(
            "work dir {} does not exist or is not a directory; pass aliBuild's --work-dir (usually sw/)",
            work_dir.display()
        )));
    }
    if tars.join(architecture).is_dir() {
        return Ok(());
    }
    let mut found: Vec<String> = fs::read_dir(&tars)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    Err(Error::input(if found.is_empty() {
        format!(
            "{} has no TARS/ directory: is it an aliBuild work dir after a build?",
            work_dir.display()
        )
    } else {
        format!(
            "{} has no TARS/{architecture}/ (architectures found: {}); check --architecture",
            work_dir.display(),
            found.join(", ")
        )
    }))
}

/// The local package link is optional (the key and body derive from the
/// revision), but if present it must point at this revision's tarball.
fn check_package_link(work_dir: &Path, link: &Link) -> Result<()> {
    let path = work_dir.join(&link.key);
    match fs::read_link(&path) {
        Ok(target) => {
            let resolved = resolve_inside(work_dir, &path, &target);
            let expected = format!("TARS/{}", link.body);
            if resolved.as_deref() != Some(expected.as_str()) {
                return Err(Error::input(format!(
                    "{} points at {}, expected {}: the work dir does not match --hash",
                    path.display(),
                    target.display(),
                    link.symlink_target
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == IoKind::NotFound => Ok(()),
        Err(e) => Err(Error::input(format!(
            "{} exists but is not a symlink ({e})",
            path.display()
        ))),
    }
}

fn read_dist_link(revision: &Revision, dist_dir: &str, path: &Path) -> Result<Link> {
    let work_dir = path
        .ancestors()
        .nth(6)
        .expect("dist links are six levels below the work dir");
    let target = fs::read_link(path).map_err(|e| {
        Error::input(format!(
            "{} is not a symlink ({e}); dist directories hold only links to store tarballs",
            path.display()
        ))
    })?;
    let resolved = resolve_inside(work_dir, path, &target)
        .filter(|key| key.starts_with(&format!("TARS/{}/store/", revision.architecture)))
        .ok_or_else(|| {
            Error::input(format!(
                "{} points at {}, which is outside TARS/{}/store/ of the work dir",
                path.display(),
                target.display(),
                revision.architecture
            ))
        })?;
    let link = revision
        .dist_link(dist_dir, &resolved)
        .map_err(|e| e.context(path.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if !link.key.ends_with(&format!("/{name}")) {
        return Err(Error::input(format!(
            "{} is named {name} but points at {resolved}; aliBuild names each dist link after its target",
            path.display()
        )));
    }
    Ok(link)
}

/// Resolve a relative symlink `target` found at `link` lexically, and return
/// it relative to `root` if it stays inside it.
fn resolve_inside(root: &Path, link: &Path, target: &Path) -> Option<String> {
    let relative_dir = link.parent()?.strip_prefix(root).ok()?;
    let mut parts: Vec<String> = Vec::new();
    for component in relative_dir.components().chain(target.components()) {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}
