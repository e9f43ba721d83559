//! Publication records and `alitx verify` end to end, on the local-directory
//! store and on Ceph RGW: every upload leaves a record that matches what it
//! published; a tarball damaged in the store (one byte flipped, truncated,
//! gone) is reported corrupt with exit code 6; a revision published without
//! alitx has no record and passes; the record survives every crash point
//! after publish. (Verify's memory on a 1 GiB tarball: tests/memory.rs.)

use std::collections::BTreeMap;

use crate::common::*;
use alitx::layout::Revision;
use alitx::record::{self, Record};
use alitx::storage::PutMode;
use alitx::tarball::sha256_of;
use serde_json::Value;

const CORRUPT: i32 = 6;

fn verify_args(store: &TestStore, extra: &[&str]) -> Vec<String> {
    let mut all = store.cmd("verify", &["--json"]);
    all.extend(args(extra));
    all
}

/// `alitx verify --json` with `extra` arguments: its exit code and, by
/// revision id, its verdicts.
fn verify(store: &TestStore, extra: &[&str]) -> (i32, BTreeMap<String, Value>, Value) {
    let out = alitx(&verify_args(store, extra));
    let report = json(&out);
    let by_id = report["revisions"]
        .as_array()
        .unwrap_or_else(|| panic!("no revisions: {report}"))
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    (out.status.code().unwrap(), by_id, report["summary"].clone())
}

fn id(wd: &WorkDir, i: usize) -> String {
    let rev = wd.pkgs[i].revision();
    format!("{ARCH}/{}", rev.full_version())
}

fn reasons(verdict: &Value) -> String {
    verdict["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Replace the store tarball of package `i` with `bytes`, as a foreign tool
/// (or a bad disk) would.
fn overwrite_tarball(
    rt: &tokio::runtime::Runtime,
    store: &TestStore,
    wd: &WorkDir,
    i: usize,
    bytes: &[u8],
) {
    let key = wd.pkgs[i].revision().store_key();
    rt.block_on(store.put_foreign(&key, bytes));
}

fn upload_all(wd: &WorkDir, store: &TestStore) {
    for i in 0..wd.pkgs.len() {
        assert_exit(&alitx(&wd.upload_args(i, store)), 0);
    }
}

/// The record of package `i`: what was published, by which transaction.
fn assert_record_matches(
    rt: &tokio::runtime::Runtime,
    store: &TestStore,
    wd: &WorkDir,
    i: usize,
    what: &str,
) -> Record {
    let rev = wd.pkgs[i].revision();
    let records = rt.block_on(store.records());
    let record = records
        .get(&record::key_of(&rev))
        .unwrap_or_else(|| panic!("{what}: no record of {}: {:?}", id(wd, i), records.keys()))
        .clone();
    assert_eq!(record.revision, rev, "{what}");
    assert_eq!(record.key, rev.store_key(), "{what}");
    let tarball = wd.tarball_path(i);
    assert_eq!(
        record.size,
        std::fs::metadata(&tarball).unwrap().len(),
        "{what}"
    );
    assert_eq!(record.sha256, sha256_of(&tarball).unwrap(), "{what}");
    let links: Vec<String> = wd
        .expected([i])
        .into_keys()
        .filter(|k| *k != rev.store_key())
        .collect();
    assert_eq!(
        record.links,
        record::LinksDigest::of(links.iter().map(String::as_str)),
        "{what}: the digest of the revision's link keys"
    );
    let txn = rt.block_on(async {
        let info = store
            .open()
            .await
            .head(&rev.store_key())
            .await
            .unwrap()
            .unwrap();
        info.metadata.get("alitx-txn").cloned()
    });
    assert_eq!(
        Some(&record.txn),
        txn.as_ref(),
        "{what}: the publishing transaction"
    );
    assert_eq!(
        record.owner.tool,
        format!("alitx {}", env!("CARGO_PKG_VERSION"))
    );
    let now = alitx::now_secs();
    assert!(
        (now - 600..=now + 60).contains(&record.published_at),
        "{what}"
    );
    record
}

#[test]
fn every_upload_leaves_a_record_and_verifies() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::sample();
        upload_all(&wd, &store);
        for i in 0..wd.pkgs.len() {
            assert_record_matches(rt, &store, &wd, i, kind);
        }
        assert_eq!(
            rt.block_on(store.records()).len(),
            wd.pkgs.len(),
            "{kind}: one record per revision"
        );

        let (code, verdicts, summary) = verify(&store, &[]);
        assert_eq!(code, 0, "{kind}: {verdicts:?}");
        assert_eq!(verdicts.len(), wd.pkgs.len());
        for i in 0..wd.pkgs.len() {
            let verdict = &verdicts[&id(&wd, i)];
            assert_eq!(verdict["class"], "verified", "{kind}: {verdict}");
            assert_eq!(
                verdict["sha256"],
                sha256_of(&wd.tarball_path(i)).unwrap().as_str()
            );
            assert_eq!(verdict["hash"], wd.pkgs[i].hash.as_str());
        }
        assert_eq!(summary["verified"], 4);
        assert_eq!(summary["corrupt"], 0);

        // Human output: the counts, nothing to report.
        let out = alitx(&store.cmd("verify", &[]));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("4 revisions: 4 verified, 0 corrupt"),
            "{kind}: {text}"
        );
        assert!(!text.contains("corrupt  "), "{kind}: {text}");

        // Filters select exactly one revision; names that match nothing or
        // are not names are clear errors.
        let zlibx = &wd.pkgs[1];
        let (code, one, _) = verify(
            &store,
            &[
                "--architecture",
                ARCH,
                "--package",
                &zlibx.name,
                "--version",
                &zlibx.version,
                "--revision",
                "1",
            ],
        );
        assert_eq!(
            (code, one.keys().collect::<Vec<_>>()),
            (0, vec![&id(&wd, 1)]),
            "{kind}"
        );
        for (flags, message) in [
            (&["--package", "nosuchpkg"][..], "no revision in"),
            (
                &["--architecture", "other_arch"],
                "unknown architecture \"other_arch\"",
            ),
            (&["--package", "../etc"], "invalid package"),
        ] {
            let out = alitx(&verify_args(&store, flags));
            assert_exit(&out, 1);
            assert!(
                stderr(&out).contains(message),
                "{kind} {flags:?}: {}",
                stderr(&out)
            );
        }
    });
}

