//! Recovery end to end: uploads killed with SIGKILL at every step boundary
//! and mid-bulk, then healed by `resume`, `rollback` or re-running the
//! upload; concurrent writers; foreign objects; untrusted journals.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use crate::common::*;
use alitx::journal::Journal;
use alitx::storage::PutMode;

/// Every point where the crash matrix kills the upload of a tarball of
/// several parts.
pub(crate) const CRASH_POINTS: [&str; 9] = [
    "after-intent",
    "before-publish",
    "bulk-part-1",
    "bulk-part-3",
    "after-claim",
    "after-links",
    "after-bulk",
    "after-publish",
    "after-commit-mark",
];

/// Every point where it kills the upload of a tarball that fits in one
/// part, read and verified whole before the intent and staged as one part.
const ONE_PART_CRASH_POINTS: [&str; 7] = [
    "after-intent",
    "after-claim",
    "part-sent-1",
    "after-links",
    "before-publish",
    "after-publish",
    "after-commit-mark",
];

const PART_MIB: &str = "5";

fn journal_id(wd: &WorkDir, i: usize) -> String {
    Journal::id_of(&wd.pkgs[i].revision())
}

fn upload_args(wd: &WorkDir, i: usize, store: &TestStore) -> Vec<String> {
    let mut args = wd.upload_args(i, store);
    args.extend([
        "--part-size".into(),
        PART_MIB.into(),
        "--concurrency".into(),
        "2".into(),
    ]);
    args
}

/// Upload package `i` with a failpoint armed; assert it died by SIGKILL.
fn killed_upload(wd: &WorkDir, i: usize, store: &TestStore, point: &str) {
    alitx_killed_at(&upload_args(wd, i, store), point);
}

/// What readers must never see: a store tarball without all its links.
fn assert_no_partial_tarball(
    rt: &tokio::runtime::Runtime,
    store: &TestStore,
    wd: &WorkDir,
    i: usize,
    what: &str,
) {
    let snapshot = rt.block_on(store.snapshot());
    let expected = wd.expected([i]);
    if snapshot.contains_key(&wd.pkgs[i].revision().store_key()) {
        for (key, body) in &expected {
            assert_eq!(
                snapshot.get(key),
                Some(body),
                "{what}: tarball visible but {key} is not right"
            );
        }
    }
}

fn assert_clean(
    rt: &tokio::runtime::Runtime,
    store: &TestStore,
    wd: &WorkDir,
    published: std::ops::Range<usize>,
    what: &str,
) {
    assert_eq!(
        rt.block_on(store.snapshot()),
        wd.expected(published),
        "{what}"
    );
    assert_eq!(
        rt.block_on(store.pending_uploads()),
        0,
        "{what}: staged upload left"
    );
}

#[test]
fn crash_matrix_every_point_heals_by_resume_rollback_or_rerun() {
    crash_matrix(12 << 20, &CRASH_POINTS);
}

#[test]
fn crash_matrix_of_a_one_part_tarball_heals_the_same_way() {
    crash_matrix(0, &ONE_PART_CRASH_POINTS);
}

