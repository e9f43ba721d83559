//! Issue 25, failure 2: an upload frozen (SIGSTOP, by the failpoint's
//! `:stop`) with its publication about to go out, its journal taken over
//! by `rollback --force` or `resume --force` (with or without the work
//! dir's files), then thawed, before the taker ends or after. A takeover
//! aborts the owner's staged upload before it deletes anything, so the
//! owner can no longer publish: the store ends with the revision
//! published with every link, or without any trace, never a tarball
//! without its links; each process says what it did, and the owner
//! reports `committed` only if its own completion published the revision
//! (a taker that then finds no journal to take says so, exit 1).
//! Each round prints its outcome; run with `--nocapture` to see them.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use alitx::journal::Journal;
use alitx::layout::DIST_DIRS;
use alitx::storage::PutMode;

/// Where the owner freezes: just before the completion that publishes,
/// and before its links.
const POINTS: [&str; 2] = ["before-publish", "after-claim"];
/// Tarball payloads: one part (the small package's path) and three.
const PAYLOADS: [u64; 2] = [1 << 20, 12 << 20];

#[derive(Debug, Clone, Copy)]
enum Taker {
    RollbackForce,
    ResumeForce,
    ResumeForceWithFiles,
}

/// When the frozen owner gets SIGCONT.
#[derive(Debug, Clone, Copy)]
enum Thaw {
    /// This long after the taker started, while it works.
    During(u64),
    /// Once the taker has ended.
    After,
}

