//! Processes racing to recover the same transactions, each race run many
//! times with varied delays between the two processes and varied takeover
//! settle times (`ALITX_TAKEOVER_SETTLE_MS`): two `resume`s sharing a
//! journal (issue 11, point 1), two `rollback`s of one journal, a `resume`
//! against a `rollback`; and a killed upload whose parent does not reap it,
//! a zombie, whose journal is dead (issue 10, point 3).
//!
//! Every round ends with the store exact: each revision published with
//! every key, body and its publication record, or without any trace; no
//! journal and no staged upload. Each round prints its outcome (exit codes,
//! actions, times); run with `--nocapture` to see them.
//! `ALITX_RACE_ROUNDS=N` runs each grid of delays and settle times N times
//! (default 1, a few minutes in all on both backends).

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use alitx::journal::Journal;

const PART_MIB: &str = "5";
/// How long the second process of a race starts after the first: these
/// three by default, since the simulator (tests/sim) covers every
/// interleaving in between in milliseconds; all six with
/// `ALITX_RACE_GRID=full`.
const DELAYS_MS: [u64; 3] = [0, 400, 1500];
const FULL_DELAYS_MS: [u64; 6] = [0, 50, 200, 400, 800, 1500];
/// `ALITX_TAKEOVER_SETTLE_MS` of both processes.
const SETTLES_MS: [u64; 2] = [200, 1000];
/// Where the abandoned upload of a rollback race was killed.
const KILL_POINTS: [&str; 3] = ["after-intent", "after-links", "after-bulk"];

/// Each (settle time, delay) of the grid, `ALITX_RACE_ROUNDS` times.
fn grid() -> Vec<(u64, u64)> {
    let rounds: usize = std::env::var("ALITX_RACE_ROUNDS")
        .ok()
        .map(|n| n.parse().expect("ALITX_RACE_ROUNDS is a number"))
        .unwrap_or(1);
    let delays: &'static [u64] = match std::env::var("ALITX_RACE_GRID").as_deref() {
        Ok("full") => &FULL_DELAYS_MS,
        _ => &DELAYS_MS,
    };
    let once = SETTLES_MS
        .iter()
        .flat_map(|&settle| delays.iter().map(move |&delay| (settle, delay)));
    std::iter::repeat_n(once, rounds).flatten().collect()
}

/// Independent packages with these names, each with a multipart tarball
/// `payload` bytes larger, and `extra_links` more dist links per dist
/// directory.
fn work_dir(packages: &[(&str, u64)], extra_links: usize) -> WorkDir {
    let names: Vec<&str> = packages.iter().map(|(name, _)| *name).collect();
    let wd = WorkDir::named(&names);
    for (i, (_, payload)) in packages.iter().enumerate() {
        write_tarball(&wd.tarball_path(i), &wd.pkgs[i].revision(), *payload);
        wd.add_dist_links(i, extra_links);
    }
    wd
}

fn journal_id(wd: &WorkDir, i: usize) -> String {
    Journal::id_of(&wd.pkgs[i].revision())
}

fn upload_args(wd: &WorkDir, i: usize, store: &TestStore) -> Vec<String> {
    let mut args = wd.upload_args(i, store);
    args.extend(["--part-size".into(), PART_MIB.into()]);
    args
}

/// `alitx resume --json` of packages `ids` with `wd`'s files.
fn resume_args(store: &TestStore, wd: &WorkDir, ids: &[usize]) -> Vec<String> {
    let mut all = wd.resume_args(store, &["--json"]);
    all.extend(ids.iter().map(|&i| journal_id(wd, i)));
    all
}

fn rollback_args(store: &TestStore, wd: &WorkDir, i: usize) -> Vec<String> {
    store.cmd("rollback", &["--json", &journal_id(wd, i)])
}

/// One alitx process of a race, as it ended.
struct Run {
    label: &'static str,
    pid: u32,
    out: Output,
    /// Since the race started.
    started: Duration,
    took: Duration,
}

impl Run {
    /// Its JSON outcomes, one per journal.
    fn json(&self) -> Vec<serde_json::Value> {
        match serde_json::from_slice(&self.out.stdout) {
            Ok(serde_json::Value::Array(list)) => list,
            _ => Vec::new(),
        }
    }

