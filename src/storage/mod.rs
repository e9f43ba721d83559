//! The one small storage interface the transaction engine talks to, and the
//! backends behind it: S3 (Ceph RGW, AWS, ...) and a local directory.
//!
//! The interface offers exactly the primitives the protocol needs: a put
//! that only creates ([`PutMode::Create`], put-if-absent) for the
//! commit-critical keys, overwriting puts for the journal, and a staged
//! (multipart) upload that stays invisible until completed.
//! Every backend must pass the conformance suite in `tests/suite/conformance.rs`.

mod local;
mod s3;
mod s3_http;
mod s3_net;
mod s3_tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use md5::{Digest, Md5};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::Link;

pub use local::LocalStore;
pub use s3::{S3Config, S3Store};
pub use s3_http::{Connections, FEW_CONNECTIONS};

/// User metadata attached to an object (`x-amz-meta-*` on S3).
pub type Metadata = BTreeMap<String, String>;

/// Whether a conditional create found the key free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Yes,
    /// Something already holds the key; it was left untouched.
    AlreadyExists,
}

/// How [`Store::put`] treats a key something already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Create the key only if nothing holds it: the commit-critical keys.
    Create,
    /// Create or replace it (journal updates only): always [`Created::Yes`].
    Overwrite,
}

/// What a HEAD returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    pub size: u64,
    pub metadata: Metadata,
    pub website_redirect: Option<String>,
}

/// One uploaded part of a staged upload. Two are equal when they describe
/// the same bytes at the same place, whenever they were listed.
#[derive(Debug, Clone, Eq)]
pub struct UploadedPart {
    pub number: u32,
    pub size: u64,
    /// Hex MD5 of the part's bytes, without quotes.
    pub md5: String,
    /// Seconds since the epoch when the store received it, when a listing
    /// tells.
    pub received_at: Option<i64>,
}

impl PartialEq for UploadedPart {
    fn eq(&self, other: &Self) -> bool {
        (self.number, self.size, &self.md5) == (other.number, other.size, &other.md5)
    }
}

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Seconds since the epoch, when the backend knows it.
    pub last_modified: Option<i64>,
    /// Hex MD5 of the body, when the listing tells it without reading the
    /// object: on S3 the ETag of a single-part object; locally, for links.
    pub md5: Option<String>,
}

/// What a delimited listing finds directly under a prefix: the objects at
/// that level, and one `<prefix><name>/` per deeper level ("directory").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub prefixes: Vec<String>,
    pub objects: Vec<ObjectMeta>,
}

/// Bytes read from the store, in the segments they arrived in: a large range
/// is handed on without being gathered into one buffer (a copy of every
/// byte) unless a caller asks for that with [`Segments::into_bytes`].
#[derive(Debug, Clone, Default)]
pub struct Segments {
    segments: Vec<Bytes>,
    len: usize,
}

impl Segments {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slices(&self) -> &[Bytes] {
        &self.segments
    }

    /// The bytes in one buffer: a copy only when there are several segments.
    pub fn into_bytes(mut self) -> Bytes {
        match self.segments.len() {
            0 => Bytes::new(),
            1 => self.segments.pop().expect("one segment"),
            _ => Bytes::from(self.segments.concat()),
        }
    }
}

impl FromIterator<Bytes> for Segments {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        let segments: Vec<Bytes> = iter.into_iter().filter(|s| !s.is_empty()).collect();
        let len = segments.iter().map(Bytes::len).sum();
        Segments { segments, len }
    }
}

impl From<Bytes> for Segments {
    fn from(bytes: Bytes) -> Self {
        std::iter::once(bytes).collect()
    }
}

/// Hex MD5 of `data`, as S3 ETags, [`UploadedPart::md5`] and
/// [`ObjectMeta::md5`] spell it.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// [`md5_hex`] of a part or a body (megabytes), hashed off the async worker
/// threads.
pub async fn md5_hex_off_thread(data: Bytes) -> String {
    tokio::task::spawn_blocking(move || md5_hex(&data))
        .await
        .expect("md5 task")
}

