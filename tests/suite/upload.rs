//! `alitx upload` end to end, on the local-directory store and on Ceph RGW:
//! byte-exact layout, the reader invariant under a concurrent observer,
//! idempotence, conflicts, and bad input that must leave the store alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;
use alitx::layout::DIST_DIRS;

/// Upload every package of `wd` in dependency order; assert each succeeds.
/// A report's `keys_written`, sorted.
fn keys_written(report: &serde_json::Value) -> Vec<String> {
    let mut written: Vec<String> = report["keys_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    written.sort();
    written
}

fn upload_all(wd: &WorkDir, store: &TestStore) {
    for i in 0..wd.pkgs.len() {
        let out = alitx(&wd.upload_args(i, store));
        assert_exit(&out, 0);
    }
}

#[test]
fn layout_is_byte_exact_for_a_real_alibuild_work_dir() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::sample();
        upload_all(&wd, &store);

        // Every key and body, exactly; nothing else (no journal left).
        let expected = wd.expected(0..wd.pkgs.len());
        assert_eq!(rt.block_on(store.snapshot()), expected, "{kind}");
        assert_eq!(rt.block_on(store.pending_uploads()), 0, "{kind}");

        rt.block_on(async {
            let backend = store.open().await;
            for pkg in &wd.pkgs {
                let rev = pkg.revision();
                let link = backend
                    .head(&rev.package_link().key)
                    .await
                    .unwrap()
                    .unwrap();
                assert!(
                    link.metadata.contains_key("alitx-txn"),
                    "{kind}: package link lacks txn metadata"
                );
                assert_eq!(link.website_redirect, None);
                for dist in DIST_DIRS {
                    for key in backend.list(&rev.dist_prefix(dist)).await.unwrap() {
                        let info = backend.head(&key).await.unwrap().unwrap();
                        let body = String::from_utf8(expected[&key].clone()).unwrap();
                        assert_eq!(
                            info.website_redirect,
                            Some(format!("/{body}")),
                            "{kind} {key}"
                        );
                        assert!(info.metadata.contains_key("alitx-txn"));
                    }
                }
            }
        });
        match &store {
            TestStore::S3 { client, bucket, .. } => rt.block_on(async {
                // Dist links are public-read; package links and tarballs are not.
                for key in expected.keys() {
                    let public = is_public_read(client, bucket, key).await;
                    assert_eq!(public, key.contains("/dist"), "ACL of {key}");
                }
            }),
            TestStore::Local { .. } => {
                // Real relative symlinks, exactly as aliBuild lays them out.
                for key in expected.keys() {
                    let ours = std::fs::symlink_metadata(store.root().join(key)).unwrap();
                    let theirs = std::fs::symlink_metadata(wd.path().join(key)).unwrap();
                    assert_eq!(
                        ours.file_type().is_symlink(),
                        theirs.file_type().is_symlink(),
                        "{key}"
                    );
                    if theirs.file_type().is_symlink() {
                        assert_eq!(
                            std::fs::read_link(store.root().join(key)).unwrap(),
                            std::fs::read_link(wd.path().join(key)).unwrap(),
                            "{key}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn json_report_names_the_journal_keys_and_bytes() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let mut args = wd.upload_args(1, &store);
        args.push("--json".into());
        let out = alitx(&args);
        assert_exit(&out, 0);
        let report = json(&out);
        let rev = wd.pkgs[1].revision();
        let tarball = std::fs::read(wd.tarball_path(1)).unwrap();
        assert_eq!(report["status"], "committed");
        assert_eq!(report["journal"], format!("{ARCH}/pkg1-v1.0-1"));
        assert_eq!(report["tarball_bytes"], tarball.len() as u64);
        assert_eq!(report["bytes_sent"], tarball.len() as u64);
        assert_eq!(
            report["tarball_sha256"],
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tarball))
        );
        assert!(report["duration_seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(report["parts_total"], 1);
        if let TestStore::S3 { bucket, client, .. } = &store {
            // A multipart upload of one part, which a takeover can abort:
            // the ETag is the MD5 of the part's MD5, with "-1".
            let head = rt
                .block_on(
                    client
                        .head_object()
                        .bucket(bucket)
                        .key(rev.store_key())
                        .send(),
                )
                .unwrap();
            let part_md5 = <md5::Md5 as md5::Digest>::digest(&tarball);
            assert_eq!(
                head.e_tag().unwrap().trim_matches('"'),
                format!(
                    "{}-1",
                    hex::encode(<md5::Md5 as md5::Digest>::digest(part_md5))
                )
            );
        }
        let written = keys_written(&report);
        let expected: Vec<String> = wd.expected([1]).into_keys().collect();
        assert_eq!(written, expected, "{kind}");
        assert!(expected.contains(&rev.store_key()));
    });
}

/// The state a deleter that met the publication, or a stock upload killed
/// after its tarball, leaves: this build's tarball published, links of it
/// missing. A re-run of the same build puts them back (they are its own),
/// where it used to exit 3 "a partial revision left by another uploader".
#[test]
fn uploading_a_published_build_with_links_missing_puts_them_back() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::sample();
        upload_all(&wd, &store);
        let expected = rt.block_on(store.snapshot());
        let store_key = wd.pkgs[3].revision().store_key();
        let own = format!("/{}", store_key.rsplit('/').next().unwrap());
        let gone: Vec<String> = wd
            .expected([3])
            .into_keys()
            .filter(|key| key.contains("/dist") && !key.ends_with(&own))
            .take(2)
            .collect();
        assert_eq!(
            gone.len(),
            2,
            "{kind}: the sample's package 3 has dependency links"
        );
        rt.block_on(async {
            let opened = store.open().await;
            for key in &gone {
                opened.delete(key).await.unwrap();
            }
        });
        let mut args = wd.upload_args(3, &store);
        args.push("--json".into());
        let out = alitx(&args);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["status"], "already-published", "{kind}");
        let written = keys_written(&report);
        assert_eq!(written, gone, "{kind}");
        assert_eq!(
            rt.block_on(store.snapshot()),
            expected,
            "{kind}: the store is whole again"
        );
    });
}

