//! States of the real alibuild-repo that `check`, `repair` and `verify` must
//! judge right, on the local-directory store and on Ceph RGW: a retired
//! revision (every link, no tarball) is kept and only `--unpublish` naming
//! it removes it; `--unpublish` refuses while other revisions depend on the
//! revision; link bodies are read one way; a repair failing half-way says
//! what it deleted; journal prefixes and store names that would destroy
//! data are refused.

use std::collections::BTreeSet;

use crate::common::proxy::{Fault, Faults, Match, Proxy, Rule};
use crate::common::*;
use alitx::layout::{Revision, DIST_DIRS};
use alitx::storage::{Metadata, PutMode};
use serde_json::Value;

/// Seed a revision as a stock upload writes it: its links to itself and
/// `deps` in each of `dirs`, its package link if `package_link`, its
/// tarball if `tarball`; return every key written, in that order.
async fn seed_stock(
    store: &TestStore,
    r: &Revision,
    deps: &[Revision],
    dirs: &[&str],
    package_link: bool,
    tarball: bool,
) -> Vec<String> {
    let backend = store.open().await;
    let none = Metadata::new();
    let mut keys = Vec::new();
    for dir in dirs {
        for dep in deps.iter().chain([r]) {
            let link = r.dist_link(dir, &dep.store_key()).unwrap();
            backend.put_link_if_absent(&link, &none).await.unwrap();
            keys.push(link.key);
        }
    }
    if package_link {
        backend
            .put_link_if_absent(&r.package_link(), &none)
            .await
            .unwrap();
        keys.push(r.package_link().key);
    }
    if tarball {
        store.put_foreign(&r.store_key(), b"stock tarball").await;
        keys.push(r.store_key());
    }
    keys
}

fn stock(name: &str) -> Revision {
    Revision::new(ARCH, name, "v1", "1", &hash_of(name)).unwrap()
}

fn run(store: &TestStore, command: &[&str]) -> std::process::Output {
    alitx(&store.cmd(command[0], &command[1..]))
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn unpublish_args<'a>(r: &'a Revision, extra: &[&'a str]) -> Vec<&'a str> {
    [vec!["repair"], unpublish_flags(r, extra)].concat()
}

/// ALICE's clean-up deletes an old revision's tarball and keeps its links
/// so that its number stays reserved: `check` calls it `unpublished` (exit
/// 0), bulk `repair` at any --min-age, with or without --package, keeps
/// every key; `repair --unpublish` naming it removes exactly its keys.
#[test]
fn a_retired_revision_is_kept_and_only_unpublish_naming_it_removes_it() {
    let rt = runtime();
    each_backend(|kind, store| {
        let dep = stock("zlibr");
        let old = stock("oldr");
        rt.block_on(seed_stock(&store, &dep, &[], &DIST_DIRS, true, true));
        let old_keys = rt.block_on(seed_stock(
            &store,
            &old,
            std::slice::from_ref(&dep),
            &DIST_DIRS,
            true,
            true,
        ));
        rt.block_on(async { store.open().await.delete(&old.store_key()).await.unwrap() });
        let old_keys: BTreeSet<String> = old_keys
            .into_iter()
            .filter(|k| *k != old.store_key())
            .collect();
        let before = rt.block_on(store.snapshot());

        let out = run(&store, &["check", "--json"]);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["clean"], true, "{kind}: {report}");
        assert_eq!(report["summary"]["unpublished"], 1, "{kind}");
        assert_eq!(report["summary"]["partial"], 0, "{kind}");
        let revision = report["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tarball"] == old.tarball_name().as_str())
            .unwrap()
            .clone();
        assert_eq!(revision["state"], "unpublished", "{kind}: {revision}");
        assert_eq!(revision["repairable"], false, "{kind}");
        assert_eq!(revision["hash"], old.hash.as_str(), "{kind}");
        assert_eq!(strings(&revision["keys"]), old_keys, "{kind}");
        let reasons = revision["reasons"].to_string();
        for needle in [
            "package link without tarball",
            "revision number stays reserved",
            "a rebuild of the same hash completes it",
        ] {
            assert!(reasons.contains(needle), "{kind}: {reasons}");
        }
        let text = run(&store, &["check"]);
        assert_exit(&text, 0);
        let text = String::from_utf8_lossy(&text.stdout).to_string();
        assert!(
            text.contains(&format!("unpublished  {ARCH}/{}", old.tarball_name())),
            "{kind}: {text}"
        );
        assert!(text.contains("1 unpublished"), "{kind}: {text}");

        // Bulk repair keeps it, whatever --min-age and --package say.
        for extra in [
            &["--min-age", "0"][..],
            &["--min-age", "0", "--package", "oldr"][..],
            &["--min-age", "0", "--dry-run"][..],
            &[][..],
        ] {
            let mut command = vec!["repair", "--json"];
            command.extend(extra);
            let out = run(&store, &command);
            assert_exit(&out, 0);
            let done = json(&out);
            let field = match extra.contains(&"--dry-run") {
                true => "would_delete",
                false => "deleted",
            };
            assert_eq!(done[field], Value::Array(vec![]), "{kind} {extra:?}");
            assert_eq!(rt.block_on(store.snapshot()), before, "{kind} {extra:?}");
        }
        let text = run(&store, &["repair", "--min-age", "0"]);
        assert!(
            String::from_utf8_lossy(&text.stdout)
                .contains(&format!("kept  {ARCH}/{}", old.tarball_name())),
            "{kind}: {}",
            String::from_utf8_lossy(&text.stdout)
        );

        // Named exactly, it goes: the dry run lists exactly its keys.
        let out = run(&store, &unpublish_args(&old, &["--dry-run", "--json"]));
        assert_exit(&out, 0);
        assert_eq!(strings(&json(&out)["would_delete"]), old_keys, "{kind}");
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}: dry run");
        let out = run(&store, &unpublish_args(&old, &[]));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("TARS/{ARCH}/oldr.manifest is left alone")),
            "{kind}: {text}"
        );
        let mut left = before.clone();
        left.retain(|k, _| !old_keys.contains(k));
        assert_eq!(rt.block_on(store.snapshot()), left, "{kind}");
    });
}

