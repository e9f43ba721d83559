//! The local-directory backend: the same protocol on a filesystem, laid out
//! exactly as aliBuild lays out `sw/TARS`, so that stock aliBuild can use
//! the directory as `--remote-store /that/path`.
//!
//! Objects appear by atomic `link`/`rename` from a temporary file in the same
//! filesystem; put-if-absent is `link(2)`, which fails if the name exists.
//! Links are real relative symlinks. User metadata lives beside the store in
//! `.alitx-store/meta/<key>@<inode>.json`: keyed by the object's inode, so a
//! foreign object later written at the same key never inherits it.
//! Staged uploads are directories of part files under `.alitx-store/uploads/`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::{
    Created, Listing, Metadata, ObjectInfo, ObjectMeta, PendingUpload, Store, UploadedPart,
};
use crate::error::{Error, Result};
use crate::layout::Link;

/// Internal state of the backend, outside the key space.
const INTERNAL_DIR: &str = ".alitx-store";

#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

#[derive(Serialize, Deserialize, Default)]
struct Sidecar {
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

    /// A fresh temporary path on the store's filesystem.
    fn temp_path(&self) -> Result<PathBuf> {
        let dir = self.internal("tmp");
        create_dir_all(&dir)?;
        Ok(dir.join(crate::random_hex(12)))
    }

    fn write_sidecar(&self, key: &str, ino: u64, sidecar: &Sidecar) -> Result<()> {
        let path = self.sidecar_path(key, ino);
        create_dir_all(path.parent().expect("sidecar has a parent"))?;
        let json = serde_json::to_vec(sidecar).expect("sidecar serialises");
        write_durably(&path, &json)
    }