#[test]
fn uploading_twice_writes_nothing_the_second_time() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::sample();
        upload_all(&wd, &store);
        let before = rt.block_on(store.snapshot());
        let mut args = wd.upload_args(3, &store);
        args.push("--json".into());
        let out = alitx(&args);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["status"], "already-published");
        assert_eq!(report["keys_written"].as_array().unwrap().len(), 0);
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}");
        if let TestStore::S3 { client, bucket, .. } = &store {
            // Not even rewritten with the same bytes: modification times hold.
            rt.block_on(async {
                let listed = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                let newest = listed
                    .contents()
                    .iter()
                    .filter_map(|o| o.last_modified())
                    .max()
                    .unwrap();
                let again = alitx(&wd.upload_args(3, &store));
                assert_exit(&again, 0);
                let relisted = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    relisted
                        .contents()
                        .iter()
                        .filter_map(|o| o.last_modified())
                        .max()
                        .unwrap(),
                    newest
                );
            });
        }
    });
}

#[test]
fn a_foreign_package_link_is_a_conflict_and_leaves_nothing_of_ours() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 0);
        let rev = wd.pkgs[0].revision();
        let foreign_body = b"slc9_x86-64/store/aa/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/pkg0-v0.0-1.slc9_x86-64.tar.gz";
        rt.block_on(store.put_foreign(&rev.package_link().key, foreign_body));
        let out = alitx(&wd.upload_args(0, &store));
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains(&rev.package_link().key),
            "{}",
            stderr(&out)
        );
        let left = rt.block_on(store.snapshot());
        assert_eq!(
            left,
            BTreeMap::from([(rev.package_link().key, foreign_body.to_vec())]),
            "{kind}"
        );
        assert_eq!(rt.block_on(store.pending_uploads()), 0);
    });
}

