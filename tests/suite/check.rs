//! `alitx check` and `alitx repair` end to end, on the local-directory store
//! and on Ceph RGW: every partial state a killed stock upload leaves, beside
//! complete revisions, foreign keys (odd names included), a live and an
//! abandoned alitx journal, and stale staged uploads.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use alitx::journal::{Journal, DEFAULT_PREFIX};
use alitx::layout::{Revision, DIST_DIRS};
use alitx::storage::Metadata;
use serde_json::Value;

/// A revision seeded as a stock upload writes it (no alitx metadata).
fn stock(name: &str) -> Revision {
    Revision::new(ARCH, name, "v1", "1", &hash_of(name)).unwrap()
}

/// What a stock upload killed between two of its steps leaves, plus other
/// writers' damage: (revision, whether the tarball exists, the dist
/// directories holding its links, extra dist link targets).
struct Seed {
    revision: Revision,
    tarball: bool,
    package_link: bool,
    dist_dirs: &'static [&'static str],
    deps: Vec<Revision>,
}

async fn seed(store: &TestStore, seed: &Seed) -> Vec<String> {
    let backend = store.open().await;
    let r = &seed.revision;
    let none = Metadata::new();
    let mut keys = Vec::new();
    if seed.tarball {
        store.put_foreign(&r.store_key(), b"stock tarball").await;
        keys.push(r.store_key());
    }
    for dir in seed.dist_dirs {
        for dep in seed.deps.iter().chain([r]) {
            let link = r.dist_link(dir, &dep.store_key()).unwrap();
            backend.put_link_if_absent(&link, &none).await.unwrap();
            keys.push(link.key);
        }
    }
    if seed.package_link {
        backend
            .put_link_if_absent(&r.package_link(), &none)
            .await
            .unwrap();
        keys.push(r.package_link().key);
    }
    keys
}

fn check_args(store: &TestStore, extra: &[&str]) -> Vec<String> {
    let mut all = store.cmd("check", &["--json"]);
    all.extend(args(extra));
    all
}

fn repair_args(store: &TestStore, extra: &[&str]) -> Vec<String> {
    let mut all = check_args(store, extra);
    all[0] = "repair".into();
    all
}

