//! The local-directory backend: the same protocol on a filesystem, laid out
//! exactly as aliBuild lays out `sw/TARS`, so that stock aliBuild can use
//! the directory as `--remote-store /that/path`. Everything alitx keeps
//! besides the objects lives under `.alitx-store/`, outside the key space.
//!
//! - **Objects** are prepared under a temporary name and published by
//!   `link(2)` (put-if-absent: it fails if the name exists) or, for journal
//!   rewrites only, `rename(2)`; links are real relative symlinks.
//! - **Durability**: file data is fsynced before it is published, and the
//!   parent directory is fsynced after every `link`, `rename`, `unlink` and
//!   `mkdir` that publishes or retires something (objects, deletes, part
//!   files, sidecars, upload records, completed or aborted uploads). Only
//!   the removal of a temporary name and of a stale sidecar is not: after a
//!   power loss such a name may come back, and is harmless (see below).
//! - **Metadata** lives in a sidecar `.alitx-store/meta/<key>@<inode>.json`
//!   that records the object's [`Identity`]: inode number, file handle
//!   (inode generation), birth time, nanosecond mtime and size. ext4 reuses
//!   a freed inode number at once, so a sidecar whose identity differs from
//!   the inode now at the key is stale: that object is foreign and has no
//!   metadata. `delete` and replacing puts remove the stale sidecar.
//! - **Staged uploads** are part files in `.alitx-store/uploads/<id>/`.
//!   Completion assembles them into a file in that same directory (so a
//!   killed completion's full-size copy belongs to the staged upload, and
//!   aborting or completing it again frees it), links it to the key
//!   put-if-absent, and only then drops the parts. If the key is taken by
//!   another object the parts stay and completion fails with a conflict.
//!   If it holds this very upload's object (same metadata, which names the
//!   transaction, and same size), as a retried completion or another staged
//!   upload of the same transaction finds it, completion succeeds and drops
//!   the parts. Completing needs free space for a second copy of the
//!   object: see [`Store::ensure_space`].
//! - **Temporary names** are `.alitx-store/tmp/<key>.<12 hex>.tmp`. One left
//!   by a killed writer, once untouched for ten minutes, is listed
//!   by `list_uploads` as a staged upload of its key with the id
//!   `tmp-<12 hex>` (so `check` reports it and `repair` aborts it), and
//!   `abort_upload` of that id removes it.

mod durable;
mod identity;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    md5_hex, Created, Listing, Metadata, ObjectInfo, ObjectMeta, PendingUpload, PutMode, Segments,
    Store, UploadedPart,
};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::layout::Link;
use durable::{
    create_in, create_temp_in, free_space, fsync_dir, make_dir, prune_empty_dirs, write_durably,
    Temp,
};
use identity::Identity;

/// Internal state of the backend, outside the key space.
const INTERNAL_DIR: &str = ".alitx-store";

/// How long a temporary name must sit untouched before `list_uploads`
/// reports it: every write renews its mtime, and publishing one takes
/// milliseconds, so only a dead (or frozen) writer's temporary gets there.
const TEMP_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Upload ids `list_uploads` gives to leftover temporary names.
const TEMP_UPLOAD_PREFIX: &str = "tmp-";
const TEMP_SUFFIX: &str = ".tmp";

/// Beyond twice the object, for the journal, sidecars and links.
const SPACE_SLACK: u64 = 1 << 20;

#[derive(Debug)]
pub struct LocalStore {
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

#[derive(Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    metadata: Metadata,
    initiated: i64,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
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

