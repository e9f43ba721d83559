//! `alitx fetch` end to end, on the local-directory store and on Ceph RGW:
//! revisions published with `alitx upload` are fetched into a fresh work
//! dir laid out as aliBuild's own fetch lays it (links from the manifest and
//! the listing, symlink targets byte for byte; tarballs byte for byte, read
//! through a redirect stub where the store holds one); a
//! tarball that is not what its record says, or without a record not a
//! gzip'd tar of its revision, is refused with exit 6 and leaves nothing in
//! its place; a fetch killed half-way leaves nothing partial and its re-run
//! fetches what is missing; `--json-lines` reports each package on its own
//! line, then the rest of the report.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::common::*;
use alitx::layout::Revision;
use serde_json::Value;

const CORRUPT: i32 = 6;

/// `alitx fetch --json` of `wanted` into `work_dir`.
fn fetch_args(store: &TestStore, work_dir: &Path, wanted: &[String]) -> Vec<String> {
    let mut all = store.cmd(
        "fetch",
        &[
            "--json",
            "--work-dir",
            &work_dir.display().to_string(),
            "--architecture",
            ARCH,
        ],
    );
    all.extend(wanted.iter().cloned());
    all
}

/// `PKG@HASH` for each package of `wd`.
fn wanted(wd: &WorkDir) -> Vec<String> {
    wd.pkgs
        .iter()
        .map(|p| format!("{}@{}", p.name, p.hash))
        .collect()
}