/// `tarball name` → the revision's report.
fn by_tarball(report: &Value) -> BTreeMap<String, Value> {
    report["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["tarball"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn check_classifies_every_partial_state_and_repair_removes_exactly_the_leftovers() {
    let rt = runtime();
    each_backend(|kind, store| {
        // pkg0, pkg1 published by alitx; pkg2 killed and still owned by a
        // live upload elsewhere; pkg3 killed, its owner dead; pkg4 killed
        // before it wrote anything but its journal.
        let wd = WorkDir::chain(5, 0);
        for i in 0..2 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        // pkg2's and pkg3's tarballs span several parts, so their killed
        // uploads leave staged (multipart) uploads behind.
        let staged = |i: usize| {
            write_tarball(&wd.tarball_path(i), &wd.pkgs[i].revision(), 12 << 20);
            let mut args = wd.upload_args(i, &store);
            args.extend(["--part-size".into(), "5".into()]);
            args
        };
        alitx_killed_at(&staged(2), "after-links");
        rt.block_on(fake_live_owner(&store, &wd.pkgs[2].revision()));
        alitx_killed_at(&staged(3), "after-links");
        alitx_killed_at(&wd.upload_args(4, &store), "after-intent");

        let pkg0 = wd.pkgs[0].revision();
        let seeds = [
            ("linkonly", false, true, &[][..], vec![]),
            (
                "somedist",
                false,
                true,
                &["dist", "dist-direct"][..],
                vec![pkg0.clone()],
            ),
            ("alldist", false, true, &DIST_DIRS[..], vec![pkg0.clone()]),
            ("nopkglink", true, false, &DIST_DIRS[..], vec![pkg0.clone()]),
            ("dangling", true, true, &DIST_DIRS[..], vec![stock("ghost")]),
            ("stockdone", true, true, &DIST_DIRS[..], vec![pkg0.clone()]),
        ];
        let mut leftovers = BTreeMap::new();
        for (name, tarball, package_link, dist_dirs, deps) in seeds {
            let keys = rt.block_on(seed(
                &store,
                &Seed {
                    revision: stock(name),
                    tarball,
                    package_link,
                    dist_dirs,
                    deps,
                },
            ));
            // Revisions with a tarball are published, and one with every
            // link may have been (retired): never leftovers.
            if !tarball && name != "alldist" {
                leftovers.insert(stock(name).tarball_name(), keys);
            }
        }
        // A package link whose body is no store path: reported, not followed.
        let bad = stock("badbody");
        rt.block_on(store.put_foreign(&bad.package_link().key, b"../../../etc/passwd"));
        leftovers.insert(bad.tarball_name(), vec![bad.package_link().key]);
        // Foreign keys, odd names included; one sits in a partial revision's
        // own dist directory and must survive its repair.
        let foreign = [
            "TARS/README".to_string(),
            format!("TARS/{ARCH}/pkg0.manifest"),
            format!("TARS/{ARCH}/dist/pkg0/notes.txt"),
            format!("TARS/{ARCH}/dist/alldist/alldist-v1-1/odd name ü+.txt"),
            format!("TARS/{ARCH}/store/zz/not-a-hash/x.{ARCH}.tar.gz"),
            format!("TARS/{ARCH}/linkonly/README"),
        ];
        for key in &foreign {
            rt.block_on(store.put_foreign(key, b"not ours"));
        }
        // A staged upload nobody records, beside the journals' own.
        let orphan = rt.block_on(async {
            let key = stock("orphan").store_key();
            let backend = store.open().await;
            (
                backend.create_upload(&key, &Metadata::new()).await.unwrap(),
                key,
            )
        });

        // check: every revision classified, exit 5.
        let out = alitx(&check_args(&store, &[]));
        assert_exit(&out, 5);
        let report = json(&out);
        assert_eq!(report["clean"], false);
        let revisions = by_tarball(&report);
        let state = |name: &str| revisions[name]["state"].as_str().unwrap().to_string();
        for i in 0..2 {
            assert_eq!(
                state(&wd.pkgs[i].revision().tarball_name()),
                "complete",
                "{kind}"
            );
        }
        assert_eq!(
            state(&stock("stockdone").tarball_name()),
            "complete",
            "{kind}"
        );
        assert_eq!(
            state(&wd.pkgs[2].revision().tarball_name()),
            "in-flight",
            "{kind}"
        );
        assert_eq!(
            state(&wd.pkgs[3].revision().tarball_name()),
            "abandoned",
            "{kind}"
        );
        assert_eq!(
            state(&wd.pkgs[4].revision().tarball_name()),
            "abandoned",
            "{kind}: a journal whose upload wrote nothing else"
        );
        let reasons = |name: &str| -> String {
            revisions[&stock(name).tarball_name()]["reasons"].to_string()
        };
        // Published is final: a tarball without its package link is a
        // published revision to complete, and a dist link to a dependency
        // that is gone (an age-based clean-up) is only a warning.
        assert_eq!(
            state(&stock("nopkglink").tarball_name()),
            "published-incomplete"
        );
        assert!(reasons("nopkglink").contains("tarball without package link"));
        let dangling = &revisions[&stock("dangling").tarball_name()];
        assert_eq!(dangling["state"], "complete", "{kind}: {dangling}");
        assert!(
            dangling["warnings"]
                .to_string()
                .contains("dist link to a missing tarball")
                && dangling["warnings"].to_string().contains("ghost-v1-1"),
            "{kind}: {dangling}"
        );
        let alldist = &revisions[&stock("alldist").tarball_name()];
        assert_eq!(alldist["state"], "unpublished", "{kind}: {alldist}");
        assert_eq!(alldist["recent"], false, "{kind}");
        assert!(reasons("alldist").contains("package link without tarball"));
        assert!(reasons("alldist").contains("stays reserved"), "{kind}");
        for (name, needle) in [
            ("linkonly", "package link without tarball"),
            ("somedist", "dist link missing in dist-runtime"),
            ("badbody", "is not a link to this revision's store tarball"),
        ] {
            let r = &revisions[&stock(name).tarball_name()];
            assert_eq!(r["state"], "partial", "{kind} {name}");
            assert_eq!(r["recent"], true, "{kind} {name}: just written");
            assert_eq!(r["package"], name, "{kind}");
            assert!(
                reasons(name).contains(needle),
                "{kind} {name}: {}",
                reasons(name)
            );
        }
        assert!(!reasons("alldist").contains("dist link missing"), "{kind}");
        assert_eq!(
            revisions.len(),
            5 + 6 + 1,
            "{kind}: {}",
            report["revisions"]
        );
        assert_eq!(report["summary"]["partial"], 3);
        assert_eq!(report["summary"]["unpublished"], 1);
        assert_eq!(report["summary"]["published_incomplete"], 1);
        // dangling's ghost, and pkg3's dist link to pkg2, killed unpublished.
        assert_eq!(report["summary"]["warnings"], 2);
        let journals: BTreeSet<String> = report["journals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                format!(
                    "{} {}",
                    j["id"].as_str().unwrap(),
                    j["lease"].as_str().unwrap()
                )
            })
            .collect();
        let id = |i: usize| Journal::id_of(&wd.pkgs[i].revision());
        assert_eq!(
            journals,
            BTreeSet::from([
                format!("{} live", id(2)),
                format!("{} owner-dead", id(3)),
                format!("{} owner-dead", id(4))
            ]),
            "{kind}"
        );
        // Only --package's revisions.
        let one = json(&alitx(&check_args(&store, &["--package", "linkonly"])));
        assert_eq!(
            one["revisions"].as_array().unwrap().len(),
            1,
            "{kind}: {one}"
        );

        // Stale uploads: the orphan, the live journal's, which repair
        // leaves to its journal, and the two abandoned journals' (staged
        // with the first look: pkg4's too, killed after its intent).
        let stale = json(&alitx(&check_args(&store, &["--stale-uploads-after", "0"])));
        let uploads: BTreeMap<String, Value> = stale["stale_uploads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["upload_id"].as_str().unwrap().to_string(),
                    u["journal"].clone(),
                )
            })
            .collect();
        assert_eq!(uploads.len(), 4, "{kind}: {stale}");
        assert_eq!(uploads[&orphan.0], Value::Null);

        // repair --dry-run lists exactly the leftovers and changes nothing.
        let before = rt.block_on(store.snapshot());
        let uploads_before = rt.block_on(store.pending_uploads());
        let repair = ["--min-age", "0", "--stale-uploads-after", "0"];
        let mut dry = repair.to_vec();
        dry.push("--dry-run");
        let out = alitx(&repair_args(&store, &dry));
        assert_exit(&out, 0);
        let planned = json(&out);
        let mut expected: BTreeSet<String> = leftovers.values().flatten().cloned().collect();
        let abandoned: Vec<String> = before
            .keys()
            .filter(|k| wd.pkgs[3].revision().owns_key(k))
            .cloned()
            .collect();
        assert!(
            !abandoned.is_empty(),
            "{kind}: the killed upload wrote links"
        );
        expected.extend(abandoned.iter().cloned());
        for i in [3, 4] {
            expected.insert(Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[i].revision()));
        }
        let would: BTreeSet<String> = strings(&planned["would_delete"]).into_iter().collect();
        assert_eq!(would, expected, "{kind}");
        assert_eq!(
            strings(&planned["would_delete"]).len(),
            would.len(),
            "{kind}: a key listed twice"
        );
        for action in planned["actions"].as_array().unwrap() {
            let keys = strings(&action["keys"]);
            let tarball_at = keys.iter().position(|k| k.contains("/store/"));
            assert!(
                tarball_at.is_none_or(|i| i == 0),
                "{kind}: tarball first: {keys:?}"
            );
        }
        assert_eq!(planned["would_abort_uploads"].as_array().unwrap().len(), 1);
        assert_eq!(
            planned["would_abort_uploads"][0]["upload_id"],
            orphan.0.as_str()
        );
        assert_eq!(
            rt.block_on(store.snapshot()),
            before,
            "{kind}: dry run changed the store"
        );
        assert_eq!(rt.block_on(store.pending_uploads()), uploads_before);
        let human = alitx(&store.cmd("repair", &dry));
        assert_exit(&human, 0);
        let text = String::from_utf8_lossy(&human.stdout);
        assert!(text.contains("dry run: nothing changed"), "{kind}: {text}");
        for key in &expected {
            assert!(
                text.contains(&format!("would delete {key}\n")),
                "{kind}: {key}"
            );
        }

        // repair: exactly those keys go, in an order that keeps readers
        // consistent; everything else stays byte for byte.
        let out = alitx(&repair_args(&store, &repair));
        assert_exit(&out, 0);
        let done = json(&out);
        let deleted: BTreeSet<String> = strings(&done["deleted"]).into_iter().collect();
        assert_eq!(deleted, expected, "{kind}");
        let restored = stock("nopkglink").package_link();
        assert_eq!(
            strings(&done["restored"]),
            std::slice::from_ref(&restored.key),
            "{kind}"
        );
        let after = rt.block_on(store.snapshot());
        let mut left = before.clone();
        left.retain(|k, _| !expected.contains(k));
        assert!(left.contains_key(&stock("alldist").package_link().key));
        left.insert(restored.key.clone(), restored.body.clone().into_bytes());
        assert_eq!(after, left, "{kind}");
        for key in &foreign {
            assert_eq!(
                after.get(key).map(|b| &b[..]),
                Some(&b"not ours"[..]),
                "{kind} {key}"
            );
        }
        assert!(after.contains_key(&Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[2].revision())));
        // The orphan and the abandoned journal's uploads are gone, the live one's stays.
        assert_eq!(rt.block_on(store.pending_uploads()), 1, "{kind}");

        // A second check is clean: only the live upload remains.
        let out = alitx(&check_args(&store, &["--stale-uploads-after", "0"]));
        assert_exit(&out, 0);
        let again = json(&out);
        assert_eq!(again["clean"], true);
        assert_eq!(again["summary"]["in_flight"], 1);
        assert_eq!(again["summary"]["partial"], 0);
    });
}

