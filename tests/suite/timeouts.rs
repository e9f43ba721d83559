//! A store that does not answer, or answers nonsense: every command ends by
//! itself, in bounded time, with an error that names the endpoint and the
//! cause, and `-v` shows each retry as it happens.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, Faults, Match, Proxy, Rule};
use crate::common::*;

/// Credentials for a server that never checks them.
const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "alitx-test"),
    ("AWS_SECRET_ACCESS_KEY", "alitx-test-secret"),
];

/// A server that accepts every connection and never sends a byte; its URL.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    url
}

/// A server that answers every request `200 OK` with `body`; its URL.
fn nonsense_server(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    request.extend_from_slice(&buf[..n]);
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        request.clear();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(answer.as_bytes());
                    }
                }
            });
        }
    });
    url
}

fn with_endpoint(mut args: Vec<String>, endpoint: &str) -> Vec<String> {
    args.extend(["--endpoint-url".to_string(), endpoint.to_string()]);
    args
}

#[test]
fn a_server_that_never_answers_ends_upload_resume_check_and_journals_within_two_minutes() {
    let endpoint = silent_server();
    let wd = WorkDir::chain(1, 0);
    let store = "b3://alitx-silent";
    let upload = wd.upload_args_to(0, store);
    let work_dir = wd.path().display().to_string();
    let commands = [
        upload,
        args(&["resume", "--remote-store", store, "--work-dir", &work_dir]),
        args(&["check", "--remote-store", store]),
        args(&["journals", "--remote-store", store]),
    ];
    std::thread::scope(|scope| {
        let runs: Vec<_> = commands
            .iter()
            .map(|command| {
                let mut command = with_endpoint(command.clone(), &endpoint);
                command.push("-v".into());
                scope.spawn(move || {
                    let started = Instant::now();
                    let out = alitx_env(&command, &CREDENTIALS);
                    (command[0].clone(), out, started.elapsed())
                })
            })
            .collect();
        for run in runs {
            let (name, out, took) = run.join().unwrap();
            let err = stderr(&out);
            assert_exit(&out, 1);
            assert!(
                took < Duration::from_secs(120),
                "{name} took {took:?}: {err}"
            );
            assert!(
                err.contains(&format!("the S3 endpoint {endpoint} did not answer")),
                "{name}: {err}"
            );
            assert!(err.contains("no progress for 20s"), "{name}: {err}");
            // -v: every retry, as it happens; a pipe gets no colour codes.
            for attempt in 2..=4 {
                assert!(
                    err.contains(&format!("(attempt {attempt} of 4)")),
                    "{name}: no retry {attempt} logged: {err}"
                );
            }
            assert!(err.contains("retrying S3 "), "{name}: {err}");
            assert!(
                !err.contains('\u{1b}'),
                "{name}: colour codes in a pipe: {err}"
            );
        }
    });
}

#[test]
fn timeout_bounds_the_whole_command_and_names_the_store() {
    let endpoint = silent_server();
    let started = Instant::now();
    let out = alitx_env(
        &with_endpoint(
            args(&[
                "journals",
                "--remote-store",
                "b3://alitx-silent",
                "--timeout",
                "3s",
            ]),
            &endpoint,
        ),
        &CREDENTIALS,
    );
    let took = started.elapsed();
    assert_exit(&out, 1);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "stopped after --timeout 3s: the command on s3://alitx-silent at {endpoint} had not finished"
        )),
        "{err}"
    );

    let out = alitx(&args(&[
        "journals",
        "--remote-store",
        "b3://alitx-silent",
        "--timeout",
        "soon",
    ]));
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("\"soon\" is not a duration"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_answer_that_cannot_be_parsed_is_reported_with_its_cause() {
    let endpoint = nonsense_server(
        "<ListBucketResult><Contents><Key>k</Key><Size>many</Size></Contents></ListBucketResult>",
    );
    let out = alitx_env(
        &with_endpoint(
            args(&["journals", "--remote-store", "b3://alitx-nonsense"]),
            &endpoint,
        ),
        &CREDENTIALS,
    );
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "S3 ListObjectsV2 s3://alitx-nonsense/.alitx/journals/ failed at {endpoint}: HTTP 200: "
        )),
        "{err}"
    );
    assert!(err.contains("error parsing XML"), "no cause: {err}");
}