/// Kill the upload of package 1 (with `payload` extra tarball bytes) at
/// each point, heal it each way, and check the store is exact.
fn crash_matrix(payload: u64, points: &[&str]) {
    let rt = runtime();
    let mut cases = 0;
    for kind in backends() {
        for &point in points {
            for heal in ["resume", "resume-without-work-dir", "rollback", "rerun"] {
                let what = format!("{kind} {point} {heal}");
                let store = rt.block_on(TestStore::new(kind));
                let wd = WorkDir::chain(2, payload);
                assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
                killed_upload(&wd, 1, &store, point);
                assert_no_partial_tarball(rt, &store, &wd, 1, &what);

                // The journal is there, and `journals` shows it.
                let listed = list_journals(&store.spec());
                assert_eq!(listed.as_array().unwrap().len(), 1, "{what}: {listed}");
                assert_eq!(listed[0]["id"], journal_id(&wd, 1));
                assert_eq!(listed[0]["package"], "pkg1");
                assert_eq!(listed[0]["lease"], "owner-dead");
                let state = if point == "after-commit-mark" {
                    "committed"
                } else {
                    "pending"
                };
                assert_eq!(listed[0]["state"], state, "{what}");

                let out = match heal {
                    "resume" => alitx(&wd.resume_args(&store, &["--architecture", ARCH])),
                    // An operator on another machine, or a cron job.
                    "resume-without-work-dir" => alitx(&store.cmd("resume", &[])),
                    "rollback" => alitx(&store.cmd("rollback", &[&journal_id(&wd, 1)])),
                    _ => alitx(&upload_args(&wd, 1, &store)),
                };
                assert_exit(&out, 0);
                // Published is final: once the tarball exists, rollback and
                // a resume without the files finish the transaction instead
                // of undoing it.
                let published = matches!(point, "after-publish" | "after-commit-mark");
                let undone = matches!(heal, "rollback" | "resume-without-work-dir") && !published;
                if published && heal == "rollback" {
                    let said = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
                    assert!(said.contains("published and stays"), "{what}: {said}");
                }
                let published = if undone { 0..1 } else { 0..2 };
                assert_clean(rt, &store, &wd, published, &what);
                if !undone {
                    let tarball =
                        rt.block_on(store.snapshot())[&wd.pkgs[1].revision().store_key()].clone();
                    assert_eq!(
                        tarball,
                        std::fs::read(wd.tarball_path(1)).unwrap(),
                        "{what}: tarball bytes"
                    );
                }
                cases += 1;
            }
        }
    }
    eprintln!("crash matrix: {cases} cases");
    assert_eq!(cases, points.len() * 4 * backends().len());
}

#[test]
fn recovery_is_idempotent_when_itself_killed() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 12 << 20);
        assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
        killed_upload(&wd, 1, &store, "after-links");
        // The resume dies too, mid-bulk; a second resume finishes the job.
        let resume = wd.resume_args(&store, &[]);
        let out = alitx_env(&resume, &[("ALITX_FAILPOINT", "bulk-part-2")]);
        assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
        assert_exit(&alitx(&resume), 0);
        assert_clean(rt, &store, &wd, 0..2, kind);
        // Resuming or rolling back with nothing to do is fine.
        let out = alitx(&resume);
        assert_exit(&out, 0);
        assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to resume"));
    });
}

#[test]
fn resume_after_a_kill_mid_tarball_sends_only_the_missing_parts() {
    let rt = runtime();
    let part = 8u64 << 20;
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 256 << 20);
        let mut upload = wd.upload_args(0, &store);
        upload.extend(["--part-size".into(), "8".into()]);
        let out = alitx_env(&upload, &[("ALITX_FAILPOINT", "bulk-part-17")]);
        assert_eq!(out.status.signal(), Some(9));

        let held: u64 = rt.block_on(async {
            let backend = store.open().await;
            let uploads = backend.list_uploads("TARS/").await.unwrap();
            assert_eq!(uploads.len(), 1);
            let parts = backend
                .list_parts(&uploads[0].key, &uploads[0].upload_id)
                .await
                .unwrap()
                .expect("the staged upload exists");
            parts.iter().map(|p| p.size).sum()
        });
        let total = std::fs::metadata(wd.tarball_path(0)).unwrap().len();
        assert!(
            // The reader was at part 17: at most 8 parts in flight and 1
            // queued were lost.
            held >= 7 * part,
            "{kind}: only {held} bytes were staged before the kill"
        );

        let resumed = std::time::Instant::now();
        let out = alitx(&wd.resume_args(&store, &["--json"]));
        let took = resumed.elapsed().as_secs_f64();
        assert_exit(&out, 0);
        let outcomes = json(&out);
        assert_eq!(outcomes[0]["action"], "rolled-forward");
        // The roll forward's own duration (it read and sent megabytes),
        // within the whole command's.
        let duration = outcomes[0]["report"]["duration_seconds"].as_f64().unwrap();
        assert!(
            (0.05..=took).contains(&duration),
            "{kind}: reported {duration} s of a {took} s resume"
        );
        let sent = outcomes[0]["report"]["bytes_sent"].as_u64().unwrap();
        let missing = total - held;
        eprintln!("{kind}: tarball {total} B, staged before kill {held} B, resume sent {sent} B (missing {missing} B)");
        assert!(
            sent <= missing + part,
            "{kind}: resume sent {sent} B for {missing} B missing"
        );
        assert!(outcomes[0]["report"]["parts_reused"].as_u64().unwrap() >= 7);
        assert_clean(rt, &store, &wd, 0..1, kind);
    });
}