#[test]
fn repair_leaves_recent_partial_revisions_alone_and_says_how_to_override() {
    let rt = runtime();
    each_backend(|kind, store| {
        // A stock upload writing its dist links.
        rt.block_on(seed(
            &store,
            &Seed {
                revision: stock("running"),
                tarball: false,
                package_link: true,
                dist_dirs: &["dist", "dist-direct"],
                deps: vec![],
            },
        ));
        let before = rt.block_on(store.snapshot());
        // The dry run says exactly what the real run does, with its exit
        // code, and what --min-age 0 would add: every key of the revision.
        for dry_run in [true, false] {
            let mut repair = store.cmd("repair", &[]);
            if dry_run {
                repair.push("--dry-run".into());
            }
            let out = alitx(&repair);
            assert_exit(&out, 5);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("left-alone"), "{kind}: {text}");
            assert!(
                text.contains(&format!(
                    "with --min-age 0 it would also delete {} keys of 1 partial revision younger than --min-age:\n",
                    before.len()
                )),
                "{kind}: {text}"
            );
            for key in before.keys() {
                assert!(
                    text.contains(&format!("  {key}\n")),
                    "{kind}: {key}: {text}"
                );
            }
            assert!(text.contains("0 keys and 0 staged uploads would go") == dry_run);
            assert_eq!(rt.block_on(store.snapshot()), before, "{kind}");
        }
        let out = alitx(&store.cmd("repair", &["--dry-run", "--min-age", "0"]));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "{} keys and 0 staged uploads would go",
                before.len()
            )),
            "{kind}: {text}"
        );
        let check = alitx(&store.cmd("check", &[]));
        assert_exit(&check, 5);
        assert!(String::from_utf8_lossy(&check.stdout).contains("partial (recent)"));
    });
}