/// `--unpublish` of a revision whose tarball other revisions' dist links
/// name is refused with exit 3, listing them, and deletes nothing (dry run
/// included); `--ignore-dependents` removes it anyway.
#[test]
fn unpublish_refuses_while_other_revisions_depend_on_it() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(3, 0);
        for i in 0..3 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let base = wd.pkgs[0].revision();
        let before = rt.block_on(store.snapshot());
        for extra in [&[][..], &["--dry-run"][..]] {
            let out = run(&store, &unpublish_args(&base, extra));
            assert_exit(&out, 3);
            let err = stderr(&out);
            assert!(err.contains("refusing to unpublish"), "{kind}: {err}");
            assert!(err.contains("2 other revisions"), "{kind}: {err}");
            for i in 1..3 {
                let id = format!("{ARCH}/{}", wd.pkgs[i].revision().full_version());
                assert!(err.contains(&id), "{kind}: {id}: {err}");
            }
            assert!(err.contains("--ignore-dependents"), "{kind}: {err}");
            assert_eq!(rt.block_on(store.snapshot()), before, "{kind} {extra:?}");
        }
        // The last of the chain has no dependents: it goes.
        let top = wd.pkgs[2].revision();
        let out = run(&store, &unpublish_args(&top, &["--json"]));
        assert_exit(&out, 0);
        let mut gone: BTreeSet<String> = wd.expected([2]).into_keys().collect();
        gone.insert(alitx::record::key_of(&top));
        assert_eq!(strings(&json(&out)["deleted"]), gone, "{kind}");

        let out = run(
            &store,
            &unpublish_args(&base, &["--ignore-dependents", "--json"]),
        );
        assert_exit(&out, 0);
        let mut gone: BTreeSet<String> = wd.expected([0]).into_keys().collect();
        gone.insert(alitx::record::key_of(&base));
        assert_eq!(strings(&json(&out)["deleted"]), gone, "{kind}");
        let after = rt.block_on(store.snapshot());
        assert!(after.keys().all(|k| !gone.contains(k)), "{kind}");
        assert!(after.contains_key(&wd.pkgs[1].revision().store_key()));
    });
}

