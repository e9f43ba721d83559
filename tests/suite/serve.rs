//! `alitx serve-uploads`, the one process scripts/alibuild-alitx keeps for
//! a build's uploads: every line is answered as `alitx upload --json`
//! would (once the revision is published, its journal finished before the
//! process ends), a bad line does not end it, and killed anywhere it
//! leaves exactly the keys a killed `alitx upload` leaves, which `alitx
//! resume` heals.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Output, Stdio};

use crate::common::*;

/// `alitx serve-uploads` started with `env`, its three streams piped.
fn spawn_serve(env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_alitx"))
        .arg("serve-uploads")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `alitx serve-uploads` fed `lines` (then end of input), with `env`.
fn serve(lines: &[String], env: &[(&str, &str)]) -> Output {
    let mut child = spawn_serve(env);
    let mut input = child.stdin.take().unwrap();
    for line in lines {
        // A killed process reads no further: a broken pipe is expected then.
        if writeln!(input, "{line}").is_err() {
            break;
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// The `alitx upload` arguments (without the command) of package `i`, as
/// one input line.
fn line(wd: &WorkDir, i: usize, store: &TestStore, extra: &[&str]) -> String {
    let mut words = wd.upload_args(i, store)[1..].to_vec();
    words.extend(args(extra));
    serde_json::to_string(&words).unwrap()
}

fn answers(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_line_is_answered_and_a_bad_one_ends_nothing() {
    let rt = runtime();
    for kind in backends_and_https() {
        let store = rt.block_on(TestStore::new(kind));
        let wd = WorkDir::chain(3, 0);
        let env = store.cli_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = serve(
            &[
                line(&wd, 0, &store, &[]),
                "not json".into(),
                line(&wd, 1, &store, &[]),
                serde_json::to_string(&["--package", "x"]).unwrap(),
                line(&wd, 2, &store, &[]),
                // Right after its own upload: that one's journal is still
                // being finished, never met as another owner's.
                line(&wd, 2, &store, &[]),
                line(&wd, 0, &store, &[]),
            ],
            &env,
        );
        assert_exit(&out, 0);
        let answers = answers(&out);
        let statuses: Vec<&str> = answers
            .iter()
            .map(|a| a["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            [
                "committed",
                "error",
                "committed",
                "error",
                "committed",
                "already-published",
                "already-published"
            ],
            "{kind}: {answers:?}"
        );
        assert_eq!(answers[1]["exit_code"], 1);
        assert!(
            answers[1]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be a JSON array of `alitx upload` arguments"),
            "{kind}: {}",
            answers[1]
        );
        assert!(
            answers[3]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("bad upload arguments"),
            "{kind}: {}",
            answers[3]
        );
        assert_eq!(answers[2]["journal"], format!("{ARCH}/pkg1-v1.0-1"));
        assert_exact(&store, &wd, &[0, 1, 2], kind);
    }
}

/// At every point of the crash matrix, a serve-uploads killed in its
/// second upload (the first found its package published) answers the first
/// only (and the second too, at the commit mark: it is answered once
/// published) and leaves the keys that a killed `alitx upload` of that
/// package leaves on a store holding the same first package (its links
/// aside while parts are sent: they race with them); `alitx resume` then
/// publishes it exactly.
#[test]
fn killed_it_leaves_what_a_killed_upload_leaves() {
    let rt = runtime();
    for kind in backends() {
        let wd = WorkDir::chain(2, 12 << 20);
        for point in crate::recovery::CRASH_POINTS {
            let what = format!("{kind} {point}");
            let multipart = ["--part-size", "5", "--concurrency", "2"];
            // Package 0 holds one part: it reaches none of the bulk points.
            let (ours, theirs) =
                rt.block_on(async { (TestStore::new(kind).await, TestStore::new(kind).await) });
            for store in [&ours, &theirs] {
                assert_exit(&alitx(&wd.upload_args(0, store)), 0);
            }
            let mut upload = wd.upload_args(1, &theirs);
            upload.extend(args(&multipart));
            alitx_killed_at(&upload, point);

            let out = serve(
                &[line(&wd, 0, &ours, &[]), line(&wd, 1, &ours, &multipart)],
                &[("ALITX_FAILPOINT", point)],
            );
            assert_eq!(out.status.signal(), Some(9), "{what}: {}", stderr(&out));
            let answered: Vec<serde_json::Value> = answers(&out);
            let statuses: Vec<&str> = answered
                .iter()
                .map(|a| a["status"].as_str().unwrap())
                .collect();
            // The journal is finished after the answer: the kill at the
            // commit mark may come before the answer is written or after.
            let allowed: &[&[&str]] = if point == "after-commit-mark" {
                &[&["already-published"], &["already-published", "committed"]]
            } else {
                &[&["already-published"]]
            };
            assert!(
                allowed.contains(&statuses.as_slice()),
                "{what}: {answered:?}"
            );
            // While parts are sent, the claim and the dist links are
            // written alongside: which are in place at the kill is a race.
            let claim = wd.pkgs[1].revision().package_link().key;
            let racing = |key: &String| {
                point.starts_with("bulk-part-") && (key.contains("/dist") || *key == claim)
            };
            let left = |store: &TestStore| -> Vec<String> {
                let keys = rt.block_on(store.keys());
                keys.into_iter().filter(|k| !racing(k)).collect()
            };
            assert_eq!(left(&ours), left(&theirs), "{what}: keys left");
            assert_eq!(
                rt.block_on(ours.pending_uploads()),
                rt.block_on(theirs.pending_uploads()),
                "{what}: staged uploads left"
            );

            assert_exit(&alitx(&wd.resume_args(&ours, &[])), 0);
            assert_exact(&ours, &wd, &[0, 1], &what);
        }
    }
}

/// `alitx serve-uploads` fed one line at a time: `between(i)` runs once the
/// answer to line `i` is read, before the next line is written. The
/// answers, and how the process ended.
fn serve_in_turn(
    lines: &[Vec<u8>],
    env: &[(&str, &str)],
    mut between: impl FnMut(usize),
) -> (Vec<serde_json::Value>, Output) {
    use std::io::BufRead;
    let mut child = spawn_serve(env);
    let mut input = child.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut answers = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        input.write_all(line).unwrap();
        input.write_all(b"\n").unwrap();
        input.flush().unwrap();
        let mut answer = String::new();
        if output.read_line(&mut answer).unwrap() == 0 {
            break;
        }
        answers.push(serde_json::from_str(&answer).unwrap());
        between(i);
    }
    drop(input);
    (answers, child.wait_with_output().unwrap())
}

/// An upload that fails inside serve-uploads (its tarball cannot be
/// written: on S3 its PUT is never answered and `--timeout` stops it,
/// locally a file stands where its directory goes) leaves its journal
/// owned by the process itself; the same line again, once the store is
/// whole, takes the journal over at once and publishes the revision
/// exactly. A line that is not UTF-8 gets an error answer and ends nothing.
#[test]
fn a_failed_upload_is_retried_in_the_same_process_and_bad_bytes_end_nothing() {
    use crate::common::proxy::{Fault, Faults, Match, Proxy, Rule};
    each_backend(|kind, store| {
        let wd = WorkDir::chain(1, 0);
        let rev = wd.pkgs[0].revision();
        let proxy = (kind == "s3").then(|| {
            Proxy::start(Faults::only(Rule::nth(
                1,
                Match::method("PUT").path_contains("/store/"),
                Fault::NeverAnswer,
            )))
        });
        let blocker = (kind == "local").then(|| {
            let key = rev.store_key();
            let dir = store.root().join(&key[..key.rfind('/').unwrap()]);
            let blocker = dir.parent().unwrap().to_path_buf();
            std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
            std::fs::write(&blocker, b"in the way").unwrap();
            blocker
        });
        let mut extra = vec!["--timeout", "5"];
        let url = proxy.as_ref().map(|p| p.url());
        if let Some(url) = &url {
            extra.extend(["--endpoint-url", url]);
        }
        let upload = line(&wd, 0, &store, &extra).into_bytes();
        let lines = [
            b"[\"--work-dir\", \"\xff\xfe\"]".to_vec(),
            upload.clone(),
            upload,
        ];
        let env = [("ALITX_TAKEOVER_SETTLE_MS", "200")];
        let (answers, out) = serve_in_turn(&lines, &env, |i| {
            if i == 1 {
                if let Some(blocker) = &blocker {
                    std::fs::remove_file(blocker).unwrap();
                }
            }
        });
        assert_exit(&out, 0);
        let statuses: Vec<&str> = answers
            .iter()
            .map(|a| a["status"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            statuses,
            ["error", "error", "committed"],
            "{kind}: {answers:?}\n{}",
            stderr(&out)
        );
        assert_eq!(answers[0]["exit_code"], 1, "{kind}: {}", answers[0]);
        assert!(
            answers[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not UTF-8"),
            "{kind}: {}",
            answers[0]
        );
        assert_ne!(answers[1]["exit_code"], 0, "{kind}: {}", answers[1]);
        assert_exact(&store, &wd, &[0], kind);
        assert!(list_journals(&store.spec()).as_array().unwrap().is_empty());
    });
}