#[test]
fn eight_concurrent_uploads_of_one_revision_commit_exactly_once() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 48 << 20);
        let mut upload = wd.upload_args(0, &store);
        upload.push("--json".into());
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_alitx"))
                    .args(&upload)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let committed = outs.iter().filter(|o| o.status.code() == Some(0)).count();
        assert_eq!(committed, 1, "{kind}: {committed} uploads succeeded");
        for out in &outs {
            match out.status.code() {
                Some(0) => assert_eq!(json(out)["status"], "committed"),
                Some(3) | Some(4) => {
                    let err = stderr(out);
                    assert!(err.contains("pkg0-v0.0-1"), "{kind}: unclear message {err}");
                }
                other => panic!("{kind}: exit {other:?}: {}", stderr(out)),
            }
        }
        assert_clean(rt, &store, &wd, 0..1, kind);
    });
}

#[test]
fn foreign_objects_survive_rollback_and_resume() {
    let rt = runtime();
    for kind in backends() {
        for heal in ["rollback", "resume"] {
            let store = rt.block_on(TestStore::new(kind));
            let wd = WorkDir::chain(2, 12 << 20);
            assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
            killed_upload(&wd, 1, &store, "after-links");
            // Someone else's object, byte-identical, replaces one of our links.
            let rev = wd.pkgs[1].revision();
            let key = format!(
                "{}{}",
                rev.dist_prefix("dist"),
                wd.pkgs[0].revision().tarball_name()
            );
            let body = wd.expected([1])[&key].clone();
            rt.block_on(async {
                store.open().await.delete(&key).await.unwrap();
                store.put_foreign(&key, &body).await;
            });
            let out = match heal {
                "rollback" => alitx(&store.cmd("rollback", &[&journal_id(&wd, 1)])),
                _ => alitx(&wd.resume_args(&store, &[])),
            };
            assert_exit(&out, 0);
            let snapshot = rt.block_on(store.snapshot());
            assert_eq!(
                snapshot.get(&key),
                Some(&body),
                "{kind} {heal}: the foreign object was deleted"
            );
            let meta = rt.block_on(async {
                store
                    .open()
                    .await
                    .head(&key)
                    .await
                    .unwrap()
                    .unwrap()
                    .metadata
            });
            assert!(
                !meta.contains_key("alitx-txn"),
                "{kind} {heal}: the foreign object was replaced"
            );
            if heal == "rollback" {
                let mut expected = wd.expected([0]);
                expected.insert(key.clone(), body.clone());
                assert_eq!(
                    snapshot, expected,
                    "{kind}: rollback left more than the foreign object"
                );
            } else {
                assert_eq!(snapshot, wd.expected(0..2), "{kind}: resume");
            }
        }
    }
}

#[test]
fn a_tarball_changed_since_the_journal_is_rolled_back_not_published() {
    let rt = runtime();
    for kind in backends() {
        // `part-sent-1`: part 1, where the byte changes, is surely staged.
        for (point, keep_mtime) in [
            ("bulk-part-3", false),
            ("part-sent-1", true),
            ("after-bulk", false),
        ] {
            let store = rt.block_on(TestStore::new(kind));
            let wd = WorkDir::chain(2, 12 << 20);
            assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
            killed_upload(&wd, 1, &store, point);
            // A rebuild wrote a different tarball of the same size; with
            // `keep-mtime`, even its modification time was preserved, so
            // only the bytes of an already staged part tell.
            let path = wd.tarball_path(1);
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[1 << 20] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
            if keep_mtime {
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(mtime)
                    .unwrap();
            }
            let out = alitx(&wd.resume_args(&store, &["--json"]));
            assert_exit(&out, 0);
            let what = format!("{kind} {point} keep-mtime={keep_mtime}");
            assert_eq!(json(&out)[0]["action"], "rolled-back", "{what}");
            assert_clean(rt, &store, &wd, 0..1, &what);
        }
    }
}

