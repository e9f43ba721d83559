//! Builders in containers (issue 18, case 3): an upload in its own pid
//! namespace on the same hostname, as in a build container with host
//! networking (`unshare --pid --fork --mount-proc`, which needs root).
//! Another job's plain `alitx resume --architecture A --work-dir OTHER`,
//! from this namespace or from another container that runs all along,
//! never takes a live upload over; a dead one's journal waits out its
//! lease, then is taken over. Each case runs at several points of the
//! upload; run with `--nocapture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use alitx::journal::{Journal, DEFAULT_PREFIX};
use alitx::storage::Store;

const PART_MIB: &str = "5";

/// `alitx args` in a pid namespace of its own, as the second process there
/// (a shell is its init, so that signals and failpoints act as on any
/// process).
fn in_container(args: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "sh",
        "-c",
        "\"$@\"; exit $?",
        "sh",
    ])
    .arg(env!("CARGO_BIN_EXE_alitx"))
    .args(args);
    cmd
}

/// Another job's build container, running all along (so its pid
/// namespace is never one the kernel reuses from a container that ended).
struct Container {
    unshare: Child,
    /// Its init, by its pid here.
    init: u32,
}

impl Container {
    fn start() -> Self {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "sleep", "3600"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            if let Some(&init) = children(unshare.id()).first() {
                break init;
            }
            assert!(Instant::now() < deadline, "unshare started no container");
            std::thread::sleep(Duration::from_millis(10));
        };
        Container { unshare, init }
    }

    /// `alitx args` inside it.
    fn alitx(&self, args: &[String]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--pid", "--mount", "--"])
            .arg(env!("CARGO_BIN_EXE_alitx"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: signals our own descendant; its namespace ends with it.
        unsafe { libc::kill(self.init as libc::pid_t, libc::SIGKILL) };
        let _ = self.unshare.wait();
    }
}

/// Where the resume of another job runs.
#[derive(Clone, Copy, Debug)]
enum Resumer {
    /// In this test's namespace, where the upload's pid (2) is a kernel
    /// thread.
    Here,
    /// In another container, where the upload's pid is nobody, or another
    /// process.
    OtherContainer,
}

impl Resumer {
    fn run(self, args: &[String], other: &Container) -> Output {
        match self {
            Resumer::Here => alitx(args),
            Resumer::OtherContainer => other.alitx(args),
        }
    }
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.parent == parent))
        .collect()
}

/// The host pid of alitx inside the container `unshare` started: the
/// grandchild of `unshare` (unshare → sh → alitx).
fn alitx_pid_in(unshare: &Child) -> Option<libc::pid_t> {
    let shell = *children(unshare.id()).first()?;
    children(shell).first().map(|&pid| pid as libc::pid_t)
}

/// The store once no request of a frozen process is still landing: two
/// snapshots half a second apart agree.
fn quiet_snapshot(store: &TestStore) -> BTreeMap<String, Vec<u8>> {
    let mut last = runtime().block_on(store.snapshot());
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = runtime().block_on(store.snapshot());
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Every key, with the journal's body alone: what a takeover changes first
/// (it rewrites the journal) and then (it deletes keys), read in two
/// requests, where a snapshot of hundreds of links outlasts a short lease.
async fn outline(store: &dyn Store, journal_key: &str) -> BTreeMap<String, Vec<u8>> {
    let mut outline: BTreeMap<String, Vec<u8>> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|key| (key, Vec::new()))
        .collect();
    if let Some(journal) = store.get(journal_key).await.unwrap() {
        outline.insert(journal_key.to_string(), journal.to_vec());
    }
    outline
}

/// The keys added, removed or rewritten between two snapshots.
fn changed_keys(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .cloned()
        .collect()
}

fn work_dir() -> WorkDir {
    let wd = WorkDir::named(&["boxed"]);
    write_tarball(&wd.tarball_path(0), &wd.pkgs[0].revision(), 24 << 20);
    wd.add_dist_links(0, 100);
    wd
}

fn upload_args(wd: &WorkDir, store: &TestStore, lease_seconds: u64) -> Vec<String> {
    let mut all = wd.upload_args(0, store);
    all.extend(args(&[
        "--part-size",
        PART_MIB,
        "--lease-seconds",
        &lease_seconds.to_string(),
        "--json",
    ]));
    all
}

/// What another job runs at the start of its build: no ids, no --force.
fn plain_resume(store: &TestStore, work_dir: &Path) -> Vec<String> {
    store.cmd(
        "resume",
        &[
            "--architecture",
            ARCH,
            "--work-dir",
            &work_dir.display().to_string(),
            "--json",
        ],
    )
}