fn owner(wd: &WorkDir, store: &TestStore, point: &str) -> Child {
    let mut args = wd.upload_args(0, store);
    args.extend(["--part-size".into(), "5".into(), "--json".into()]);
    Command::new(env!("CARGO_BIN_EXE_alitx"))
        .args(args)
        .env("ALITX_FAILPOINT", format!("{point}:stop"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn taker_args(taker: Taker, wd: &WorkDir, store: &TestStore) -> Vec<String> {
    let id = Journal::id_of(&wd.pkgs[0].revision());
    match taker {
        Taker::RollbackForce => store.cmd("rollback", &["--json", "--force", &id]),
        Taker::ResumeForce => store.cmd("resume", &["--json", "--force", &id]),
        Taker::ResumeForceWithFiles => wd.resume_args(store, &["--json", "--force", &id]),
    }
}

fn said(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}

#[test]
fn a_takeover_fences_a_frozen_owner_before_it_deletes() {
    let rt = runtime();
    let takers = [
        Taker::RollbackForce,
        Taker::ResumeForce,
        Taker::ResumeForceWithFiles,
    ];
    let thaws = [Thaw::After, Thaw::During(0), Thaw::During(300)];
    for kind in backends() {
        for payload in PAYLOADS {
            let wd = WorkDir::chain(1, payload);
            let store_key = wd.pkgs[0].revision().store_key();
            // Every taker and thaw with the publication in flight; thawed
            // after the taker, once it is frozen before its links.
            let rounds = takers
                .iter()
                .flat_map(|&t| thaws.iter().map(move |&w| (POINTS[0], t, w)))
                .chain(takers.iter().map(|&t| (POINTS[1], t, Thaw::After)));
            for (point, taker, when) in rounds {
                let what = format!(
                    "{kind}, {payload} B, frozen {point}, taken over by {taker:?}, thawed {when:?}"
                );
                let store = rt.block_on(TestStore::new(kind));
                let upload = owner(&wd, &store, point);
                wait_stopped(&upload, &what);
                let taker_run = Command::new(env!("CARGO_BIN_EXE_alitx"))
                    .args(taker_args(taker, &wd, &store))
                    .env("ALITX_TAKEOVER_SETTLE_MS", "200")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let took = match when {
                    Thaw::After => {
                        let took = taker_run.wait_with_output().unwrap();
                        thaw(&upload);
                        took
                    }
                    Thaw::During(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        thaw(&upload);
                        taker_run.wait_with_output().unwrap()
                    }
                };
                let owned = upload.wait_with_output().unwrap();
                let published = rt.block_on(store.keys()).contains(&store_key);
                eprintln!(
                    "{what}: published {published}; taker exit {:?}: {}; owner exit {:?}: {}",
                    took.status.code(),
                    said(&took).trim(),
                    owned.status.code(),
                    said(&owned).trim()
                );
                // Never a tarball without its links.
                assert_exact(&store, &wd, if published { &[0] } else { &[] }, &what);
                // The taker says what it did.
                let outcome = &json(&took)[0];
                let action = outcome["action"].as_str().unwrap_or_default();
                let message = outcome["message"].as_str().unwrap_or_default();
                if matches!(when, Thaw::During(_)) && message.starts_with("no journal ") {
                    // Thawed at once, the owner published and retired its
                    // journal before the taker first looked for it.
                    assert_exit(&took, 1);
                    assert!(
                        published
                            && owned.status.code() == Some(0)
                            && json(&owned)["status"] == "committed",
                        "{what}: owner: {}",
                        said(&owned)
                    );
                    continue;
                }
                assert_exit(&took, 0);
                match action {
                    "rolled-back" => assert!(!published, "{what}: {}", said(&took)),
                    // Thawed early, the owner may have finished first.
                    "rolled-forward" | "retired" => assert!(published, "{what}: {}", said(&took)),
                    "skipped" => assert!(
                        published && message.contains("retired meanwhile"),
                        "{what}: {}",
                        said(&took)
                    ),
                    _ => panic!("{what}: taker: {}", said(&took)),
                }
                let deleted = outcome["report"]["keys_deleted"]
                    .as_array()
                    .map_or(0, Vec::len);
                assert!(
                    deleted == 0 || !message.contains("nothing more written"),
                    "{what}: it deleted {deleted} keys: {message}"
                );
                // The owner: published by itself, found published by the
                // other owner of its transaction, or lost, exit 4.
                match owned.status.code() {
                    Some(0) => {
                        assert!(published, "{what}: owner: {}", said(&owned));
                        // Both cannot have published it.
                        let status = json(&owned)["status"].clone();
                        let taker_published = outcome["report"]["parts_total"].as_u64() > Some(0);
                        assert!(
                            status == "already-published"
                                || (status == "committed" && !taker_published),
                            "{what}: owner says {status} after the taker {action}: {}",
                            said(&owned)
                        );
                    }
                    Some(4) => {}
                    code => panic!("{what}: owner exit {code:?}: {}", said(&owned)),
                }
            }
        }
    }
}

/// A rollback that finds the tarball published while it deletes (a
/// writer no fence can stop, here a PUT carrying the transaction's id)
/// never says "already published, nothing more written": it fails, exit 3,
/// naming the links it deleted and `alitx resume`, which puts them back
/// from the journal.
#[test]
fn a_rollback_that_meets_a_publication_after_deleting_says_so() {
    let rt = runtime();
    let wd = WorkDir::chain(1, 1 << 20);
    wd.add_dist_links(0, 300);
    let rev = wd.pkgs[0].revision();
    let journal_key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &rev);
    let dist = rev.dist_prefix(DIST_DIRS[0]);
    for kind in backends() {
        let store = rt.block_on(TestStore::new(kind));
        let backend = rt.block_on(store.open());
        alitx_killed_at(&wd.upload_args(0, &store), "after-links");
        let links = rt.block_on(backend.list(&dist)).unwrap().len();
        let journal: Journal =
            serde_json::from_slice(&rt.block_on(backend.get(&journal_key)).unwrap().unwrap())
                .unwrap();
        let rollback = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(store.cmd("rollback", &[&Journal::id_of(&rev)]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while rt.block_on(backend.list(&dist)).unwrap().len() == links {
            std::thread::sleep(Duration::from_millis(2));
        }
        let body = std::fs::read(wd.tarball_path(0)).unwrap();
        rt.block_on(backend.put(
            &rev.store_key(),
            body.into(),
            &journal.object_metadata(),
            PutMode::Create,
        ))
        .unwrap();
        let out = rollback.wait_with_output().unwrap();
        assert_exit(&out, 3);
        assert!(
            stderr(&out).contains("after it had deleted") && stderr(&out).contains("alitx resume"),
            "{kind}: {}",
            stderr(&out)
        );
        assert_exit(&alitx(&store.cmd("resume", &[])), 0);
        assert_exact(&store, &wd, &[0], kind);
    }
}