#[test]
fn live_journals_are_refused_without_force() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 12 << 20);
        assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
        killed_upload(&wd, 1, &store, "after-links");
        // Pretend the owner runs on another host with a fresh lease.
        rt.block_on(fake_live_owner(&store, &wd.pkgs[1].revision()));
        let before = rt.block_on(store.snapshot());
        let id = journal_id(&wd, 1);
        let rollback = alitx(&store.cmd("rollback", &[&id]));
        assert_exit(&rollback, 4);
        assert!(
            stderr(&rollback).contains("build-node-17"),
            "{}",
            stderr(&rollback)
        );
        let resume = alitx(&store.cmd("resume", &[&id]));
        assert_exit(&resume, 4);
        assert_exit(&alitx(&upload_args(&wd, 1, &store)), 4);
        // Without ids, resume skips running uploads quietly.
        let all = alitx(&store.cmd("resume", &[]));
        assert_exit(&all, 0);
        assert!(String::from_utf8_lossy(&all.stdout).contains("skipped"));
        assert_eq!(
            rt.block_on(store.snapshot()),
            before,
            "{kind}: a refused command changed the store"
        );
        assert_exit(&alitx(&store.cmd("rollback", &["--force", &id])), 0);
        assert_clean(rt, &store, &wd, 0..1, kind);
    });
}

#[test]
fn untrusted_journals_are_refused_and_foreign_keys_survive() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        killed_upload(&wd, 1, &store, "after-intent");
        let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &wd.pkgs[1].revision());
        let real = rt.block_on(async { store.open().await.get(&key).await.unwrap().unwrap() });
        let id = journal_id(&wd, 1);

        // A forged journal that names pkg0's published dist link as its own.
        let victim = format!(
            "{}{}",
            wd.pkgs[0].revision().dist_prefix("dist"),
            wd.pkgs[0].revision().tarball_name()
        );
        let mut forged: serde_json::Value = serde_json::from_slice(&real).unwrap();
        forged["links"][1]["key"] = victim.clone().into();
        let mut newer: serde_json::Value = serde_json::from_slice(&real).unwrap();
        newer["format"] = 99.into();
        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "forged",
                serde_json::to_vec(&forged).unwrap(),
                "is not a link of",
            ),
            (
                "not json",
                b"{\"format\": 1, \"txn\": ".to_vec(),
                "not valid JSON",
            ),
            (
                "unknown format",
                serde_json::to_vec(&newer).unwrap(),
                "unknown format version 99",
            ),
        ];
        for (what, bytes, needle) in cases {
            rt.block_on(store.put_foreign(&key, &bytes));
            let before = rt.block_on(store.snapshot());
            for command in [
                store.cmd("rollback", &["--force", &id]),
                store.cmd("resume", &["--force", &id]),
                store.cmd("resume", &["--force"]),
            ] {
                let out = alitx(&command);
                assert_exit(&out, 1);
                assert!(
                    stderr(&out).contains(needle),
                    "{kind} {what}: {}",
                    stderr(&out)
                );
                assert_eq!(
                    rt.block_on(store.snapshot()),
                    before,
                    "{kind} {what}: the store changed"
                );
            }
            let listed = json(&alitx(&store.cmd("journals", &["--json"])));
            assert_eq!(listed[0]["state"], "invalid", "{kind} {what}");
            assert!(before.contains_key(&victim));
        }
        let out = alitx(&store.cmd("rollback", &[&format!("{ARCH}/nope-v1-1")]));
        assert_exit(&out, 1);
        assert!(stderr(&out).contains("no journal"), "{}", stderr(&out));
    });
}

