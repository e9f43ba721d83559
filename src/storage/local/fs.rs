//! The local store's work, as plain blocking calls on the filesystem:
//! [`super::LocalStore`] runs each on a blocking thread. The module
//! documentation of [`super`] tells the layout and the guarantees.

mod uploads;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::durable::{
    create_in, create_temp_in, free_space, fsync_dir, fsync_removal, make_dir, prune_empty_dirs,
    write_durably, Temp,
};
use super::identity::Identity;
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::layout::Link;
use crate::storage::{
    md5_hex, Created, Listing, Metadata, ObjectInfo, ObjectMeta, PutMode, Segments,
};

/// Internal state of the backend, outside the key space.
const INTERNAL_DIR: &str = ".alitx-store";

/// How temporary names end.
const TEMP_SUFFIX: &str = ".tmp";

/// Beyond twice the object, for the journal, sidecars and links.
const SPACE_SLACK: u64 = 1 << 20;

/// The local store at `root`.
#[derive(Debug)]
pub struct LocalFs {
    root: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    /// The inode this metadata belongs to; any other inode at the key is
    /// a foreign object.
    identity: Identity,
    metadata: Metadata,
    website_redirect: Option<String>,
}

impl LocalFs {
    pub fn new(root: PathBuf) -> Self {
        LocalFs { root }
    }

    pub fn describe(&self) -> String {
        format!("local store {}", self.root.display())
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && key.split('/').next() != Some(INTERNAL_DIR);
        if !valid {
            return Err(Error::store(format!(
                "invalid key {key:?} for a local store"
            )));
        }
        Ok(self.root.join(key))
    }

    fn internal(&self, sub: &str) -> PathBuf {
        self.root.join(INTERNAL_DIR).join(sub)
    }

    fn sidecar_path(&self, key: &str, ino: u64) -> PathBuf {
        self.internal("meta").join(format!("{key}@{ino}.json"))
    }

    /// `.alitx-store/tmp/<key>.<hex>.tmp`, for a temporary of `key`.
    fn temp_path(&self, key: &str, hex: &str) -> PathBuf {
        self.internal("tmp")
            .join(format!("{key}.{hex}{TEMP_SUFFIX}"))
    }

    /// A new temporary file of `key` holding `bytes`, fsynced.
    fn write_temp(&self, key: &str, bytes: &[u8]) -> Result<Temp> {
        let path = self.temp_path(key, &crate::random_hex(6));
        Temp::write(path.clone(), &self.internal("tmp"), bytes)
            .map_err(|e| Error::io(path.display(), e))
    }