#[test]
fn bad_input_is_refused_clearly_and_an_empty_store_is_clean() {
    let rt = runtime();
    each_backend(|kind, store| {
        // Empty store: nothing to check or repair.
        for command in ["check", "repair"] {
            let out = alitx(&store.cmd(command, &[]));
            assert_exit(&out, 0);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("nothing to check"),
                "{kind} {command}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let out = alitx(&store.cmd("check", &["--architecture", ARCH]));
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains("no architectures"),
            "{kind}: {}",
            stderr(&out)
        );

        // Unknown architecture: refused, naming the ones present.
        let wd = WorkDir::chain(1, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let before = rt.block_on(store.snapshot());
        for command in ["check", "repair"] {
            let out = alitx(&store.cmd(
                command,
                &["--architecture", "slc7_x86-64", "--min-age", "0"],
            ));
            assert_exit(&out, 1);
            let err = stderr(&out);
            assert!(
                err.contains("unknown architecture \"slc7_x86-64\""),
                "{kind}: {err}"
            );
            assert!(err.contains(ARCH), "{kind}: {err}");
        }
        let out = alitx(&store.cmd("check", &["--min-age", "5x"]));
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("not a duration"),
            "{kind}: {}",
            stderr(&out)
        );
        // A package the store does not hold: said so, nothing to repair.
        for command in ["check", "repair"] {
            let out = alitx(&store.cmd(command, &["--package", "nosuch"]));
            assert_exit(&out, 0);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("package nosuch is absent from "),
                "{kind} {command}: {text}"
            );
        }
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}");
        let clean = alitx(&store.cmd("check", &[]));
        assert_exit(&clean, 0);
        let text = String::from_utf8_lossy(&clean.stdout);
        assert!(text.contains("1 revision: 1 complete"), "{kind}: {text}");
        assert!(!text.contains("is absent"), "{kind}: {text}");
    });
}