#[test]
fn rerunning_after_a_rebuild_with_another_hash_undoes_the_old_and_publishes_the_new() {
    let rt = runtime();
    each_backend(|kind, store| {
        let mut wd = WorkDir::chain(2, 12 << 20);
        assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
        killed_upload(&wd, 1, &store, "after-links");
        let old = wd.pkgs[1].revision();

        // The next nightly rebuilt pkg1 with another hash, same revision number.
        std::fs::remove_dir_all(
            wd.path()
                .join(format!("TARS/{ARCH}/store/{}", &old.hash[..2])),
        )
        .unwrap();
        for dist in alitx::layout::DIST_DIRS {
            std::fs::remove_dir_all(wd.path().join(old.dist_prefix(dist))).unwrap();
        }
        wd.pkgs[1].hash = hash_of("pkg1-rebuilt");
        wd.write_package(1, 1 << 20);

        let mut rerun = upload_args(&wd, 1, &store);
        rerun.push("--json".into());
        let out = alitx(&rerun);
        assert_exit(&out, 0);
        assert_eq!(json(&out)["status"], "committed");
        assert_clean(rt, &store, &wd, 0..2, kind);
        assert!(!rt.block_on(store.keys()).contains(&old.store_key()));
    });
}

#[test]
fn a_running_upload_renews_its_lease_and_resume_leaves_it_alone() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 256 << 20);
        let mut upload = wd.upload_args(0, &store);
        // A 3 s lease, renewed every second: short, yet with room for a
        // renewal delayed by a loaded machine.
        upload.extend(args(&[
            "--lease-seconds",
            "3",
            "--concurrency",
            "1",
            "--part-size",
            "5",
        ]));
        let mut child = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(&upload)
            .spawn()
            .unwrap();
        let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &wd.pkgs[0].revision());
        let backend = rt.block_on(store.open());
        let mut renewals = 0;
        while child.try_wait().unwrap().is_none() {
            if let Some(bytes) = rt.block_on(backend.get(&key)).unwrap() {
                let journal: Journal = serde_json::from_slice(&bytes).unwrap();
                if child.try_wait().unwrap().is_none() {
                    // Renewed every third of its length: never lapsed by
                    // more than a second (timestamps are whole seconds).
                    assert!(
                        journal.lease_expires_at >= alitx::now_secs() - 1,
                        "{kind}: lease lapsed while uploading"
                    );
                }
                renewals = renewals.max(journal.renewals);
                // A resume meanwhile must not touch the running upload.
                let resume = alitx(&store.cmd("resume", &[]));
                assert_exit(&resume, 0);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(child.wait().unwrap().success());
        assert!(renewals >= 1, "{kind}: the lease was never renewed");
        assert_clean(rt, &store, &wd, 0..1, kind);
    });
}