/// By package, its report.
fn by_package(report: &Value) -> BTreeMap<String, Value> {
    report["packages"]
        .as_array()
        .unwrap_or_else(|| panic!("no packages: {report}"))
        .iter()
        .map(|p| (p["package"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn upload_all(wd: &WorkDir, store: &TestStore) {
    for i in 0..wd.pkgs.len() {
        assert_exit(&alitx(&wd.upload_args(i, store)), 0);
    }
}

/// The work dir as fetching every package of `wd` must leave it: each
/// package link, and each tarball, under `TARS/<arch>/`.
fn expected_tree(wd: &WorkDir) -> BTreeMap<String, Vec<u8>> {
    let mut expected = BTreeMap::new();
    for (i, p) in wd.pkgs.iter().enumerate() {
        let rev = p.revision();
        let link = rev.package_link();
        expected.insert(
            format!(
                "{} ->",
                link.key.strip_prefix(&format!("TARS/{ARCH}/")).unwrap()
            ),
            link.symlink_target.into_bytes(),
        );
        expected.insert(
            rev.store_key()
                .strip_prefix(&format!("TARS/{ARCH}/"))
                .unwrap()
                .to_string(),
            fs::read(wd.tarball_path(i)).unwrap(),
        );
    }
    expected
}

#[test]
fn a_fresh_work_dir_gets_the_links_and_tarballs_alibuild_would_fetch() {
    let rt = runtime();
    let wd = WorkDir::chain(3, 3 << 20);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        // pkg0 as a store that stock aliBuild also writes to holds it: a
        // manifest of older revisions, and a link the manifest lacks.
        let old = |rev: u32, h: &str| {
            let hash = h.repeat(20);
            let name = format!("pkg0-v0.0-{rev}.{ARCH}.tar.gz");
            (name.clone(), format!("{ARCH}/store/{h}/{hash}/{name}"))
        };
        let (in_manifest, in_manifest_body) = old(7, "ab");
        let (leftover, leftover_body) = old(9, "cd");
        let link0 = wd.pkgs[0].revision().package_link();
        let manifest = format!(
            "{}\t{}\n{in_manifest}\t../../{in_manifest_body}\nnot a line\n",
            link0.key.rsplit('/').next().unwrap(),
            link0.body
        );
        rt.block_on(async {
            store
                .put_foreign(&format!("TARS/{ARCH}/pkg0.manifest"), manifest.as_bytes())
                .await;
            store
                .put_foreign(
                    &format!("TARS/{ARCH}/pkg0/{leftover}"),
                    format!("{leftover_body}\n").as_bytes(),
                )
                .await;
        });
        let fresh = tempfile::tempdir().unwrap();
        // A symlink the store does not have goes, as aliBuild removes it.
        let links1 = fresh.path().join(format!("TARS/{ARCH}/pkg1"));
        fs::create_dir_all(&links1).unwrap();
        std::os::unix::fs::symlink("../../elsewhere", links1.join("stale.tar.gz")).unwrap();
        // pkg2's first candidate is a hash the store never had.
        let mut asked = wanted(&wd);
        asked[2] = format!("pkg2@{},{}", hash_of("never built"), wd.pkgs[2].hash);
        asked.push(format!("absent@{}", hash_of("absent")));
        let out = alitx(&fetch_args(&store, fresh.path(), &asked));
        assert_exit(&out, 0);

        let mut expected = expected_tree(&wd);
        expected.insert(
            format!("pkg0/{in_manifest} ->"),
            format!("../../{in_manifest_body}").into_bytes(),
        );
        expected.insert(
            format!("pkg0/{leftover} ->"),
            format!("../../{leftover_body}").into_bytes(),
        );
        let found = tree(&fresh.path().join(format!("TARS/{ARCH}")));
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{kind}"
        );
        assert!(found == expected, "{kind}: a body or target differs");

        let report = json(&out);
        let packages = by_package(&report);
        for p in ["pkg0", "pkg1", "pkg2"] {
            assert_eq!(packages[p]["state"], "fetched", "{kind} {p}: {report}");
            assert_eq!(packages[p]["checked_against_record"], true, "{kind} {p}");
        }
        assert_eq!(packages["pkg2"]["hash"], wd.pkgs[2].hash.as_str(), "{kind}");
        assert_eq!(packages["pkg0"]["links"], 3, "{kind}");
        assert_eq!(packages["absent"]["state"], "not-in-store", "{kind}");
        assert_eq!(packages["absent"]["links"], 0, "{kind}");
        assert_eq!(report["clean"], true, "{kind}");

        // Again: everything is in place, nothing is read twice.
        let again = json(&alitx(&fetch_args(&store, fresh.path(), &asked)));
        let packages = by_package(&again);
        for p in ["pkg0", "pkg1", "pkg2"] {
            assert_eq!(packages[p]["state"], "present", "{kind} {p}: {again}");
        }
        assert_eq!(again["summary"]["bytes_read"], 0, "{kind}");
        assert!(
            tree(&fresh.path().join(format!("TARS/{ARCH}"))) == expected,
            "{kind}"
        );
    });
}

/// `fetch --json-lines`: a line per package, each the package's report as
/// `--json` gives it, then a line with `--json`'s other fields; a fetch that
/// fails as a whole prints `--json`'s error object as its one line.
#[test]
fn json_lines_report_each_package_then_the_rest_of_the_report() {
    let wd = WorkDir::chain(3, 1 << 20);
    let lines = |out: &std::process::Output| -> Vec<Value> {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            .collect()
    };
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        let mut asked = wanted(&wd);
        asked.push(format!("absent@{}", hash_of("absent")));
        asked.push("links-only".into());
        let whole_dir = tempfile::tempdir().unwrap();
        let whole = json(&alitx(&fetch_args(&store, whole_dir.path(), &asked)));
        let fresh = tempfile::tempdir().unwrap();
        let mut args = fetch_args(&store, fresh.path(), &asked);
        args.iter_mut()
            .filter(|a| *a == "--json")
            .for_each(|a| *a = "--json-lines".into());
        let out = alitx(&args);
        assert_exit(&out, 0);

        let found = lines(&out);
        assert_eq!(found.len(), asked.len() + 1, "{kind}: {found:?}");
        let (end, packages) = found.split_last().unwrap();
        let mut reported: Vec<&str> = packages
            .iter()
            .map(|p| p["package"].as_str().unwrap())
            .collect();
        reported.sort();
        assert_eq!(
            reported,
            ["absent", "links-only", "pkg0", "pkg1", "pkg2"],
            "{kind}"
        );
        // Each line is the package's report as `--json` gives it, field
        // for field (both fetched into a fresh work dir).
        for line in packages {
            let expected = whole["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["package"] == line["package"])
                .unwrap_or_else(|| panic!("{kind}: not in --json: {line}"));
            assert_eq!(line, expected, "{kind}");
        }
        let mut rest = whole.as_object().unwrap().clone();
        rest.remove("packages");
        let end_fields: Vec<&String> = end.as_object().unwrap().keys().collect();
        assert_eq!(end_fields, rest.keys().collect::<Vec<_>>(), "{kind}: {end}");
        for field in ["clean", "store", "architecture"] {
            assert_eq!(end[field], rest[field], "{kind}: {field}");
        }
        assert_eq!(
            end["work_dir"],
            fresh.path().display().to_string(),
            "{kind}"
        );
        let counts = |summary: &Value| {
            let mut counts = summary.as_object().unwrap().clone();
            counts.remove("seconds");
            counts
        };
        assert_eq!(counts(&end["summary"]), counts(&rest["summary"]), "{kind}");
        assert_eq!(end["summary"]["fetched"], 3, "{kind}");
        let found = tree(&fresh.path().join(format!("TARS/{ARCH}")));
        assert!(found == expected_tree(&wd), "{kind}: {:?}", found.keys());
    });

    // A store that is not there: the fetch fails as a whole.
    let missing = tempfile::tempdir().unwrap();
    let store = missing.path().join("no store");
    let out = alitx(&args(&[
        "fetch",
        "--json-lines",
        "--remote-store",
        store.to_str().unwrap(),
        "--work-dir",
        missing.path().to_str().unwrap(),
        "--architecture",
        ARCH,
        "zlib",
    ]));
    assert_exit(&out, 1);
    let found = lines(&out);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["status"], "error");
    assert_eq!(found[0]["exit_code"], 1);
    assert!(
        found[0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no store")),
        "{}",
        found[0]
    );
}