#[test]
fn a_published_revision_whose_dependency_was_cleaned_up_is_kept_and_only_unpublish_removes_it() {
    let rt = runtime();
    each_backend(|kind, store| {
        // pkg1 depends on pkg0; an age-based clean-up removes pkg0 whole.
        let wd = WorkDir::chain(2, 0);
        for i in 0..2 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let pkg0 = wd.pkgs[0].revision();
        rt.block_on(async {
            let backend = store.open().await;
            for key in wd.expected([0]).keys() {
                backend.delete(key).await.unwrap();
            }
        });
        let published = rt.block_on(store.snapshot());
        assert!(published.contains_key(&wd.pkgs[1].revision().store_key()));

        let out = alitx(&check_args(&store, &[]));
        assert_exit(&out, 0);
        let report = json(&out);
        let pkg1 = &by_tarball(&report)[&wd.pkgs[1].revision().tarball_name()];
        assert_eq!(pkg1["state"], "complete", "{kind}: {pkg1}");
        assert!(
            pkg1["warnings"].to_string().contains(&pkg0.tarball_name()),
            "{kind}: {pkg1}"
        );
        let out = alitx(&repair_args(&store, &["--min-age", "0"]));
        assert_exit(&out, 0);
        assert_eq!(
            rt.block_on(store.snapshot()),
            published,
            "{kind}: repair deleted part of a published revision"
        );

        // --unpublish needs all three names, lists every key in a dry run,
        // then removes exactly that revision, tarball and record included.
        let out = alitx(&store.cmd("repair", &["--package", "pkg1", "--unpublish"]));
        assert_exit(&out, 2);
        let pkg1_rev = wd.pkgs[1].revision();
        let unpublish =
            |extra: &[&str]| alitx(&repair_args(&store, &unpublish_flags(&pkg1_rev, extra)));
        let dry = unpublish(&["--dry-run"]);
        assert_exit(&dry, 0);
        let would: BTreeSet<String> = strings(&json(&dry)["would_delete"]).into_iter().collect();
        let mut expected: BTreeSet<String> = wd.expected([1]).into_keys().collect();
        expected.insert(alitx::record::key_of(&pkg1_rev));
        assert_eq!(would, expected, "{kind}");
        assert_eq!(rt.block_on(store.snapshot()), published, "{kind}: dry run");
        let first = strings(&json(&dry)["would_delete"])[0].clone();
        assert_eq!(
            first,
            pkg1_rev.store_key(),
            "{kind}: the tarball goes first"
        );
        assert_exit(&unpublish(&[]), 0);
        assert!(
            rt.block_on(store.snapshot())
                .keys()
                .all(|k| !expected.contains(k)),
            "{kind}"
        );
        let again = unpublish(&[]);
        assert_exit(&again, 1);
        assert!(stderr(&again).contains("nothing to unpublish"), "{kind}");
    });
}