/// A running upload whose journal another process retires (as a rollback
/// does) stops before its commit point, says so, and never brings the
/// journal back; one whose journal is taken over (`resume --force`) stops
/// too, and the new owner publishes the revision.
#[test]
fn an_upload_that_loses_its_journal_stops_before_publishing_and_never_recreates_it() {
    let rt = runtime();
    for kind in backends() {
        for taken_over in [false, true] {
            let what = format!("{kind}, taken over: {taken_over}");
            let store = rt.block_on(TestStore::new(kind));
            let wd = WorkDir::chain(1, 128 << 20);
            let mut upload = wd.upload_args(0, &store);
            upload.extend(args(&[
                "--lease-seconds",
                "3",
                "--concurrency",
                "1",
                "--part-size",
                "5",
            ]));
            let child = Command::new(env!("CARGO_BIN_EXE_alitx"))
                .args(&upload)
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &wd.pkgs[0].revision());
            let backend = rt.block_on(store.open());
            while rt.block_on(backend.get(&key)).unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let resume = if taken_over {
                let force = wd.resume_args(&store, &["--force", &journal_id(&wd, 0)]);
                Some(std::thread::spawn(move || alitx(&force)))
            } else {
                rt.block_on(backend.delete(&key)).unwrap();
                None
            };
            let out = child.wait_with_output().unwrap();
            let err = stderr(&out);
            // Taken over, it stops (4), or finds that its new owner already
            // published the revision (0).
            match (taken_over, out.status.code()) {
                // On a loaded machine the upload may also have published
                // before the takeover: then the resume found nothing to do.
                (true, Some(0)) => {
                    let said = String::from_utf8_lossy(&out.stdout);
                    assert!(said.contains("published"), "{what}: {said}");
                }
                (true, _) => {
                    assert_exit(&out, 4);
                    assert!(err.contains("taken over"), "{what}: {err}");
                }
                // Retired after its tarball was published (the commit
                // point), it has nothing left to do.
                (false, Some(0)) => assert!(
                    rt.block_on(backend.head(&wd.pkgs[0].revision().store_key()))
                        .unwrap()
                        .is_some(),
                    "{what}: exit 0 without publishing"
                ),
                (false, _) => {
                    assert_exit(&out, 4);
                    assert!(err.contains("retired"), "{what}: {err}");
                    assert!(
                        rt.block_on(backend.head(&wd.pkgs[0].revision().store_key()))
                            .unwrap()
                            .is_none(),
                        "{what}: published without its journal"
                    );
                }
            }
            if let Some(resume) = resume {
                assert_exit(&resume.join().unwrap(), 0);
                assert_clean(rt, &store, &wd, 0..1, &what);
            } else {
                std::thread::sleep(std::time::Duration::from_secs(2));
                assert!(
                    rt.block_on(backend.get(&key)).unwrap().is_none(),
                    "{what}: the journal came back"
                );
            }
        }
    }
}

/// Put back, under the prefix, a journal of `wd`'s published package `i`
/// with its transaction id but another hash (its links' checksums
/// recomputed, its owner gone), as a buggy tool could.
fn forge_journal_under_another_hash(store: &TestStore, wd: &WorkDir, i: usize) {
    use sha2::Digest;
    let rt = runtime();
    let rev = wd.pkgs[i].revision();
    let txn = rt.block_on(async {
        let info = store.open().await.head(&rev.store_key()).await.unwrap();
        info.unwrap().metadata[alitx::journal::TXN_METADATA].clone()
    });
    let local = alitx::workdir::read_revision(wd.path(), rev.clone()).unwrap();
    let genuine = Journal::new(
        txn,
        &rev,
        local.tarball,
        &local.links,
        8 << 20,
        std::time::Duration::from_secs(60),
    );
    let other = hash_of("forged");
    let text = String::from_utf8(genuine.to_bytes().to_vec())
        .unwrap()
        .replace(
            &format!("{}/{}", &rev.hash[..2], rev.hash),
            &format!("{}/{other}", &other[..2]),
        )
        .replace(&rev.hash, &other);
    let mut forged: Journal = serde_json::from_str(&text).unwrap();
    assert_ne!(forged.tarball.key, rev.store_key());
    for link in &mut forged.links {
        link.body_sha256 = hex::encode(sha2::Sha256::digest(link.link.body.as_bytes()));
    }
    forged.owner.host = "build-node-gone".into();
    forged.lease_expires_at = alitx::now_secs() - 60;
    let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &rev);
    rt.block_on(async {
        let backend = store.open().await;
        let metadata = forged.journal_metadata();
        backend
            .put(&key, forged.to_bytes(), &metadata, PutMode::Overwrite)
            .await
            .unwrap();
    });
}