/// aliBuild's readers strip a trailing line end (`\n`, `\r\n`) from a
/// package link body and accept a leading `../../`, `./` or `/`: `check`
/// and `verify` read such a body alike (the revision is complete and
/// verified, no `--unpublish`).
#[test]
fn check_and_verify_read_package_link_bodies_as_alibuild_does() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(5, 0);
        for i in 0..5 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let body = |i: usize| wd.pkgs[i].revision().package_link().body;
        let bodies = [
            format!("{}\n", body(0)),
            format!("../../{}", body(1)),
            format!("{}\r\n", body(2)),
            format!("./{}", body(3)),
            format!("/{}", body(4)),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let key = wd.pkgs[i].revision().package_link().key;
            rt.block_on(async {
                store.open().await.delete(&key).await.unwrap();
                store.put_foreign(&key, body.as_bytes()).await;
            });
        }
        let out = run(&store, &["check", "--json"]);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["summary"]["complete"], 5, "{kind}: {report}");
        let out = run(&store, &["verify", "--json"]);
        assert_exit(&out, 0);
        let report = json(&out);
        assert_eq!(report["summary"]["verified"], 5, "{kind}: {report}");
        let out = run(&store, &["verify"]);
        assert_exit(&out, 0);
        assert!(!String::from_utf8_lossy(&out.stdout).contains("--unpublish"));
    });
}

/// `verify` recommends `--unpublish` only for a revision whose tarball
/// fails; a revision with an intact tarball and a bad record is told which
/// key to delete, one with bad links how to repair them.
#[test]
fn verify_recommends_unpublish_only_when_the_tarball_fails() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(4, 0);
        for i in 0..4 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let rev = |i: usize| wd.pkgs[i].revision();
        let garbage = alitx::record::key_of(&rev(0));
        let mut wrong = rt.block_on(store.records())[&alitx::record::key_of(&rev(1))].clone();
        wrong.sha256 = "ab".repeat(32);
        rt.block_on(async {
            let backend = store.open().await;
            backend
                .put(
                    &garbage,
                    "{\"format\": 1}".into(),
                    &Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
            backend
                .put(
                    &alitx::record::key_of(&rev(1)),
                    wrong.to_bytes(),
                    &Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
            let own = rev(2)
                .dist_link("dist-direct", &rev(2).store_key())
                .unwrap();
            backend.delete(&own.key).await.unwrap();
        });
        let mut flipped = std::fs::read(wd.tarball_path(3)).unwrap();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        rt.block_on(store.put_foreign(&rev(3).store_key(), &flipped));

        let out = run(&store, &["verify"]);
        assert_exit(&out, 6);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let remove = |i: usize| {
            format!(
                "--package {} --version {} --revision 1 --unpublish",
                wd.pkgs[i].name, wd.pkgs[i].version
            )
        };
        assert!(text.contains(&remove(3)), "{kind}: {text}");
        for i in 0..3 {
            assert!(!text.contains(&remove(i)), "{kind} {i}: {text}");
        }
        for i in 0..2 {
            let id = format!("{ARCH}/{}", rev(i).full_version());
            let key = alitx::record::key_of(&rev(i));
            assert!(
                text.contains(&format!(
                    "{id}: its tarball is intact, its publication record {key} is not"
                )),
                "{kind} {i}: {text}"
            );
        }
        let id = format!("{ARCH}/{}", rev(2).full_version());
        assert!(
            text.contains(&format!("{id}: its tarball is intact, its links are not")),
            "{kind}: {text}"
        );
    });
}

