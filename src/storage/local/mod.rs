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
//! - **Threads**: the filesystem work ([`fs::LocalFs`]) runs on blocking
//!   threads, so that parts are staged side by side and a completion that
//!   assembles gigabytes holds up no async worker; [`gate`] keeps the
//!   operations of one process on one key (or upload) in the order they
//!   were begun.

mod durable;
mod fs;
mod gate;
mod identity;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Created, Listing, Metadata, ObjectInfo, PendingUpload, PutMode, Segments, Store, UploadedPart,
};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::Link;
use fs::LocalFs;
use gate::{Access, Gates};

/// A local-directory store: an async front to [`LocalFs`], each operation
/// run on a blocking thread once past its [`gate`]s.
#[derive(Debug)]
pub struct LocalStore {
    fs: Arc<LocalFs>,
    gates: Gates,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore {
            fs: Arc::new(LocalFs::new(root)),
            gates: Gates::default(),
        }
    }

    /// Run `op` on a blocking thread, once past the gates of `names`, which
    /// it holds till it ends, even if the caller stops waiting for it.
    async fn blocking<T: Send + 'static>(
        &self,
        names: Vec<(String, Access)>,
        op: impl FnOnce(&LocalFs) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let passes = self.gates.pass(names).await;
        let fs = self.fs.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _passes = passes;
            op(&fs)
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::new(
                ErrorKind::Io,
                format!("{}: the operation was cancelled ({e})", self.fs.describe()),
            )),
        }
    }
}

/// The gate of an object's key.
fn key_gate(key: &str, access: Access) -> (String, Access) {
    (format!("key {key}"), access)
}

/// The gate of a staged upload.
fn upload_gate(upload_id: &str, access: Access) -> (String, Access) {
    (format!("upload {upload_id}"), access)
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        self.fs.describe()
    }

    async fn preflight(&self) -> Result<()> {
        self.blocking(vec![], |fs| fs.preflight()).await
    }

    /// See [`LocalFs::ensure_space`].
    async fn ensure_space(&self, bytes: u64) -> Result<()> {
        self.blocking(vec![], move |fs| fs.ensure_space(bytes))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let key = key.to_string();
        let gates = vec![key_gate(&key, Access::Shared)];
        self.blocking(gates, move |fs| fs.head(&key)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = key.to_string();
        let gates = vec![key_gate(&key, Access::Shared)];
        self.blocking(gates, move |fs| fs.get(&key)).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
        let key = key.to_string();
        let gates = vec![key_gate(&key, Access::Shared)];
        self.blocking(gates, move |fs| fs.get_range(&key, offset, len))
            .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        let gates = vec![key_gate(&key, Access::Exclusive)];
        self.blocking(gates, move |fs| fs.put(&key, &body, &metadata, mode))
            .await
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        let (link, metadata) = (link.clone(), metadata.clone());
        let gates = vec![key_gate(&link.key, Access::Exclusive)];
        self.blocking(gates, move |fs| fs.put_link_if_absent(&link, &metadata))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        let gates = vec![key_gate(&key, Access::Exclusive)];
        self.blocking(gates, move |fs| fs.delete(&key)).await
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        let prefix = prefix.to_string();
        self.blocking(vec![], move |fs| fs.list_dir(&prefix, recursive))
            .await
    }

    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        self.blocking(vec![], move |fs| fs.create_upload(&key, &metadata))
            .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        let gates = vec![upload_gate(&upload_id, Access::Shared)];
        self.blocking(gates, move |fs| {
            fs.upload_part(&key, &upload_id, number, data)
        })
        .await
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        let gates = vec![upload_gate(&upload_id, Access::Exclusive)];
        self.blocking(gates, move |fs| fs.list_parts(&key, &upload_id))
            .await
    }

    /// See [`LocalFs::complete_upload`].
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (key, upload_id, parts) = (key.to_string(), upload_id.to_string(), parts.to_vec());
        let gates = vec![
            upload_gate(&upload_id, Access::Exclusive),
            key_gate(&key, Access::Exclusive),
        ];
        self.blocking(gates, move |fs| {
            fs.complete_upload(&key, &upload_id, &parts)
        })
        .await
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()> {
        let (key, upload_id) = (key.to_string(), upload_id.to_string());
        let gates = vec![upload_gate(&upload_id, Access::Exclusive)];
        self.blocking(gates, move |fs| fs.abort_upload(&key, &upload_id))
            .await
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let prefix = prefix.to_string();
        self.blocking(vec![], move |fs| fs.list_uploads(&prefix))
            .await
    }
}