/// When the newest of some objects was written, from their times (`None`
/// where the store does not tell). One policy for an unknown time: the
/// object may have been written just now, so the newest time is unknown
/// too (as it is with no object at all), and nothing is old enough to
/// repair or to adopt on its strength.
pub fn newest_time(times: impl IntoIterator<Item = Option<i64>>) -> Option<i64> {
    times
        .into_iter()
        .try_fold(None, |newest: Option<i64>, time| {
            time.map(|time| newest.max(Some(time)))
        })
        .flatten()
}

/// The small objects alitx reads whole from a store that anyone may write:
/// each is read up to a limit, never whole, and a larger one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Small {
    /// A package or dist link: one store key.
    Link,
    /// An intent journal: every link of a revision.
    Journal,
    /// A publication record: a few hundred bytes.
    Record,
}

impl Small {
    /// The most bytes of one that are read.
    pub const fn limit(self) -> u64 {
        match self {
            Small::Link => 4 << 10,
            Small::Journal => 4 << 20,
            Small::Record => 64 << 10,
        }
    }

    fn refused(self, key: &str) -> Error {
        let (kind, what) = match self {
            Small::Link => (ErrorKind::Conflict, "a link"),
            Small::Journal => (ErrorKind::Journal, "a journal"),
            Small::Record => (ErrorKind::Verification, "a publication record"),
        };
        Error::new(
            kind,
            format!(
                "{key} is larger than {} bytes, which {what} never is: not read; \
                 something else than alitx or aliBuild wrote it",
                self.limit()
            ),
        )
    }
}

/// The body of the small object `what` at `key`, if there is one: at most
/// its limit is read (one request, as a whole read), and a larger object
/// is an error.
pub async fn get_small(store: &dyn Store, key: &str, what: Small) -> Result<Option<Bytes>> {
    let Some(body) = store.get_range(key, 0, what.limit() + 1).await? else {
        return Ok(None);
    };
    if body.len() as u64 > what.limit() {
        return Err(what.refused(key));
    }
    Ok(Some(body.into_bytes()))
}

/// A staged upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    /// Seconds since the epoch, when the backend knows it.
    pub initiated: Option<i64>,
}

/// The storage primitives of the protocol. Keys are `/`-separated relative
/// paths such as `TARS/<arch>/store/...`; callers validate them.
/// Whether a request with a deadline was sent ([`Store::delete_before`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    /// The deadline had passed: nothing was sent.
    TooLate,
}

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Where this store is, for messages: never includes credentials.
    fn describe(&self) -> String;

    /// Fail early, with a message that says what to fix, if the store cannot
    /// be reached or used (endpoint, credentials, bucket).
    async fn preflight(&self) -> Result<()>;

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// The object's body (for a link: its body, as S3 readers see it).
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Up to `len` bytes of the body from `offset`: fewer at the end of the
    /// object, none from its end on; `None` if the key does not exist. Reads
    /// a large object piece by piece, in bounded memory.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>>;

    /// Write `key`, as `mode` says: [`PutMode::Create`] leaves a key that
    /// something holds untouched and answers [`Created::AlreadyExists`].
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created>;

    /// Create a link object only if nothing holds its key: on S3 an object
    /// with the link's body (and redirect and public-read ACL for dist
    /// links), locally a relative symlink.
    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created>;

    /// Delete `key`; deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Called right before a request with a deadline leaves, so that the
    /// deadline is checked after it: a simulated store holds a frozen
    /// process here.
    async fn about_to_send(&self) {}

    /// Write `key` as [`put`](Self::put) does, only if the request leaves
    /// before `deadline` (see [`delete_before`](Self::delete_before)).
    async fn put_before(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
        deadline: tokio::time::Instant,
    ) -> Result<Sent> {
        self.about_to_send().await;
        if tokio::time::Instant::now() >= deadline {
            return Ok(Sent::TooLate);
        }
        self.put(key, body, metadata, mode).await.map(|_| Sent::Yes)
    }

    /// Delete `key` only if the request leaves before `deadline`, as
    /// checked right before it is sent: a process that stalled (frozen,
    /// starved) since its last proof of ownership sends nothing.
    async fn delete_before(&self, key: &str, deadline: tokio::time::Instant) -> Result<Sent> {
        self.about_to_send().await;
        if tokio::time::Instant::now() >= deadline {
            return Ok(Sent::TooLate);
        }
        self.delete(key).await.map(|()| Sent::Yes)
    }

    /// One level under `prefix` (empty, or ending in `/`), both parts
    /// sorted: like S3's ListObjectsV2 with delimiter `/`. With `recursive`,
    /// every object whose key starts with `prefix` (any prefix), at any
    /// depth, and no prefixes.
    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing>;

    /// Every key that starts with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let listing = self.list_dir(prefix, true).await?;
        Ok(listing.objects.into_iter().map(|o| o.key).collect())
    }

    /// Start a staged upload that will become `key` when completed.
    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String>;

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart>;

    /// The parts the store holds for an upload. `None` only when the store
    /// answered definitely that the upload does not exist (completed,
    /// aborted, never created); any other failure is an error, never taken
    /// as "gone".
    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>>;

    /// Make the upload visible at `key`, atomically, from `parts` in order.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()>;

    /// Discard an upload; aborting an unknown upload succeeds.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<()>;

    /// Staged uploads under `prefix` that were never completed or aborted.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Refuse, before anything is staged, if the store cannot take an
    /// object of `bytes` bytes (the tarball's size: each backend adds what
    /// staging and completing it need beyond that), with an error giving
    /// what is needed, what is available, and where. S3 has no such
    /// figure: always `Ok`.
    async fn ensure_space(&self, _bytes: u64) -> Result<()> {
        Ok(())
    }
}