#[test]
fn repair_of_one_package_leaves_the_staged_upload_of_a_package_with_a_longer_name_alone() {
    let rt = runtime();
    each_backend(|kind, store| {
        // `Python` and `Python-modules`: the second's killed upload is
        // abandoned, its staged upload stale.
        let wd = WorkDir::named(&["Python", "Python-modules"]);
        let mut staged = wd.upload_args(1, &store);
        write_tarball(&wd.tarball_path(1), &wd.pkgs[1].revision(), 12 << 20);
        staged.extend(["--part-size".into(), "5".into()]);
        alitx_killed_at(&staged, "after-links");
        rt.block_on(fake_live_owner(&store, &wd.pkgs[1].revision()));
        assert_eq!(rt.block_on(store.pending_uploads()), 1);
        let out = alitx(&repair_args(
            &store,
            &[
                "--package",
                "Python",
                "--min-age",
                "0",
                "--stale-uploads-after",
                "0",
            ],
        ));
        let report = json(&out);
        assert_eq!(
            report["aborted_uploads"].as_array().map(Vec::len),
            Some(0),
            "{kind}: {report}"
        );
        assert_eq!(rt.block_on(store.pending_uploads()), 1, "{kind}");
    });
}

/// Issue 25, failure 6: a revision of the older layout (package link and
/// `dist/` links only, from before aliBuild wrote `dist-direct` and
/// `dist-runtime`) whose tarball a clean-up retired is listed in
/// `TARS/<arch>/<pkg>.manifest`: evidence that it was published. check
/// calls it `unpublished` and repair keeps every key of it, while the same
/// leftovers of a revision the manifest does not list go.
#[test]
fn a_revision_listed_in_its_manifest_survives_bulk_repair() {
    let rt = runtime();
    each_backend(|kind, store| {
        let listed = stock("oldlayout");
        let mut unlisted = listed.clone();
        unlisted.revision = "2".into();
        let mut kept = Vec::new();
        for revision in [&listed, &unlisted] {
            let keys = rt.block_on(seed(
                &store,
                &Seed {
                    revision: revision.clone(),
                    tarball: false,
                    package_link: true,
                    dist_dirs: &["dist"],
                    deps: vec![stock("zlib")],
                },
            ));
            if revision == &listed {
                kept = keys;
            }
        }
        let manifest = format!("TARS/{ARCH}/{}.manifest", listed.package);
        let line = format!(
            "{}\t{}\n",
            listed.tarball_name(),
            listed.package_link().body
        );
        rt.block_on(store.put_foreign(&manifest, line.as_bytes()));

        let out = alitx(&repair_args(&store, &["--min-age", "0"]));
        let report = json(&out);
        let revisions = by_tarball(&report["check"]);
        assert_eq!(
            revisions[&listed.tarball_name()]["state"],
            "unpublished",
            "{kind}: {report:#}"
        );
        assert_eq!(
            revisions[&unlisted.tarball_name()]["state"],
            "partial",
            "{kind}"
        );
        let mut expected: BTreeSet<String> = kept.into_iter().collect();
        expected.insert(manifest);
        let left: BTreeSet<String> = rt.block_on(store.keys()).into_iter().collect();
        assert_eq!(left, expected, "{kind}: {}", stderr(&out));
        assert_exit(&out, 0);
    });
}

