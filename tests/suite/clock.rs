//! A step of the wall clock (NTP, a VM resumed) changes no verdict on a
//! live owner: its own start ticks tell it from a reused pid.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use alitx::journal::{Journal, DEFAULT_PREFIX};
use alitx::storage::PutMode;

/// An upload stopped after its claim, whose journal's recorded start is
/// then moved 10 s earlier: what a forward step of 10 s does to the boot
/// time a reader on the same host places the owner's start by. A plain
/// `resume` there skips it as live and changes nothing; continued, the
/// upload publishes the revision exactly, exit 0.
#[test]
fn a_clock_step_does_not_make_a_live_owner_look_reused() {
    let rt = runtime();
    let wd = WorkDir::named(&["stepped"]);
    let revision = wd.pkgs[0].revision();
    let id = Journal::id_of(&revision);
    let key = Journal::key_of(DEFAULT_PREFIX, &revision);
    each_backend(|kind, store| {
        let upload = Command::new(env!("CARGO_BIN_EXE_alitx"))
            .args(wd.upload_args(0, &store))
            .arg("--json")
            .env("ALITX_FAILPOINT", "after-claim:stop")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while process_state(upload.id()) != Some('T') {
            assert!(Instant::now() < deadline, "{kind}: alitx never stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        rt.block_on(async {
            let backend = store.open().await;
            let info = backend.head(&key).await.unwrap().unwrap();
            let mut journal: serde_json::Value =
                serde_json::from_slice(&backend.get(&key).await.unwrap().unwrap()).unwrap();
            let started_at = journal["owner"]["started_at"].as_i64().unwrap();
            journal["owner"]["started_at"] = (started_at - 10).into();
            let body = serde_json::to_vec(&journal).unwrap().into();
            let put = backend.put(&key, body, &info.metadata, PutMode::Overwrite);
            put.await.unwrap();
        });
        let before = rt.block_on(store.snapshot());
        let out = alitx(&wd.resume_args(&store, &["--json"]));
        assert_exit(&out, 0);
        let outcomes = json(&out);
        assert_eq!(outcomes[0]["id"], id, "{kind}: {outcomes}");
        assert_eq!(outcomes[0]["action"], "skipped", "{kind}: {outcomes}");
        assert_eq!(rt.block_on(store.snapshot()), before, "{kind}");
        // SAFETY: signals our own child.
        unsafe { libc::kill(upload.id() as libc::pid_t, libc::SIGCONT) };
        let finished = upload.wait_with_output().unwrap();
        assert_exit(&finished, 0);
        assert_exact(&store, &wd, &[0], kind);
    });
}