/// Open the store named on the command line: `b3://BUCKET`, `s3://BUCKET`
/// (with an optional `::rw` suffix, as aliBuild writes it), `file:///PATH`
/// or a plain path.
pub async fn open(spec: &str, endpoint: Option<&str>) -> Result<Arc<dyn Store>> {
    open_with(spec, endpoint, Connections::AtMost(FEW_CONNECTIONS)).await
}

/// [`open`], an S3 store opening its connections as `connections` says.
pub async fn open_with(
    spec: &str,
    endpoint: Option<&str>,
    connections: Connections,
) -> Result<Arc<dyn Store>> {
    match parse_spec(spec)? {
        StoreSpec::S3 { bucket } => {
            let mut config = S3Config::from_env(bucket, endpoint)?;
            config.connections = connections;
            Ok(Arc::new(S3Store::connect(config).await?))
        }
        StoreSpec::Local { root } => Ok(Arc::new(LocalStore::new(root.into()))),
    }
}

/// How `spec` reads in messages, with the S3 endpoint it resolves to,
/// without opening it.
pub fn describe(spec: &str, endpoint: Option<&str>) -> String {
    match parse_spec(spec) {
        Ok(StoreSpec::S3 { bucket }) => S3Config::from_env(bucket, endpoint)
            .map(|config| config.describe())
            .unwrap_or_else(|_| spec.to_string()),
        _ => spec.to_string(),
    }
}

/// Whether a command may start a new local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRoot {
    /// The directory must exist: checking, resuming or repairing a store
    /// that is not there is a mistyped path.
    MustExist,
    /// `upload` may start a new store named by a `file://` URL, inside a
    /// directory that exists; a bare path must exist.
    MayCreate,
}

/// Before a local store is opened: check that its directory exists, or
/// create it (`MayCreate`, a `file://` URL, and only in an existing parent). Returns the
/// directory it created; S3 stores pass unchecked.
pub fn prepare_local_root(spec: &str, mode: LocalRoot) -> Result<Option<PathBuf>> {
    let StoreSpec::Local { root } = parse_spec(spec)? else {
        return Ok(None);
    };
    let root = PathBuf::from(root);
    match std::fs::metadata(&root) {
        Ok(meta) if meta.is_dir() => return Ok(None),
        Ok(_) => {
            return Err(Error::input(format!(
                "the local store {} is not a directory: check --remote-store",
                root.display()
            )))
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(format!("the local store {}", root.display()), e))
        }
        Err(_) => {}
    }
    if mode == LocalRoot::MustExist {
        return Err(Error::input(format!(
            "the local store {} does not exist: check --remote-store (`alitx upload` to a file:/// URL starts a new store)",
            root.display()
        )));
    }
    // A bare name is most often an S3 bucket whose scheme was forgotten:
    // a new store only for a URL, which cannot be that.
    if !spec.starts_with("file://") {
        let bucket = spec.strip_suffix("::rw").unwrap_or(spec);
        let hint = match bucket.contains('/') {
            true => String::new(),
            false => format!("an S3 bucket is b3://{bucket} or s3://{bucket}; "),
        };
        return Err(Error::input(format!(
            "the local store {} does not exist: check --remote-store ({hint}to start a new local store, name it as file://{}); nothing was written",
            root.display(),
            std::path::absolute(&root).unwrap_or_else(|_| root.clone()).display()
        )));
    }
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::input(format!(
            "the local store {} does not exist, nor does {}: check --remote-store (a new store is created only in an existing directory)",
            root.display(),
            parent.display()
        )));
    }
    std::fs::create_dir(&root)
        .map_err(|e| Error::io(format!("creating the local store {}", root.display()), e))?;
    Ok(Some(root))
}

