//! The storage conformance suite: every backend of the `Store` trait (the
//! local directory and S3 on Ceph RGW) must pass every check here, so that
//! the transaction engine can rely on the same semantics everywhere.

mod common;

use std::sync::Arc;

use alitx::layout::Revision;
use alitx::storage::{Created, Metadata, Store};
use bytes::Bytes;
use common::*;
use md5::{Digest, Md5};

/// One `#[test]` per check, each run against every backend on a fresh store.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            let rt = runtime();
            for kind in backends() {
                rt.block_on(async {
                    let store = TestStore::new(kind).await;
                    super::$check(&store, store.open().await).await;
                });
            }
        }
    )*};
}

mod each_backend {
    use super::common::*;
    conformance!(
        put_if_absent_never_replaces,
        links_are_what_readers_expect,
        delete_and_list,
        staged_uploads_are_invisible_until_completed,
        aborted_uploads_are_gone,
        preflight_reports_what_to_fix,
    );
}

fn meta(txn: &str) -> Metadata {
    [("alitx-txn".to_string(), txn.to_string())].into()
}

fn revision() -> Revision {
    Revision::new(ARCH, "pkg", "v1", "1", &hash_of("pkg")).unwrap()
}

async fn put_if_absent_never_replaces(t: &TestStore, store: Arc<dyn Store>) {
    let kind = t.kind();
    assert_eq!(store.get("a/b").await.unwrap(), None);
    assert_eq!(store.head("a/b").await.unwrap(), None);
    let first = store
        .put_if_absent("a/b", Bytes::from_static(b"first"), &meta("t1"))
        .await
        .unwrap();
    assert_eq!(first, Created::Yes, "{kind}");
    let again = store
        .put_if_absent("a/b", Bytes::from_static(b"second"), &meta("t2"))
        .await
        .unwrap();
    assert_eq!(again, Created::AlreadyExists, "{kind}");
    assert_eq!(store.get("a/b").await.unwrap().unwrap(), "first", "{kind}");
    let info = store.head("a/b").await.unwrap().unwrap();
    assert_eq!((info.size, info.metadata), (5, meta("t1")), "{kind}");
    store
        .put("a/b", Bytes::from_static(b"replaced"), &meta("t3"))
        .await
        .unwrap();
    assert_eq!(
        store.get("a/b").await.unwrap().unwrap(),
        "replaced",
        "{kind}"
    );
    assert_eq!(
        store.head("a/b").await.unwrap().unwrap().metadata,
        meta("t3"),
        "{kind}"
    );
}

async fn links_are_what_readers_expect(t: &TestStore, store: Arc<dyn Store>) {
    let kind = t.kind();
    let rev = revision();
    let package = rev.package_link();
    let dist = rev.dist_link("dist", &rev.store_key()).unwrap();
    for link in [&package, &dist] {
        assert_eq!(
            store.put_link_if_absent(link, &meta("t1")).await.unwrap(),
            Created::Yes
        );
        assert_eq!(
            store.put_link_if_absent(link, &meta("t2")).await.unwrap(),
            Created::AlreadyExists
        );
        assert_eq!(
            store.get(&link.key).await.unwrap().unwrap(),
            link.body.as_bytes(),
            "{kind}"
        );
        let info = store.head(&link.key).await.unwrap().unwrap();
        assert_eq!(info.metadata, meta("t1"), "{kind}");
        assert_eq!(info.website_redirect, link.redirect, "{kind}");
    }
    assert_eq!(
        dist.redirect.as_deref(),
        Some(&*format!("/{}", rev.store_key()))
    );
    match t {
        TestStore::S3 { client, bucket } => {
            for (link, public) in [(&package, false), (&dist, true)] {
                let all_users_read = is_public_read(client, bucket, &link.key).await;
                assert_eq!(all_users_read, public, "ACL of {}", link.key);
            }
        }
        TestStore::Local { .. } => {
            for link in [&package, &dist] {
                let target = std::fs::read_link(t.root().join(&link.key)).unwrap();
                assert_eq!(target.to_str(), Some(link.symlink_target.as_str()));
            }
        }
    }
}

