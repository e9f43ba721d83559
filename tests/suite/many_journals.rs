//! Hundreds of abandoned journals, as a mass kill of builders leaves them
//! (issue 20): `journals` lists them all in order, and one plain `resume`
//! handles them side by side, printing each journal's line as it ends: the
//! ones whose files are in the work dir roll forward, the others back, the
//! live ones are left alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use alitx::journal::{Journal, DEFAULT_PREFIX};
use alitx::storage::{PutMode, Store};
use futures::{FutureExt, StreamExt};

const JOURNALS: usize = 300;

/// What became of journal `i`'s upload before the resume.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    /// Killed on this host; its files are still in the work dir.
    DeadWithFiles,
    /// Killed on this host; the work dir no longer has its tarball.
    Dead,
    /// On another host, its lease run out; the work dir no longer has its
    /// tarball.
    Expired,
    /// On another host, its lease valid: a running upload.
    Live,
}

fn fate(i: usize) -> Fate {
    [Fate::DeadWithFiles, Fate::Dead, Fate::Expired, Fate::Live][i % 4]
}

/// A pid that ran and is gone.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

/// Write the journal of package `i` of `wd`, its upload's fate being
/// `fate`, and every link it names (each carrying the
/// transaction id) straight to the store, as its upload left them after
/// writing its links and before sending its tarball.
async fn abandon(
    store: &dyn Store,
    wd: &WorkDir,
    i: usize,
    fate: Fate,
    dead_pid: u32,
) -> Vec<String> {
    let revision = wd.pkgs[i].revision();
    let local = alitx::workdir::read_revision(wd.path(), revision.clone()).unwrap();
    let mut journal = Journal::new(
        alitx::random_hex(8),
        &revision,
        local.tarball,
        &local.links,
        8 << 20,
        Duration::from_secs(120),
    );
    match fate {
        Fate::DeadWithFiles | Fate::Dead => journal.owner.pid = dead_pid,
        Fate::Expired | Fate::Live => journal.owner.host = "build-node-17".into(),
    }
    match fate {
        Fate::Expired => journal.lease_expires_at = alitx::now_secs() - 10,
        Fate::Live => journal.lease_expires_at = alitx::now_secs() + 3600,
        Fate::DeadWithFiles | Fate::Dead => {}
    }
    let key = Journal::key_of(DEFAULT_PREFIX, &revision);
    store
        .put(
            &key,
            journal.to_bytes(),
            &journal.journal_metadata(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let mut keys = vec![key];
    for link in journal.links() {
        store
            .put(
                &link.key,
                link.body.clone().into_bytes().into(),
                &journal.object_metadata(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        keys.push(link.key.clone());
    }
    keys
}

#[test]
fn resume_handles_hundreds_of_abandoned_journals_side_by_side() {
    let rt = runtime();
    let names: Vec<String> = (0..JOURNALS).map(|i| format!("many{i:03}")).collect();
    let wd = WorkDir::named(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = dead_pid();
    let ids: Vec<String> = wd
        .pkgs
        .iter()
        .map(|p| Journal::id_of(&p.revision()))
        .collect();
    each_backend(|kind, store| {
        let backend = rt.block_on(store.open());
        let written: Vec<Vec<String>> = rt.block_on(
            futures::stream::iter(0..JOURNALS)
                .map(|i| abandon(&*backend, &wd, i, fate(i), pid))
                .buffered(32)
                .collect(),
        );
        for i in (0..JOURNALS).filter(|&i| matches!(fate(i), Fate::Dead | Fate::Expired)) {
            std::fs::remove_file(wd.tarball_path(i)).unwrap();
        }
        let live: BTreeMap<String, Vec<u8>> = rt
            .block_on(store.snapshot())
            .into_iter()
            .filter(|(key, _)| {
                (0..JOURNALS)
                    .filter(|&i| fate(i) == Fate::Live)
                    .any(|i| written[i].contains(key))
            })
            .collect();

        let listed = list_journals(&store.spec());
        let listed = listed.as_array().unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|j| j["id"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ids,
            "{kind}: journals lists every journal in order"
        );
        for (i, j) in listed.iter().enumerate() {
            let lease = match fate(i) {
                Fate::DeadWithFiles | Fate::Dead => "owner-dead",
                Fate::Expired => "expired",
                Fate::Live => "live",
            };
            assert_eq!(j["lease"], lease, "{kind}: {j}");
        }

        let t0 = Instant::now();
        let mut resume = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(wd.resume_args(&store, &["--architecture", ARCH]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        let mut first_line_at = None;
        for line in BufReader::new(resume.stdout.take().unwrap()).lines() {
            first_line_at.get_or_insert(t0.elapsed());
            lines.push(line.unwrap());
        }
        let mut stderr_of_resume = String::new();
        std::io::Read::read_to_string(&mut resume.stderr.take().unwrap(), &mut stderr_of_resume)
            .unwrap();
        let status = resume.wait().unwrap();
        let took = t0.elapsed();
        let first_line_at = first_line_at.expect("resume printed nothing");
        eprintln!(
            "{kind}: resume of {JOURNALS} journals: first line after {first_line_at:.2?}, done in {took:.2?}"
        );
        assert_eq!(status.code(), Some(0), "{kind}: {stderr_of_resume}");
        assert!(
            first_line_at < took / 2,
            "{kind}: the first line came after {first_line_at:?} of {took:?}: not as each journal ended"
        );

        let mut said: BTreeMap<&str, &str> = BTreeMap::new();
        for line in &lines {
            let (id, rest) = line.split_once(": ").expect("ID: ACTION: MESSAGE");
            let action = rest.split_once(": ").expect("ACTION: MESSAGE").0;
            assert!(
                said.insert(id, action).is_none(),
                "{kind}: {id} reported twice"
            );
        }
        let expected: BTreeMap<&str, &str> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let action = match fate(i) {
                    Fate::DeadWithFiles => "rolled-forward",
                    Fate::Dead | Fate::Expired => "rolled-back",
                    Fate::Live => "skipped",
                };
                (id.as_str(), action)
            })
            .collect();
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(id, action)| said.get(*id) != Some(*action))
            .map(|(id, action)| {
                let line = lines.iter().find(|l| l.starts_with(&format!("{id}: ")));
                format!("{id}: expected {action}, got {line:?}")
            })
            .collect();
        assert!(
            wrong.is_empty() && said.len() == expected.len(),
            "{kind}: {} lines for {} journals; {} wrong:\n{}\nstderr: {}",
            said.len(),
            expected.len(),
            wrong.len(),
            wrong[..wrong.len().min(10)].join("\n"),
            stderr_of_resume
        );

        // Rolled forward: published exactly; rolled back: no trace; live:
        // untouched.
        let forward: Vec<usize> = (0..JOURNALS)
            .filter(|&i| fate(i) == Fate::DeadWithFiles)
            .collect();
        let mut expected = wd.expected(forward.iter().copied());
        expected.extend(live);
        let snapshot = rt.block_on(store.snapshot());
        assert_eq!(
            snapshot.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{kind}: keys"
        );
        assert!(snapshot == expected, "{kind}: bodies differ");
        assert_eq!(rt.block_on(store.records()).len(), forward.len(), "{kind}");
        assert_eq!(rt.block_on(store.pending_uploads()), 0, "{kind}");

        // Put the work dir back for the next backend.
        for i in (0..JOURNALS).filter(|&i| matches!(fate(i), Fate::Dead | Fate::Expired)) {
            write_tarball(&wd.tarball_path(i), &wd.pkgs[i].revision(), 0);
        }
    });
}

/// A scan opens as many connections as it keeps small reads in flight
/// (issue 28: capped at an upload's few, `check` of 1,000 journals took
/// 18 s instead of 7, each read waiting 44 ms on the gateway): `journals`
/// reads `JOURNALS_AT_ONCE` at a time through more connections than an
/// upload's `FEW_CONNECTIONS`, and `check --concurrency 4` through at most
/// 4. Counted at the proxy of `tests/common/proxy.rs`, on the real RGW.
#[test]
fn scans_open_as_many_connections_as_reads_they_keep_in_flight() {
    use crate::common::proxy::{Faults, Proxy};
    use alitx::recovery::JOURNALS_AT_ONCE;
    use alitx::storage::FEW_CONNECTIONS;
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let names: Vec<String> = (0..100).map(|i| format!("scan{i:03}")).collect();
    let wd = WorkDir::named(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = dead_pid();
    rt.block_on(async {
        let backend = store.open().await;
        futures::stream::iter(0..names.len())
            .for_each_concurrent(16, |i| {
                abandon(&*backend, &wd, i, Fate::Dead, pid).map(|_| ())
            })
            .await;
    });
    let through = |proxy: &Proxy, command: &str, extra: &[&str]| {
        let mut all = store.cmd(command, &["--endpoint-url", &proxy.url()]);
        all.extend(args(extra));
        let out = alitx(&all);
        (out, proxy.counts())
    };

    let proxy = Proxy::start(Faults::default());
    let (out, counts) = through(&proxy, "journals", &[]);
    assert_exit(&out, 0);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listed.lines().count(), 100, "{listed}");
    assert!(
        counts.connections > FEW_CONNECTIONS as u64
            && counts.connections <= JOURNALS_AT_ONCE as u64,
        "{counts}"
    );
    let proxy = Proxy::start(Faults::default());
    let (out, counts) = through(&proxy, "check", &["--json", "--concurrency", "4"]);
    assert_exit(&out, 5);
    assert_eq!(json(&out)["summary"]["abandoned"], 100);
    assert!(counts.connections <= 4, "{counts}");
}

/// Not a test: seeds the store `ALITX_BENCH_STORE` with
/// `ALITX_BENCH_JOURNALS` (default 1,000) journals of uploads killed after
/// their links, for timing `journals`, `check` and `resume` by hand (see
/// docs/benchmarks.md); with `ALITX_BENCH_WORK_DIR`, their files are copied
/// there, for a `resume` that rolls them forward. `cargo test --release --test suite --
/// many_journals::seed --ignored --nocapture`.
#[test]
#[ignore]
fn seed_abandoned_journals_for_a_benchmark() {
    let spec = std::env::var("ALITX_BENCH_STORE").expect("ALITX_BENCH_STORE names the store");
    let n: usize = std::env::var("ALITX_BENCH_JOURNALS")
        .map(|n| n.parse().expect("ALITX_BENCH_JOURNALS is a number"))
        .unwrap_or(1000);
    let rt = runtime();
    let names: Vec<String> = (0..n).map(|i| format!("bench{i:04}")).collect();
    let wd = WorkDir::named(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let store = rt.block_on(alitx::storage::open(&spec, None)).unwrap();
    let pid = dead_pid();
    let keys: usize = rt.block_on(
        futures::stream::iter(0..n)
            .map(|i| abandon(&*store, &wd, i, Fate::Dead, pid))
            .buffered(32)
            .map(|keys| keys.len())
            .fold(0, |sum, n| async move { sum + n }),
    );
    eprintln!("{spec}: {n} abandoned journals, {keys} keys in all");
    if let Ok(dir) = std::env::var("ALITX_BENCH_WORK_DIR") {
        let copied = Command::new("cp")
            .arg("-a")
            .arg(wd.path())
            .arg(&dir)
            .status();
        assert!(copied.unwrap().success(), "copying the work dir to {dir}");
        eprintln!("their files: work dir {dir}");
    }
}