/// The one outcome of a `resume --json`, as (action, message).
fn only_outcome(out: &Output, id: &str) -> (String, String) {
    assert_exit(out, 0);
    let outcomes = json(out);
    assert_eq!(outcomes.as_array().map(Vec::len), Some(1), "{outcomes}");
    assert_eq!(outcomes[0]["id"], id, "{outcomes}");
    let field = |name: &str| outcomes[0][name].as_str().unwrap_or_default().to_string();
    (field("action"), field("message"))
}

/// A live upload in a container, stopped (SIGSTOP, by the failpoint's
/// `:stop`) at varied points of its work so that the store holds still
/// while two resumes of other jobs look at it: both skip it as busy and
/// change no byte; continued, it publishes the revision exactly, exit 0.
#[test]
fn a_live_upload_in_another_pid_namespace_is_never_taken_over() {
    let rt = runtime();
    let wd = work_dir();
    let other = tempfile::tempdir().unwrap();
    let container = Container::start();
    let id = Journal::id_of(&wd.pkgs[0].revision());
    for kind in backends() {
        for point in ["after-claim", "part-sent-2", "after-links"] {
            let what = format!("{kind}, stopped at {point}");
            let store = rt.block_on(TestStore::new(kind));
            let upload = in_container(&upload_args(&wd, &store, 120))
                .env("ALITX_FAILPOINT", format!("{point}:stop"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = stopped_alitx_in(&upload, &what);
            let before = quiet_snapshot(&store);
            let listed = list_journals(&store.spec());
            assert_eq!(listed[0]["lease"], "live", "{what}: {listed}");
            assert_eq!(listed[0]["owner"]["pid"], 2, "{what}: {listed}");
            assert_ne!(
                listed[0]["owner"]["pid_ns"],
                std::fs::read_link("/proc/self/ns/pid")
                    .unwrap()
                    .display()
                    .to_string(),
                "{what}: {listed}"
            );
            for resumer in [Resumer::Here, Resumer::OtherContainer] {
                let out = resumer.run(&plain_resume(&store, other.path()), &container);
                let (action, message) = only_outcome(&out, &id);
                eprintln!("{what}: {resumer:?}: {action}: {message}");
                assert_eq!(action, "skipped", "{what}, {resumer:?}: {message}");
                assert!(message.contains("owned by a running"), "{message}");
                let changed = changed_keys(&before, &rt.block_on(store.snapshot()));
                assert!(
                    changed.is_empty(),
                    "{what}, {resumer:?}: changed {changed:?}"
                );
            }
            // SAFETY: signals our own descendant.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let finished = upload.wait_with_output().unwrap();
            assert_exit(&finished, 0);
            assert_eq!(json(&finished)["status"], "committed", "{what}");
            assert_exact(&store, &wd, &[0], &what);
        }
    }
}

/// The host pid of alitx in the container `unshare` started, once it has
/// stopped itself at its failpoint.
fn stopped_alitx_in(unshare: &Child, what: &str) -> libc::pid_t {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = alitx_pid_in(unshare) {
            if process_state(pid as u32) == Some('T') {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "{what}: alitx never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An upload in a container killed at varied points: its pid cannot be
/// checked from outside, so its journal counts as live until the lease
/// runs out, then a plain resume takes it over, rolling it forward with
/// the files or back without them. The rounds run side by side (each on a
/// store of its own), so that their leases run out together.
#[test]
fn a_dead_upload_in_another_pid_namespace_is_taken_over_once_its_lease_expires() {
    let wd = work_dir();
    let other = tempfile::tempdir().unwrap();
    let container = Container::start();
    let rounds = [
        ("after-claim", Resumer::Here, true),
        ("after-links", Resumer::OtherContainer, false),
        ("part-sent-2", Resumer::OtherContainer, true),
        ("after-bulk", Resumer::Here, false),
    ];
    std::thread::scope(|scope| {
        for kind in backends() {
            for (point, resumer, with_files) in rounds {
                let heal_dir = if with_files { wd.path() } else { other.path() };
                let (wd, container) = (&wd, &container);
                scope.spawn(move || {
                    dead_upload_round(wd, container, kind, point, resumer, heal_dir, with_files)
                });
            }
        }
    });
}

/// One round of the test above: kill at `point`, resume from `resumer`
/// with `heal_dir` as work dir, which holds the tarball if `with_files`.
fn dead_upload_round(
    wd: &WorkDir,
    container: &Container,
    kind: &str,
    point: &str,
    resumer: Resumer,
    heal_dir: &Path,
    with_files: bool,
) {
    use std::os::unix::process::ExitStatusExt;
    const LEASE_SECONDS: u64 = 10;
    let rt = runtime();
    let id = Journal::id_of(&wd.pkgs[0].revision());
    let key = Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[0].revision());
    let what = format!("{kind}, killed at {point}, resumed {resumer:?}");
    let store = rt.block_on(TestStore::new(kind));
    let backend = rt.block_on(store.open());
    let t0 = Instant::now();
    let killed = in_container(&upload_args(wd, &store, LEASE_SECONDS))
        .env("ALITX_FAILPOINT", point)
        .output()
        .unwrap();
    let took = t0.elapsed();
    // The shell reports its child's SIGKILL as 128 + 9.
    assert_eq!(
        (killed.status.code(), killed.status.signal()),
        (Some(137), None),
        "{what}: {}",
        stderr(&killed)
    );
    let stored_journal = || -> Journal {
        serde_json::from_slice(&rt.block_on(backend.get(&key)).unwrap().unwrap()).unwrap()
    };
    let journal = stored_journal();
    let before = rt.block_on(outline(&*backend, &key));
    let (expected, published): (&str, &[usize]) = if with_files {
        ("rolled-forward", &[0])
    } else {
        ("rolled-back", &[])
    };
    let started = alitx::now_secs();
    let out = resumer.run(&plain_resume(&store, heal_dir), container);
    let (mut action, mut message) = only_outcome(&out, &id);
    eprintln!(
        "{what} after {:.1?}: {}s into the lease: {action}: {message}",
        took,
        started - (journal.lease_expires_at - LEASE_SECONDS as i64)
    );
    if alitx::now_secs() < journal.lease_expires_at {
        assert_eq!(action, "skipped", "{what}: {message}");
        let changed = changed_keys(&before, &rt.block_on(outline(&*backend, &key)));
        assert!(changed.is_empty(), "{what}: changed {changed:?}");
    }
    // A machine slow enough to let the lease run out before the first
    // resume sees it taken over there already.
    if action == "skipped" {
        // A renewal the killed upload had in flight may land after the
        // journal was read above: wait for the lease the store holds now.
        loop {
            let wait = stored_journal().lease_expires_at + 1 - alitx::now_secs();
            if wait < 0 {
                break;
            }
            std::thread::sleep(Duration::from_secs(wait as u64 + 1));
        }
        assert_eq!(
            list_journals(&store.spec())[0]["lease"],
            "expired",
            "{what}"
        );
        (action, message) = only_outcome(
            &resumer.run(&plain_resume(&store, heal_dir), container),
            &id,
        );
        eprintln!("{what}: after the lease: {action}: {message}");
    }
    assert_eq!(action, expected, "{what}: {message}");
    assert_exact(&store, wd, published, &what);
}

/// Issue 25, failure 2: an upload in a container frozen just before the
/// completion that publishes, past its lease; another job's plain resume
/// takes its journal over, rolling it back without the files or forward
/// with them, after aborting the frozen owner's staged upload. Thawed,
/// the owner cannot publish: it exits 4, or 0 saying the revision is
/// already published (by the resume); the store holds the revision with
/// every link, or nothing of it.
#[test]
fn a_frozen_upload_taken_over_after_its_lease_cannot_publish() {
    const LEASE_SECONDS: u64 = 6;
    let rt = runtime();
    let wd = work_dir();
    let other = tempfile::tempdir().unwrap();
    let id = Journal::id_of(&wd.pkgs[0].revision());
    let key = Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[0].revision());
    for kind in backends() {
        for with_files in [false, true] {
            let what = format!("{kind}, resumed with files: {with_files}");
            let store = rt.block_on(TestStore::new(kind));
            let backend = rt.block_on(store.open());
            let upload = in_container(&upload_args(&wd, &store, LEASE_SECONDS))
                .env("ALITX_FAILPOINT", "before-publish:stop")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = stopped_alitx_in(&upload, &what);
            loop {
                let journal: Journal =
                    serde_json::from_slice(&rt.block_on(backend.get(&key)).unwrap().unwrap())
                        .unwrap();
                let wait = journal.lease_expires_at + 1 - alitx::now_secs();
                if wait < 0 {
                    break;
                }
                std::thread::sleep(Duration::from_secs(wait as u64 + 1));
            }
            let heal_dir = if with_files { wd.path() } else { other.path() };
            let (action, message) = only_outcome(&alitx(&plain_resume(&store, heal_dir)), &id);
            // SAFETY: signals our own descendant.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let owned = upload.wait_with_output().unwrap();
            let owner_said = format!(
                "{}{}",
                String::from_utf8_lossy(&owned.stdout),
                stderr(&owned)
            );
            eprintln!(
                "{what}: resume {action}: {message}; owner exit {:?}",
                owned.status.code()
            );
            let expected = if with_files {
                "rolled-forward"
            } else {
                "rolled-back"
            };
            assert_eq!(action, expected, "{what}: {message}");
            assert_exact(&store, &wd, if with_files { &[0] } else { &[] }, &what);
            match owned.status.code() {
                Some(4) => {}
                Some(0) => assert!(
                    with_files && owner_said.contains("\"already-published\""),
                    "{what}: the owner says: {owner_said}"
                ),
                code => panic!("{what}: owner exit {code:?}: {owner_said}"),
            }
        }
    }
}