/// A revision whose hash `check` cannot tell (no package link, two store
/// tarballs of its name) is repaired through the rule all the same: its
/// own dist links name a tarball that exists, so none of its keys goes.
#[test]
fn a_revision_whose_hash_check_cannot_tell_loses_nothing_while_its_tarball_exists() {
    let rt = runtime();
    each_backend(|kind, store| {
        let dep = stock("depx");
        rt.block_on(seed_stock(&store, &dep, &[], &DIST_DIRS, true, true));
        let twice = stock("twice");
        let other = alitx::layout::store_key(ARCH, &hash_of("other"), &twice.tarball_name());
        rt.block_on(seed_stock(
            &store,
            &twice,
            std::slice::from_ref(&dep),
            &DIST_DIRS,
            false,
            true,
        ));
        rt.block_on(store.put_foreign(&other, b"another writer's"));
        let before = rt.block_on(store.snapshot());
        let out = run(&store, &["check", "--json"]);
        let report = json(&out);
        let partial: Vec<&Value> = report["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "partial")
            .collect();
        assert_eq!(partial.len(), 1, "{kind}: {report}");
        assert_eq!(partial[0]["hash"], Value::Null, "{kind}: {report}");

        let out = run(&store, &["repair", "--min-age", "0", "--json"]);
        assert_exit(&out, 5);
        let done = json(&out);
        let left_alone: Vec<&Value> = done["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "left-alone")
            .collect();
        assert_eq!(left_alone.len(), 1, "{kind}: {done}");
        // Either tarball of its name stops it: the one its dist links name,
        // or the other, whose package link the same repair re-created.
        let message = left_alone[0]["message"].as_str().unwrap();
        assert!(
            [twice.store_key(), other.clone()]
                .iter()
                .any(|key| message.contains(&format!("{key} exists"))),
            "{kind}: {done}"
        );
        assert_eq!(done["deleted"], Value::Array(vec![]), "{kind}: {done}");
        let after = rt.block_on(store.snapshot());
        for (key, body) in &before {
            assert_eq!(after.get(key), Some(body), "{kind}: {key}");
        }
    });
}

/// A repair or an unpublish that fails half-way (the store refuses every
/// DELETE of a key under `TARS/` after the first) reports the key it
/// deleted, in JSON and text.
#[test]
fn a_repair_failing_half_way_reports_what_it_deleted() {
    if !backends().contains(&"s3") {
        return;
    }
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let partial = stock("halfway");
    let keys = rt.block_on(seed_stock(
        &store,
        &partial,
        &[],
        &["dist", "dist-direct"],
        true,
        false,
    ));
    let retired = stock("retiredhalf");
    rt.block_on(seed_stock(&store, &retired, &[], &DIST_DIRS, true, false));
    for (command, first) in [
        (
            vec!["repair", "--min-age", "0", "--package", "halfway"],
            keys[0].clone(),
        ),
        (
            unpublish_args(&retired, &[]),
            retired.dist_link("dist", &retired.store_key()).unwrap().key,
        ),
    ] {
        // A store that refuses every DELETE under TARS/ after the first
        // (the deleter's journal, its lock, is still retired).
        let through_faulty_store = |extra: &[&str]| {
            let proxy = Proxy::start(Faults::only(Rule::from_nth(
                2,
                Match::method("DELETE").path_contains("/TARS/"),
                Fault::SlowDown,
            )));
            let url = proxy.url();
            let mut all = command.clone();
            all.extend(["--endpoint-url", &url]);
            all.extend(extra);
            run(&store, &all)
        };
        let out = through_faulty_store(&["--json"]);
        assert_exit(&out, 1);
        let report = json(&out);
        assert_eq!(report["actions"][0]["action"], "failed", "{report}");
        assert_eq!(
            report["actions"][0]["keys"],
            serde_json::json!([first]),
            "{report}"
        );
        assert_eq!(report["deleted"], serde_json::json!([first]), "{report}");
        // Run again, it deletes the next key first: the text says so.
        let out = through_faulty_store(&[]);
        assert_exit(&out, 1);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("failed  "), "{text}");
        assert!(text.contains("  deleted TARS/"), "{text}");
    }
}

/// A journal prefix over the publication records or TARS/ is a usage error
/// (exit 2) for every command that takes one, and nothing is written.
#[test]
fn journal_prefixes_over_records_or_packages_are_refused() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 0);
        let before = rt.block_on(store.snapshot());
        for prefix in [
            ".alitx/published/",
            ".alitx/",
            ".alitx/published/x/",
            "TARS/j/",
        ] {
            let commands: Vec<Vec<String>> = vec![
                wd.upload_args(0, &store),
                store.cmd("journals", &[]),
                store.cmd("resume", &[]),
                store.cmd("rollback", &["a/b-c-1"]),
                store.cmd("check", &[]),
                store.cmd("repair", &[]),
                store.cmd("verify", &[]),
            ];
            for mut command in commands {
                command.extend(args(&["--journal-prefix", prefix]));
                let out = alitx(&command);
                assert_exit(&out, 2);
                assert!(
                    stderr(&out).contains(&format!("{prefix:?} overlaps")),
                    "{kind} {command:?}: {}",
                    stderr(&out)
                );
            }
        }
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}");
    });
}