    fn read_sidecar(&self, key: &str, ino: u64) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path(key, ino)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Put the prepared temporary object `temp` at `key`: exclusively with
    /// `link`, or replacing with `rename`.
    fn place(&self, temp: &Path, key: &str, sidecar: Sidecar, exclusive: bool) -> Result<Created> {
        let dest = self.path_of(key)?;
        create_dir_all(dest.parent().expect("keys have a parent"))?;
        let ino = lstat(temp)?.ino();
        self.write_sidecar(key, ino, &sidecar)?;
        let previous = fs::symlink_metadata(&dest).ok().map(|m| m.ino());
        let placed = if exclusive {
            let linked = fs::hard_link(temp, &dest);
            let _ = fs::remove_file(temp);
            linked
        } else {
            fs::rename(temp, &dest)
        };
        match placed {
            Ok(()) => {
                if let Some(old) = previous.filter(|old| *old != ino) {
                    let _ = fs::remove_file(self.sidecar_path(key, old));
                }
                Ok(Created::Yes)
            }
            Err(e) => {
                let _ = fs::remove_file(self.sidecar_path(key, ino));
                let _ = fs::remove_file(temp);
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
        exclusive: bool,
    ) -> Result<Created> {
        self.path_of(key)?;
        let temp = self.temp_path()?;
        write_durably(&temp, body)?;
        let sidecar = Sidecar {
            metadata: metadata.clone(),
            website_redirect: None,
        };
        self.place(&temp, key, sidecar, exclusive)
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

    /// Remove now-empty directories from `path`'s parent up to the root.
    fn prune_empty_parents(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
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
                out.push(object_meta(key, &path)?);
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
        create_dir_all(&self.internal("tmp"))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path_of(key)?;
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) if !meta.is_dir() => meta,
            Ok(_) => return Ok(None),
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let sidecar = self.read_sidecar(key, meta.ino()).unwrap_or_default();
        Ok(Some(ObjectInfo {
            size: size_of(&meta, &path)?,
            metadata: sidecar.metadata,
            website_redirect: sidecar.website_redirect,
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

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Bytes>> {
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
            return Ok(Some(body.slice(start..end)));
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let mut file = File::open(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut buf = Vec::with_capacity(len.min(meta.len().saturating_sub(offset)) as usize);
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(len).read_to_end(&mut buf))
            .map_err(|e| Error::io(path.display(), e))?;
        Ok(Some(Bytes::from(buf)))
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, metadata: &Metadata) -> Result<Created> {
        self.put_bytes(key, &body, metadata, true)
    }

    async fn put(&self, key: &str, body: Bytes, metadata: &Metadata) -> Result<()> {
        self.put_bytes(key, &body, metadata, false).map(|_| ())
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        self.path_of(&link.key)?;
        let temp = self.temp_path()?;
        symlink(&link.symlink_target, &temp).map_err(|e| Error::io(temp.display(), e))?;
        let sidecar = Sidecar {
            metadata: metadata.clone(),
            website_redirect: link.redirect.clone(),
        };
        self.place(&temp, &link.key, sidecar, true)
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
        let sidecar = self.sidecar_path(key, ino);
        let _ = fs::remove_file(&sidecar);
        self.prune_empty_parents(&sidecar);
        self.prune_empty_parents(&path);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut objects = Vec::new();
        self.walk(&self.root, "", prefix, &mut objects)?;
        let mut keys: Vec<String> = objects.into_iter().map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        let rel = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() && !prefix.ends_with('/') {
            return Err(Error::store(format!(
                "list_dir needs an empty prefix or one ending in '/', not {prefix:?}"
            )));
        }
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
                    listing.objects.push(object_meta(key, &path)?);
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
        create_dir_all(&dir)?;
        let record = UploadRecord {
            key: key.to_string(),
            metadata: metadata.clone(),
            initiated: crate::now_secs(),
        };
        write_durably(
            &dir.join("upload.json"),
            &serde_json::to_vec(&record).expect("record serialises"),
        )?;
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
        let md5 = hex::encode(Md5::digest(&data));
        let temp = dir.join(format!("{number:05}.tmp"));
        write_durably(&temp, &data)?;
        for old in part_files(&dir)?.into_iter().filter(|p| p.number == number) {
            let _ = fs::remove_file(dir.join(part_file_name(&old)));
        }
        let part = UploadedPart {
            number,
            size: data.len() as u64,
            md5,
        };
        fs::rename(&temp, dir.join(part_file_name(&part)))
            .map_err(|e| Error::io(temp.display(), e))?;
        Ok(part)
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        if !self.upload_dir(upload_id)?.exists() {
            return Ok(None);
        }
        let (dir, _) = self.upload_record(key, upload_id)?;
        part_files(&dir).map(Some)
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (dir, record) = self.upload_record(key, upload_id)?;
        let temp = self.temp_path()?;
        let mut out = File::create(&temp).map_err(|e| Error::io(temp.display(), e))?;
        for part in parts {
            let path = dir.join(part_file_name(part));
            let mut input = File::open(&path).map_err(|e| {
                Error::store(format!(
                    "part {} of upload {upload_id} is not staged: {e}",
                    part.number
                ))
            })?;
            io::copy(&mut input, &mut out).map_err(|e| Error::io(temp.display(), e))?;
        }
        out.sync_all().map_err(|e| Error::io(temp.display(), e))?;
        drop(out);
        let sidecar = Sidecar {
            metadata: record.metadata,
            website_redirect: None,
        };
        self.place(&temp, key, sidecar, false)?;
        fs::remove_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> Result<()> {
        match fs::remove_dir_all(self.upload_dir(upload_id)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("aborting upload {upload_id}"), e)),
        }
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let dir = self.internal("uploads");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir.display(), e)),
        };
        let mut uploads = Vec::new();
        for entry in entries.flatten() {
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
                });
            }
        }
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
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
/// its body (a plain file would have to be read for it).
fn object_meta(key: String, path: &Path) -> Result<ObjectMeta> {
    let meta = lstat(path)?;
    let body = meta
        .file_type()
        .is_symlink()
        .then(|| link_body(path))
        .transpose()?;
    Ok(ObjectMeta {
        key,
        size: body.as_ref().map_or(meta.len(), |b| b.len() as u64),
        last_modified: Some(meta.mtime()),
        md5: body.map(|b| hex::encode(Md5::digest(b.as_bytes()))),
    })
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

fn lstat(path: &Path) -> Result<fs::Metadata> {
    fs::symlink_metadata(path).map_err(|e| Error::io(path.display(), e))
}

fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path.display(), e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(path.display(), e))
}