#[test]
fn a_tarball_that_is_not_what_was_published_is_refused_and_left_nowhere() {
    let rt = runtime();
    let wd = WorkDir::named(&["zlib", "boost"]);
    let published = fs::read(wd.tarball_path(0)).unwrap();
    // Same size, other bytes, still a valid gzip (its header's mtime): only
    // the record's SHA-256 tells; and fewer bytes than the record says.
    let mut mtime_changed = published.clone();
    mtime_changed[4] ^= 0x5a;
    // Same size, not a gzip stream any more: the record still tells first.
    let mut flipped = published.clone();
    flipped[published.len() / 2] ^= 0x40;
    for (what, bytes, why) in [
        ("same size", mtime_changed, "its SHA-256 is "),
        ("a byte flipped", flipped, "its SHA-256 is "),
        (
            "other size",
            b"not the published bytes".repeat(100),
            "bytes, its publication record",
        ),
    ] {
        each_backend(|kind, store| {
            upload_all(&wd, &store);
            let key = wd.pkgs[0].revision().store_key();
            rt.block_on(store.put_foreign(&key, &bytes));
            let fresh = tempfile::tempdir().unwrap();
            let out = alitx(&fetch_args(&store, fresh.path(), &wanted(&wd)));
            assert_exit(&out, CORRUPT);
            let err = stderr(&out);
            for needed in [
                format!("{ARCH}/zlib-v1-1"),
                "alitx verify".to_string(),
                "--package zlib --version v1 --revision 1 --unpublish".to_string(),
            ] {
                assert!(
                    err.contains(&needed),
                    "{kind} {what}: {needed:?} not in {err}"
                );
            }
            let packages = by_package(&json(&out));
            assert_eq!(packages["zlib"]["state"], "corrupt", "{kind} {what}");
            let corruption = packages["zlib"]["corruption"].as_str().unwrap();
            assert!(corruption.contains(why), "{kind} {what}: {corruption}");
            assert_eq!(packages["boost"]["state"], "fetched", "{kind} {what}");
            let store_dir = fresh.path().join(&key).parent().unwrap().to_path_buf();
            assert_eq!(tree(&store_dir), BTreeMap::new(), "{kind} {what}");
            let boost = fresh.path().join(wd.pkgs[1].revision().store_key());
            assert_eq!(
                fs::read(boost).unwrap(),
                fs::read(wd.tarball_path(1)).unwrap()
            );
        });
    }
}

#[test]
fn without_a_record_a_tarball_must_be_a_gzipped_tar_of_its_revision() {
    let rt = runtime();
    let wd = WorkDir::named(&["plain", "broken"]);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        rt.block_on(async {
            let backend = store.open().await;
            for p in &wd.pkgs {
                backend
                    .delete(&alitx::record::key_of(&p.revision()))
                    .await
                    .unwrap();
            }
            let broken = wd.pkgs[1].revision().store_key();
            let mut bytes = fs::read(wd.tarball_path(1)).unwrap();
            bytes.truncate(bytes.len() - 20);
            store.put_foreign(&broken, &bytes).await;
        });
        let fresh = tempfile::tempdir().unwrap();
        let out = alitx(&fetch_args(&store, fresh.path(), &wanted(&wd)));
        assert_exit(&out, CORRUPT);
        let packages = by_package(&json(&out));
        assert_eq!(packages["plain"]["state"], "fetched", "{kind}");
        assert_eq!(packages["plain"]["checked_against_record"], false, "{kind}");
        assert_eq!(
            fs::read(fresh.path().join(wd.pkgs[0].revision().store_key())).unwrap(),
            fs::read(wd.tarball_path(0)).unwrap(),
            "{kind}"
        );
        assert_eq!(packages["broken"]["state"], "corrupt", "{kind}");
        let reasons = packages["broken"]["reasons"].to_string();
        assert!(
            reasons.contains("not a complete gzip'd tar"),
            "{kind}: {reasons}"
        );
        let corruption = packages["broken"]["corruption"].as_str().unwrap();
        assert!(
            corruption.starts_with("the store tarball: ")
                && corruption.contains("not a complete gzip'd tar")
                && reasons.contains(corruption),
            "{kind}: {corruption}"
        );
        assert_eq!(packages["plain"]["corruption"], Value::Null, "{kind}");
        let store_dir = fresh.path().join(wd.pkgs[1].revision().store_key());
        assert_eq!(tree(store_dir.parent().unwrap()), BTreeMap::new(), "{kind}");
    });
}