/// `--remote-store alibuild-repo` (the scheme forgotten) never starts a new
/// local store: the upload fails, naming the S3 spellings; a new store is
/// started for a file:// URL only.
#[test]
fn a_bare_name_never_starts_a_local_store() {
    let wd = WorkDir::chain(1, 0);
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_alitx"))
        .args(wd.upload_args_to(0, "alibuild-repo"))
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("b3://alibuild-repo or s3://alibuild-repo"),
        "{err}"
    );
    assert!(err.contains("file://"), "{err}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "{err}");

    let new = cwd.path().join("store");
    let out = alitx(&wd.upload_args_to(0, &format!("file://{}", new.display())));
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("started a new local store"),
        "{}",
        stderr(&out)
    );
    assert!(new.join(wd.pkgs[0].revision().store_key()).is_file());
}

/// A revision published by alitx, then retired by ALICE's clean-up (its
/// tarball deleted, its links and publication record kept), meets a stale
/// copy of the journal of the very transaction that published it (a
/// journal read back is a claim, not evidence). `resume --force` must not
/// take the missing tarball for an upload that never finished: the record
/// names this transaction's tarball, so every link stays and only the
/// journal goes. Found by the simulator with the clean-up among its
/// actors: before, the resume rolled back and deleted every link of the
/// retired revision.
#[test]
fn a_stale_journal_of_a_retired_revision_deletes_none_of_its_links() {
    let rt = runtime();
    let wd = WorkDir::chain(1, 1 << 20);
    let rev = wd.pkgs[0].revision();
    let id = alitx::journal::Journal::id_of(&rev);
    let journal_key = alitx::journal::Journal::key_of(alitx::journal::DEFAULT_PREFIX, &rev);
    each_backend(|kind, store| {
        alitx_killed_at(&wd.upload_args(0, &store), "after-links");
        let backend = rt.block_on(store.open());
        let stale = rt.block_on(backend.get(&journal_key)).unwrap().unwrap();
        assert_exit(&alitx(&wd.resume_args(&store, &["--force", &id])), 0);
        assert_exact(&store, &wd, &[0], kind);
        rt.block_on(backend.delete(&rev.store_key())).unwrap();
        let retired = rt.block_on(store.snapshot());
        let meta = Metadata::new();
        rt.block_on(backend.put(&journal_key, stale, &meta, PutMode::Create))
            .unwrap();

        let out = alitx(&store.cmd("resume", &["--json", "--force", &id]));
        assert_exit(&out, 0);
        assert_eq!(
            rt.block_on(store.snapshot()),
            retired,
            "{kind}: {}",
            stderr(&out)
        );
        assert_eq!(rt.block_on(store.records()).len(), 1, "{kind}: the record");
        assert!(
            rt.block_on(backend.head(&journal_key)).unwrap().is_none(),
            "{kind}"
        );
        let check = alitx(&store.cmd("check", &["--json"]));
        assert_exit(&check, 0);
        assert_eq!(json(&check)["summary"]["unpublished"], 1, "{kind}");
    });
}