#[derive(Debug, PartialEq, Eq)]
pub enum StoreSpec {
    S3 { bucket: String },
    Local { root: String },
}

pub fn parse_spec(spec: &str) -> Result<StoreSpec> {
    let spec = spec.strip_suffix("::rw").unwrap_or(spec);
    let bad = |why: &str| {
        Error::input(format!(
            "invalid --remote-store {spec:?}: {why}; expected b3://BUCKET, s3://BUCKET, file:///ABS/PATH or a directory path"
        ))
    };
    if let Some(bucket) = spec
        .strip_prefix("b3://")
        .or_else(|| spec.strip_prefix("s3://"))
    {
        let bucket = bucket.trim_end_matches('/');
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Err(bad(
                "the bucket name must be 3-63 lowercase letters, digits, '-' or '.' (no sub-path)",
            ));
        }
        return Ok(StoreSpec::S3 {
            bucket: bucket.into(),
        });
    }
    if let Some(path) = spec.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// store needs an absolute path"));
        }
        return Ok(StoreSpec::Local { root: path.into() });
    }
    if spec.contains("://") {
        return Err(bad("unsupported scheme"));
    }
    if spec.is_empty() {
        return Err(bad("it is empty"));
    }
    Ok(StoreSpec::Local { root: spec.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_time_makes_the_newest_unknown() {
        assert_eq!(newest_time([Some(5), Some(9), Some(7)]), Some(9));
        assert_eq!(newest_time([Some(5), None, Some(7)]), None);
        assert_eq!(newest_time([None]), None);
        assert_eq!(newest_time([]), None);
    }

    /// An untrusted small object is read up to its limit, never whole: one
    /// at the limit is read, one byte more is refused, naming the key.
    #[tokio::test]
    async fn small_objects_are_read_up_to_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let put = |key: &'static str, len: u64| {
            let store = &store;
            async move {
                let body = Bytes::from(vec![b'x'; len as usize]);
                let none = Metadata::new();
                store
                    .put(key, body, &none, PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        };
        assert_eq!(
            get_small(&store, "a/none", Small::Link).await.unwrap(),
            None
        );
        for (what, kind) in [
            (Small::Link, ErrorKind::Conflict),
            (Small::Journal, ErrorKind::Journal),
            (Small::Record, ErrorKind::Verification),
        ] {
            put("a/fits", what.limit()).await;
            let read = get_small(&store, "a/fits", what).await.unwrap().unwrap();
            assert_eq!(read.len() as u64, what.limit(), "{what:?}");
            put("a/larger", what.limit() + 1).await;
            let Err(err) = get_small(&store, "a/larger", what).await else {
                panic!("{what:?}: a larger object was read");
            };
            assert_eq!(err.kind, kind, "{what:?}");
            assert!(err.message.contains("a/larger is larger than"), "{err}");
        }
    }

    #[test]
    fn store_specs() {
        let s3 = |b: &str| StoreSpec::S3 { bucket: b.into() };
        let local = |p: &str| StoreSpec::Local { root: p.into() };
        assert_eq!(
            parse_spec("b3://alibuild-repo::rw").unwrap(),
            s3("alibuild-repo")
        );
        assert_eq!(
            parse_spec("s3://alibuild-repo").unwrap(),
            s3("alibuild-repo")
        );
        assert_eq!(
            parse_spec("file:///srv/store").unwrap(),
            local("/srv/store")
        );
        assert_eq!(parse_spec("/srv/store::rw").unwrap(), local("/srv/store"));
        assert_eq!(parse_spec("rel/store").unwrap(), local("rel/store"));
        for bad in [
            "b3://",
            "b3://Upper",
            "b3://a/b",
            "http://x",
            "file://rel",
            "",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