    /// Write the sidecar of an inode that is not published yet. Written in
    /// place, not atomically: nothing reads `<key>@<ino>` before an object
    /// with that inode is at the key, which happens only after this, and an
    /// older file of that name is stale (it describes a freed inode).
    fn write_sidecar(&self, key: &str, sidecar: &Sidecar) -> Result<()> {
        let path = self.sidecar_path(key, sidecar.identity.ino);
        let json = serde_json::to_vec(sidecar).expect("sidecar serialises");
        write_durably(&path, &json).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// The metadata of the object at `key` whose inode is `identity`: none
    /// if its sidecar is missing, unreadable, or describes another inode
    /// that once had the same number (a foreign object).
    fn read_sidecar(&self, key: &str, identity: &Identity) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path(key, identity.ino)).ok()?;
        serde_json::from_slice::<Sidecar>(&bytes)
            .ok()
            .filter(|s| s.identity == *identity)
    }

    fn remove_sidecar(&self, key: &str, ino: u64) {
        let path = self.sidecar_path(key, ino);
        let _ = fs::remove_file(&path);
        prune_empty_dirs(&path, &self.internal("meta"));
    }

    /// Publish the prepared temporary `temp` at `key` with its metadata:
    /// exclusively with `link` (`Create`), or replacing with `rename`
    /// (`Overwrite`). The sidecar is
    /// durable before the object appears; the temporary name is gone after.
    fn place(
        &self,
        temp: Temp,
        key: &str,
        metadata: Metadata,
        website_redirect: Option<String>,
        mode: PutMode,
    ) -> Result<Created> {
        let exclusive = mode == PutMode::Create;
        let dest = self.path_of(key)?;
        let (_, identity) =
            Identity::of(&temp.path).map_err(|e| Error::io(temp.path.display(), e))?;
        let ino = identity.ino;
        self.write_sidecar(
            key,
            &Sidecar {
                identity,
                metadata,
                website_redirect,
            },
        )?;
        failpoint(&format!("local-placing {key}"));
        let previous = fs::symlink_metadata(&dest).ok().map(|m| m.ino());
        let placed = if exclusive {
            create_in(&dest, || fs::hard_link(&temp.path, &dest))
        } else {
            create_in(&dest, || fs::rename(&temp.path, &dest))
        };
        match placed {
            Ok(()) => {
                fsync_dir(parent(&dest)).map_err(|e| Error::io(parent(&dest).display(), e))?;
                if let Some(old) = previous.filter(|old| !exclusive && *old != ino) {
                    self.remove_sidecar(key, old);
                }
                Ok(Created::Yes)
            }
            Err(e) => {
                self.remove_sidecar(key, ino);
                if exclusive && e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(Created::AlreadyExists)
                } else {
                    Err(Error::io(format!("placing {}", dest.display()), e))
                }
            }
        }
    }

    pub fn preflight(&self) -> Result<()> {
        if !self.root.exists() {
            fs::create_dir_all(&self.root).map_err(|e| {
                Error::store(format!(
                    "cannot create the local store {}: {e}",
                    self.root.display()
                ))
            })?;
        }
        if !self.root.is_dir() {
            return Err(Error::store(format!(
                "the local store {} is not a directory",
                self.root.display()
            )));
        }
        let tmp = self.internal("tmp");
        make_dir(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))
    }

    /// Staging an object of `bytes` into a local store writes its parts and
    /// then, on completion, an assembled copy of the same size before the
    /// parts are dropped: this needs twice `bytes` free (plus 1 MiB for the
    /// journal, sidecars and links). Parts already staged by an earlier,
    /// interrupted attempt are counted again: the figure errs on the safe
    /// side.
    pub fn ensure_space(&self, bytes: u64) -> Result<()> {
        // The nearest existing directory: the store may not exist yet.
        let mut probe = self.root.as_path();
        while !probe.exists() {
            probe = probe
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
        }
        let available = free_space(probe)
            .map_err(|e| Error::io(format!("free space of {}", probe.display()), e))?;
        let needed = Self::space_needed(bytes);
        if available < needed {
            return Err(Error::store(format!(
                "not enough free space in the {}: staging {bytes} bytes needs {needed} bytes \
                 ({} MiB: the parts, the copy assembled on completion, 1 MiB of metadata), \
                 only {available} bytes ({} MiB) are available",
                self.describe(),
                needed >> 20,
                available >> 20
            )));
        }
        Ok(())
    }

    /// The free space needed to stage and complete an object of `bytes`.
    fn space_needed(bytes: u64) -> u64 {
        bytes.saturating_mul(2).saturating_add(SPACE_SLACK)
    }

    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path_of(key)?;
        let (meta, identity) = match Identity::of(&path) {
            Ok((meta, _)) if meta.is_dir() => return Ok(None),
            Ok(found) => found,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let (metadata, website_redirect) = match self.read_sidecar(key, &identity) {
            Some(sidecar) => (sidecar.metadata, sidecar.website_redirect),
            None => (Metadata::new(), implied_redirect(&meta, &path)?),
        };
        Ok(Some(ObjectInfo {
            size: size_of(&meta, &path)?,
            metadata,
            website_redirect,
        }))
    }

    pub fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path_of(key)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => Ok(Some(Bytes::from(link_body(&path)?))),
            Ok(meta) if meta.is_file() => fs::read(&path)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|e| Error::io(path.display(), e)),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        }
    }

    pub fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
        let path = self.path_of(key)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        if meta.file_type().is_symlink() {
            let body = Bytes::from(link_body(&path)?);
            let start = offset.min(body.len() as u64) as usize;
            let end = offset.saturating_add(len).min(body.len() as u64) as usize;
            return Ok(Some(body.slice(start..end).into()));
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let mut file = File::open(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut buf = Vec::with_capacity(len.min(meta.len().saturating_sub(offset)) as usize);
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(len).read_to_end(&mut buf))
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(Some(Bytes::from(buf).into()))
    }

    pub fn put(
        &self,
        key: &str,
        body: &[u8],
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        self.path_of(key)?;
        let temp = self.write_temp(key, body)?;
        self.place(temp, key, metadata.clone(), None, mode)
    }

    pub fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        self.path_of(&link.key)?;
        let path = self.temp_path(&link.key, &crate::random_hex(6));
        create_temp_in(&path, || symlink(&link.symlink_target, &path))
            .map_err(|e| Error::io(path.display(), e))?;
        let temp = Temp::adopt(path, &self.internal("tmp"));
        self.place(
            temp,
            &link.key,
            metadata.clone(),
            link.redirect.clone(),
            PutMode::Create,
        )
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        let ino = match fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => meta.ino(),
            Ok(_) => return Ok(()),
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("deleting {}", path.display()), e)),
        }
        fsync_removal(&path).map_err(|e| Error::io(parent(&path).display(), e))?;
        // Ours, or stale (the object was foreign): either way it goes.
        self.remove_sidecar(key, ino);
        prune_empty_dirs(&path, &self.root);
        Ok(())
    }

    pub fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        if !recursive && !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(Error::store(format!(
                "list_dir needs an empty prefix or one ending in '/', not {prefix:?}"
            )));
        }
        // The deepest directory `prefix` names: a recursive listing's
        // prefix may end in part of a name.
        let rel = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let dir = if rel.is_empty() {
            self.root.clone()
        } else {
            self.path_of(rel)?
        };
        let mut listing = Listing::default();
        if recursive {
            self.walk(&dir, rel, prefix, &mut listing.objects)?;
        } else {
            for (key, path, is_dir) in self.entries(&dir, rel)? {
                if is_dir {
                    listing.prefixes.push(format!("{key}/"));
                } else {
                    listing.objects.extend(object_meta(key, &path)?);
                }
            }
        }
        listing.prefixes.sort();
        listing.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    /// Every object under `dir` (key `rel`) whose key starts with `prefix`.
    fn walk(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectMeta>) -> Result<()> {
        for (key, path, is_dir) in self.entries(dir, rel)? {
            // Only descend where the prefix can still match.
            let reachable = key.starts_with(prefix) || prefix.starts_with(&format!("{key}/"));
            if !reachable {
                continue;
            }
            if is_dir {
                self.walk(&path, &key, prefix, out)?;
            } else if key.starts_with(prefix) {
                out.extend(object_meta(key, &path)?);
            }
        }
        Ok(())
    }

    /// The entries of `dir` (key `rel`) as (key, path, is a directory); the
    /// backend's internal directory is not one of them.
    fn entries(&self, dir: &Path, rel: &str) -> Result<Vec<(String, PathBuf, bool)>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if key == INTERNAL_DIR {
                continue;
            }
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io(entry.path().display(), e))?
                .is_dir();
            found.push((key, entry.path(), is_dir));
        }
        Ok(found)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parent(path: &Path) -> &Path {
    path.parent().expect("store paths have a parent")
}