/// A record of another build under the revision's number (the revision
/// was unpublished, a late record of it came back, another hash took the
/// number) says nothing about the tarball the store holds: it is fetched,
/// checked as a record-less tarball, not refused.
#[test]
fn a_record_of_another_build_of_the_revision_is_not_held_against_its_tarball() {
    let rt = runtime();
    let wd = WorkDir::named(&["zlib"]);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        let revision = wd.pkgs[0].revision();
        let record_key = alitx::record::key_of(&revision);
        let mut record = rt.block_on(store.records())[&record_key].clone();
        let other = hash_of("an earlier build of zlib");
        record.revision = Revision::new(ARCH, "zlib", "v1", "1", &other).unwrap();
        record.key = record.revision.store_key();
        let body = serde_json::to_vec(&record).unwrap();
        rt.block_on(store.put_foreign(&record_key, &body));

        let fresh = tempfile::tempdir().unwrap();
        let out = alitx(&fetch_args(&store, fresh.path(), &wanted(&wd)));
        assert_exit(&out, 0);
        let zlib = &by_package(&json(&out))["zlib"];
        assert_eq!(zlib["state"], "fetched", "{kind}: {zlib}");
        assert_eq!(zlib["checked_against_record"], false, "{kind}");
        assert!(
            stderr(&out).contains(&format!("names hash {other}")),
            "{kind}: {}",
            stderr(&out)
        );
        assert_eq!(
            fs::read(fresh.path().join(revision.store_key())).unwrap(),
            fs::read(wd.tarball_path(0)).unwrap(),
            "{kind}"
        );
    });
}

#[test]
fn a_fetch_killed_half_way_leaves_nothing_partial_and_its_rerun_completes_it() {
    let wd = WorkDir::chain(2, 2 << 20);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        let fresh = tempfile::tempdir().unwrap();
        let asked = fetch_args(&store, fresh.path(), &wanted(&wd));
        // Killed with pkg1's tarball written beside its place, not yet in it.
        alitx_killed_at(&asked, "fetch-placing pkg1");
        let place = fresh.path().join(wd.pkgs[1].revision().store_key());
        assert!(!place.exists(), "{kind}: {} exists", place.display());
        let tarballs = tree(place.parent().unwrap());
        assert!(
            tarballs.keys().all(|name| !name.ends_with(".tar.gz")),
            "{kind}: {tarballs:?}"
        );

        let out = alitx(&asked);
        assert_exit(&out, 0);
        let packages = by_package(&json(&out));
        assert_eq!(packages["pkg1"]["state"], "fetched", "{kind}");
        assert!(
            ["fetched", "present"].contains(&packages["pkg0"]["state"].as_str().unwrap()),
            "{kind}: {}",
            packages["pkg0"]
        );
        let found = tree(&fresh.path().join(format!("TARS/{ARCH}")));
        assert!(found == expected_tree(&wd), "{kind}: {:?}", found.keys());
    });
}

#[test]
fn a_store_tarball_that_redirects_is_read_where_it_points() {
    let rt = runtime();
    let wd = WorkDir::named(&["zlib"]);
    each_backend(|kind, store| {
        upload_all(&wd, &store);
        // The tarball moves to a blob; its store key becomes a redirect
        // stub naming it, as a content-addressed store writes it.
        let rev = wd.pkgs[0].revision();
        let bytes = fs::read(wd.tarball_path(0)).unwrap();
        let blob = format!("TARS/{ARCH}/blobs/{}", hash_of("zlib blob"));
        rt.block_on(async {
            store.put_foreign(&blob, &bytes).await;
            let backend = store.open().await;
            backend.delete(&rev.store_key()).await.unwrap();
            let stub = alitx::layout::Link {
                key: rev.store_key(),
                body: blob.clone(),
                symlink_target: format!("../../../blobs/{}", hash_of("zlib blob")),
                redirect: Some(format!("/{blob}")),
            };
            backend
                .put_link_if_absent(&stub, &Default::default())
                .await
                .unwrap();
        });
        let fresh = tempfile::tempdir().unwrap();
        let out = alitx(&fetch_args(&store, fresh.path(), &wanted(&wd)));
        assert_exit(&out, 0);
        assert_eq!(
            by_package(&json(&out))["zlib"]["state"],
            "fetched",
            "{kind}"
        );
        assert!(
            fs::read(fresh.path().join(rev.store_key())).unwrap() == bytes,
            "{kind}: the fetched tarball is not the blob's bytes"
        );
    });
}