    fn put_bytes(
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

    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf> {
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::store(format!("invalid upload id {upload_id:?}")));
        }
        Ok(self.internal("uploads").join(upload_id))
    }

    fn upload_record(&self, key: &str, upload_id: &str) -> Result<(PathBuf, UploadRecord)> {
        let dir = self.upload_dir(upload_id)?;
        let record: UploadRecord = fs::read(dir.join("upload.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::store(format!(
                    "no staged upload {upload_id} in {}",
                    self.describe()
                ))
            })?;
        if record.key != key {
            return Err(Error::store(format!(
                "staged upload {upload_id} is for {}, not {key}",
                record.key
            )));
        }
        Ok((dir, record))
    }

    /// Remove a staged upload's directory, durably; a missing one is fine.
    fn remove_upload(&self, dir: &Path) -> Result<()> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("removing {}", dir.display()), e)),
        }
        fsync_dir(parent(dir)).map_err(|e| Error::io(parent(dir).display(), e))
    }

    /// Whether `key` holds the object that completing the upload `record`
    /// from `parts` makes: its metadata (which names the transaction) and
    /// its size. A retried or concurrent completion of the same upload
    /// finds it so.
    async fn holds_upload(
        &self,
        key: &str,
        record: &UploadRecord,
        parts: &[UploadedPart],
    ) -> Result<bool> {
        let size: u64 = parts.iter().map(|p| p.size).sum();
        Ok(self.head(key).await?.is_some_and(|info| {
            !record.metadata.is_empty() && info.metadata == record.metadata && info.size == size
        }))
    }

    fn taken(&self, key: &str, upload_id: &str) -> Error {
        Error::conflict(format!(
            "{key} already exists in the {} and is not the object of staged upload {upload_id}; \
             the staged upload is kept",
            self.describe()
        ))
    }

    /// Concatenate `parts` into a new file in the upload's directory.
    fn assemble(&self, dir: &Path, upload_id: &str, parts: &[UploadedPart]) -> Result<Temp> {
        let path = dir.join(format!("assembling.{}{TEMP_SUFFIX}", crate::random_hex(6)));
        let mut out = File::create_new(&path).map_err(|e| {
            Error::store(format!(
                "staged upload {upload_id} is gone ({e}): completed or aborted meanwhile"
            ))
        })?;
        let temp = Temp::adopt(path, dir);
        for part in parts {
            let mut input = File::open(dir.join(part_file_name(part))).map_err(|e| {
                Error::store(format!(
                    "part {} of upload {upload_id} is not staged: {e}",
                    part.number
                ))
            })?;
            io::copy(&mut input, &mut out).map_err(|e| Error::io(temp.path.display(), e))?;
            failpoint("local-assembling");
        }
        out.sync_all()
            .map_err(|e| Error::io(temp.path.display(), e))?;
        Ok(temp)
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

    /// Temporary names of keys under `prefix` untouched for
    /// [`TEMP_IDLE_LIMIT`]: left by a writer that died.
    fn leftover_temps(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut temps = Vec::new();
        self.walk(&self.internal("tmp"), "", prefix, &mut temps)?;
        let idle_since = crate::now_secs() - TEMP_IDLE_LIMIT.as_secs() as i64;
        Ok(temps
            .into_iter()
            .filter_map(|temp| {
                let (key, hex) = temp.key.strip_suffix(TEMP_SUFFIX)?.rsplit_once('.')?;
                let modified = temp.last_modified?;
                (key.starts_with(prefix) && is_hex(hex) && modified <= idle_since).then(|| {
                    PendingUpload {
                        key: key.to_string(),
                        upload_id: format!("{TEMP_UPLOAD_PREFIX}{hex}"),
                        initiated: Some(modified),
                    }
                })
            })
            .collect())
    }

    /// The free space needed to stage and complete an object of `bytes`.
    fn space_needed(bytes: u64) -> u64 {
        bytes.saturating_mul(2).saturating_add(SPACE_SLACK)
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("local store {}", self.root.display())
    }

    async fn preflight(&self) -> Result<()> {
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
    async fn ensure_space(&self, bytes: u64) -> Result<()> {
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

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path_of(key)?;
        let (meta, identity) = match Identity::of(&path) {
            Ok((meta, _)) if meta.is_dir() => return Ok(None),
            Ok(found) => found,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let (metadata, website_redirect) = self
            .read_sidecar(key, &identity)
            .map(|s| (s.metadata, s.website_redirect))
            .unwrap_or_default();
        Ok(Some(ObjectInfo {
            size: size_of(&meta, &path)?,
            metadata,
            website_redirect,
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
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

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
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

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        self.put_bytes(key, &body, metadata, mode)
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
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

    async fn delete(&self, key: &str) -> Result<()> {
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
        fsync_dir(parent(&path)).map_err(|e| Error::io(parent(&path).display(), e))?;
        // Ours, or stale (the object was foreign): either way it goes.
        self.remove_sidecar(key, ino);
        prune_empty_dirs(&path, &self.root);
        Ok(())
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
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

    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
        self.path_of(key)?;
        let upload_id = crate::random_hex(16);
        let dir = self.upload_dir(&upload_id)?;
        let record = UploadRecord {
            key: key.to_string(),
            metadata: metadata.clone(),
            initiated: crate::now_secs(),
        };
        let json = serde_json::to_vec(&record).expect("record serialises");
        // Unreadable until complete: `list_uploads` skips it till then.
        let path = dir.join("upload.json");
        write_durably(&path, &json)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        Ok(upload_id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let (dir, _) = self.upload_record(key, upload_id)?;
        let md5 = md5_hex(&data);
        let temp_path = dir.join(format!("{number:05}.{}{TEMP_SUFFIX}", crate::random_hex(6)));
        let temp = Temp::write(temp_path, &dir, &data)
            .map_err(|e| Error::io(format!("staging part {number} in {}", dir.display()), e))?;
        for old in part_files(&dir)?.into_iter().filter(|p| p.number == number) {
            let _ = fs::remove_file(dir.join(part_file_name(&old)));
        }
        let part = UploadedPart {
            number,
            size: data.len() as u64,
            md5,
            received_at: None,
        };
        fs::rename(&temp.path, dir.join(part_file_name(&part)))
            .and_then(|()| fsync_dir(&dir))
            .map_err(|e| Error::io(temp.path.display(), e))?;
        Ok(part)
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        if !self.upload_dir(upload_id)?.exists() {
            return Ok(None);
        }
        let (dir, _) = self.upload_record(key, upload_id)?;
        part_files(&dir).map(Some)
    }

    /// Put-if-absent: see the module documentation for a key that is
    /// already taken, by this upload's object or another.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (dir, record) = self.upload_record(key, upload_id)?;
        if self.head(key).await?.is_some() {
            if self.holds_upload(key, &record, parts).await? {
                return self.remove_upload(&dir);
            }
            return Err(self.taken(key, upload_id));
        }
        let assembled = self.assemble(&dir, upload_id, parts)?;
        let created = self.place(
            assembled,
            key,
            record.metadata.clone(),
            None,
            PutMode::Create,
        )?;
        if created == Created::AlreadyExists && !self.holds_upload(key, &record, parts).await? {
            return Err(self.taken(key, upload_id));
        }
        self.remove_upload(&dir)
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        if let Some(hex) = upload_id.strip_prefix(TEMP_UPLOAD_PREFIX) {
            self.path_of(key)?;
            if !is_hex(hex) {
                return Err(Error::store(format!("invalid upload id {upload_id:?}")));
            }
            drop(Temp::adopt(self.temp_path(key, hex), &self.internal("tmp")));
            return Ok(());
        }
        self.remove_upload(&self.upload_dir(upload_id)?)
            .map_err(|e| e.context(format!("aborting upload {upload_id}")))
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.internal("uploads");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        let mut uploads = self.leftover_temps(prefix)?;
        for entry in entries {
            let Ok(bytes) = fs::read(entry.path().join("upload.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<UploadRecord>(&bytes) else {
                continue;
            };
            if record.key.starts_with(prefix) {
                uploads.push(PendingUpload {
                    key: record.key,
                    upload_id: entry.file_name().to_string_lossy().into_owned(),
                    initiated: Some(record.initiated),
                });
            }
        }
        uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        Ok(uploads)
    }
}

fn part_file_name(part: &UploadedPart) -> String {
    format!("{:05}.{}.part", part.number, part.md5)
}

/// Parts are named `<number>.<md5>.part`.
fn part_files(dir: &Path) -> Result<Vec<UploadedPart>> {
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir)
        .map_err(|e| Error::io(dir.display(), e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut fields = name.split('.');
        if let (Some(number), Some(md5), Some("part"), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        {
            if let (Ok(number), Ok(meta)) = (number.parse(), entry.metadata()) {
                parts.push(UploadedPart {
                    number,
                    size: meta.len(),
                    md5: md5.to_string(),
                    received_at: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs() as i64),
                });
            }
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
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