/// Tarballs larger than the memory `--concurrency` allows, read side by
/// side: each takes its memory piece by piece in order, so none waits
/// forever for memory held by another's later pieces.
#[test]
fn tarballs_larger_than_the_memory_allowed_verify_side_by_side() {
    let wd = WorkDir::named(&["big0", "big1", "big2"]);
    for i in 0..wd.pkgs.len() {
        write_tarball(&wd.tarball_path(i), &wd.pkgs[i].revision(), 40 << 20);
    }
    let total: u64 = (0..wd.pkgs.len())
        .map(|i| std::fs::metadata(wd.tarball_path(i)).unwrap().len())
        .sum();
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        // 2: every piece takes all the memory; 3: two pieces never fit.
        for concurrency in ["2", "3"] {
            let out = alitx_within(
                &verify_args(&store, &["--concurrency", concurrency]),
                std::time::Duration::from_secs(300),
            );
            assert_exit(&out, 0);
            let report = json(&out);
            let classes: Vec<&str> = report["revisions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["class"].as_str().unwrap())
                .collect();
            assert_eq!(
                classes, ["verified"; 3],
                "{kind} --concurrency {concurrency}"
            );
            assert_eq!(report["summary"]["bytes_read"], total, "{kind}");
        }
    });
}

#[test]
fn flipped_truncated_and_missing_tarballs_are_corrupt() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(5, 100_000);
        upload_all(&wd, &store);
        let original = |i: usize| std::fs::read(wd.tarball_path(i)).unwrap();

        let mut flipped = original(0);
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        overwrite_tarball(rt, &store, &wd, 0, &flipped);
        let whole = original(1);
        overwrite_tarball(rt, &store, &wd, 1, &whole[..whole.len() * 3 / 4]);
        rt.block_on(async {
            let backend = store.open().await;
            backend
                .delete(&wd.pkgs[2].revision().store_key())
                .await
                .unwrap();
            let rev = wd.pkgs[3].revision();
            let own = rev.dist_link("dist-runtime", &rev.store_key()).unwrap();
            backend.delete(&own.key).await.unwrap();
        });

        let (code, verdicts, summary) = verify(&store, &[]);
        assert_eq!(code, CORRUPT, "{kind}: {verdicts:?}");
        let corrupt = |i: usize, expected: &str| {
            let verdict = &verdicts[&id(&wd, i)];
            assert_eq!(verdict["class"], "corrupt", "{kind} {i}: {verdict}");
            assert!(
                reasons(verdict).contains(expected),
                "{kind} {i}: {}",
                reasons(verdict)
            );
        };
        corrupt(0, "the store tarball's SHA-256 is");
        assert_eq!(
            verdicts[&id(&wd, 0)]["size"],
            original(0).len(),
            "same size"
        );
        corrupt(1, &format!("its publication record {}", whole.len()));
        corrupt(1, "not a complete gzip'd tar archive");
        corrupt(2, "its store tarball");
        corrupt(2, "is missing");
        corrupt(3, "its own dist-runtime link");
        assert_eq!(verdicts[&id(&wd, 4)]["class"], "verified", "{kind}");
        assert_eq!(
            (summary["corrupt"].as_u64(), summary["verified"].as_u64()),
            (Some(4), Some(1))
        );

        let out = alitx(&store.cmd("verify", &[]));
        assert_exit(&out, CORRUPT);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "corrupt  {}  the store tarball's SHA-256 is",
                id(&wd, 0)
            )),
            "{kind}: {text}"
        );
        for i in 0..4 {
            let pkg = &wd.pkgs[i];
            let remove = format!(
                "alitx repair --remote-store {} --architecture {ARCH} --package {} --version {} --revision 1 --unpublish",
                store.spec(),
                pkg.name,
                pkg.version
            );
            // Package 3's tarball is intact: only its links are wrong.
            assert_eq!(
                text.contains(&remove),
                i < 3,
                "{kind} {i}: says how to remove it: {text}"
            );
        }

        // verify changed nothing.
        let expected_sha = sha256_of(&wd.tarball_path(4)).unwrap();
        assert_eq!(verdicts[&id(&wd, 4)]["sha256"], expected_sha.as_str());
        let key = wd.pkgs[0].revision().store_key();
        assert_eq!(rt.block_on(store.snapshot())[&key], flipped, "{kind}");
    });
}

