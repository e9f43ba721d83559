//! `alitx --version` names the commit alitx was built from.

mod common;

use std::process::Command;

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The commit `alitx --version` must name: `$ALITX_COMMIT` as build.rs read
/// it, else this checkout's HEAD, else "unknown" (a copy without `.git`).
fn expected_version() -> String {
    let commit = std::env::var("ALITX_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(REPO)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    format!("alitx {} (commit {commit})\n", env!("CARGO_PKG_VERSION"))
}

#[test]
fn version_names_the_commit_built_from() {
    for flag in ["--version", "-V"] {
        let out = alitx(&args(&[flag]));
        assert_exit(&out, 0);
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected_version());
    }
}