/// A revision whose publication record names its tarball, with the
/// tarball and a dist link gone (an `--unpublish` stopped half-way, then a
/// late bookkeeping write put the record back; or a clean-up): check calls
/// it `unpublished`, naming the record, as every deleter judges it, and
/// bulk repair keeps every key; a finished `--unpublish` removes it.
/// Before, check called it `partial` and repair left it over (exit 5).
#[test]
fn a_revision_whose_record_names_its_removed_tarball_is_unpublished_not_partial() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let rev = wd.pkgs[0].revision();
        let dist_link = wd
            .expected([0])
            .into_keys()
            .find(|key| key.contains("/dist/"))
            .unwrap();
        rt.block_on(async {
            let backend = store.open().await;
            backend.delete(&rev.store_key()).await.unwrap();
            backend.delete(&dist_link).await.unwrap();
        });
        let left = rt.block_on(store.snapshot());

        let out = alitx(&check_args(&store, &["--min-age", "0"]));
        assert_exit(&out, 0);
        let report = json(&out);
        let found = &by_tarball(&report)[&rev.tarball_name()];
        assert_eq!(found["state"], "unpublished", "{kind}: {found}");
        let record = alitx::record::key_of(&rev);
        assert!(
            found["reasons"].to_string().contains(&record),
            "{kind}: {found}"
        );
        let out = alitx(&repair_args(&store, &["--min-age", "0"]));
        assert_exit(&out, 0);
        assert_eq!(
            rt.block_on(store.snapshot()),
            left,
            "{kind}: repair deleted"
        );

        let out = alitx(&repair_args(&store, &unpublish_flags(&rev, &[])));
        assert_exit(&out, 0);
        assert_eq!(rt.block_on(store.keys()), Vec::<String>::new(), "{kind}");
        assert!(rt.block_on(store.records()).is_empty(), "{kind}");
    });
}

/// `repair --unpublish` deletes holding the revision's journal key: a
/// journal that appears after its scan (an upload of the revision
/// starting) makes it delete nothing and exit 4.
#[test]
fn unpublish_deletes_nothing_of_a_revision_a_journal_took_since_the_scan() {
    use std::process::{Command, Stdio};
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 1 << 10);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let rev = wd.pkgs[0].revision();
        let unpublish = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(store.cmd("repair", &unpublish_flags(&rev, &["--architecture", ARCH])))
            .env("ALITX_FAILPOINT", "repair-scanned:stop")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while process_state(unpublish.id()) != Some('T') {
            assert!(process_state(unpublish.id()).is_some(), "{kind}: it ended");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let identity = alitx::workdir::FileIdentity {
            size: 1,
            mtime_ns: 1,
        };
        let journal = Journal::new(
            "racer".into(),
            &rev,
            identity,
            &[rev.package_link()],
            8 << 20,
            std::time::Duration::from_secs(600),
        );
        rt.block_on(async {
            let key = Journal::key_of(DEFAULT_PREFIX, &rev);
            let backend = store.open().await;
            let metadata = journal.journal_metadata();
            backend
                .put(
                    &key,
                    journal.to_bytes(),
                    &metadata,
                    alitx::storage::PutMode::Create,
                )
                .await
                .unwrap();
        });
        let before = rt.block_on(store.snapshot());
        // SAFETY: signals our own child.
        unsafe { libc::kill(unpublish.id() as libc::pid_t, libc::SIGCONT) };
        let out = unpublish.wait_with_output().unwrap();
        assert_exit(&out, 4);
        assert!(
            stderr(&out).contains("is covered by the journal"),
            "{kind}: {}",
            stderr(&out)
        );
        assert_eq!(
            rt.block_on(store.snapshot()),
            before,
            "{kind}: nothing deleted"
        );
    });
}