#[test]
fn a_foreign_dist_link_with_another_body_is_a_conflict_undone_completely() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let before = rt.block_on(store.snapshot());
        let rev = wd.pkgs[1].revision();
        let key = format!(
            "{}{}",
            rev.dist_prefix("dist-runtime"),
            wd.pkgs[0].revision().tarball_name()
        );
        rt.block_on(store.put_foreign(&key, b"TARS/slc9_x86-64/store/00/0000000000000000000000000000000000000000/x.slc9_x86-64.tar.gz"));
        let out = alitx(&wd.upload_args(1, &store));
        assert_exit(&out, 3);
        assert!(stderr(&out).contains(&key), "{}", stderr(&out));
        let mut expected = before.clone();
        expected.insert(key.clone(), rt.block_on(store.snapshot())[&key].clone());
        assert_eq!(
            rt.block_on(store.snapshot()),
            expected,
            "{kind}: only the foreign object may remain"
        );
        assert_eq!(rt.block_on(store.pending_uploads()), 0);
    });
}

/// What a stock upload killed after some of its links leaves (its package
/// link and the links of one dist directory, as stock aliBuild writes them:
/// no alitx metadata, redirects without the leading `/`): the same build
/// completes it once it is older than `--adopt-after`, and refuses, naming
/// when to retry, while it is younger. A key that differs from this build's
/// is a conflict. Each refusal writes nothing.
#[test]
fn a_rebuild_of_the_same_hash_completes_a_revision_left_unpublished() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 1 << 10);
        let rev = wd.pkgs[1].revision();
        let expected = wd.expected([1]);
        let leftovers: BTreeMap<String, Vec<u8>> = expected
            .iter()
            .filter(|(key, _)| {
                **key == rev.package_link().key || key.starts_with(&rev.dist_prefix("dist"))
            })
            .map(|(key, body)| (key.clone(), body.clone()))
            .collect();
        assert!(leftovers.len() >= 3, "{leftovers:?}");
        rt.block_on(put_stock_links(&store, &rev, &leftovers));

        let young = alitx(&wd.upload_args(1, &store));
        assert_exit(&young, 4);
        assert!(stderr(&young).contains("re-run in"), "{}", stderr(&young));
        assert_eq!(rt.block_on(store.snapshot()), leftovers, "{kind}: young");

        let mut adopt = wd.upload_args(1, &store);
        adopt.extend(args(&["--adopt-after", "0s"]));
        let out = alitx(&adopt);
        assert_exit(&out, 0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("completed the revision"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_exact(&store, &wd, &[1], &format!("{kind}: adopted"));
        rt.block_on(async {
            let backend = store.open().await;
            for key in leftovers.keys() {
                let info = backend.head(key).await.unwrap().unwrap();
                assert!(info.metadata.is_empty(), "{kind}: {key} was rewritten");
            }
        });

        // Another store: a dist link of the revision names another build.
        let store = rt.block_on(TestStore::new(kind));
        rt.block_on(store.put_foreign(&rev.package_link().key, rev.package_link().body.as_bytes()));
        let odd = format!("{}other-v1-1.{ARCH}.tar.gz", rev.dist_prefix("dist-direct"));
        let odd_body = alitx::layout::store_key(
            ARCH,
            &hash_of("other"),
            &format!("other-v1-1.{ARCH}.tar.gz"),
        );
        rt.block_on(store.put_foreign(&odd, odd_body.as_bytes()));
        let before = rt.block_on(store.snapshot());
        let mut adopt = wd.upload_args(1, &store);
        adopt.extend(args(&["--adopt-after", "0s"]));
        let out = alitx(&adopt);
        assert_exit(&out, 3);
        assert!(stderr(&out).contains(&odd), "{}", stderr(&out));
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}: differs");
        assert!(list_journals(&store.spec()).as_array().unwrap().is_empty());
    });
}

