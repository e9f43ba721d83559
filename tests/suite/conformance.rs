//! The storage conformance suite: every backend of the `Store` trait (the
//! local directory and S3 on Ceph RGW) must pass every check here, so that
//! the transaction engine can rely on the same semantics everywhere.
//!
//! Each check is an `async fn(&TestStore, Arc<dyn Store>)`: it drives the
//! store only through the trait, except where a backend has something
//! readers see outside it (S3 ACLs, local symlinks), which it checks through
//! the raw `TestStore`. `conformance!` makes one `#[test]` per check, and
//! `on_every_backend` runs it on a fresh store of every backend.

use std::sync::Arc;

use crate::common::{backends_and_https, hash_of, is_public_read, runtime, TestStore, ARCH};
use alitx::layout::{Link, Revision};
use alitx::storage::{Created, Metadata, ObjectInfo, PutMode, Segments, Store, UploadedPart};
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};

type Check = for<'a> fn(&'a TestStore, Arc<dyn Store>) -> LocalBoxFuture<'a, ()>;

/// One `#[test]` per check, each run on every backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod every_backend {$(
            #[test]
            fn $check() {
                super::on_every_backend(stringify!($check), |t, store| {
                    Box::pin(super::$check(t, store))
                });
            }
        )*}
    };
}

conformance!(
    put_if_absent_creates_only_once,
    put_replaces_body_and_metadata,
    head_reports_size_and_metadata_exactly,
    missing_keys_read_as_none,
    ranges_read_any_slice_of_an_object,
    ranges_of_a_completed_upload_cross_its_parts,
    concurrent_put_if_absent_has_one_winner,
    package_link_is_private_without_redirect,
    dist_link_is_public_with_redirect,
    delete_removes_and_tolerates_missing_keys,
    list_returns_exactly_the_keys_under_a_prefix,
    listings_return_more_than_one_page,
    list_dir_lists_one_level_with_sizes_and_times,
    staged_upload_is_invisible_until_completed,
    reuploaded_part_replaces_the_old_one,
    aborted_upload_is_gone,
    preflight_accepts_a_usable_store,
    preflight_says_what_to_fix,
);

/// Run `check` on a fresh store of every backend, S3 over HTTPS too; a
/// failure names both.
fn on_every_backend(check: &str, run: Check) {
    let rt = runtime();
    for kind in backends_and_https() {
        rt.block_on(async {
            let raw = TestStore::new(kind).await;
            let store = raw.open().await;
            let _context = OnPanic(format!("{check} failed on {}", store.describe()));
            run(&raw, store).await;
        });
    }
}

/// Says which check and backend failed, when a panic unwinds through it.
struct OnPanic(String);

impl Drop for OnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("conformance: {}", self.0);
        }
    }
}

// ---------------------------------------------------------------- helpers

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The metadata alitx puts on everything it writes.
fn txn(id: &str) -> Metadata {
    meta(&[("alitx-txn", id)])
}

fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn revision() -> Revision {
    Revision::new(ARCH, "zlibx", "v1.0", "1", &hash_of("zlibx")).unwrap()
}

/// `n` bytes that differ for every `seed`, so each part has its own MD5.
fn filled(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const MIB: usize = 1 << 20;

/// Two parts of the 5 MiB S3 minimum and a small last part.
fn three_parts() -> Vec<Bytes> {
    vec![
        filled(5 * MIB, 1),
        filled(5 * MIB, 2),
        bytes("the last part"),
    ]
}

/// `actual` is exactly `expected`, compared by length and SHA-256 so that a
/// failure does not print megabytes.
#[track_caller]
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(
        (actual.len(), sha256_hex(actual)),
        (expected.len(), sha256_hex(expected)),
        "{what}"
    );
}

async fn assert_body(store: &dyn Store, key: &str, expected: &[u8]) {
    let body = store.get(key).await.unwrap();
    let body = body.unwrap_or_else(|| panic!("{key} is missing"));
    assert_same_bytes(&body, expected, key);
}

async fn assert_absent(store: &dyn Store, key: &str) {
    assert_eq!(store.get(key).await.unwrap(), None, "get {key}");
    assert_eq!(
        store
            .get_range(key, 0, 10)
            .await
            .unwrap()
            .map(Segments::into_bytes),
        None,
        "get_range {key}"
    );
    assert_eq!(store.head(key).await.unwrap(), None, "head {key}");
}

