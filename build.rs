//! Names the commit alitx is built from, for `alitx --version`:
//! `$ALITX_COMMIT` when set (CI builds a copy of the tracked files without
//! `.git`, so .ci/run exports it), else the checkout's `git rev-parse`, else
//! "unknown".

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ALITX_COMMIT");
    let commit = std::env::var("ALITX_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(checkout_head)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ALITX_COMMIT={commit}");
}

/// The short commit of this checkout's HEAD, rebuilt when HEAD moves; `None`
/// outside a git checkout of this crate (an sdist or a copy inside another
/// repository).
fn checkout_head() -> Option<String> {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let toplevel = git(&crate_dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&toplevel).canonicalize().ok()? != crate_dir.canonicalize().ok()? {
        return None;
    }
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&crate_dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        let path = crate_dir.join(git(&crate_dir, &["rev-parse", "--git-path", &name])?);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&crate_dir, &["rev-parse", "--short=12", "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
