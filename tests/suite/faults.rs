//! alitx against a misbehaving network, on the real RGW, through the fault
//! proxy of `tests/common/proxy.rs`: random `503 SlowDown`s, request bodies
//! cut half-way and answers lost after the server carried the request out,
//! over many uploads; one lost answer at each step of the protocol; and a
//! server that stalls.
//!
//! The random test replays with `ALITX_FAULT_SEED=N` (it prints the seed of
//! each round); `ALITX_FAULT_ROUNDS=K` runs K rounds, seeds N, N+1, ...

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::common::proxy::{Counts, Fault, Faults, Match, Proxy, Rule};
use crate::common::*;
use alitx::journal::{Journal, DEFAULT_PREFIX};
use alitx::layout::DIST_DIRS;
use aws_sdk_s3::error::SdkError;

const PART_MIB: u64 = 5;

/// `alitx upload` of package `i` through `proxy`.
fn upload_through(proxy: &Proxy, wd: &WorkDir, i: usize, store: &TestStore) -> Vec<String> {
    let mut all = wd.upload_args(i, store);
    all.extend(args(&[
        "--part-size",
        &PART_MIB.to_string(),
        "--json",
        "--endpoint-url",
        &proxy.url(),
    ]));
    all
}

/// A fault-free `alitx resume` of everything open, straight to the server.
fn resume(wd: &WorkDir, store: &TestStore) -> std::process::Output {
    alitx(&wd.resume_args(store, &[]))
}

/// Every key of package `i`'s revision in the store, with its body (read
/// straight from the server, not through the proxy).
async fn revision_in_store(store: &TestStore, wd: &WorkDir, i: usize) -> BTreeMap<String, Vec<u8>> {
    let rev = wd.pkgs[i].revision();
    let backend = store.open().await;
    let mut prefixes = vec![rev.store_key(), rev.package_link().key];
    prefixes.extend(DIST_DIRS.iter().map(|dist| rev.dist_prefix(dist)));
    let mut found = BTreeMap::new();
    for prefix in prefixes {
        for key in backend.list(&prefix).await.unwrap() {
            let body = backend.get(&key).await.unwrap().unwrap();
            found.insert(key, body.to_vec());
        }
    }
    found
}

/// What readers see: every key under `TARS/`, with its body.
async fn readers_view(store: &TestStore) -> BTreeMap<String, Vec<u8>> {
    let mut all = store.snapshot().await;
    all.retain(|key, _| key.starts_with("TARS/"));
    all
}

/// How `found` differs from `expected`, key by key (empty: the same).
fn differences(
    found: &BTreeMap<String, Vec<u8>>,
    expected: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let missing = expected
        .keys()
        .filter(|k| !found.contains_key(*k))
        .map(|k| format!("missing {k}"));
    let extra = found
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(|k| format!("unexpected {k}"));
    let changed = found
        .iter()
        .filter(|(k, body)| expected.get(*k).is_some_and(|e| e != *body))
        .map(|(k, _)| format!("another body in {k}"));
    missing.chain(extra).chain(changed).collect()
}

/// Journal keys left in the store.
async fn journals(store: &TestStore) -> Vec<String> {
    store.open().await.list(DEFAULT_PREFIX).await.unwrap()
}

/// Staged uploads left under `prefix`, as `key upload-id`.
async fn staged_uploads(store: &TestStore, prefix: &str) -> Vec<String> {
    store
        .open()
        .await
        .list_uploads(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|u| format!("{} {}", u.key, u.upload_id))
        .collect()
}

/// What the proxy did, for a failure message.
fn proxy_report(proxy: &Proxy) -> String {
    format!("{}\n{}", proxy.counts(), proxy.events().join("\n"))
}

fn seed_from_env() -> u64 {
    std::env::var("ALITX_FAULT_SEED").map_or(10, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("ALITX_FAULT_SEED={s:?} is not a number"))
    })
}

fn rounds_from_env() -> u64 {
    std::env::var("ALITX_FAULT_ROUNDS").map_or(1, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("ALITX_FAULT_ROUNDS={s:?} is not a number"))
    })
}

#[test]
fn a_fault_free_proxy_changes_nothing() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let wd = WorkDir::chain(1, 12 << 20);
    wd.add_dist_links(0, 10);
    let proxy = Proxy::start(Faults::default());
    let out = alitx(&upload_through(&proxy, &wd, 0, &store));
    assert_exit(&out, 0);
    assert_eq!(json(&out)["status"], "committed");
    assert_eq!(
        differences(&rt.block_on(readers_view(&store)), &wd.expected([0])),
        Vec::<String>::new()
    );
    let counts = proxy.counts();
    // Signatures made for the proxy's host:port pass at the server, over
    // pooled connections (the links go out on many at once): every request
    // went through and none failed.
    assert!(counts.requests > 34, "{counts}");
    assert!(counts.connections < counts.requests, "{counts}");
    assert_eq!(
        counts,
        Counts {
            connections: counts.connections,
            requests: counts.requests,
            ..Counts::default()
        }
    );
}

