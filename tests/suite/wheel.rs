//! alitx as a builder installs it: `alitx --version` names the commit it was
//! built from, and the wheel of `scripts/wheel.sh` (manylinux 2.17, built
//! with zig), installed with pip into an empty virtualenv, gives an `alitx`
//! that needs no glibc newer than 2.17 and an `alibuild-alitx` that builds
//! and publishes with it, with no `$ALITX` and no checkout.
//!
//! The wheel test compiles alitx once more (for the glibc 2.17 target, in
//! target/wheel) and installs aliBuild from PyPI: it runs only with
//! `ALITX_WHEEL=1` (scripts/test.sh sets it; README, "Development").

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn version_names_the_commit_built_from() {
    for flag in ["--version", "-V"] {
        let out = alitx(&args(&[flag]));
        assert_exit(&out, 0);
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected_version());
    }
}

#[test]
fn wheel_installs_alitx_and_its_helper_for_every_builder() {
    if std::env::var("ALITX_WHEEL").as_deref() != Ok("1") {
        eprintln!("skipped: ALITX_WHEEL=1 runs it (scripts/test.sh)");
        return;
    }
    let built = Command::new(Path::new(REPO).join("scripts/wheel.sh"))
        .env("CARGO_TARGET_DIR", Path::new(REPO).join("target/wheel"))
        .output()
        .unwrap();
    assert_exit(&built, 0);
    let wheel = only_wheel(&Path::new(REPO).join("dist"));
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains("manylinux_2_17_x86_64"), "{name}");

    let audit = Command::new(Path::new(REPO).join(".venv-wheel/bin/auditwheel"))
        .arg("show")
        .arg(&wheel)
        .output()
        .unwrap();
    assert_exit(&audit, 0);
    let audit = text(&audit)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        audit.contains(r#"consistent with the following platform tag: "manylinux_2_17_x86_64""#),
        "{audit}"
    );

    let scratch = tempfile::tempdir().unwrap();
    let venv = scratch.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap();
    assert_exit(&made, 0);
    let installed = Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .arg(&wheel)
        .output()
        .unwrap();
    assert_exit(&installed, 0);

    let alitx = venv.join("bin/alitx");
    let version = Command::new(&alitx).arg("--version").output().unwrap();
    assert_exit(&version, 0);
    assert_eq!(String::from_utf8_lossy(&version.stdout), expected_version());
    let newest = newest_glibc(&alitx);
    assert!(
        newest <= (2, 17),
        "it needs GLIBC_{}.{}",
        newest.0,
        newest.1
    );

    helper_builds_and_publishes(&venv, scratch.path());
}

fn only_wheel(dist: &Path) -> PathBuf {
    let mut wheels: Vec<PathBuf> = fs::read_dir(dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(
        wheels.len(),
        1,
        "one wheel in {}: {wheels:?}",
        dist.display()
    );
    wheels.pop().unwrap()
}

/// The newest `GLIBC_x.y` version among the symbols `binary` needs.
fn newest_glibc(binary: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump (binutils) runs");
    assert_exit(&out, 0);
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let (major, minor) = v.split_once('.')?;
            Some((major.parse().ok()?, minor.split('.').next()?.parse().ok()?))
        })
        .max()
        .expect("objdump -T lists GLIBC_ symbols")
}

/// `alibuild-alitx build` from the venv, with no `$ALITX` and no `alitx` on
/// PATH, publishes one package to a local-directory store with the venv's
/// alitx: the tarball is the work dir's, a clean `alitx check` follows.
fn helper_builds_and_publishes(venv: &Path, scratch: &Path) {
    let alidist = scratch.join("alidist");
    fs::create_dir(&alidist).unwrap();
    fs::write(
        alidist.join("defaults-release.sh"),
        "package: defaults-release\nversion: v1\n---\n",
    )
    .unwrap();
    fs::write(
        alidist.join("hello.sh"),
        "package: hello\nversion: v1\n---\nmkdir -p \"$INSTALLROOT/share\"\necho hello > \"$INSTALLROOT/share/hello\"\n",
    )
    .unwrap();
    for git in [
        &["init", "-q"][..],
        &["add", "-A"],
        &["commit", "-qm", "recipes"],
    ] {
        let out = Command::new("git")
            .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
            .args(git)
            .current_dir(&alidist)
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }
    // aliBuild's rsync backend wants each package's link directory.
    let store = scratch.join("store");
    for name in ["defaults-release", "hello"] {
        fs::create_dir_all(store.join("TARS").join(ARCH).join(name)).unwrap();
    }
    let work_dir = scratch.join("sw");
    // PATH without any other alitx: the helper must find the venv's own.
    let path = std::env::join_paths(
        std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .filter(|dir| !dir.join("alitx").exists()),
    )
    .unwrap();
    let out = Command::new(venv.join("bin/alibuild-alitx"))
        .args(["build", "hello", "--defaults", "release", "-a", ARCH, "-c"])
        .arg(&alidist)
        .arg("-w")
        .arg(&work_dir)
        .arg("--remote-store")
        .arg(format!("{}::rw", store.display()))
        .env_remove("ALITX")
        .env_remove("VIRTUAL_ENV")
        .env("PATH", path)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        text(&out).contains("alibuild-alitx: committed"),
        "{}",
        text(&out)
    );

    let tarballs = work_dir.join("TARS").join(ARCH).join("store");
    let tarball = fs::read_dir(&tarballs)
        .unwrap()
        .flat_map(|prefix| fs::read_dir(prefix.unwrap().path()).unwrap())
        .flat_map(|hash| fs::read_dir(hash.unwrap().path()).unwrap())
        .map(|file| file.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("hello-v1-1.")
        })
        .expect("aliBuild built hello's tarball");
    let key = tarball.strip_prefix(&work_dir).unwrap();
    assert_eq!(
        fs::read(store.join(key)).unwrap(),
        fs::read(&tarball).unwrap(),
        "{}",
        key.display()
    );
    let check = Command::new(venv.join("bin/alitx"))
        .args(["check", "--remote-store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_exit(&check, 0);
}