async fn delete_and_list(t: &TestStore, store: Arc<dyn Store>) {
    let kind = t.kind();
    let keys = [
        "TARS/a/store/ab/ab12/x",
        "TARS/a/store/ab/ab34/y",
        "TARS/a/store/ac/ac56/z",
        "TARS/b/w",
    ];
    for key in keys {
        store
            .put_if_absent(key, Bytes::from_static(b"."), &Metadata::new())
            .await
            .unwrap();
    }
    store
        .put(
            ".alitx/journals/a/j.json",
            Bytes::from_static(b"{}"),
            &Metadata::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        store.list("TARS/a/store/ab/").await.unwrap(),
        &keys[..2],
        "{kind}"
    );
    assert_eq!(
        store.list("TARS/a/store/ab/ab1").await.unwrap(),
        &keys[..1],
        "{kind}"
    );
    assert_eq!(store.list("TARS/").await.unwrap(), &keys[..], "{kind}");
    let all = store.list("").await.unwrap();
    assert_eq!(
        all.len(),
        5,
        "{kind}: internal state leaked into the key space: {all:?}"
    );
    store.delete(keys[0]).await.unwrap();
    store.delete(keys[0]).await.unwrap();
    store.delete("never/was").await.unwrap();
    assert_eq!(store.get(keys[0]).await.unwrap(), None);
    assert_eq!(
        store.list("TARS/a/store/ab/").await.unwrap(),
        &keys[1..2],
        "{kind}"
    );
}

fn parts() -> Vec<Bytes> {
    let five = 5 << 20;
    vec![
        Bytes::from(vec![1u8; five]),
        Bytes::from(vec![2u8; five]),
        Bytes::from_static(b"tail"),
    ]
}

async fn staged_uploads_are_invisible_until_completed(t: &TestStore, store: Arc<dyn Store>) {
    let kind = t.kind();
    let key = revision().store_key();
    let id = store.create_upload(&key, &meta("t1")).await.unwrap();
    let mut uploaded = Vec::new();
    for (i, data) in parts().into_iter().enumerate() {
        uploaded.push(
            store
                .upload_part(&key, &id, i as u32 + 1, data)
                .await
                .unwrap(),
        );
    }
    // Replacing a part: the store keeps the newest bytes.
    let replacement = Bytes::from(vec![3u8; 5 << 20]);
    uploaded[1] = store
        .upload_part(&key, &id, 2, replacement.clone())
        .await
        .unwrap();
    let listed = store.list_parts(&key, &id).await.unwrap();
    assert_eq!(listed, uploaded, "{kind}");
    let expected = [parts()[0].clone(), replacement, parts()[2].clone()];
    for (part, data) in listed.iter().zip(&expected) {
        assert_eq!(part.md5, hex::encode(Md5::digest(data)), "{kind}");
        assert_eq!(part.size, data.len() as u64);
    }
    let pending = store.list_uploads("TARS/").await.unwrap();
    assert_eq!(
        (pending.len(), &pending[0].key, &pending[0].upload_id),
        (1, &key, &id),
        "{kind}"
    );
    assert_eq!(
        store.head(&key).await.unwrap(),
        None,
        "{kind}: visible before completion"
    );
    assert!(
        store.list("").await.unwrap().is_empty(),
        "{kind}: listed before completion"
    );

    store.complete_upload(&key, &id, &listed).await.unwrap();
    let body = store.get(&key).await.unwrap().unwrap();
    assert_eq!(body, expected.concat(), "{kind}");
    assert_eq!(
        store.head(&key).await.unwrap().unwrap().metadata,
        meta("t1"),
        "{kind}"
    );
    assert!(store.list_uploads("").await.unwrap().is_empty(), "{kind}");
}

async fn aborted_uploads_are_gone(t: &TestStore, store: Arc<dyn Store>) {
    let kind = t.kind();
    let key = revision().store_key();
    let id = store.create_upload(&key, &meta("t1")).await.unwrap();
    store
        .upload_part(&key, &id, 1, Bytes::from_static(b"x"))
        .await
        .unwrap();
    store.abort_upload(&key, &id).await.unwrap();
    store.abort_upload(&key, &id).await.unwrap();
    assert!(store.list_uploads("").await.unwrap().is_empty(), "{kind}");
    assert!(
        store.list_parts(&key, &id).await.is_err(),
        "{kind}: parts of an aborted upload"
    );
    assert_eq!(store.head(&key).await.unwrap(), None);
}

async fn preflight_reports_what_to_fix(t: &TestStore, store: Arc<dyn Store>) {
    store.preflight().await.unwrap();
    if let TestStore::S3 { .. } = t {
        let missing = alitx::storage::open("b3://alitx-no-such-bucket", None)
            .await
            .unwrap();
        let err = missing.preflight().await.unwrap_err().to_string();
        assert!(
            err.contains("bucket alitx-no-such-bucket does not exist"),
            "{err}"
        );
        let down = alitx::storage::open("b3://any-bucket", Some("http://127.0.0.1:1"))
            .await
            .unwrap();
        let err = down.preflight().await.unwrap_err().to_string();
        assert!(
            err.contains("cannot reach the S3 endpoint http://127.0.0.1:1"),
            "{err}"
        );
    }
}