/// Random faults over `UPLOADS` uploads, per round.
const UPLOADS: usize = 30;

/// How one upload under random faults ended.
#[derive(Default)]
struct Tally {
    first_try: usize,
    failed: usize,
    healed: usize,
    undone: usize,
    problems: Vec<String>,
}

#[test]
fn random_faults_end_exact_or_without_trace_and_never_in_a_conflict_with_itself() {
    let seed = seed_from_env();
    let rounds = rounds_from_env();
    let mut problems = Vec::new();
    for round in 0..rounds {
        problems.extend(random_fault_round(seed + round));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// One round of uploads under random faults with `seed`; returns what went
/// wrong.
fn random_fault_round(seed: u64) -> Vec<String> {
    eprintln!("random faults: seed {seed} (replay with ALITX_FAULT_SEED={seed})");
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    // Independent packages: two in three small (one PUT), one in three of
    // 12 to 20 MiB (several parts); each with 33 dist links.
    let wd = WorkDir {
        dir: tempfile::tempdir().unwrap(),
        pkgs: (0..UPLOADS)
            .map(|i| Pkg {
                name: format!("faulty{i}"),
                version: "v1".into(),
                revision: "1".into(),
                hash: hash_of(&format!("faulty{i}-{seed}")),
                deps: vec![],
            })
            .collect(),
    };
    for i in 0..UPLOADS {
        let payload = if i % 3 == 2 {
            (12 + (i as u64 + seed) % 9) << 20
        } else {
            (i as u64 * 37 % 200) << 10
        };
        wd.write_package(i, payload);
        wd.add_dist_links(i, 10);
    }
    let proxy = Proxy::start(Faults {
        seed,
        slow_down: 0.05,
        cut_body: 0.05,
        lose_answer: 0.05,
        rules: vec![],
    });
    let started = Instant::now();
    let mut tally = Tally::default();
    for i in 0..UPLOADS {
        upload_under_faults(rt, &proxy, &store, &wd, i, &mut tally);
    }
    let left_journals = rt.block_on(journals(&store));
    if !left_journals.is_empty() {
        tally
            .problems
            .push(format!("journals left: {left_journals:?}"));
    }
    let left_uploads = rt.block_on(staged_uploads(&store, ""));
    if !left_uploads.is_empty() {
        tally
            .problems
            .push(format!("staged uploads left: {left_uploads:?}"));
    }
    let counts = proxy.counts();
    if counts.proxy_errors > 0 {
        tally
            .problems
            .push(format!("the proxy itself failed: {}", proxy_report(&proxy)));
    }
    eprintln!(
        "random faults, seed {seed}: {UPLOADS} uploads in {:.0?}; {counts}; \
         {} exact at the first try, {} failed ({} then published by resume, {} undone by it), \
         {} problems",
        started.elapsed(),
        tally.first_try,
        tally.failed,
        tally.healed,
        tally.undone,
        tally.problems.len()
    );
    tally
        .problems
        .into_iter()
        .map(|p| format!("seed {seed}: {p}"))
        .collect()
}

/// Upload package `i` through the faulty proxy; on failure, resume without
/// faults. The upload either exits 0 with the revision exact, or fails
/// without a conflict with itself (exit 3, or 4 for its own lease) and the
/// resume leaves the revision exact or absent; either way nothing of its
/// transaction is left.
fn upload_under_faults(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    store: &TestStore,
    wd: &WorkDir,
    i: usize,
    tally: &mut Tally,
) {
    let name = &wd.pkgs[i].name;
    let expected = wd.expected([i]);
    let before = proxy.counts();
    let seen_events = proxy.events().len();
    let out = alitx(&upload_through(proxy, wd, i, store));
    let faults = proxy.counts() - before;
    let events = proxy.events()[seen_events..].join("\n    ");
    let mut problem = |what: String| {
        tally
            .problems
            .push(format!("{name} ({faults}):\n    {events}\n  {what}"));
    };
    match out.status.code() {
        Some(0) => {
            let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
            if report.as_ref().map(|r| &r["status"]) != Some(&"committed".into()) {
                problem(format!(
                    "exit 0 without a committed JSON report: {}",
                    String::from_utf8_lossy(&out.stdout)
                ));
            } else {
                let wrong = differences(&rt.block_on(revision_in_store(store, wd, i)), &expected);
                if wrong.is_empty() {
                    tally.first_try += 1;
                } else {
                    problem(format!("exit 0 but the revision is not exact: {wrong:?}"));
                }
            }
        }
        code => {
            tally.failed += 1;
            // Nobody else writes this revision: a conflict (3) or a live
            // lease (4) can only be alitx's own work, not recognised.
            if matches!(code, Some(3 | 4)) {
                problem(format!(
                    "exit {code:?}, a conflict with itself: {}",
                    stderr(&out).trim()
                ));
            }
            eprintln!(
                "{name}: exit {code:?} under {faults}: {}",
                stderr(&out).trim()
            );
            let healed = resume(wd, store);
            if healed.status.code() != Some(0) {
                problem(format!(
                    "fault-free resume after exit {code:?} ({}) failed: exit {:?}: {}",
                    stderr(&out).trim(),
                    healed.status.code(),
                    stderr(&healed)
                ));
            }
            let found = rt.block_on(revision_in_store(store, wd, i));
            if found == expected {
                tally.healed += 1;
            } else if found.is_empty() {
                tally.undone += 1;
            } else {
                problem(format!(
                    "after exit {code:?} and resume the revision is partial: {:?}",
                    differences(&found, &expected)
                ));
            }
        }
    }
    let journal = Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[i].revision());
    if rt.block_on(journals(store)).contains(&journal) {
        problem(format!("journal {journal} left"));
    }
    let staged = rt.block_on(staged_uploads(store, &wd.pkgs[i].revision().store_key()));
    if !staged.is_empty() {
        problem(format!("staged uploads left: {staged:?}"));
    }
}

/// Upload package 0 of `wd` through a proxy that carries out the first
/// request `matcher` selects but drops its answer; the upload must succeed
/// by itself, exact, with nothing left over.
fn lost_answer(wd: &WorkDir, matcher: Match) {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let proxy = Proxy::start(Faults::only(Rule::nth(1, matcher, Fault::LoseAnswer)));
    let out = alitx(&upload_through(&proxy, wd, 0, &store));
    let report = proxy_report(&proxy);
    eprintln!("{report}");
    assert_eq!(
        proxy.counts().lost_answer,
        1,
        "no request matched: {report}"
    );
    assert_eq!(proxy.counts().proxy_errors, 0, "{report}");
    assert_exit(&out, 0);
    assert_eq!(json(&out)["status"], "committed");
    assert_eq!(
        differences(&rt.block_on(readers_view(&store)), &wd.expected([0])),
        Vec::<String>::new(),
        "{report}"
    );
    assert_eq!(rt.block_on(journals(&store)), Vec::<String>::new());
    assert_eq!(
        rt.block_on(staged_uploads(&store, "")),
        Vec::<String>::new(),
        "staged uploads left"
    );
}

/// One package with 33 dist links; `payload` extra tarball bytes.
fn one_package(payload: u64) -> WorkDir {
    let wd = WorkDir::chain(1, payload);
    wd.add_dist_links(0, 10);
    wd
}

#[test]
fn lost_answer_of_the_journal_create() {
    let wd = one_package(0);
    let journal = Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[0].revision());
    lost_answer(
        &wd,
        Match::method("PUT")
            .path_ends_with(&journal)
            .header("If-None-Match"),
    );
}