/// A forged journal of a published revision under another hash: `resume`
/// deletes nothing of the published revision, since its package link names
/// a tarball that exists, and retires the journal; the original upload,
/// run again, finds the revision published.
#[test]
fn a_forged_journal_of_a_published_revision_under_another_hash_deletes_nothing() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 1 << 10);
        for i in 0..2 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let published = rt.block_on(store.snapshot());
        forge_journal_under_another_hash(&store, &wd, 1);

        let out = alitx(&store.cmd("resume", &[]));
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains(
                "none of this transaction's links that its readers may need were deleted"
            ),
            "{kind}: {}",
            stderr(&out)
        );
        assert_eq!(
            rt.block_on(store.snapshot()),
            published,
            "{kind}: the published revision must stay whole, the forged journal retired"
        );

        let again = alitx(&wd.upload_args(1, &store));
        assert_exit(&again, 0);
        assert_exact(&store, &wd, &[0, 1], kind);
    });
}

/// Issue 25, 3b: the same forged journal, while the published revision
/// lacks its package link (what a lost race leaves): its own dist links
/// still name its published tarball, so `resume` deletes none of its
/// links, dependency links included.
#[test]
fn a_forged_journal_deletes_nothing_of_a_published_revision_without_its_package_link() {
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(2, 1 << 10);
        for i in 0..2 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        let package_link = wd.pkgs[1].revision().package_link().key;
        rt.block_on(async { store.open().await.delete(&package_link).await.unwrap() });
        let published = rt.block_on(store.snapshot());
        forge_journal_under_another_hash(&store, &wd, 1);

        let out = alitx(&store.cmd("resume", &[]));
        assert_exit(&out, 3);
        assert_eq!(
            rt.block_on(store.snapshot()),
            published,
            "{kind}: every remaining link of the published revision must stay, the forged journal retired: {}",
            stderr(&out)
        );
    });
}

/// `resume` calls a journal rolled back only when it was: a conflict whose
/// aftermath cannot be judged (the store fails every HEAD of the tarball
/// from then on) keeps the journal and the links and says so; resumed
/// once the store answers, the transaction is undone.
#[test]
fn resume_reports_rolled_back_only_when_it_undid_the_transaction() {
    use crate::common::proxy::{Fault, Faults, Match, Proxy, Rule};
    for kind in backends().into_iter().filter(|kind| *kind == "s3") {
        let rt = runtime();
        let store = rt.block_on(TestStore::new(kind));
        let wd = WorkDir::chain(2, 1 << 10);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        killed_upload(&wd, 1, &store, "after-claim");
        let rev = wd.pkgs[1].revision();
        let foreign = format!(
            "{}{}",
            rev.dist_prefix("dist-runtime"),
            wd.pkgs[0].revision().tarball_name()
        );
        let foreign_body = alitx::layout::store_key(
            ARCH,
            &hash_of("elsewhere"),
            &wd.pkgs[0].revision().tarball_name(),
        );
        rt.block_on(store.put_foreign(&foreign, foreign_body.as_bytes()));
        let before = rt.block_on(store.snapshot());
        assert!(before.contains_key(&rev.package_link().key));

        let proxy = Proxy::start(Faults::only(Rule::from_nth(
            2,
            Match::method("HEAD")
                .path_contains("/store/")
                .path_ends_with(&rev.tarball_name()),
            Fault::SlowDown,
        )));
        let mut resume = wd.resume_args(&store, &[]);
        resume.extend(args(&["--endpoint-url", &proxy.url()]));
        let out = alitx(&resume);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(0), "{text}{}", stderr(&out));
        assert!(!text.contains("rolled-back"), "{text}");
        assert!(
            stderr(&out).contains("keeps what was sent"),
            "{}",
            stderr(&out)
        );
        assert!(proxy.counts().injected() >= 1, "{:?}", proxy.counts());
        // Nothing undone: every key as it was (the journal, rewritten by the
        // takeover, kept), beside the links the roll forward wrote before
        // the conflict, all of them the revision's own.
        let journal = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &rev);
        let after = rt.block_on(store.snapshot());
        assert!(after.contains_key(&journal), "the journal is kept");
        for (key, body) in before.iter().filter(|(key, _)| **key != journal) {
            assert_eq!(after.get(key), Some(body), "{key} changed");
        }
        for key in after.keys().filter(|key| !before.contains_key(*key)) {
            assert!(rev.owns_key(key), "{key} is not the revision's");
        }

        let out = alitx(&wd.resume_args(&store, &[]));
        assert_exit(&out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rolled-back"), "{text}");
        let mut expected = wd.expected([0]);
        expected.insert(foreign.clone(), foreign_body.into_bytes());
        assert_eq!(rt.block_on(store.snapshot()), expected, "undone");
        assert!(list_journals(&store.spec()).as_array().unwrap().is_empty());
    }
}