/// A revision published without alitx (as stock aliBuild does: tarball and
/// links, no record) is "no-record", with its SHA-256; its structure is
/// still checked. A record that cannot be trusted, or one whose revision
/// lost its package link, makes its revision corrupt.
#[test]
fn stock_revisions_have_no_record_and_bad_records_are_corrupt() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(4, 0);
        for (key, body) in wd.expected(0..2) {
            rt.block_on(store.put_foreign(&key, &body));
        }
        // Package 1's store object is a redirect stub naming the blob that
        // holds its bytes, which aliBuild's fetch follows.
        rt.block_on(async {
            let backend = store.open().await;
            let stub = wd.pkgs[1].revision().store_key();
            let blob = format!(
                "TARS/{ARCH}/blobs/{}",
                sha256_of(&wd.tarball_path(1)).unwrap()
            );
            let bytes = std::fs::read(wd.tarball_path(1)).unwrap();
            backend
                .put(&blob, bytes.into(), &Default::default(), PutMode::Overwrite)
                .await
                .unwrap();
            backend.delete(&stub).await.unwrap();
            let link = alitx::layout::Link {
                key: stub,
                symlink_target: format!("../../../../../{blob}"),
                redirect: Some(format!("/{blob}")),
                body: blob,
            };
            backend
                .put_link_if_absent(&link, &Default::default())
                .await
                .unwrap();
        });
        // Package 2 by alitx, then its record replaced by garbage; package
        // 3 by alitx, then its package link removed.
        for i in 2..4 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        rt.block_on(async {
            let backend = store.open().await;
            let key = record::key_of(&wd.pkgs[2].revision());
            backend
                .put(
                    &key,
                    "{\"format\": 1, \"sha256\": \"00\"}".into(),
                    &Default::default(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
            backend
                .delete(&wd.pkgs[3].revision().package_link().key)
                .await
                .unwrap();
        });
        let (code, verdicts, _) = verify(&store, &[]);
        assert_eq!(code, CORRUPT, "{kind}: {verdicts:?}");
        for i in 0..2 {
            let verdict = &verdicts[&id(&wd, i)];
            assert_eq!(verdict["class"], "no-record", "{kind}: {verdict}");
            assert_eq!(
                verdict["sha256"],
                sha256_of(&wd.tarball_path(i)).unwrap().as_str()
            );
            assert_eq!(verdict["record"], Value::Null);
            let size = std::fs::metadata(wd.tarball_path(i)).unwrap().len();
            assert_eq!(verdict["size"], size, "{kind} {i}");
        }
        let bad = &verdicts[&id(&wd, 2)];
        assert_eq!(bad["class"], "corrupt");
        assert!(reasons(bad).contains("cannot be trusted"), "{kind}: {bad}");
        let unlinked = &verdicts[&id(&wd, 3)];
        assert_eq!(unlinked["class"], "corrupt");
        assert!(
            reasons(unlinked).contains("its package link"),
            "{kind}: {unlinked}"
        );
        assert!(
            reasons(unlinked).contains("is missing"),
            "{kind}: {unlinked}"
        );

        // A stock revision whose tarball is truncated is corrupt too, and
        // the stock revisions alone pass.
        let (code, _, summary) = verify(&store, &["--package", &wd.pkgs[0].name]);
        assert_eq!(
            (code, summary["no_record"].as_u64()),
            (0, Some(1)),
            "{kind}"
        );
        let whole = std::fs::read(wd.tarball_path(0)).unwrap();
        overwrite_tarball(rt, &store, &wd, 0, &whole[..whole.len() / 2]);
        let (code, verdicts, _) = verify(&store, &["--package", &wd.pkgs[0].name]);
        assert_eq!(code, CORRUPT, "{kind}");
        let verdict = &verdicts[&id(&wd, 0)];
        assert!(
            reasons(verdict).contains("not a complete gzip'd tar"),
            "{kind}: {verdict}"
        );
    });
}