#[test]
fn lost_answer_of_the_package_link_claim() {
    let wd = one_package(0);
    let claim = wd.pkgs[0].revision().package_link().key;
    lost_answer(&wd, Match::method("PUT").path_ends_with(&claim));
}

#[test]
fn lost_answer_of_a_dist_link() {
    let wd = one_package(0);
    let rev = wd.pkgs[0].revision();
    let link = format!("{}extra3-v1-1.{ARCH}.tar.gz", rev.dist_prefix(DIST_DIRS[0]));
    lost_answer(&wd, Match::method("PUT").path_ends_with(&link));
}

/// A small tarball is staged as one part too (see Fencing in
/// docs/protocol.md): the PUT to its store key is that part.
#[test]
fn lost_answer_of_the_one_part_of_a_small_tarball() {
    let wd = one_package(0);
    let tarball = wd.pkgs[0].revision().store_key();
    lost_answer(&wd, Match::method("PUT").path_ends_with(&tarball));
}

/// A multipart tarball whose POST (`query`: which one) to its store key
/// loses its answer.
fn lost_answer_of_a_multipart_post(query: &str) {
    let wd = one_package(12 << 20);
    let tarball = wd.pkgs[0].revision().store_key();
    lost_answer(
        &wd,
        Match::method("POST")
            .path_ends_with(&tarball)
            .query_contains(query),
    );
}