/// `repair --dry-run` prints the plan, step and keys for each revision,
/// and changes nothing; the real run then does exactly what it printed.
#[test]
fn a_dry_run_prints_the_plan_that_repair_then_carries_out() {
    let rt = runtime();
    each_backend(|kind, store| {
        // A partial revision, a published one lacking its dist-runtime
        // link, and an upload killed after its links, its owner dead.
        let partial = rt.block_on(seed(
            &store,
            &Seed {
                revision: stock("halfway"),
                tarball: false,
                package_link: true,
                dist_dirs: &["dist", "dist-direct"],
                deps: vec![],
            },
        ));
        let published = stock("nodistruntime");
        rt.block_on(seed(
            &store,
            &Seed {
                revision: published.clone(),
                tarball: true,
                package_link: true,
                dist_dirs: &["dist", "dist-direct"],
                deps: vec![],
            },
        ));
        let missing = published
            .dist_link("dist-runtime", &published.store_key())
            .unwrap();
        let wd = WorkDir::chain(1, 0);
        alitx_killed_at(&wd.upload_args(0, &store), "after-links");
        let killed = wd.pkgs[0].revision();
        let journal = Journal::key_of(DEFAULT_PREFIX, &killed);
        let before = rt.block_on(store.snapshot());
        // Rolled back in order: dist links, package link, journal.
        let mut rolled_back: Vec<String> = DIST_DIRS
            .iter()
            .flat_map(|dir| {
                before
                    .keys()
                    .filter(|k| k.starts_with(&killed.dist_prefix(dir)))
            })
            .cloned()
            .collect();
        assert!(
            !rolled_back.is_empty(),
            "{kind}: the killed upload wrote links"
        );
        rolled_back.extend([killed.package_link().key, journal.clone()]);
        assert!(rolled_back.iter().all(|k| before.contains_key(k)), "{kind}");

        let out = alitx(&store.cmd("repair", &["--min-age", "0", "--dry-run"]));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Each step, on the line of its revision, then its keys.
        let step = |name: &str, revision: &Revision, keys: &[String], verb: &str| {
            let line = format!("{name}  {ARCH}/{}: ", revision.tarball_name());
            let at = text
                .find(&line)
                .unwrap_or_else(|| panic!("{kind}: {line}: {text}"));
            let listed: Vec<&str> = text[at..]
                .lines()
                .skip(1)
                .map_while(|l| l.strip_prefix(&format!("  {verb} ")))
                .collect();
            assert_eq!(listed, keys, "{kind}: {name}: {text}");
        };
        step("would-delete", &stock("halfway"), &partial, "would delete");
        step(
            "would-restore",
            &published,
            std::slice::from_ref(&missing.key),
            "would restore",
        );
        step("would-roll-back", &killed, &rolled_back, "would delete");
        assert!(
            text.contains(&format!("as `alitx rollback {}`", Journal::id_of(&killed))),
            "{kind}: {text}"
        );
        let keys = partial.len() + rolled_back.len();
        assert!(
            text.ends_with(&format!(
                "{keys} keys and 0 staged uploads would go; dry run: nothing changed\n"
            )),
            "{kind}: {text}"
        );
        assert_eq!(
            rt.block_on(store.snapshot()),
            before,
            "{kind}: dry run changed the store"
        );

        // The real run: what the plan said, in its words, and nothing else.
        let out = alitx(&store.cmd("repair", &["--min-age", "0"]));
        assert_exit(&out, 0);
        let done = String::from_utf8_lossy(&out.stdout).into_owned();
        for key in partial.iter().chain(&rolled_back) {
            assert!(
                done.contains(&format!("  deleted {key}\n")),
                "{kind}: {key}: {done}"
            );
        }
        assert!(
            done.contains(&format!("  restored {}\n", missing.key)),
            "{kind}: {done}"
        );
        let mut expected = before.clone();
        expected.retain(|k, _| !partial.contains(k) && !rolled_back.contains(k));
        expected.insert(missing.key.clone(), missing.body.clone().into_bytes());
        assert_eq!(rt.block_on(store.snapshot()), expected, "{kind}");
    });
}