/// A record naming another hash than the package link, whose tarball is
/// gone (an unpublished build's record written back late, the number
/// since taken by another hash), is not held against the linked tarball:
/// the revision is judged as one without a record. With the other hash's
/// tarball there too, the two disagree and the revision is corrupt.
#[test]
fn a_record_of_another_build_is_not_held_against_the_linked_tarball() {
    let rt = runtime();
    let wd = WorkDir::named(&["zlib"]);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        let revision = wd.pkgs[0].revision();
        let record_key = record::key_of(&revision);
        let mut late = rt.block_on(store.records())[&record_key].clone();
        let other = hash_of("an earlier build of zlib");
        late.revision = Revision::new(ARCH, "zlib", "v1", "1", &other).unwrap();
        late.key = late.revision.store_key();
        rt.block_on(store.put_foreign(&record_key, &serde_json::to_vec(&late).unwrap()));

        let (code, verdicts, _) = verify(&store, &[]);
        let verdict = &verdicts[&id(&wd, 0)];
        assert_eq!(
            (code, &verdict["class"]),
            (0, &Value::from("no-record")),
            "{kind}: {verdict}"
        );
        assert_eq!(verdict["hash"], wd.pkgs[0].hash.as_str(), "{kind}");
        assert_eq!(
            verdict["sha256"],
            sha256_of(&wd.tarball_path(0)).unwrap().as_str(),
            "{kind}"
        );

        let bytes = std::fs::read(wd.tarball_path(0)).unwrap();
        rt.block_on(store.put_foreign(&late.key, &bytes));
        let (code, verdicts, _) = verify(&store, &[]);
        let verdict = &verdicts[&id(&wd, 0)];
        assert_eq!(
            (code, &verdict["class"]),
            (CORRUPT, &Value::from("corrupt")),
            "{kind}"
        );
        assert!(
            reasons(verdict).contains(&format!("publication record hash {other}")),
            "{kind}: {verdict}"
        );
    });
}

/// A package link without tarball or record (an upload in flight, or the
/// leftovers `check` reports) is not published: counted, not verified.
#[test]
fn unpublished_revisions_are_counted_not_verified() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let link = wd.pkgs[1].revision().package_link();
        rt.block_on(store.put_foreign(&link.key, link.body.as_bytes()));
        let (code, verdicts, summary) = verify(&store, &[]);
        assert_eq!(code, 0, "{kind}");
        assert_eq!(verdicts.keys().collect::<Vec<_>>(), [&id(&wd, 0)]);
        assert_eq!(summary["not_published"], 1);
    });
}

const FAILPOINTS_AFTER_PUBLISH: [&str; 3] = ["after-publish", "after-commit-mark", "after-record"];