/// Found by the simulator (seed 43038): `--unpublish` of a retired
/// revision met a stock upload of the same hash publishing it again after
/// the unpublish had looked, and deleted every link under the new tarball.
/// Its links go under the deletion rule, as every deleter's: the tarball
/// that appears stops it (links it deleted before are put back from its
/// journal), and it says so (exit 1, action `failed`).
#[test]
fn unpublish_stops_and_puts_back_its_links_when_the_revision_is_published_again() {
    let rt = runtime();
    let r = stock("again");
    each_backend(|kind, store| {
        rt.block_on(seed_stock(&store, &r, &[], &DIST_DIRS, true, true));
        let published = rt.block_on(store.snapshot());
        let args = store.cmd("repair", &unpublish_flags(&r, &["--json"]));
        let unpublish = std::process::Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(&args)
            .env("ALITX_FAILPOINT", "after-first-deletes:stop")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_stopped(&unpublish, kind);
        assert!(
            !rt.block_on(store.keys()).contains(&r.store_key()),
            "{kind}"
        );
        // A stock upload of the same hash: its links are there, the tarball goes last.
        rt.block_on(store.put_foreign(&r.store_key(), b"stock tarball"));
        thaw(&unpublish);
        let out = unpublish.wait_with_output().unwrap();
        assert_exit(&out, 1);
        let action = &json(&out)["actions"][0];
        assert_eq!(action["action"], "failed", "{kind}: {action}");
        let message = action["message"].as_str().unwrap();
        assert!(
            message.contains("appeared while this removed"),
            "{kind}: {message}"
        );
        assert_eq!(rt.block_on(store.snapshot()), published, "{kind}");
        assert_eq!(
            list_journals(&store.spec()),
            serde_json::json!([]),
            "{kind}"
        );
    });
}

/// A stock upload takes no lock: one stalled past `--min-age` after its
/// links sees repair remove them as a partial revision's, then puts its
/// tarball over nothing. The store alone tells the revision's own links,
/// not its dependency links; repair kept every link it removed, with its
/// body, in a removal record, and a later repair puts them all back and
/// forgets the record. Found by the simulator once the stock uploader
/// could stall as long as any process (before, the model assumed it never
/// stalled that long).
#[test]
fn links_repair_removed_come_back_when_a_stalled_stock_upload_publishes() {
    let rt = runtime();
    let r = stock("stalled");
    let deps = [stock("depa"), stock("depb")];
    each_backend(|kind, store| {
        // Stalled before its last dist directory: a partial revision.
        let keys = rt.block_on(seed_stock(&store, &r, &deps, &DIST_DIRS[..2], true, false));
        assert_eq!(keys.len(), 7, "{kind}");
        let removed = rt.block_on(store.snapshot());
        let out = run(&store, &["repair", "--min-age", "0", "--json"]);
        assert_exit(&out, 0);
        assert_eq!(
            strings(&json(&out)["deleted"]),
            keys.iter().cloned().collect()
        );
        assert_eq!(rt.block_on(removal_records(&store)).len(), 1, "{kind}");

        // The stalled upload wakes: its last dist links, then its tarball.
        let rest = rt.block_on(seed_stock(&store, &r, &deps, &DIST_DIRS[2..], false, true));
        let published = rt.block_on(store.snapshot());
        let out = run(&store, &["repair", "--min-age", "0", "--dry-run", "--json"]);
        assert_exit(&out, 0);
        assert_eq!(
            strings(&json(&out)["would_restore"]),
            keys.iter().cloned().collect()
        );
        let out = run(&store, &["repair", "--min-age", "0", "--json"]);
        assert_exit(&out, 0);
        assert_eq!(
            strings(&json(&out)["restored"]),
            keys.iter().cloned().collect()
        );
        let mut every_link = published.clone();
        every_link.extend(removed.clone());
        assert_eq!(every_link.len(), 11, "{kind}: {rest:?}");
        assert_eq!(rt.block_on(store.snapshot()), every_link, "{kind}");
        assert!(
            rt.block_on(removal_records(&store)).is_empty(),
            "{kind}: the record stays"
        );
        let out = run(&store, &["check", "--json"]);
        assert_exit(&out, 0);
    });
}

async fn removal_records(store: &TestStore) -> Vec<String> {
    let backend = store.open().await;
    backend.list(alitx::removed::PREFIX).await.unwrap()
}