/// What `head` must say about an object written with `body` and `metadata`.
fn info(body: &[u8], metadata: Metadata) -> ObjectInfo {
    ObjectInfo {
        size: body.len() as u64,
        metadata,
        website_redirect: None,
    }
}

/// Upload `parts` as parts 1, 2, ... of `upload_id`, checking what each
/// call reports.
async fn upload_parts(
    store: &dyn Store,
    key: &str,
    upload_id: &str,
    parts: &[Bytes],
) -> Vec<UploadedPart> {
    let mut uploaded = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let number = i as u32 + 1;
        let part = store
            .upload_part(key, upload_id, number, data.clone())
            .await
            .unwrap();
        assert_eq!(part, expected_part(number, data));
        uploaded.push(part);
    }
    uploaded
}

fn expected_part(number: u32, data: &[u8]) -> UploadedPart {
    UploadedPart {
        number,
        size: data.len() as u64,
        md5: md5_hex(data),
        received_at: None,
    }
}

const NO_KEYS: &[&str] = &[];
const NO_UPLOADS: &[(String, String)] = &[];

async fn keys_under(store: &dyn Store, prefix: String) -> Vec<String> {
    store.list(&prefix).await.unwrap()
}

/// The (key, upload id) of every staged upload under `prefix`, sorted.
async fn pending(store: &dyn Store, prefix: &str) -> Vec<(String, String)> {
    let mut uploads: Vec<_> = store
        .list_uploads(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    uploads.sort();
    uploads
}

// ---------------------------------------------------------- plain objects

async fn put_if_absent_creates_only_once(_: &TestStore, store: Arc<dyn Store>) {
    let key = "TARS/a/store/ab/abcd/first.tar.gz";
    let created = store
        .put(key, bytes("first"), &txn("t1"), PutMode::Create)
        .await;
    assert_eq!(created.unwrap(), Created::Yes);
    let again = store
        .put(key, bytes("second body"), &txn("t2"), PutMode::Create)
        .await;
    assert_eq!(again.unwrap(), Created::AlreadyExists);
    assert_body(&*store, key, b"first").await;
    let head = store.head(key).await.unwrap();
    assert_eq!(head, Some(info(b"first", txn("t1"))));
}

async fn put_replaces_body_and_metadata(_: &TestStore, store: Arc<dyn Store>) {
    let key = ".alitx/journals/a/journal.json";
    store
        .put(key, bytes("{}"), &txn("t1"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_body(&*store, key, b"{}").await;
    let first = meta(&[("alitx-txn", "t1"), ("alitx-state", "staged")]);
    store
        .put(key, bytes("v1"), &first, PutMode::Overwrite)
        .await
        .unwrap();
    let second = meta(&[("alitx-lease", "123")]);
    store
        .put(key, bytes("version two"), &second, PutMode::Overwrite)
        .await
        .unwrap();
    assert_body(&*store, key, b"version two").await;
    let head = store.head(key).await.unwrap();
    assert_eq!(
        head,
        Some(info(b"version two", second)),
        "old keys are gone"
    );
    // An empty body is an object too.
    store
        .put(key, Bytes::new(), &Metadata::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(store.get(key).await.unwrap(), Some(Bytes::new()));
    assert_eq!(
        store.head(key).await.unwrap(),
        Some(info(b"", Metadata::new()))
    );
}

async fn head_reports_size_and_metadata_exactly(_: &TestStore, store: Arc<dyn Store>) {
    let body = filled(100_000, 7);
    let metadata = meta(&[
        ("alitx-txn", "0123456789abcdef"),
        ("alitx-sha256", &sha256_hex(&body)),
        ("alitx-kind", "store-tarball"),
    ]);
    store
        .put("with/metadata", body.clone(), &metadata, PutMode::Create)
        .await
        .unwrap();
    let head = store.head("with/metadata").await.unwrap();
    assert_eq!(head, Some(info(&body, metadata)));
    store
        .put(
            "without/metadata",
            bytes("x"),
            &Metadata::new(),
            PutMode::Create,
        )
        .await
        .unwrap();
    let head = store.head("without/metadata").await.unwrap();
    assert_eq!(head, Some(info(b"x", Metadata::new())));
}

async fn missing_keys_read_as_none(_: &TestStore, store: Arc<dyn Store>) {
    assert_absent(&*store, "never/written").await;
    store
        .put("TARS/a/b", bytes("b"), &Metadata::new(), PutMode::Create)
        .await
        .unwrap();
    // Neither a prefix of a key, nor a key below one, is an object.
    assert_absent(&*store, "TARS/a").await;
    assert_absent(&*store, "TARS/a/b/c").await;
    assert_absent(&*store, "TARS/a/bc").await;
    store.delete("TARS/a/b/c").await.unwrap();
    store.delete("TARS/a").await.unwrap();
    assert_body(&*store, "TARS/a/b", b"b").await;
}

/// `get_range` returns exactly the bytes asked for, fewer at the end of the
/// object, none from its end on; a link's range is one of its body.
async fn ranges_read_any_slice_of_an_object(_: &TestStore, store: Arc<dyn Store>) {
    let body = filled(1000, 7);
    let key = "TARS/a/ranged";
    store
        .put(key, body.clone(), &Metadata::new(), PutMode::Overwrite)
        .await
        .unwrap();
    let range = |offset: u64, len: u64| {
        let store = store.clone();
        async move {
            let read = store.get_range(key, offset, len).await.unwrap().unwrap();
            assert_eq!(
                read.len(),
                read.as_slices().iter().map(Bytes::len).sum::<usize>()
            );
            read.into_bytes()
        }
    };
    assert_eq!(range(0, 1000).await, body);
    assert_eq!(range(0, 1).await, body.slice(0..1));
    assert_eq!(range(10, 90).await, body.slice(10..100));
    assert_eq!(range(999, 1).await, body.slice(999..));
    assert_eq!(
        range(900, 500).await,
        body.slice(900..),
        "clipped at the end"
    );
    assert_eq!(range(0, u64::MAX).await, body, "a range as long as it gets");
    assert_eq!(range(1000, 10).await, Bytes::new(), "from the end on");
    assert_eq!(range(5000, 10).await, Bytes::new(), "past the end");
    assert_eq!(range(10, 0).await, Bytes::new(), "an empty range");

    let empty = "TARS/a/empty";
    store
        .put(empty, Bytes::new(), &Metadata::new(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_range(empty, 0, 10)
            .await
            .unwrap()
            .map(Segments::into_bytes),
        Some(Bytes::new())
    );

    let link = revision().package_link();
    store
        .put_link_if_absent(&link, &Metadata::new())
        .await
        .unwrap();
    assert_eq!(
        store
            .get_range(&link.key, 2, 5)
            .await
            .unwrap()
            .unwrap()
            .into_bytes(),
        bytes(&link.body[2..7]),
        "a link's range is a range of its body, as S3 readers see it"
    );
}

/// A completed multipart object reads back range by range, across part
/// boundaries, exactly as its parts were sent.
async fn ranges_of_a_completed_upload_cross_its_parts(_: &TestStore, store: Arc<dyn Store>) {
    let key = revision().store_key();
    let parts = three_parts();
    let whole = parts.concat();
    let id = store.create_upload(&key, &Metadata::new()).await.unwrap();
    let uploaded = upload_parts(&*store, &key, &id, &parts).await;
    store.complete_upload(&key, &id, &uploaded).await.unwrap();

    let chunk = 3 * MIB as u64 + 17;
    let mut read = Vec::new();
    loop {
        let piece = store
            .get_range(&key, read.len() as u64, chunk)
            .await
            .unwrap()
            .unwrap()
            .into_bytes();
        if piece.is_empty() {
            break;
        }
        assert!(piece.len() as u64 <= chunk);
        read.extend_from_slice(&piece);
    }
    assert_same_bytes(&read, &whole, "the ranges put back together");
    let across = 5 * MIB as u64 - 3;
    assert_same_bytes(
        &store
            .get_range(&key, across, 6)
            .await
            .unwrap()
            .unwrap()
            .into_bytes(),
        &whole[across as usize..across as usize + 6],
        "a range across the first part boundary",
    );
}

async fn concurrent_put_if_absent_has_one_winner(_: &TestStore, store: Arc<dyn Store>) {
    let key = "TARS/a/contended";
    let writers = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let body = bytes(&format!("writer {i}"));
            let created = store
                .put(key, body, &txn(&format!("t{i}")), PutMode::Create)
                .await;
            (i, created.unwrap())
        })
    });
    let results = futures::future::join_all(writers).await;
    let winners: Vec<usize> = results
        .into_iter()
        .map(|r| r.unwrap())
        .filter(|(_, created)| *created == Created::Yes)
        .map(|(i, _)| i)
        .collect();
    let &[winner] = winners.as_slice() else {
        panic!("expected exactly one writer to create {key}, got {winners:?}");
    };
    let body = format!("writer {winner}");
    assert_body(&*store, key, body.as_bytes()).await;
    let head = store.head(key).await.unwrap();
    assert_eq!(
        head,
        Some(info(body.as_bytes(), txn(&format!("t{winner}"))))
    );
}

// ------------------------------------------------------------------ links

async fn package_link_is_private_without_redirect(t: &TestStore, store: Arc<dyn Store>) {
    let link = revision().package_link();
    assert_eq!(link.redirect, None);
    check_link(t, &*store, &link).await;
}

async fn dist_link_is_public_with_redirect(t: &TestStore, store: Arc<dyn Store>) {
    let rev = revision();
    let link = rev.dist_link("dist-runtime", &rev.store_key()).unwrap();
    assert_eq!(link.redirect, Some(format!("/{}", rev.store_key())));
    check_link(t, &*store, &link).await;
}

/// A link is created once, reads back as its body with its metadata and
/// redirect, and is public exactly when it redirects.
async fn check_link(t: &TestStore, store: &dyn Store, link: &Link) {
    let tarball = bytes("the tarball");
    let target = revision().store_key();
    store
        .put(&target, tarball.clone(), &txn("t0"), PutMode::Create)
        .await
        .unwrap();
    let created = store.put_link_if_absent(link, &txn("t1")).await.unwrap();
    assert_eq!(created, Created::Yes);
    let again = store.put_link_if_absent(link, &txn("t2")).await.unwrap();
    assert_eq!(again, Created::AlreadyExists);
    let plain = store
        .put(&link.key, bytes("not a link"), &txn("t3"), PutMode::Create)
        .await;
    assert_eq!(plain.unwrap(), Created::AlreadyExists);

    assert_body(store, &link.key, link.body.as_bytes()).await;
    let head = store.head(&link.key).await.unwrap();
    let expected = ObjectInfo {
        size: link.body.len() as u64,
        metadata: txn("t1"),
        website_redirect: link.redirect.clone(),
    };
    assert_eq!(head, Some(expected));

    match t {
        TestStore::S3 { client, bucket, .. } => {
            let public = is_public_read(client, bucket, &link.key).await;
            assert_eq!(public, link.redirect.is_some(), "AllUsers READ grant");
        }
        TestStore::Local { .. } => {
            let path = t.root().join(&link.key);
            let target = std::fs::read_link(&path).unwrap();
            assert_eq!(target.to_str(), Some(link.symlink_target.as_str()));
            // aliBuild follows the symlink to the tarball.
            assert_same_bytes(&std::fs::read(&path).unwrap(), &tarball, "via symlink");
        }
    }
}

// ---------------------------------------------------------- delete, list

async fn delete_removes_and_tolerates_missing_keys(_: &TestStore, store: Arc<dyn Store>) {
    let rev = revision();
    let (tarball, link) = (rev.store_key(), rev.package_link());
    store
        .put(&tarball, bytes("tarball"), &txn("t1"), PutMode::Create)
        .await
        .unwrap();
    store.put_link_if_absent(&link, &txn("t1")).await.unwrap();
    store
        .put("TARS/other", bytes("o"), &Metadata::new(), PutMode::Create)
        .await
        .unwrap();

    store.delete(&link.key).await.unwrap();
    assert_absent(&*store, &link.key).await;
    assert_body(&*store, &tarball, b"tarball").await;
    store.delete(&tarball).await.unwrap();
    assert_absent(&*store, &tarball).await;
    assert_eq!(store.list("").await.unwrap(), ["TARS/other"]);

    store.delete(&tarball).await.unwrap();
    store.delete("never/written").await.unwrap();
    // The key is free again.
    let created = store
        .put(&tarball, bytes("new"), &txn("t2"), PutMode::Create)
        .await;
    assert_eq!(created.unwrap(), Created::Yes);
    assert_eq!(
        store.head(&tarball).await.unwrap(),
        Some(info(b"new", txn("t2")))
    );
}

/// Put `keys` (each with its own name as body) and `link`, and stage an
/// upload at `TARS/a/staged`: a staged upload is no key for any listing.
async fn seed_listing(store: &dyn Store, keys: &[&str], link: &Link) {
    for key in keys {
        store
            .put(key, bytes(key), &Metadata::new(), PutMode::Create)
            .await
            .unwrap();
    }
    store.put_link_if_absent(link, &txn("t1")).await.unwrap();
    let id = store
        .create_upload("TARS/a/staged", &txn("t1"))
        .await
        .unwrap();
    store
        .upload_part("TARS/a/staged", &id, 1, bytes("part"))
        .await
        .unwrap();
}

async fn list_returns_exactly_the_keys_under_a_prefix(t: &TestStore, store: Arc<dyn Store>) {
    let link = revision().package_link();
    let keys = [
        "TARS/a/store/ac/ac56/z.tar.gz",
        "TARS/a/store/ab12/ab12ff/x.tar.gz",
        "TARS/a-b/x",
        "TARS/ab/other",
        ".alitx/journals/j.json",
        "TARS/a/store/ab34/ab34ff/y.tar.gz",
    ];
    seed_listing(&*store, &keys, &link).await;

    let list = |prefix: &str| keys_under(&*store, prefix.to_string());
    let mut all: Vec<&str> = keys.to_vec();
    all.push(&link.key);
    all.sort();
    assert_eq!(list("").await, all);
    assert_eq!(
        list("TARS/a/store/ab").await,
        [
            "TARS/a/store/ab12/ab12ff/x.tar.gz",
            "TARS/a/store/ab34/ab34ff/y.tar.gz"
        ]
    );
    assert_eq!(
        list("TARS/a/store/ab1").await,
        ["TARS/a/store/ab12/ab12ff/x.tar.gz"]
    );
    assert_eq!(
        list("TARS/a/store/").await,
        [
            "TARS/a/store/ab12/ab12ff/x.tar.gz",
            "TARS/a/store/ab34/ab34ff/y.tar.gz",
            "TARS/a/store/ac/ac56/z.tar.gz",
        ]
    );
    assert_eq!(list("TARS/ab").await, ["TARS/ab/other"]);
    assert_eq!(list("TARS/a-").await, ["TARS/a-b/x"]);
    assert_eq!(list("TARS/ab/other").await, ["TARS/ab/other"]);
    assert_eq!(list("TARS/ab/other/").await, NO_KEYS);
    assert_eq!(list("TARS/zz").await, NO_KEYS);
    let partial_name = &link.key[..link.key.len() - 3];
    assert_eq!(list(partial_name).await, [link.key.as_str()]);
    // Backend state never shows, even under a prefix it matches.
    assert_eq!(list(".alitx").await, [".alitx/journals/j.json"]);
    if let TestStore::Local { .. } = t {
        assert!(t.root().join(".alitx-store").is_dir(), "local state exists");
    }
}

/// More keys than S3 returns in one ListObjectsV2 page (1000), half of
/// them one level down.
async fn listings_return_more_than_one_page(_: &TestStore, store: Arc<dyn Store>) {
    let keys: Vec<String> = (0..1001)
        .map(|i| match i % 2 {
            0 => format!("TARS/many/{i:04}"),
            _ => format!("TARS/many/{i:04}/x"),
        })
        .collect();
    futures::stream::iter(&keys)
        .for_each_concurrent(32, |key| {
            let store = store.clone();
            async move {
                let put = store
                    .put(key, Bytes::new(), &Metadata::new(), PutMode::Create)
                    .await;
                assert_eq!(put.unwrap(), Created::Yes);
            }
        })
        .await;
    assert_eq!(store.list("TARS/").await.unwrap(), keys);
    assert_eq!(store.list("TARS/many/100").await.unwrap(), keys[1000..]);

    let level = store.list_dir("TARS/many/", false).await.unwrap();
    let objects: Vec<&String> = keys.iter().step_by(2).collect();
    let prefixes: Vec<String> = keys
        .iter()
        .skip(1)
        .step_by(2)
        .map(|k| k.trim_end_matches("x").to_string())
        .collect();
    assert_eq!(
        level.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
        objects
    );
    assert_eq!(level.prefixes, prefixes);
    let all = store.list_dir("TARS/", true).await.unwrap();
    assert_eq!(
        all.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
        keys.iter().collect::<Vec<_>>()
    );
    assert!(all.prefixes.is_empty());
}

/// A delimited listing: the objects directly under a prefix with their size
/// and modification time, and one prefix per deeper level; the local
/// store's internal state never shows.
async fn list_dir_lists_one_level_with_sizes_and_times(_: &TestStore, store: Arc<dyn Store>) {
    let link = revision().package_link();
    let keys = [
        "TARS/a/x.tar.gz",
        "TARS/a/b/y",
        "TARS/a/b/z/w",
        "TARS/a/c d/ü+q",
        "TARS/ab",
        "top",
    ];
    seed_listing(&*store, &keys, &link).await;
    let now = alitx::now_secs();

    let root = store.list_dir("", false).await.unwrap();
    assert_eq!(root.prefixes, ["TARS/"]);
    assert_eq!(root.objects.len(), 1);
    assert_eq!(root.objects[0].key, "top");
    assert_eq!(root.objects[0].size, 3);
    let modified = root.objects[0].last_modified.expect("a modification time");
    assert!(
        (now - 600..=now + 600).contains(&modified),
        "{modified} vs {now}"
    );

    let tars = store.list_dir("TARS/", false).await.unwrap();
    let arch = format!("TARS/{ARCH}/");
    assert_eq!(tars.prefixes, ["TARS/a/", arch.as_str()]);
    assert_eq!(
        tars.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        ["TARS/ab"]
    );

    let a = store.list_dir("TARS/a/", false).await.unwrap();
    assert_eq!(a.prefixes, ["TARS/a/b/", "TARS/a/c d/"]);
    assert_eq!(a.objects.len(), 1);
    assert_eq!(
        (a.objects[0].key.as_str(), a.objects[0].size),
        ("TARS/a/x.tar.gz", 15)
    );

    let deep = store.list_dir("TARS/a/", true).await.unwrap();
    assert!(deep.prefixes.is_empty());
    assert_eq!(
        deep.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        [
            "TARS/a/b/y",
            "TARS/a/b/z/w",
            "TARS/a/c d/ü+q",
            "TARS/a/x.tar.gz"
        ]
    );

    // A link lists with its body's size, as S3 readers see it.
    let dir = link.key.rsplit_once('/').unwrap().0;
    let links = store.list_dir(&format!("{dir}/"), false).await.unwrap();
    assert_eq!(links.objects.len(), 1);
    assert_eq!(links.objects[0].key, link.key);
    assert_eq!(links.objects[0].size, link.body.len() as u64);
    // ... and the MD5 of that body, so that a reader can check it unread.
    assert_eq!(links.objects[0].md5, Some(md5_hex(link.body.as_bytes())));
    for object in &deep.objects {
        let body = object.key.as_bytes();
        assert!(
            object.md5.as_ref().is_none_or(|md5| *md5 == md5_hex(body)),
            "{object:?}"
        );
    }

    let none = store.list_dir("TARS/nothing/", false).await.unwrap();
    assert_eq!(none, Default::default());
}

// ------------------------------------------------------- staged uploads

async fn staged_upload_is_invisible_until_completed(_: &TestStore, store: Arc<dyn Store>) {
    let store = &*store;
    let key = revision().store_key();
    let parts = three_parts();
    let whole = parts.concat();
    let metadata = meta(&[("alitx-txn", "t1"), ("alitx-sha256", &sha256_hex(&whole))]);
    let id = store.create_upload(&key, &metadata).await.unwrap();
    let uploaded = upload_parts(store, &key, &id, &parts).await;

    let expected: Vec<_> = (1..)
        .zip(&parts)
        .map(|(n, d)| expected_part(n, d))
        .collect();
    assert_eq!(uploaded, expected);
    assert_eq!(
        store.list_parts(&key, &id).await.unwrap(),
        Some(expected.clone())
    );
    let this = vec![(key.clone(), id.clone())];
    assert_eq!(pending(store, "").await, this);
    let partial_name = &key[..key.len() - 10];
    assert_eq!(pending(store, partial_name).await, this);
    assert_eq!(pending(store, "TARS/other/").await, NO_UPLOADS);
    let initiated = store.list_uploads("").await.unwrap()[0].initiated;
    let now = alitx::now_secs();
    assert!(
        initiated.is_some_and(|secs| (now - 300..=now + 300).contains(&secs)),
        "initiated {initiated:?}, now {now}"
    );
    assert_absent(store, &key).await;
    assert_eq!(store.list("").await.unwrap(), NO_KEYS);

    store.complete_upload(&key, &id, &expected).await.unwrap();
    assert_body(store, &key, &whole).await;
    assert_eq!(
        store.head(&key).await.unwrap(),
        Some(info(&whole, metadata))
    );
    assert_eq!(store.list("").await.unwrap(), [key.as_str()]);
    assert_eq!(pending(store, "").await, NO_UPLOADS);
    assert_eq!(
        store.list_parts(&key, &id).await.unwrap(),
        None,
        "parts after completion: definitely gone"
    );
}

async fn reuploaded_part_replaces_the_old_one(_: &TestStore, store: Arc<dyn Store>) {
    let store = &*store;
    let key = revision().store_key();
    let id = store.create_upload(&key, &txn("t1")).await.unwrap();
    let (old, new, last) = (filled(5 * MIB, 1), filled(5 * MIB, 9), bytes("last"));
    let stale = upload_parts(store, &key, &id, &[old, last.clone()]).await;
    let replaced = store.upload_part(&key, &id, 1, new.clone()).await.unwrap();
    assert_eq!(replaced, expected_part(1, &new));
    let current = vec![replaced, expected_part(2, &last)];
    assert_eq!(
        store.list_parts(&key, &id).await.unwrap(),
        Some(current.clone())
    );

    // Completing from the stale part list must fail, and change nothing.
    let stale_completion = store.complete_upload(&key, &id, &stale).await;
    assert!(stale_completion.is_err(), "completed with a replaced part");
    assert_absent(store, &key).await;
    assert_eq!(pending(store, "").await, [(key.clone(), id.clone())]);

    store.complete_upload(&key, &id, &current).await.unwrap();
    assert_body(store, &key, &[new, last].concat()).await;
}

async fn aborted_upload_is_gone(_: &TestStore, store: Arc<dyn Store>) {
    let store = &*store;
    let key = revision().store_key();
    let id = store.create_upload(&key, &txn("t1")).await.unwrap();
    let other = store.create_upload(&key, &txn("t2")).await.unwrap();
    let parts = upload_parts(store, &key, &id, &[bytes("x")]).await;

    store.abort_upload(&key, &id).await.unwrap();
    assert_eq!(pending(store, "").await, [(key.clone(), other.clone())]);
    store.abort_upload(&key, &id).await.unwrap();
    let unknown = alitx::random_hex(16);
    store.abort_upload(&key, &unknown).await.unwrap();
    assert_eq!(
        store.list_parts(&key, &id).await.unwrap(),
        None,
        "parts of an aborted upload: definitely gone"
    );
    let part = store.upload_part(&key, &id, 2, bytes("y")).await;
    assert!(part.is_err(), "a part for an aborted upload");
    let completion = store.complete_upload(&key, &id, &parts).await;
    assert!(completion.is_err(), "completed an aborted upload");
    assert_absent(store, &key).await;

    store.abort_upload(&key, &other).await.unwrap();
    assert_eq!(pending(store, "").await, NO_UPLOADS);
}

// -------------------------------------------------------------- preflight

async fn preflight_accepts_a_usable_store(_: &TestStore, store: Arc<dyn Store>) {
    store.preflight().await.unwrap();
    store.preflight().await.unwrap();
}

async fn preflight_says_what_to_fix(t: &TestStore, _: Arc<dyn Store>) {
    let fails = |spec: String, endpoint: Option<&'static str>| async move {
        let store = alitx::storage::open(&spec, endpoint).await.unwrap();
        store.preflight().await.unwrap_err().to_string()
    };
    match t {
        TestStore::S3 { .. } => {
            let err = fails("b3://alitx-no-such-bucket-xyz".into(), None).await;
            assert!(
                err.contains("bucket alitx-no-such-bucket-xyz does not exist"),
                "{err}"
            );
            let err = fails(t.spec(), Some("http://127.0.0.1:1")).await;
            assert!(err.contains("cannot reach"), "{err}");
            assert!(err.contains("http://127.0.0.1:1"), "{err}");
        }
        TestStore::Local { .. } => {
            let file = t.root().join("a-file");
            std::fs::write(&file, "").unwrap();
            let spec = file.display().to_string();
            let err = fails(spec.clone(), None).await;
            assert!(err.contains(&format!("{spec} is not a directory")), "{err}");
        }
    }
}
