//! A 1 GiB tarball uploads and verifies in bounded memory. Kept in its own
//! test binary: a child's peak RSS counts the memory of the process that
//! started it (Linux carries it over `exec`), so no other test may run in
//! this process, and each child is reaped by `wait4` for its own figure
//! (`RUSAGE_CHILDREN` would take the largest of every child).

#[allow(dead_code)] // this binary uses a few of the helpers
mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::Value;

/// Run alitx; its exit code, stdout, and its own peak RSS in MiB.
// The child is reaped by `wait4`, which also reports its resource usage.
#[allow(clippy::zombie_processes)]
fn alitx_measured(args: &[String]) -> (i32, String, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alitx"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointers; the pid is our own unwaited child.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t);
    let code = std::process::ExitStatus::from_raw(status)
        .code()
        .unwrap_or(-1);
    (code, reader.join().unwrap(), usage.ru_maxrss / 1024)
}

const RSS_LIMIT_MIB: i64 = 200;

#[test]
fn a_one_gib_tarball_uploads_and_verifies_in_bounded_memory() {
    let rt = runtime();
    let wd = WorkDir::chain(1, 1 << 30);
    let size = std::fs::metadata(wd.tarball_path(0)).unwrap().len();
    assert!(size > 1 << 30);
    let expected_sha = alitx::tarball::sha256_of(&wd.tarball_path(0)).unwrap();
    each_backend(|kind, store| {
        let mut upload = wd.upload_args(0, &store);
        upload.push("--json".into());
        let (code, stdout, peak) = alitx_measured(&upload);
        assert_eq!(code, 0, "{kind}: {stdout}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["bytes_sent"].as_u64(), Some(size), "{kind}");
        assert_eq!(report["tarball_sha256"], expected_sha.as_str(), "{kind}");
        let info = rt.block_on(async {
            let backend = store.open().await;
            backend.head(&wd.pkgs[0].revision().store_key()).await
        });
        assert_eq!(info.unwrap().map(|info| info.size), Some(size), "{kind}");
        eprintln!(
            "{kind}: uploaded {size} B in {:.1}s, peak RSS {peak} MiB",
            report["duration_seconds"].as_f64().unwrap()
        );
        assert!(peak < RSS_LIMIT_MIB, "{kind}: upload's peak RSS {peak} MiB");

        let started = Instant::now();
        let verify = store.cmd("verify", &["--json"]);
        let (code, stdout, peak) = alitx_measured(&verify);
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(code, 0, "{kind}: {stdout}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["revisions"][0]["class"], "verified", "{kind}");
        assert_eq!(report["summary"]["bytes_read"], size);
        eprintln!("{kind}: verified {size} B in {seconds:.1}s, peak RSS {peak} MiB");
        assert!(peak < RSS_LIMIT_MIB, "{kind}: verify's peak RSS {peak} MiB");
    });
}