/// A stock upload to a local-directory store killed after its links
/// leaves its package link and every dist link as the relative symlinks
/// aliBuild lays out, with no alitx sidecar: the same build with
/// `--adopt-after 0` completes it (exit 0, adopted) and every key is exact.
#[test]
fn a_rebuild_completes_a_stock_upload_killed_in_a_local_store() {
    let store = runtime().block_on(TestStore::new("local"));
    let wd = WorkDir::chain(2, 1 << 10);
    let rev = wd.pkgs[1].revision();
    let expected = wd.expected([1]);
    let mut links = 0;
    for (key, body) in expected.iter().filter(|(key, _)| **key != rev.store_key()) {
        let body = String::from_utf8(body.clone()).unwrap();
        let target = match *key == rev.package_link().key {
            true => format!("../../{body}"),
            false => format!("../../../../../{body}"),
        };
        let path = store.root().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
        links += 1;
    }
    assert!(links > 3, "{expected:?}");

    let mut adopt = wd.upload_args(1, &store);
    adopt.extend(args(&["--adopt-after", "0s", "--json"]));
    let out = alitx(&adopt);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["adopted"], true, "{}", stderr(&out));
    assert_exact(&store, &wd, &[1], "adopted");
}

/// Bad input of every kind: a clear error, exit 1, and an untouched store.
#[test]
fn bad_input_is_refused_and_the_store_is_unchanged() {
    let rt = runtime();
    each_backend(|kind, store| {
        let check = |what: &str, args: Vec<String>, env: &[(&str, &str)], needle: &str| {
            let out = alitx_env(&args, env);
            assert_exit(&out, 1);
            let err = stderr(&out);
            assert!(
                err.contains(needle),
                "{kind} {what}: {err:?} lacks {needle:?}"
            );
            assert!(
                rt.block_on(store.keys()).is_empty(),
                "{kind} {what}: store changed"
            );
            assert_eq!(
                rt.block_on(store.pending_uploads()),
                0,
                "{kind} {what}: upload left"
            );
        };
        let with = |args: &[String], flag: &str, value: &str| {
            let mut args = args.to_vec();
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1] = value.to_string();
            args
        };

        let wd = WorkDir::chain(1, 0);
        let good = wd.upload_args(0, &store);
        let tarball = wd.tarball_path(0);
        let original = std::fs::read(&tarball).unwrap();

        std::fs::write(&tarball, &original[..original.len() / 2]).unwrap();
        check("truncated tarball", good.clone(), &[], "truncated");
        std::fs::write(&tarball, b"<html>502 Bad Gateway</html>").unwrap();
        check(
            "garbage tarball",
            good.clone(),
            &[],
            "not a complete gzip'd tar",
        );
        let other = wd.pkgs[0].revision();
        let foreign =
            alitx::layout::Revision::new(ARCH, "other", &other.version, "1", &other.hash).unwrap();
        write_tarball(&tarball, &foreign, 0);
        check(
            "tarball of another package",
            good.clone(),
            &[],
            "does not belong",
        );
        std::fs::write(&tarball, &original).unwrap();

        let escape = wd
            .path()
            .join(other.dist_prefix("dist"))
            .join(format!("evil.{ARCH}.tar.gz"));
        std::os::unix::fs::symlink("../../../../../../../etc/passwd", &escape).unwrap();
        check(
            "link outside the store",
            good.clone(),
            &[],
            "outside TARS/slc9_x86-64/store/",
        );
        std::fs::remove_file(&escape).unwrap();

        check(
            "missing work dir",
            with(&good, "--work-dir", "/nonexistent/sw"),
            &[],
            "does not exist",
        );
        check(
            "unknown architecture",
            with(&good, "--architecture", "el7_x86-64"),
            &[],
            "architectures found: slc9_x86-64",
        );
        check(
            "../ in a name",
            with(&good, "--package", "../pkg0"),
            &[],
            "invalid package",
        );
        check(
            "space in a name",
            with(&good, "--version", "v 1"),
            &[],
            "invalid version",
        );
        check(
            "empty name",
            with(&good, "--revision", ""),
            &[],
            "invalid revision",
        );
        check(
            "bad hash",
            with(&good, "--hash", "1234"),
            &[],
            "invalid hash",
        );

        if kind == "s3" {
            let mut unreachable = good.clone();
            unreachable.extend(["--endpoint-url".into(), "http://127.0.0.1:1".into()]);
            check(
                "unreachable endpoint",
                unreachable,
                &[],
                "cannot reach the S3 endpoint http://127.0.0.1:1",
            );
            let home = tempfile::tempdir().unwrap();
            let mut out = std::process::Command::new(env!("CARGO_BIN_EXE_alitx"));
            out.args(&good)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env("HOME", home.path());
            let out = out.output().unwrap();
            assert_exit(&out, 1);
            assert!(
                stderr(&out).contains("no S3 credentials"),
                "{}",
                stderr(&out)
            );
            check(
                "wrong secret",
                good.clone(),
                &[("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")],
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            );
        }
    });
}