#[test]
fn lost_answer_of_the_multipart_completion() {
    lost_answer_of_a_multipart_post("uploadId=");
}

#[test]
fn lost_answer_of_create_multipart_upload_leaves_no_second_staged_upload() {
    lost_answer_of_a_multipart_post("uploads");
}

/// An S3 client through `proxy` that gives up after `timeout`, at once.
async fn impatient_client(proxy: &Proxy, timeout: Duration) -> aws_sdk_s3::Client {
    let config = s3_client()
        .await
        .config()
        .to_builder()
        .endpoint_url(proxy.url())
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(timeout)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Assert that a request sent at `started` ended by the client's own
/// timeout (`patience`), not by any answer.
#[track_caller]
fn assert_client_gave_up<T: Debug, E: Debug, R: Debug>(
    outcome: Result<T, SdkError<E, R>>,
    started: Instant,
    patience: Duration,
) {
    let waited = started.elapsed();
    assert!(
        matches!(outcome, Err(SdkError::TimeoutError(_))),
        "{outcome:?}"
    );
    assert!(waited >= patience && waited < patience * 5, "{waited:?}");
}

#[test]
fn a_stalled_or_silent_server_holds_the_request_until_the_client_gives_up() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let TestStore::S3 { bucket, .. } = &store else {
        unreachable!()
    };
    let patience = Duration::from_secs(2);

    // A server that stops after the first PUT: the second stalls after
    // 64 KiB of its 1 MiB body, and never gets it all.
    let proxy = Proxy::start(Faults::only(Rule::from_nth(
        2,
        Match::method("PUT"),
        Fault::Stall {
            after_body_bytes: 64 << 10,
        },
    )));
    let client = rt.block_on(impatient_client(&proxy, patience));
    let put = |key: &str| {
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(vec![7u8; 1 << 20].into())
            .send()
    };
    rt.block_on(put("passed")).unwrap();
    let started = Instant::now();
    assert_client_gave_up(rt.block_on(put("stalled")), started, patience);
    assert_eq!(proxy.counts().stalled, 1, "{}", proxy_report(&proxy));
    assert_eq!(rt.block_on(store.keys()), ["passed"]);

    // A server that accepts and reads, and never answers.
    let proxy = Proxy::start(Faults::only(Rule::every(Match::any(), Fault::NeverAnswer)));
    let started = Instant::now();
    let head = rt.block_on(async {
        impatient_client(&proxy, patience)
            .await
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
    });
    assert_client_gave_up(head, started, patience);
    assert_eq!(proxy.counts().never_answered, 1, "{}", proxy_report(&proxy));
}

/// Ambiguous is not absent: a resume whose ListParts keeps failing (503)
/// fails with the journal and its staged upload kept, and creates no
/// second staged upload; a later fault-free resume reuses every part.
#[test]
fn a_failing_list_parts_keeps_the_staged_upload_instead_of_starting_another() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let wd = one_package(24 << 20);
    let mut direct = wd.upload_args(0, &store);
    direct.extend(args(&["--part-size", &PART_MIB.to_string()]));
    alitx_killed_at(&direct, "after-bulk");
    let staged_before = rt.block_on(staged_uploads(&store, ""));
    assert_eq!(staged_before.len(), 1, "{staged_before:?}");

    let proxy = Proxy::start(Faults::only(Rule::every(
        Match::method("GET").query_contains("uploadId"),
        Fault::SlowDown,
    )));
    let out = alitx(&wd.resume_args(&store, &["--endpoint-url", &proxy.url()]));
    assert!(proxy.counts().slow_down > 0, "{}", proxy_report(&proxy));
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("ListParts"), "{}", stderr(&out));
    assert_eq!(rt.block_on(staged_uploads(&store, "")), staged_before);
    let journal = Journal::key_of(DEFAULT_PREFIX, &wd.pkgs[0].revision());
    assert_eq!(rt.block_on(journals(&store)), [journal]);

    let healed = alitx(&wd.resume_args(&store, &["--json"]));
    assert_exit(&healed, 0);
    let report = &json(&healed)[0]["report"];
    assert_eq!(report["bytes_sent"], 0, "every part was reused: {report}");
    assert_eq!(rt.block_on(store.snapshot()), wd.expected([0]));
    assert!(rt.block_on(staged_uploads(&store, "")).is_empty());
}