#[test]
fn an_upload_whose_server_stalls_ends_within_two_minutes_and_resume_finishes_it() {
    for kind in backends().into_iter().filter(|kind| *kind == "s3") {
        let rt = runtime();
        let store = rt.block_on(TestStore::new(kind));
        let wd = WorkDir::chain(1, 12 << 20);
        // The server takes the journal, the links and the staged upload's
        // creation, then stops answering once each part is 1 MiB in.
        let proxy = Proxy::start(Faults::only(Rule::every(
            Match::method("PUT").query_contains("partNumber="),
            Fault::Stall {
                after_body_bytes: 1 << 20,
            },
        )));
        let mut upload = with_endpoint(wd.upload_args(0, &store), &proxy.url());
        upload.extend(args(&["--part-size", "5", "-v"]));
        let started = Instant::now();
        let out = alitx(&upload);
        let took = started.elapsed();
        let err = stderr(&out);
        assert_exit(&out, 1);
        assert!(took < Duration::from_secs(120), "took {took:?}: {err}");
        assert!(
            err.contains(&format!(
                "the S3 endpoint {} did not answer UploadPart",
                proxy.url()
            )),
            "{err}"
        );
        assert!(err.contains("retrying S3 UploadPart"), "{err}");
        assert!(err.contains("`alitx resume`"), "{err}");
        assert!(proxy.counts().stalled >= 4, "{:?}", proxy.counts());

        // Its journal stays; nothing is published yet.
        let journal = wd.pkgs[0].revision();
        let listed = list_journals(&store.spec());
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed[0]["state"], "pending");
        assert_eq!(listed[0]["package"], journal.package.as_str());
        let tarball = journal.store_key();
        assert!(!rt.block_on(store.keys()).contains(&tarball));

        // Straight to the server, resume finishes it exactly.
        let resumed = alitx(&wd.resume_args(&store, &[]));
        assert_exit(&resumed, 0);
        // Exactly the revision: its journal retired, nothing else.
        assert_eq!(
            rt.block_on(store.snapshot()),
            wd.expected([0]),
            "the store after resume"
        );
        assert_eq!(rt.block_on(store.pending_uploads()), 0);
    }
}

/// A server that freezes mid-upload (from some request on it answers
/// nothing, lease renewals included) ends the upload within two minutes
/// with a store error naming the endpoint: exit 1, never 4 ("someone else
/// owns it"), the journal kept; resume straight to the server then
/// publishes the revision exactly.
#[test]
fn an_upload_whose_server_freezes_ends_within_two_minutes_as_a_store_error() {
    for kind in backends().into_iter().filter(|kind| *kind == "s3") {
        let rt = runtime();
        let store = rt.block_on(TestStore::new(kind));
        let wd = WorkDir::chain(1, 48 << 20);
        let proxy = Proxy::start(Faults::only(Rule::from_nth(
            12,
            Match::any(),
            Fault::Stall {
                after_body_bytes: 1 << 20,
            },
        )));
        let mut upload = with_endpoint(wd.upload_args(0, &store), &proxy.url());
        upload.extend(args(&["--part-size", "5"]));
        let started = Instant::now();
        let out = alitx(&upload);
        let took = started.elapsed();
        let err = stderr(&out);
        assert_exit(&out, 1);
        assert!(took < Duration::from_secs(120), "took {took:?}: {err}");
        assert!(
            err.contains(&format!("the S3 endpoint {} did not answer", proxy.url())),
            "{err}"
        );
        assert!(err.contains("`alitx resume`"), "{err}");
        assert!(proxy.counts().stalled >= 1, "{:?}", proxy.counts());

        let listed = list_journals(&store.spec());
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(listed[0]["state"], "pending");
        let resumed = alitx(&wd.resume_args(&store, &[]));
        assert_exit(&resumed, 0);
        assert_exact(&store, &wd, &[0], "after resume");
    }
}

/// A store error while reading the links of a revision that is already
/// published is a store error (exit 1), never "a partial revision left by
/// another uploader" (exit 3); nothing is written.
#[test]
fn a_failed_read_of_a_published_revisions_links_is_a_store_error() {
    for kind in backends().into_iter().filter(|kind| *kind == "s3") {
        let rt = runtime();
        let store = rt.block_on(TestStore::new(kind));
        let wd = WorkDir::chain(1, 1 << 10);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let before = rt.block_on(store.snapshot());
        let proxy = Proxy::start(Faults::only(Rule::every(
            Match::method("GET").path_contains("/dist-runtime/"),
            Fault::SlowDown,
        )));
        let out = alitx(&with_endpoint(wd.upload_args(0, &store), &proxy.url()));
        let err = stderr(&out);
        assert_exit(&out, 1);
        assert!(!err.contains("partial revision"), "{err}");
        assert!(err.contains("SlowDown"), "{err}");
        assert!(proxy.counts().injected() >= 4, "{:?}", proxy.counts());
        assert_eq!(rt.block_on(store.snapshot()), before);
    }
}