/// A symlink's body as S3 readers see it: the target without leading `../`.
fn link_body(path: &Path) -> Result<String> {
    let target = fs::read_link(path).map_err(|e| Error::io(path.display(), e))?;
    let mut body = target.to_string_lossy().into_owned();
    while let Some(rest) = body.strip_prefix("../") {
        body = rest.to_string();
    }
    Ok(body)
}

/// The redirect of an object without a sidecar: a symlink that stock
/// aliBuild (or anything but alitx) left, naming a key of the store
/// (`TARS/...`, as a dist link does), redirects there, as that link's S3
/// object does; anything else does not.
fn implied_redirect(meta: &fs::Metadata, path: &Path) -> Result<Option<String>> {
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    let body = link_body(path)?;
    Ok(body.starts_with("TARS/").then(|| format!("/{body}")))
}

/// A listed object's size and modification time, and for a link the MD5 of
/// its body (a plain file would have to be read for it); `None` if it was
/// deleted since the directory was read.
fn object_meta(key: String, path: &Path) -> Result<Option<ObjectMeta>> {
    let vanished =
        |e: &Error| e.kind == crate::error::ErrorKind::Io && fs::symlink_metadata(path).is_err();
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(Error::io(path.display(), e)),
    };
    let body = match meta
        .file_type()
        .is_symlink()
        .then(|| link_body(path))
        .transpose()
    {
        Err(e) if vanished(&e) => return Ok(None),
        body => body?,
    };
    Ok(Some(ObjectMeta {
        key,
        size: body.as_ref().map_or(meta.len(), |b| b.len() as u64),
        last_modified: Some(meta.mtime()),
        md5: body.map(|b| md5_hex(b.as_bytes())),
    }))
}

/// An object's size; for a link, its body's, as S3 readers see it.
fn size_of(meta: &fs::Metadata, path: &Path) -> Result<u64> {
    Ok(if meta.file_type().is_symlink() {
        link_body(path)?.len() as u64
    } else {
        meta.len()
    })
}

/// Whether a lookup failed because nothing is at the path: also when a
/// parent is a file (`TARS/a/b/c` with an object at `TARS/a/b`), which on
/// S3 is just another missing key.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The symlinks stock aliBuild leaves have no sidecar: a dist link
    /// redirects to the key it names, a package link (relative to `TARS/`)
    /// does not.
    #[test]
    fn a_stock_symlink_redirects_where_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFs::new(dir.path().to_path_buf());
        let tarball = "TARS/a/store/cd/cdcd/p-v-1.a.tar.gz";
        for (key, target, redirect) in [
            (
                "TARS/a/dist/p/p-v-1/p-v-1.a.tar.gz",
                format!("../../../../../{tarball}"),
                Some(format!("/{tarball}")),
            ),
            (
                "TARS/a/p/p-v-1.a.tar.gz",
                "../../a/store/cd/cdcd/p-v-1.a.tar.gz".to_string(),
                None,
            ),
        ] {
            let path = dir.path().join(key);
            fs::create_dir_all(parent(&path)).unwrap();
            symlink(target, &path).unwrap();
            let info = store.head(key).unwrap().unwrap();
            assert_eq!(info.website_redirect, redirect, "{key}");
            assert!(info.metadata.is_empty(), "{key}");
        }
    }
}