/// A committed journal read back is a claim, not evidence. One whose
/// tarball size and SHA-256 are not those of the published tarball (stale,
/// or forged) leaves the revision's good record alone; one written for a
/// stock-published revision (its tarball carries no transaction of alitx)
/// leaves no record. `resume` retires each with a warning, and `verify`
/// finds both tarballs intact.
#[test]
fn a_committed_journal_the_store_contradicts_writes_no_record() {
    use sha2::Digest;
    let rt = runtime();
    each_backend(|kind, store| {
        let wd = WorkDir::chain(3, 1 << 10);
        for i in 0..2 {
            assert_exit(&alitx(&wd.upload_args(i, &store)), 0);
        }
        // Package 2 as stock aliBuild publishes it: no alitx metadata.
        let stock = wd.pkgs[2].revision();
        rt.block_on(async {
            let backend = store.open().await;
            let local = alitx::workdir::read_revision(wd.path(), stock.clone()).unwrap();
            for link in &local.links {
                backend
                    .put_link_if_absent(link, &Default::default())
                    .await
                    .unwrap();
            }
            let tarball = std::fs::read(wd.tarball_path(2)).unwrap();
            store.put_foreign(&stock.store_key(), &tarball).await;
        });
        let published = rt.block_on(store.snapshot());
        let records = rt.block_on(store.records());
        assert_eq!(records.len(), 2, "{kind}");

        let committed_journal = |i: usize, txn: String, sha256: String, size: u64| {
            let rev = wd.pkgs[i].revision();
            let local = alitx::workdir::read_revision(wd.path(), rev.clone()).unwrap();
            let mut journal = Journal::new(
                txn,
                &rev,
                local.tarball,
                &local.links,
                8 << 20,
                std::time::Duration::from_secs(60),
            );
            journal.state = alitx::journal::State::Committed;
            journal.tarball.sha256 = Some(sha256);
            journal.tarball.size = size;
            journal.owner.host = "build-node-gone".into();
            journal.lease_expires_at = alitx::now_secs() - 60;
            rt.block_on(async {
                let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &rev);
                let metadata = journal.journal_metadata();
                let backend = store.open().await;
                backend
                    .put(&key, journal.to_bytes(), &metadata, PutMode::Overwrite)
                    .await
                    .unwrap();
            });
        };
        // Package 1's own transaction, but other bytes than it published.
        let txn = rt.block_on(async {
            let info = store
                .open()
                .await
                .head(&wd.pkgs[1].revision().store_key())
                .await;
            info.unwrap().unwrap().metadata[alitx::journal::TXN_METADATA].clone()
        });
        let size = std::fs::metadata(wd.tarball_path(1)).unwrap().len();
        committed_journal(1, txn, "0b".repeat(32), size + 1);
        // Package 2's exact bytes, under a transaction that never wrote it.
        let tarball = std::fs::read(wd.tarball_path(2)).unwrap();
        let sha256 = hex::encode(sha2::Sha256::digest(&tarball));
        committed_journal(2, "forged01".into(), sha256, tarball.len() as u64);

        let out = alitx(&store.cmd("resume", &[]));
        assert_exit(&out, 0);
        let err = stderr(&out);
        assert_eq!(
            err.matches("no publication record written").count(),
            2,
            "{kind}: {err}"
        );
        assert!(!err.contains("replacing it"), "{kind}: {err}");
        assert_eq!(rt.block_on(store.snapshot()), published, "{kind}");
        assert_eq!(rt.block_on(store.records()), records, "{kind}");
        assert!(list_journals(&store.spec()).as_array().unwrap().is_empty());
        assert_exit(&alitx(&store.cmd("verify", &[])), 0);
    });
}