#[test]
fn secrets_never_appear_in_output() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new(if backends().contains(&"s3") {
        "s3"
    } else {
        "local"
    }));
    let wd = WorkDir::chain(1, 0);
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testsecretkey".into());
    let mut args = wd.upload_args(0, &store);
    args.extend(["--json".into(), "-vv".into()]);
    let out = alitx(&args);
    assert_exit(&out, 0);
    let mut wrong = wd.upload_args(0, &store);
    wrong.extend(["--json".into(), "-vv".into()]);
    let refused = alitx_env(
        &wrong,
        &[("AWS_SECRET_ACCESS_KEY", "s3cr3t-that-must-not-leak")],
    );
    for text in [&out.stdout, &out.stderr, &refused.stdout, &refused.stderr] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains(&secret) && !text.contains("s3cr3t-that-must-not-leak"),
            "{text}"
        );
    }
    // Nor in what is stored (journals included, while they exist).
    for body in rt.block_on(store.snapshot()).values() {
        assert!(!String::from_utf8_lossy(body).contains(&secret));
    }
}

/// While uploads run, an observer polls the store as a reader would: a
/// store tarball must never be visible while a dist link of its revision
/// is missing, and nothing may exist without a journal before the commit.
#[test]
fn readers_never_see_a_partial_revision() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 12 << 20);
        wd.add_dist_links(1, 100);
        let expected = wd.expected([1]);
        let rev = wd.pkgs[1].revision();
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);

        let done = Arc::new(AtomicBool::new(false));
        let observer = {
            let done = done.clone();
            let backend = rt.block_on(store.open());
            let expected = expected.clone();
            let rev = rev.clone();
            rt.spawn(async move {
                let (mut polls, mut saw_partial_links) = (0, false);
                loop {
                    // Sample in an order that makes each check sound: links
                    // are never removed, the journal outlives every write
                    // but the retirement that follows publication.
                    let finished = done.load(Ordering::SeqCst);
                    let tarball_before = backend.head(&rev.store_key()).await.unwrap().is_some();
                    let mut links = 0;
                    for dist in DIST_DIRS {
                        links += backend.list(&rev.dist_prefix(dist)).await.unwrap().len();
                    }
                    let pkg_link = backend
                        .head(&rev.package_link().key)
                        .await
                        .unwrap()
                        .is_some();
                    let journal = !backend.list(".alitx/journals/").await.unwrap().is_empty();
                    let tarball_after = backend.head(&rev.store_key()).await.unwrap().is_some();
                    if tarball_before {
                        assert_eq!(
                            links,
                            expected.len() - 2,
                            "tarball visible with a dist link missing"
                        );
                        assert!(pkg_link, "tarball visible without its package link");
                    }
                    // A staged upload, invisible to readers, is created
                    // with the first look, before the journal: not data.
                    let data = links > 0 || pkg_link;
                    assert!(!data || journal || tarball_after, "data without a journal");
                    saw_partial_links |= links > 0 && !tarball_after;
                    polls += 1;
                    if finished {
                        return (polls, saw_partial_links);
                    }
                }
            })
        };
        let mut args = wd.upload_args(1, &store);
        args.extend([
            "--part-size".into(),
            "5".into(),
            "--concurrency".into(),
            "2".into(),
        ]);
        assert_exit(&alitx(&args), 0);
        done.store(true, Ordering::SeqCst);
        let (polls, saw_partial) = rt.block_on(observer).unwrap();
        assert!(
            polls > 1,
            "{kind}: the observer never ran during the upload"
        );
        eprintln!("{kind}: {polls} observations, links seen before the tarball: {saw_partial}");
        let mut all = wd.expected([0]);
        all.extend(expected);
        assert_eq!(rt.block_on(store.snapshot()), all, "{kind}");
    });
}