    /// What it did to each journal: id → (action, message).
    fn outcomes(&self) -> BTreeMap<String, (String, String)> {
        self.json()
            .iter()
            .map(|o| {
                let field = |name: &str| o[name].as_str().unwrap_or_default().to_string();
                (field("id"), (field("action"), field("message")))
            })
            .collect()
    }

    fn action(&self, id: &str) -> Option<String> {
        self.outcomes().get(id).map(|(action, _)| action.clone())
    }

    fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }

    /// One line: label, exit code, times, the action on each journal (with
    /// the transaction's status, or why it failed).
    fn line(&self) -> String {
        let actions: Vec<String> = self
            .json()
            .iter()
            .map(|o| {
                let id = o["id"].as_str().unwrap_or_default();
                let id = id.rsplit('/').next().unwrap();
                match (&o["action"], &o["report"]["status"]) {
                    (action, _) if action == "failed" => format!("{id}: failed: {}", o["message"]),
                    (action, status) if status.is_string() => format!("{id}: {action} ({status})"),
                    (action, _) => format!("{id}: {action}"),
                }
            })
            .collect();
        format!(
            "{} exit {} at {:.2}s for {:.2}s [{}]",
            self.label,
            self.code(),
            self.started.as_secs_f64(),
            self.took.as_secs_f64(),
            actions.join(", ")
        )
    }

    fn said(&self) -> String {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&self.out.stdout),
            stderr(&self.out)
        )
    }
}

