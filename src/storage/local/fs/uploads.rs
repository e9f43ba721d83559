//! Staged uploads in a local store: part files in
//! `.alitx-store/uploads/<id>/`, assembled and linked to their key on
//! completion; and the temporary names a killed writer left, listed and
//! aborted as uploads.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{is_hex, parent, LocalFs, TEMP_SUFFIX};
use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::storage::local::durable::{create_in, fsync_dir, write_durably, Temp};
use crate::storage::{md5_hex, Created, Metadata, PendingUpload, PutMode, UploadedPart};

/// How long a temporary name must sit untouched before `list_uploads`
/// reports it: every write renews its mtime, and publishing one takes
/// milliseconds, so only a dead (or frozen) writer's temporary gets there.
const TEMP_IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Upload ids `list_uploads` gives to leftover temporary names.
const TEMP_UPLOAD_PREFIX: &str = "tmp-";

#[derive(Serialize, Deserialize)]
struct UploadRecord {
    key: String,
    metadata: Metadata,
    initiated: i64,
}

impl LocalFs {
    pub fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
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

    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let (dir, _) = self.upload_record(key, upload_id)?;
        let md5 = md5_hex(&data);
        let temp_path = dir.join(format!("{number:05}.{}{TEMP_SUFFIX}", crate::random_hex(6)));
        // In the upload's directory as it is: one withdrawn since (aborted,
        // or fenced by a takeover) is not made again, and the part fails as
        // S3's would (NoSuchUpload).
        let staging = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => Error::store(format!(
                "no staged upload {upload_id} in {}",
                self.describe()
            )),
            _ => Error::io(format!("staging part {number} in {}", dir.display()), e),
        };
        let mut file = File::create_new(&temp_path).map_err(staging)?;
        let temp = Temp::adopt(temp_path, &dir);
        file.write_all(&data)
            .and_then(|()| file.sync_all())
            .map_err(staging)?;
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

    pub fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        if !self.upload_dir(upload_id)?.exists() {
            return Ok(None);
        }
        let (dir, _) = self.upload_record(key, upload_id)?;
        part_files(&dir).map(Some)
    }

    /// Put-if-absent: see the documentation of the `local` module for a
    /// key that is already taken, by this upload's object or another.
    pub fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (dir, record) = self.upload_record(key, upload_id)?;
        if self.head(key)?.is_some() {
            if self.holds_upload(key, &record, parts)? {
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
        if created == Created::AlreadyExists && !self.holds_upload(key, &record, parts)? {
            return Err(self.taken(key, upload_id));
        }
        self.remove_upload(&dir)
    }

    pub fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        if let Some(hex) = upload_id.strip_prefix(TEMP_UPLOAD_PREFIX) {
            self.path_of(key)?;
            if !is_hex(hex) {
                return Err(Error::store(format!("invalid upload id {upload_id:?}")));
            }
            drop(Temp::adopt(self.temp_path(key, hex), &self.internal("tmp")));
            return Ok(());
        }
        self.withdraw_upload(upload_id)
            .map_err(|e| e.context(format!("aborting upload {upload_id}")))
    }

    /// Take a staged upload out of `uploads/` with one `rename(2)`, then
    /// remove it. A completion in another process links its assembled file
    /// from inside the upload's directory: once the rename is done, that
    /// path is gone, so no completion can publish after an abort returned;
    /// one that linked before it has published, as a HEAD then shows.
    fn withdraw_upload(&self, upload_id: &str) -> Result<()> {
        let dir = self.upload_dir(upload_id)?;
        if !dir.exists() {
            return Ok(());
        }
        let withdrawn = self
            .internal("aborted")
            .join(format!("{upload_id}.{}", crate::random_hex(6)));
        match create_in(&withdrawn, || fs::rename(&dir, &withdrawn)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => return Ok(()),
            Err(e) => return Err(Error::io(format!("withdrawing {}", dir.display()), e)),
        }
        fsync_dir(parent(&dir)).map_err(|e| Error::io(parent(&dir).display(), e))?;
        self.remove_upload(&withdrawn)
    }

    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
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
    fn holds_upload(
        &self,
        key: &str,
        record: &UploadRecord,
        parts: &[UploadedPart],
    ) -> Result<bool> {
        let size: u64 = parts.iter().map(|p| p.size).sum();
        Ok(self.head(key)?.is_some_and(|info| {
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