/// An upload killed at any point after its tarball is published leaves a
/// record once it is healed, whichever way: `resume` with the work dir,
/// `resume` without it (an operator elsewhere), or the job run again. For
/// a multi-part tarball and one of a single part.
#[test]
fn the_record_survives_every_crash_point_after_publish() {
    let rt = runtime();
    let mut failures = Vec::new();
    for kind in backends() {
        for payload in [12u64 << 20, 0] {
            for point in FAILPOINTS_AFTER_PUBLISH {
                for heal in ["resume", "resume-without-work-dir", "upload-again"] {
                    let what = format!("{kind}, payload {payload}, killed {point}, {heal}");
                    let store = rt.block_on(TestStore::new(kind));
                    let wd = WorkDir::chain(1, payload);
                    let mut upload = wd.upload_args(0, &store);
                    upload.extend(args(&["--part-size", "5"]));
                    alitx_killed_at(&upload, point);
                    let mut resume = store.cmd("resume", &[]);
                    let out = match heal {
                        "resume" => {
                            resume.extend(args(&["--work-dir", &wd.path().display().to_string()]));
                            alitx(&resume)
                        }
                        "resume-without-work-dir" => alitx(&resume),
                        _ => alitx(&upload),
                    };
                    if let Err(why) = healed_with_record(rt, &store, &wd, &out) {
                        failures.push(format!("{what}: {why}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases fail: {failures:#?}",
        failures.len()
    );
}

/// Whether the healing command succeeded, the revision is published exactly,
/// and its record matches it and verifies; if not, why.
fn healed_with_record(
    rt: &tokio::runtime::Runtime,
    store: &TestStore,
    wd: &WorkDir,
    healing: &std::process::Output,
) -> Result<(), String> {
    if healing.status.code() != Some(0) {
        return Err(format!(
            "healing exited {:?}: {}",
            healing.status,
            stderr(healing)
        ));
    }
    let keys = rt.block_on(store.keys());
    let expected: Vec<String> = wd.expected([0]).into_keys().collect();
    if keys != expected {
        return Err(format!("the store holds {keys:?}"));
    }
    let rev = wd.pkgs[0].revision();
    let records = rt.block_on(store.records());
    let Some(record) = records.get(&record::key_of(&rev)) else {
        return Err("no record".into());
    };
    if record.sha256 != sha256_of(&wd.tarball_path(0)).unwrap() {
        return Err(format!("the record says SHA-256 {}", record.sha256));
    }
    let (code, verdicts, _) = verify(store, &[]);
    if code != 0 {
        return Err(format!("verify exited {code}: {verdicts:?}"));
    }
    Ok(())
}

/// Writing the record is idempotent for its own transaction (a retried
/// request, a second roll forward) and replaces a stale record of another
/// transaction (a revision removed without its record, published again).
#[test]
fn the_record_is_created_once_and_a_stale_one_is_replaced() {
    use alitx::journal::Journal;
    let rt = runtime();
    each_backend(|kind, store| {
        rt.block_on(async {
            let backend = store.open().await;
            let wd = WorkDir::chain(1, 0);
            let rev = wd.pkgs[0].revision();
            let journal = |txn: &str| {
                let identity = alitx::workdir::FileIdentity::of(&wd.tarball_path(0)).unwrap();
                let links = vec![rev.package_link()];
                Journal::new(
                    txn.into(),
                    &rev,
                    identity,
                    &links,
                    8 << 20,
                    std::time::Duration::from_secs(60),
                )
            };
            let sha = sha256_of(&wd.tarball_path(0)).unwrap();
            let here = record::Evidence::PublishedHere;
            let first = journal("txn-one");
            record::write(&*backend, &first, &sha, here).await.unwrap();
            let written = record::read(&*backend, &rev).await.unwrap().unwrap();
            assert_eq!(
                (written.txn.as_str(), written.sha256.as_str()),
                ("txn-one", sha.as_str())
            );
            let key = record::key_of(&rev);
            let info = backend.head(&key).await.unwrap().unwrap();
            assert_eq!(
                info.metadata.get("alitx-txn").map(String::as_str),
                Some("txn-one"),
                "{kind}"
            );

            // Again, as a retry would: success, the record untouched.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            record::write(&*backend, &first, &sha, here).await.unwrap();
            assert_eq!(
                record::read(&*backend, &rev).await.unwrap().unwrap(),
                written,
                "{kind}"
            );

            // Another transaction's publication of the same revision.
            let other_sha = "ab".repeat(32);
            record::write(&*backend, &journal("txn-two"), &other_sha, here)
                .await
                .unwrap();
            let replaced = record::read(&*backend, &rev).await.unwrap().unwrap();
            assert_eq!(
                (replaced.txn.as_str(), replaced.sha256.as_str()),
                ("txn-two", other_sha.as_str()),
                "{kind}"
            );
            assert_eq!(backend.list(record::PREFIX).await.unwrap(), [key], "{kind}");
        });
    });
}
