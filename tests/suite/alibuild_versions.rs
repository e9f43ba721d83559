//! aliBuild releases the helper cannot serve. The supported range is
//! 1.17.43 to 1.17.48: `scripts/test.sh` runs tests/alibuild.rs with both
//! ends. Before 1.17.43 aliBuild's b3:// backend hard-codes
//! https://s3.cern.ch: with `AWS_ENDPOINT_URL` set for a b3:// store, the
//! helper refuses to run it rather than let its fetching silently talk to
//! CERN S3 while alitx uploads elsewhere. aliBuild 1.17.20 is run under
//! `ALITX_ALIBUILD_UNSUPPORTED_PYTHON` (scripts/test.sh installs it into
//! .venv-alibuild-1.17.20); without it this test fails, unless
//! `ALITX_SKIP_ALIBUILD=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn unsupported_alibuild_python() -> Option<PathBuf> {
    if std::env::var("ALITX_SKIP_ALIBUILD").as_deref() == Ok("1") {
        return None;
    }
    let python = std::env::var_os("ALITX_ALIBUILD_UNSUPPORTED_PYTHON").expect(
        "ALITX_ALIBUILD_UNSUPPORTED_PYTHON is not set: run scripts/test.sh (it installs aliBuild 1.17.20 \
         into .venv-alibuild-1.17.20), or ALITX_SKIP_ALIBUILD=1 to skip the aliBuild tests",
    );
    Some(PathBuf::from(python))
}

fn helper(python: &Path, work_dir: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/alibuild-alitx"))
        .env("ALITX", env!("CARGO_BIN_EXE_alitx"))
        .current_dir(work_dir);
    cmd
}

#[test]
fn an_alibuild_that_hard_codes_the_s3_endpoint_is_refused_for_a_b3_store() {
    let Some(python) = unsupported_alibuild_python() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let build = [
        "build",
        "zlib",
        "--defaults",
        "release",
        "-w",
        "sw",
        "--remote-store",
        "b3://alitx-refused::rw",
    ];
    let out = helper(&python, work.path())
        .args(build)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("alibuild-alitx: aliBuild 1.17.20 (")
            && err.contains(
                "hard-codes https://s3.cern.ch for b3:// stores, so AWS_ENDPOINT_URL=http://127.0.0.1:9 cannot apply to its fetching; use aliBuild 1.17.43 or later"
            ),
        "{err}"
    );
    // Refused before aliBuild ran: it made no work dir.
    assert!(!work.path().join("sw").exists());

    // Without AWS_ENDPOINT_URL nothing needs overriding: aliBuild runs.
    let out = helper(&python, work.path())
        .args(["build", "--help"])
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: aliBuild build"));
}