/// Start `first`, then `second` `delay` later, both with the takeover
/// settle time `settle_ms`; wait for both.
fn race(
    first: (&'static str, Vec<String>),
    second: (&'static str, Vec<String>),
    delay: u64,
    settle_ms: u64,
) -> [Run; 2] {
    let t0 = Instant::now();
    let start = |(label, args): (&'static str, Vec<String>)| {
        let started = t0.elapsed();
        let child = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(args)
            .env("ALITX_TAKEOVER_SETTLE_MS", settle_ms.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::spawn(move || {
            let out = child.wait_with_output().unwrap();
            Run {
                label,
                pid,
                out,
                started,
                took: t0.elapsed() - started,
            }
        })
    };
    let a = start(first);
    std::thread::sleep(Duration::from_millis(delay));
    let b = start(second);
    [a.join().unwrap(), b.join().unwrap()]
}

/// How a process of a race may end when the other one did the work: a
/// refusal (exit 4) naming the other process as owner, or (started after
/// the other one had finished) no journal left to act on (exit 1).
#[track_caller]
fn assert_lost_clearly(run: &Run, other: &Run, what: &str) {
    let said = run.said();
    match run.code() {
        4 => assert!(
            said.contains(&format!("pid {} ", other.pid))
                || said.contains("left the transaction to its new owner"),
            "{what}: {} exited 4 without naming the other owner (pid {}): {said}",
            run.label,
            other.pid
        ),
        1 => assert!(
            said.contains("no journal"),
            "{what}: {} failed: {said}",
            run.label
        ),
        code => panic!("{what}: {} exited {code}: {said}", run.label),
    }
}

/// Issue 11, point 1: one upload killed after staging its whole tarball,
/// another right after creating its staged upload; `resume small big`,
/// and a little later `resume big`. Each process either finishes what it
/// took or stops saying who has it; no one rolls anything back; both
/// revisions end published exactly.
#[test]
fn two_resumes_sharing_a_journal_publish_both_revisions_exactly() {
    const SMALL: usize = 0;
    const BIG: usize = 1;
    let rt = runtime();
    let wd = work_dir(&[("small", 8 << 20), ("big", 40 << 20)], 0);
    let (small, big) = (journal_id(&wd, SMALL), journal_id(&wd, BIG));
    let mut tally = BTreeMap::<String, usize>::new();
    for kind in backends() {
        for (round, (settle, delay)) in grid().into_iter().enumerate() {
            let what = format!("{kind} round {round}: settle {settle} ms, delay {delay} ms");
            let store = rt.block_on(TestStore::new(kind));
            alitx_killed_at(&upload_args(&wd, BIG, &store), "after-bulk");
            alitx_killed_at(&upload_args(&wd, SMALL, &store), "after-intent");
            let [both, big_only] = race(
                ("resume small big", resume_args(&store, &wd, &[SMALL, BIG])),
                ("resume big", resume_args(&store, &wd, &[BIG])),
                delay,
                settle,
            );
            eprintln!("{what}: {}; {}", both.line(), big_only.line());

            assert_eq!(
                both.action(&small).as_deref(),
                Some("rolled-forward"),
                "{what}: {}",
                both.said()
            );
            for run in [&both, &big_only] {
                assert!(
                    run.outcomes()
                        .values()
                        .all(|(action, message)| action == "rolled-forward"
                            || (action == "skipped" && message.contains("retired meanwhile"))
                            // Arrived between the other's commit mark and
                            // its retirement: the revision is published.
                            || action == "retired"
                            || action == "failed"),
                    "{what}: {}: {}",
                    run.label,
                    run.said()
                );
            }
            // Who published big: the other one exits 0 having found it
            // finished, or says who had it.
            let big_published_by =
                |run: &Run| run.action(&big).as_deref() == Some("rolled-forward");
            match (both.code(), big_only.code()) {
                (0, 0) => {}
                (_, 0) => assert_lost_clearly(&both, &big_only, &what),
                (0, _) => assert_lost_clearly(&big_only, &both, &what),
                _ => panic!("{what}: both failed:\n{}\n{}", both.said(), big_only.said()),
            }
            assert!(
                big_published_by(&both) || big_published_by(&big_only),
                "{what}: neither resume finished big:\n{}\n{}",
                both.said(),
                big_only.said()
            );
            let outcome = format!(
                "exit {}/{}, big by {}",
                both.code(),
                big_only.code(),
                if big_published_by(&both) && big_published_by(&big_only) {
                    "both"
                } else if big_published_by(&both) {
                    "first"
                } else {
                    "second"
                }
            );
            *tally.entry(outcome).or_default() += 1;
            assert_exact(&store, &wd, &[SMALL, BIG], &what);
        }
    }
    eprintln!("two resumes: {tally:?}");
}

/// Two `rollback`s of one abandoned journal at once: one undoes it; the
/// other finds it retired, or names its owner; nothing is left.
#[test]
fn two_rollbacks_of_one_journal_undo_it_once() {
    let rt = runtime();
    let wd = work_dir(&[("undone", 12 << 20)], 8);
    let id = journal_id(&wd, 0);
    let mut tally = BTreeMap::<String, usize>::new();
    for kind in backends() {
        for (round, (settle, delay)) in grid().into_iter().enumerate() {
            let point = KILL_POINTS[round % KILL_POINTS.len()];
            let what = format!(
                "{kind} round {round}: killed {point}, settle {settle} ms, delay {delay} ms"
            );
            let store = rt.block_on(TestStore::new(kind));
            alitx_killed_at(&upload_args(&wd, 0, &store), point);
            let runs = race(
                ("rollback A", rollback_args(&store, &wd, 0)),
                ("rollback B", rollback_args(&store, &wd, 0)),
                delay,
                settle,
            );
            eprintln!("{what}: {}; {}", runs[0].line(), runs[1].line());
            let undid =
                |run: &Run| run.code() == 0 && run.action(&id).as_deref() == Some("rolled-back");
            assert!(
                runs.iter().any(undid),
                "{what}: neither rolled it back:\n{}\n{}",
                runs[0].said(),
                runs[1].said()
            );
            // The one that did not undo it found it retired, or says who
            // had it. (Both saying so would be a takeover that re-created
            // the journal the other had just retired: the store ends clean
            // all the same.)
            let [a, b] = &runs;
            for (run, other) in [(a, b), (b, a)] {
                let retired = run.code() == 0
                    && run.outcomes().get(&id).is_some_and(|(action, message)| {
                        action == "skipped" && message.contains("retired meanwhile")
                    });
                if !undid(run) && !retired {
                    assert_lost_clearly(run, other, &what);
                }
            }
            let outcome = format!(
                "{} exit {} {}, {} exit {} {}",
                a.label,
                a.code(),
                a.action(&id).unwrap_or_default(),
                b.label,
                b.code(),
                b.action(&id).unwrap_or_default()
            );
            *tally.entry(outcome).or_default() += 1;
            assert_exact(&store, &wd, &[], &what);
        }
    }
    eprintln!("two rollbacks: {tally:?}");
}

/// A `resume` with the work dir against a `rollback` of the same abandoned
/// journal, either one first: the revision ends published exactly or
/// without trace, never partly; a process that says it rolled back leaves
/// no tarball, one that says it published (or that it stays published)
/// leaves it complete.
#[test]
fn resume_racing_rollback_ends_published_or_without_trace() {
    let rt = runtime();
    let wd = work_dir(&[("contested", 12 << 20)], 8);
    let id = journal_id(&wd, 0);
    let store_key = wd.pkgs[0].revision().store_key();
    let mut tally = BTreeMap::<String, usize>::new();
    for kind in backends() {
        for (round, (settle, delay)) in grid().into_iter().enumerate() {
            let point = KILL_POINTS[round % KILL_POINTS.len()];
            // Each delay sees both orders over the two settle times.
            let resume_first = (round + round / DELAYS_MS.len()) % 2 == 0;
            let what = format!(
                "{kind} round {round}: killed {point}, {} first, settle {settle} ms, delay {delay} ms",
                if resume_first { "resume" } else { "rollback" }
            );
            let store = rt.block_on(TestStore::new(kind));
            alitx_killed_at(&upload_args(&wd, 0, &store), point);
            let resume = ("resume", resume_args(&store, &wd, &[0]));
            let rollback = ("rollback", rollback_args(&store, &wd, 0));
            let runs = if resume_first {
                race(resume, rollback, delay, settle)
            } else {
                race(rollback, resume, delay, settle)
            };
            eprintln!("{what}: {}; {}", runs[0].line(), runs[1].line());
            let published = rt.block_on(store.keys()).contains(&store_key);
            assert_exact(&store, &wd, if published { &[0] } else { &[] }, &what);

            let [a, b] = &runs;
            for (run, other) in [(a, b), (b, a)] {
                if run.code() != 0 {
                    assert_lost_clearly(run, other, &what);
                    continue;
                }
                let (action, message) = run.outcomes().remove(&id).unwrap_or_default();
                let consistent = match action.as_str() {
                    "rolled-back" => !published,
                    // resume published it; rollback found it published
                    // and finished it ("is published and stays").
                    "rolled-forward" | "retired" => published,
                    "skipped" => message.contains("retired meanwhile"),
                    _ => false,
                };
                assert!(
                    consistent,
                    "{what}: {} exited 0 saying {action} ({message}), but the revision is {}published",
                    run.label,
                    if published { "" } else { "not " }
                );
            }
            let outcome = format!(
                "{} ({} exit {}, {} exit {})",
                if published { "published" } else { "undone" },
                a.label,
                a.code(),
                b.label,
                b.code()
            );
            *tally.entry(outcome).or_default() += 1;
        }
    }
    eprintln!("resume against rollback: {tally:?}");
}

/// Issue 10, point 3: a killed upload whose parent does not reap it stays
/// a zombie, which `kill(pid, 0)` still finds. Its journal is dead all the
/// same: `journals` says so and `resume` rolls it forward at once, while
/// the zombie is still there.
#[test]
fn a_zombie_owner_is_dead_and_resume_rolls_its_upload_forward() {
    use std::os::unix::process::ExitStatusExt;
    let wd = work_dir(&[("zombie", 12 << 20)], 0);
    each_backend(|kind, store| {
        // This test process is the parent, and does not wait for it yet.
        let mut upload = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(upload_args(&wd, 0, &store))
            .env("ALITX_FAILPOINT", "after-links")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = upload.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_state(pid) != Some('Z') {
            assert!(Instant::now() < deadline, "{kind}: alitx never died");
            std::thread::sleep(Duration::from_millis(20));
        }

        let listed = list_journals(&store.spec());
        assert_eq!(listed[0]["owner"]["pid"], pid, "{kind}: {listed}");
        assert_eq!(listed[0]["lease"], "owner-dead", "{kind}: {listed}");

        let out = alitx(&resume_args(&store, &wd, &[]));
        assert_exit(&out, 0);
        let outcomes = json(&out);
        assert_eq!(outcomes[0]["id"], journal_id(&wd, 0), "{kind}: {outcomes}");
        assert_eq!(
            outcomes[0]["action"], "rolled-forward",
            "{kind}: {outcomes}"
        );
        assert_eq!(process_state(pid), Some('Z'), "{kind}: the zombie is gone");
        assert_eq!(upload.wait().unwrap().signal(), Some(9));
        assert_exact(&store, &wd, &[0], kind);
    });
}

/// An upload killed after the store created its staged upload but before
/// its intent journal recorded the upload id (the failpoint
/// `before-record-upload`): no journal names the staged upload, yet a
/// re-run of the upload (its commit aborts every staged upload of the key
/// it did not record) or `repair` (stale staged uploads) leaves none behind.
#[test]
fn a_kill_before_the_staged_upload_is_recorded_orphans_nothing() {
    let rt = runtime();
    // `repair` scans the architectures the store holds: one is published.
    let wd = work_dir(&[("published", 0), ("orphan", 12 << 20)], 0);
    for kind in backends() {
        for heal in ["rerun", "repair"] {
            let store = rt.block_on(TestStore::new(kind));
            let backend = rt.block_on(store.open());
            assert_exit(&alitx(&upload_args(&wd, 0, &store)), 0);
            alitx_killed_at(&upload_args(&wd, 1, &store), "before-record-upload");
            assert_eq!(rt.block_on(store.pending_uploads()), 1, "{kind} {heal}");
            let key = Journal::key_of(alitx::journal::DEFAULT_PREFIX, &wd.pkgs[1].revision());
            assert!(rt.block_on(backend.head(&key)).unwrap().is_none());
            let out = match heal {
                "rerun" => alitx(&upload_args(&wd, 1, &store)),
                _ => alitx(&store.cmd("repair", &["--stale-uploads-after", "0s"])),
            };
            assert_exit(&out, 0);
            let published: &[usize] = if heal == "rerun" { &[0, 1] } else { &[0] };
            assert_exact(&store, &wd, published, &format!("{kind} {heal}"));
        }
    }
}

/// An upload frozen (SIGSTOP) mid-flight, right after claiming its package
/// link, whose journal is taken over meanwhile by a forced `resume` or
/// `rollback` (an operator sure it was dead, or a lease run out on another
/// host): once it runs again it stops at its next step, with exit 4 (or 0
/// if its own transaction's tarball is published), writes nothing more,
/// and the store ends as the new owner left it.
#[test]
fn an_owner_frozen_mid_upload_stops_once_its_journal_is_taken_over() {
    let rt = runtime();
    let wd = work_dir(&[("frozen", 30 << 20)], 300);
    let claim = wd.pkgs[0].revision().package_link().key;
    let mut problems = Vec::new();
    for kind in backends() {
        for heal in ["resume", "rollback"] {
            let what = format!("{kind} {heal}");
            let store = rt.block_on(TestStore::new(kind));
            let backend = rt.block_on(store.open());
            let upload = Command::new(env!("CARGO_BIN_EXE_alitx"))
                .args(upload_args(&wd, 0, &store))
                .arg("--json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = upload.id() as libc::pid_t;
            while rt.block_on(backend.head(&claim)).unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let mut forced = match heal {
                "resume" => resume_args(&store, &wd, &[0]),
                _ => rollback_args(&store, &wd, 0),
            };
            forced.push("--force".into());
            let out = alitx_env(&forced, &[("ALITX_TAKEOVER_SETTLE_MS", "200")]);
            assert_exit(&out, 0);
            // SAFETY: signals our own child.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let frozen = upload.wait_with_output().unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&frozen.stdout),
                stderr(&frozen)
            );
            eprintln!(
                "{what}: the new owner: {}; the frozen upload: exit {:?}: {said}",
                json(&out)[0]["action"],
                frozen.status.code()
            );
            let stopped_clearly = match frozen.status.code() {
                Some(4) => true,
                Some(0) => heal == "resume" && json(&frozen)["status"] == "already-published",
                _ => false,
            };
            if !stopped_clearly {
                problems.push(format!(
                    "{what}: the frozen upload exited {:?}: {said}",
                    frozen.status.code()
                ));
            }
            let published: &[usize] = if heal == "resume" { &[0] } else { &[] };
            let keys = rt.block_on(store.keys());
            eprintln!(
                "{what}: the store holds {} of the revision's {} keys; package link: {}; journal: {}",
                keys.iter().filter(|k| k.starts_with("TARS/")).count(),
                wd.expected([0]).len(),
                keys.contains(&claim),
                keys.iter().any(|k| k.starts_with(".alitx/journals/"))
            );
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                assert_exact(&store, &wd, published, &what)
            })) {
                problems.push(format!(
                    "{what}: {}",
                    e.downcast_ref::<String>().cloned().unwrap_or_default()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Wait until process `pid` is stopped (SIGSTOP at a failpoint): `true`;
/// `false` if it ended without stopping.
fn wait_stopped(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match process_state(pid) {
            Some('T') => return true,
            None | Some('Z') => return false,
            _ if Instant::now() > deadline => panic!("process {pid} neither stopped nor ended"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Continue a process stopped by [`wait_stopped`].
fn thaw(child: &std::process::Child) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
}

/// Issue 25, failure 1: `repair` racing an upload that adopts what a
/// killed stock upload left (its package link and one dist directory's
/// links: partial). repair is frozen right after its scan, or right after
/// it claimed the revision, and the upload started then, frozen right
/// after its links if it gets there; repair continues and ends, then the
/// upload. The revision ends published with every key (repair found the
/// upload's journal and deleted nothing), or without any trace (the upload
/// found repair's and exited 4): never a published tarball missing links.
#[test]
fn repair_racing_an_adopting_upload_leaves_the_revision_whole_or_gone() {
    let rt = runtime();
    let wd = work_dir(&[("adopted", 1 << 10)], 5);
    let rev = wd.pkgs[0].revision();
    let leftovers: BTreeMap<String, Vec<u8>> = wd
        .expected([0])
        .into_iter()
        .filter(|(key, _)| {
            *key == rev.package_link().key || key.starts_with(&rev.dist_prefix("dist"))
        })
        .collect();
    let mut problems = Vec::new();
    for kind in backends() {
        for repair_stop in ["repair-scanned", "repair-claimed"] {
            let what = format!("{kind}, repair frozen at {repair_stop}");
            let store = rt.block_on(TestStore::new(kind));
            rt.block_on(put_stock_links(&store, &rev, &leftovers));
            let spawn = |args: Vec<String>, point: String| {
                Command::new(env!("CARGO_BIN_EXE_alitx"))
                    .args(args)
                    .env("ALITX_FAILPOINT", point)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let repair = spawn(
                store.cmd("repair", &["--json", "--min-age", "0"]),
                format!("{repair_stop}:stop"),
            );
            let repair_frozen = wait_stopped(repair.id());
            let mut adopt = upload_args(&wd, 0, &store);
            adopt.extend(args(&["--adopt-after", "0s"]));
            let upload = spawn(adopt, "after-links:stop".into());
            let upload_frozen = wait_stopped(upload.id());
            thaw(&repair);
            let repaired = repair.wait_with_output().unwrap();
            thaw(&upload);
            let uploaded = upload.wait_with_output().unwrap();
            let published = rt
                .block_on(async { store.open().await.head(&rev.store_key()).await })
                .unwrap()
                .is_some();
            eprintln!(
                "{what}: repair {}frozen, exit {:?}; upload {}frozen, exit {:?}: {}; published: {published}",
                if repair_frozen { "" } else { "not " },
                repaired.status.code(),
                if upload_frozen { "" } else { "not " },
                uploaded.status.code(),
                stderr(&uploaded).lines().last().unwrap_or_default()
            );
            let (expected, upload_code): (&[usize], i32) = match published {
                true => (&[0], 0),
                false => (&[], 4),
            };
            if uploaded.status.code() != Some(upload_code) {
                problems.push(format!(
                    "{what}: the upload exited {:?}: {}",
                    uploaded.status.code(),
                    stderr(&uploaded)
                ));
            }
            if !published && !stderr(&uploaded).contains("being repaired") {
                problems.push(format!(
                    "{what}: the upload did not say why: {}",
                    stderr(&uploaded)
                ));
            }
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                assert_exact(&store, &wd, expected, &what)
            })) {
                problems.push(format!(
                    "{what}: {}",
                    e.downcast_ref::<String>().cloned().unwrap_or_default()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
