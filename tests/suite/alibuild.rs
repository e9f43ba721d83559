//! The real aliBuild (PyPI `alibuild`) building a tiny recipe set through
//! `scripts/alibuild-alitx`: the store it writes on Ceph RGW equals what
//! stock aliBuild writes, a killed upload heals by re-running the job, and
//! stock aliBuild reuses what alitx published (from RGW and from a
//! local-directory store) instead of building.
//!
//! aliBuild runs under `ALITX_ALIBUILD_PYTHON` (scripts/test.sh makes a
//! virtualenv with it), else the repository's `.venv/bin/python`. Without
//! it these tests fail, unless `ALITX_SKIP_ALIBUILD=1` says to skip them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// The recipes (name, version, requirement), built in this order.
const PACKAGES: [(&str, &str, Option<&str>); 4] = [
    ("defaults-release", "v1", None),
    ("zlibx", "v1.0", None),
    ("midx", "v2.0", Some("zlibx")),
    ("topx", "v3.0", Some("midx")),
];

/// Stock aliBuild with one change: its boto3 client talks to
/// `AWS_ENDPOINT_URL` instead of https://s3.cern.ch. Run as `python -c`.
const STOCK_ALIBUILD: &str = r#"
import os, runpy, sys, sysconfig
from alibuild_helpers import sync
stock_s3_init = sync.Boto3RemoteSync._s3_init
def s3_init(self):
    self.endpoint_url = os.environ["AWS_ENDPOINT_URL"]
    stock_s3_init(self)
sync.Boto3RemoteSync._s3_init = s3_init
sys.argv[0] = os.path.join(sysconfig.get_path("scripts"), "aliBuild")
runpy.run_path(sys.argv[0], run_name="__main__")
"#;

/// The Python that imports aliBuild, or `None` when explicitly skipped.
fn alibuild_python() -> Option<PathBuf> {
    if std::env::var("ALITX_SKIP_ALIBUILD").as_deref() == Ok("1") {
        return None;
    }
    let python = std::env::var_os("ALITX_ALIBUILD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let imports = Command::new(&python)
        .args(["-c", "import alibuild_helpers"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        imports,
        "{} cannot import aliBuild: run the tests through scripts/test.sh (it installs aliBuild \
         into .venv), or set ALITX_ALIBUILD_PYTHON to a Python with `pip install alibuild`, \
         or ALITX_SKIP_ALIBUILD=1 to skip the aliBuild tests",
        python.display()
    );
    Some(python)
}

/// aliBuild's Python and fresh recipes for a test on `backend`, or `None`
/// when aliBuild or the backend is explicitly skipped.
fn setup(backend: &str) -> Option<(PathBuf, Recipes)> {
    let python = alibuild_python()?;
    backends_and_https()
        .contains(&backend)
        .then(|| (python, Recipes::new()))
}

/// A recipe repository (aliBuild wants a git checkout) and the log its
/// build scripts append to: a package whose name appears there was built
/// from its recipe, not unpacked from a store tarball.
struct Recipes {
    dir: tempfile::TempDir,
}

impl Recipes {
    fn new() -> Recipes {
        let recipes = Recipes {
            dir: tempfile::tempdir().unwrap(),
        };
        let alidist = recipes.alidist();
        fs::create_dir(&alidist).unwrap();
        let built = recipes.dir.path().join("built.log");
        for (name, version, requires) in PACKAGES {
            let mut recipe = format!("package: {name}\nversion: {version}\n");
            if let Some(dep) = requires {
                recipe += &format!("requires:\n  - {dep}\n");
            }
            if name == "defaults-release" {
                recipe += "env:\n  CFLAGS: \"-O2\"\n---\n";
            } else {
                recipe += &format!(
                    "---\nmkdir -p \"$INSTALLROOT/share\"\necho {name} > \"$INSTALLROOT/share/{name}\"\n\
                     echo \"$PKGNAME\" >> \"{}\"\n",
                    built.display()
                );
            }
            fs::write(alidist.join(format!("{name}.sh")), recipe).unwrap();
        }
        recipes.git(&["init", "-q"]);
        recipes.commit("recipes");
        recipes
    }

    /// Make `name`'s build also install `bytes` random bytes, so that its
    /// tarball takes a while to upload.
    fn add_payload(&self, name: &str, bytes: u64) {
        let recipe = self.alidist().join(format!("{name}.sh"));
        let mut text = fs::read_to_string(&recipe).unwrap();
        text += &format!("head -c {bytes} /dev/urandom > \"$INSTALLROOT/share/payload\"\n");
        fs::write(&recipe, text).unwrap();
        self.commit(&format!("{name} with a payload"));
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(self.alidist())
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.org")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.org")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    fn alidist(&self) -> PathBuf {
        self.dir.path().join("alidist")
    }

    /// Packages built from their recipe so far.
    fn built(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("built.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `build topx` in `work_dir` with `store`, through the helper or stock
    /// aliBuild, ready to run.
    fn build(&self, python: &Path, helper: bool, work_dir: &Path, store: &str) -> Command {
        let mut cmd = Command::new(python);
        if helper {
            cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/alibuild-alitx"));
        } else {
            cmd.args(["-c", STOCK_ALIBUILD]);
        }
        cmd.args(["build", "topx", "--defaults", "release", "-a", ARCH, "-c"])
            .arg(self.alidist())
            .arg("-w")
            .arg(work_dir)
            .args(["--remote-store", store])
            .env("ALITX", env!("CARGO_BIN_EXE_alitx"))
            // aliBuild orders dependency lists by set iteration: pin it so
            // two builds write byte-identical tarballs.
            .env("PYTHONHASHSEED", "0");
        cmd
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// The four packages as aliBuild left them in `work_dir` (revision and
/// hash read from its package links), for the store's expected contents.
fn built_work_dir(work_dir: tempfile::TempDir) -> WorkDir {
    let pkgs = PACKAGES
        .iter()
        .map(|(name, version, _)| {
            let links = work_dir.path().join(format!("TARS/{ARCH}/{name}"));
            let mut names: Vec<String> = fs::read_dir(&links)
                .unwrap_or_else(|e| panic!("{}: {e}", links.display()))
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 1, "one revision of {name}: {names:?}");
            let name_rev = names.pop().unwrap();
            let revision = name_rev
                .strip_prefix(&format!("{name}-{version}-"))
                .and_then(|r| r.strip_suffix(&format!(".{ARCH}.tar.gz")))
                .unwrap()
                .to_string();
            let target = fs::read_link(links.join(&name_rev)).unwrap();
            let hash = target.parent().unwrap().file_name().unwrap();
            Pkg {
                name: name.to_string(),
                version: version.to_string(),
                revision,
                hash: hash.to_string_lossy().into_owned(),
                deps: vec![],
            }
        })
        .collect();
    WorkDir {
        dir: work_dir,
        pkgs,
    }
}

fn output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh work dir built by stock aliBuild reading `store` reuses every
/// package from it: no recipe runs, the tarballs are the store's bytes, and
/// the installed tree is there.
fn assert_stock_reuses(
    python: &Path,
    recipes: &Recipes,
    store: &TestStore,
    read_spec: &str,
    env: &[(&str, &str)],
) {
    let before = recipes.built();
    let reader = tempfile::tempdir().unwrap();
    let out = run(recipes
        .build(python, false, reader.path(), read_spec)
        .envs(env.iter().copied()));
    assert_exit(&out, 0);
    assert_eq!(recipes.built(), before, "{}", output(&out));
    let rt = runtime();
    let published = rt.block_on(store.snapshot());
    let reader = built_work_dir(reader);
    for i in 0..PACKAGES.len() {
        let key = reader.pkgs[i].revision().store_key();
        assert_eq!(
            fs::read(reader.tarball_path(i)).unwrap(),
            published[&key],
            "{key}"
        );
    }
    let installed = reader.path().join(format!("{ARCH}/topx/v3.0-1/share/topx"));
    assert_eq!(fs::read_to_string(installed).unwrap(), "topx\n");
}

/// A stock aliBuild build of every package into `store`, then topx's
/// tarball deleted: the state ALICE's clean-up leaves a retired revision
/// in, and a stock upload killed after its links. The build's work dir.
fn stock_build_with_topx_retired(python: &Path, recipes: &Recipes, store: &TestStore) -> WorkDir {
    let work_dir = tempfile::tempdir().unwrap();
    assert_exit(
        &run(&mut recipes.build(python, false, work_dir.path(), &store.spec())),
        0,
    );
    let built = built_work_dir(work_dir);
    let tarball = built.pkgs[PACKAGES.len() - 1].revision().store_key();
    runtime().block_on(async { store.open().await.delete(&tarball).await.unwrap() });
    built
}

/// Through the helper (with `--debug`) to bucket A and stock aliBuild to
/// bucket B of the same RGW: the same keys and bodies, dist links with the
/// same redirect and ACL, no secret in the output; then stock aliBuild reads
/// A back without building.
#[test]
fn helper_writes_what_stock_alibuild_writes_and_reads() {
    let Some((python, recipes)) = setup("s3") else {
        return;
    };
    let rt = runtime();
    let ours = rt.block_on(TestStore::new("s3"));
    let stock = rt.block_on(TestStore::new("s3"));

    let ours_wd = tempfile::tempdir().unwrap();
    let out = run(recipes
        .build(&python, true, ours_wd.path(), &ours.spec())
        .arg("--debug"));
    assert_exit(&out, 0);
    let log = output(&out);
    assert!(log.contains("alibuild-alitx: committed"), "{log}");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert!(
        !log.contains(&secret),
        "the secret key appears in --debug output"
    );
    let stock_wd = tempfile::tempdir().unwrap();
    assert_exit(
        &run(&mut recipes.build(&python, false, stock_wd.path(), &stock.spec())),
        0,
    );
    assert_eq!(
        recipes.built(),
        ["zlibx", "midx", "topx", "zlibx", "midx", "topx"]
    );

    let ours_wd = built_work_dir(ours_wd);
    let expected = ours_wd.expected(0..PACKAGES.len());
    let snapshot = rt.block_on(ours.snapshot());
    assert_eq!(snapshot, expected, "every key and body; no journal left");
    assert_eq!(snapshot, rt.block_on(stock.snapshot()));
    assert_eq!(rt.block_on(ours.pending_uploads()), 0);

    let (
        TestStore::S3 {
            client, bucket: a, ..
        },
        TestStore::S3 { bucket: b, .. },
    ) = (&ours, &stock)
    else {
        unreachable!()
    };
    rt.block_on(async {
        let (ours_backend, stock_backend) = (ours.open().await, stock.open().await);
        for key in expected.keys() {
            let mine = ours_backend.head(key).await.unwrap().unwrap();
            let theirs = stock_backend.head(key).await.unwrap().unwrap();
            let mut metadata = mine.metadata.clone();
            metadata.retain(|k, _| !k.starts_with("alitx-"));
            assert_eq!(metadata, theirs.metadata, "{key}");
            assert_eq!(
                mine.website_redirect,
                theirs.website_redirect.map(|r| format!("/{r}")),
                "{key}: alitx's redirect is stock's with a leading /"
            );
            assert_eq!(
                is_public_read(client, a, key).await,
                is_public_read(client, b, key).await,
                "ACL of {key}"
            );
        }
        // dist: 1 + 2 + 3 + 4, dist-direct: 1 + 2 + 3 + 3, dist-runtime: 1 + 1 + 2 + 3.
        let dist_links = expected.keys().filter(|k| k.contains("/dist")).count();
        assert_eq!(dist_links, 26);
    });

    let read_only = ours.spec().replace("::rw", "");
    assert_stock_reuses(&python, &recipes, &ours, &read_only, &[]);
}

/// alitx killed while uploading: the aliBuild run fails with alitx's
/// message; the same command again heals the store, with no "conflict on
/// S3", and the store is exact.
#[test]
fn killed_upload_heals_when_the_job_runs_again() {
    let Some((python, recipes)) = setup("s3") else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let wd = tempfile::tempdir().unwrap();

    let killed = run(recipes
        .build(&python, true, wd.path(), &store.spec())
        .env("ALITX_FAILPOINT", "after-links"));
    assert_exit(&killed, 1);
    assert!(
        output(&killed).contains("alitx upload of defaults-release v1-1 was killed by SIGKILL"),
        "{}",
        output(&killed)
    );
    let left = rt.block_on(store.keys());
    assert!(
        left.iter().any(|k| k.starts_with(".alitx/journals/"))
            && left.iter().any(|k| k.contains("/dist/defaults-release/"))
            && !left.iter().any(|k| k.contains("/store/")),
        "a pending journal and links without a tarball: {left:?}"
    );

    let again = run(&mut recipes.build(&python, true, wd.path(), &store.spec()));
    assert_exit(&again, 0);
    let log = output(&again);
    assert!(
        log.contains("resume slc9_x86-64/defaults-release-v1-1: rolled-forward"),
        "{log}"
    );
    assert!(
        !log.contains("conflict") && !log.contains("already exists on S3"),
        "{log}"
    );

    let wd = built_work_dir(wd);
    assert_eq!(
        rt.block_on(store.snapshot()),
        wd.expected(0..PACKAGES.len())
    );
    assert_eq!(rt.block_on(store.pending_uploads()), 0);
}

/// A Jenkins job killed with SIGKILL to its whole process group while
/// alitx uploads topx, on an agent whose init does not reap orphans (a
/// container's PID 1; this test process, made a subreaper, stands for it):
/// the killed alitx stays a zombie, which `kill(pid, 0)` still finds. The
/// same job run again at once takes the journal over all the same (a zombie
/// is dead), rolls topx forward and succeeds, with the store exact, while
/// the zombie is still there. On RGW and on a local-directory store.
#[test]
fn a_job_killed_as_a_process_group_heals_at_once_though_alitx_is_a_zombie() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let Some(python) = alibuild_python() else {
        return;
    };
    // SAFETY: only sets this process's child-subreaper flag.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rt = runtime();
    for backend in ["s3", "local"] {
        if !backends().contains(&backend) {
            continue;
        }
        let recipes = Recipes::new();
        recipes.add_payload("topx", 48 << 20);
        let (store, spec) = match backend {
            "s3" => {
                let store = rt.block_on(TestStore::new("s3"));
                let spec = store.spec();
                (store, spec)
            }
            _ => {
                let store = local_store_in_use(rt);
                let spec = format!("{}::rw", store.spec());
                (store, spec)
            }
        };
        let wd = tempfile::tempdir().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut job = recipes
            .build(&python, true, wd.path(), &spec)
            .process_group(0)
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let group = KillOnDrop(job.id());
        let job_log = || fs::read_to_string(log.path()).unwrap();
        let upload = stop_upload_mid_bulk(&store, job.id(), "topx", &job_log);
        let keys = rt.block_on(store.keys());
        assert!(
            !keys
                .iter()
                .any(|k| k.contains("/store/") && k.contains("/topx-")),
            "{backend}: topx was published before its upload could be stopped: {keys:?}"
        );
        drop(group);
        assert_eq!(job.wait().unwrap().signal(), Some(9));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_state(upload) != Some('Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend}: alitx did not die"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            proc_stat(upload).unwrap().parent,
            std::process::id(),
            "{backend}: the zombie is this process's to reap"
        );
        let listed = list_journals(&spec);
        assert_eq!(listed.as_array().unwrap().len(), 1, "{backend}: {listed}");
        assert_eq!(listed[0]["package"], "topx");
        assert_eq!(listed[0]["state"], "pending");
        assert_eq!(listed[0]["owner"]["pid"], upload);
        assert_eq!(listed[0]["lease"], "owner-dead", "{backend}: {listed}");

        let again = run(&mut recipes.build(&python, true, wd.path(), &spec));
        assert_exit(&again, 0);
        let said = output(&again);
        assert!(
            said.contains(&format!("resume {ARCH}/topx-v3.0-1: rolled-forward")),
            "{backend}: {said}"
        );
        assert_eq!(
            process_state(upload),
            Some('Z'),
            "{backend}: the zombie went away before the job ran again"
        );
        let mut status = 0;
        // SAFETY: waits for our own child, the zombie, and reaps it.
        let reaped = unsafe { libc::waitpid(upload as libc::pid_t, &mut status, 0) };
        assert_eq!(reaped, upload as libc::pid_t);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        let wd = built_work_dir(wd);
        assert_exact(&store, &wd, &[0, 1, 2, 3], backend);
    }
}

/// Kills a process group with SIGKILL when dropped: a failing test leaves
/// no job running.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signals a process group this test started.
        unsafe { libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL) };
    }
}

/// Wait until the upload of `package` by `parent`'s alitx (its `alitx
/// serve-uploads`) has recorded its staged upload in its journal (it is
/// sending the tarball's parts), then stop that process (SIGSTOP) there;
/// its pid.
fn stop_upload_mid_bulk(
    store: &TestStore,
    parent: u32,
    package: &str,
    log: &dyn Fn() -> String,
) -> u32 {
    let rt = runtime();
    let backend = rt.block_on(store.open());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no upload of {package} seen: {}",
            log()
        );
        if let Some(pid) = upload_child(parent) {
            let staged = rt.block_on(async {
                for key in backend.list(".alitx/journals/").await.unwrap() {
                    let Some(bytes) = backend.get(&key).await.unwrap() else {
                        continue;
                    };
                    let journal: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    if journal["revision"]["package"] == package
                        && journal["tarball"]["upload_id"].is_string()
                    {
                        return true;
                    }
                }
                false
            });
            if staged {
                // SAFETY: stops our own descendant.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                return pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The pid of `parent`'s child running alitx's uploads (`alitx serve-uploads`).
fn upload_child(parent: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        if proc_stat(pid)?.parent != parent {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let words: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        words.contains(&&b"serve-uploads"[..]).then_some(pid)
    })
}

/// An empty local-directory store as stock aliBuild can use it: its rsync
/// backend fetches each package's link directory before building it, and
/// stops if the store lacks one, so they exist, as in any store in use.
fn local_store_in_use(rt: &tokio::runtime::Runtime) -> TestStore {
    let store = rt.block_on(TestStore::new("local"));
    for (name, _, _) in PACKAGES {
        fs::create_dir_all(store.root().join(format!("TARS/{ARCH}/{name}"))).unwrap();
    }
    store
}

/// alitx refusing an upload (another build's dist link at one of its keys)
/// stops the build with alitx's message; nothing of that revision is
/// written and no journal is left.
#[test]
fn a_refused_upload_fails_the_build_with_alitx_message() {
    let Some((python, recipes)) = setup("local") else {
        return;
    };
    let rt = runtime();
    let store = local_store_in_use(rt);
    let foreign = format!("TARS/{ARCH}/dist/zlibx/zlibx-v1.0-1/zlibx-v1.0-1.{ARCH}.tar.gz");
    rt.block_on(store.put_foreign(&foreign, b"another build's link"));

    let wd = tempfile::tempdir().unwrap();
    let rw = format!("{}::rw", store.spec());
    let out = run(&mut recipes.build(&python, true, wd.path(), &rw));
    assert_exit(&out, 1);
    let log = output(&out);
    assert!(
        log.contains("alitx upload of zlibx v1.0-1 failed (exit 3): ") && log.contains(&foreign),
        "{log}"
    );
    assert_eq!(recipes.built(), ["zlibx"], "the build stopped at zlibx");
    let keys = rt.block_on(store.keys());
    let zlibx: Vec<&String> = keys.iter().filter(|k| k.contains("zlibx")).collect();
    assert_eq!(zlibx, [&foreign], "{keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.contains("/store/") && k.contains("defaults-release")),
        "defaults-release is published"
    );
    assert!(!keys.iter().any(|k| k.starts_with(".alitx/")), "{keys:?}");
}

/// A local-directory store written through the helper (alitx upload) is
/// read by stock aliBuild's rsync backend, which reuses every package.
///
/// Stock aliBuild finds a tarball with `rsync --list-only
/// "STORE/<store path>/<pkg>-<ver>-*.<arch>.tar.gz"`: only a remote rsync
/// expands that `*`, so for a plain `/path` store it never finds one and
/// rebuilds. The reader therefore names the same directory the way rsync
/// reaches another host, `localhost:/path`, through a remote shell that runs
/// the command here.
#[test]
fn stock_alibuild_reuses_a_local_directory_store_written_by_alitx() {
    let Some((python, recipes)) = setup("local") else {
        return;
    };
    let rt = runtime();
    let store = local_store_in_use(rt);
    let wd = tempfile::tempdir().unwrap();
    let rw = format!("{}::rw", store.spec());
    let out = run(&mut recipes.build(&python, true, wd.path(), &rw));
    assert_exit(&out, 0);
    assert!(
        output(&out).contains("alibuild-alitx: committed"),
        "{}",
        output(&out)
    );

    let wd = built_work_dir(wd);
    let published: BTreeMap<String, Vec<u8>> = rt.block_on(store.snapshot());
    assert_eq!(published, wd.expected(0..PACKAGES.len()));
    for key in published.keys().filter(|k| !k.contains("/store/")) {
        let path = store.root().join(key);
        assert!(
            path.is_symlink(),
            "{key} is a symlink, as aliBuild lays it out"
        );
    }

    let rsh = recipes.dir.path().join("local-rsh");
    fs::write(&rsh, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let read_spec = format!("localhost:{}", store.spec());
    let rsh = rsh.display().to_string();
    assert_stock_reuses(
        &python,
        &recipes,
        &store,
        &read_spec,
        &[("RSYNC_RSH", &rsh)],
    );
}

/// `--help` is aliBuild's; a missing aliBuild or alitx is a clear error that
/// says what to do, before anything is built or written.
#[test]
fn helper_help_and_what_it_needs() {
    let Some((python, recipes)) = setup("local") else {
        return;
    };
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/alibuild-alitx");
    let help = run(Command::new(&python).arg(&helper).args(["build", "--help"]));
    assert_exit(&help, 0);
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(usage.contains("usage: aliBuild build") && usage.contains("--remote-store"));

    // -S: no site-packages, so aliBuild does not import; no aliBuild on PATH.
    let no_alibuild = run(Command::new(&python)
        .arg("-S")
        .arg(&helper)
        .args(["build", "topx"])
        .env("PATH", recipes.dir.path()));
    assert_exit(&no_alibuild, 1);
    assert!(
        stderr(&no_alibuild).contains("cannot import aliBuild")
            && stderr(&no_alibuild).contains("-m pip install 'alibuild>=1.17.43,<1.18'"),
        "{}",
        stderr(&no_alibuild)
    );

    let rt = runtime();
    let store = local_store_in_use(rt);
    let wd = tempfile::tempdir().unwrap();
    let rw = format!("{}::rw", store.spec());
    let no_alitx = run(recipes
        .build(&python, true, wd.path(), &rw)
        .env("ALITX", "/nonexistent/alitx"));
    assert_exit(&no_alitx, 1);
    assert!(
        stderr(&no_alitx).contains("ALITX=/nonexistent/alitx is not an executable file"),
        "{}",
        stderr(&no_alitx)
    );
    assert!(recipes.built().is_empty());
    assert!(rt.block_on(store.keys()).is_empty());
}

/// A stock upload whose tarball is then deleted (as ALICE's clean-up
/// retires old revisions, or as a stock upload killed before its tarball
/// leaves it) makes the next stock build of that package fail. `alitx
/// check` reports the revision `unpublished` (exit 0: its number stays
/// reserved), bulk `alitx repair` keeps every key of it, `repair
/// --unpublish` naming it removes exactly its keys, and the same stock
/// build then succeeds and publishes it.
#[test]
fn a_retired_stock_revision_is_kept_until_unpublish_names_it() {
    let Some((python, recipes)) = setup("s3") else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let first = stock_build_with_topx_retired(&python, &recipes, &store);
    let complete = first.expected(0..PACKAGES.len());
    let topx = PACKAGES.len() - 1;
    let top = first.pkgs[topx].revision();
    let mut retired = complete.clone();
    retired.remove(&top.store_key());

    let stuck = tempfile::tempdir().unwrap();
    let out = run(&mut recipes.build(&python, false, stuck.path(), &store.spec()));
    assert_ne!(out.status.code(), Some(0), "{}", output(&out));
    assert!(output(&out).contains("already exists"), "{}", output(&out));
    assert_eq!(rt.block_on(store.snapshot()), retired);

    let check = alitx(&store.cmd("check", &["--json"]));
    assert_exit(&check, 0);
    let states: BTreeMap<String, String> = json(&check)["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tarball"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut expected: BTreeMap<String, String> = first
        .pkgs
        .iter()
        .map(|p| (p.revision().tarball_name(), "complete".to_string()))
        .collect();
    expected.insert(top.tarball_name(), "unpublished".into());
    assert_eq!(states, expected);

    for extra in [&[][..], &["--package", "topx"][..]] {
        let mut repair = store.cmd("repair", &["--min-age", "0"]);
        repair.extend(args(extra));
        assert_exit(&alitx(&repair), 0);
        assert_eq!(rt.block_on(store.snapshot()), retired, "{extra:?}");
    }

    let unpublish = store.cmd(
        "repair",
        &[
            "--package",
            "topx",
            "--version",
            &top.version,
            "--revision",
            &top.revision,
            "--unpublish",
            "--json",
        ],
    );
    let mut dry = unpublish.clone();
    dry.push("--dry-run".into());
    let out = alitx(&dry);
    assert_exit(&out, 0);
    let mut topx_keys: Vec<String> = retired
        .keys()
        .filter(|key| key.contains("/topx/") || key.contains("/topx-"))
        .cloned()
        .collect();
    topx_keys.sort();
    let mut would: Vec<String> = json(&out)["would_delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    would.sort();
    assert_eq!(would, topx_keys);
    assert_eq!(rt.block_on(store.snapshot()), retired, "dry run");
    assert_exit(&alitx(&unpublish), 0);
    let mut left = retired.clone();
    left.retain(|key, _| !topx_keys.contains(key));
    assert_eq!(rt.block_on(store.snapshot()), left, "only topx's keys went");

    let again = tempfile::tempdir().unwrap();
    let out = run(&mut recipes.build(&python, false, again.path(), &store.spec()));
    assert_exit(&out, 0);
    assert!(!output(&out).contains("already exists"), "{}", output(&out));
    let again = built_work_dir(again);
    assert_eq!(
        rt.block_on(store.snapshot()),
        again.expected(0..PACKAGES.len())
    );
}

/// The seed's incident, healed: a stock upload that died after its links
/// (package link and dist links in the store, the tarball never came) and
/// a rebuild of the same hash through the helper. While the leftovers are
/// younger than `--adopt-after` the build fails saying when to retry; once
/// they are older (`ALITX_ADOPT_AFTER=0s` here) the helper's upload
/// completes the revision, the build is green, and stock aliBuild reuses
/// every package.
#[test]
fn the_helper_completes_a_revision_a_killed_stock_upload_left() {
    let Some((python, recipes)) = setup("s3") else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let first = stock_build_with_topx_retired(&python, &recipes, &store);
    let topx = PACKAGES.len() - 1;
    let leftovers = rt.block_on(store.snapshot());

    let young = tempfile::tempdir().unwrap();
    let out = run(&mut recipes.build(&python, true, young.path(), &store.spec()));
    assert_ne!(out.status.code(), Some(0), "{}", output(&out));
    assert!(output(&out).contains("re-run in"), "{}", output(&out));
    assert_eq!(rt.block_on(store.snapshot()), leftovers, "young: untouched");

    let again = tempfile::tempdir().unwrap();
    let out = run(recipes
        .build(&python, true, again.path(), &store.spec())
        .env("ALITX_ADOPT_AFTER", "0s"));
    assert_exit(&out, 0);
    let again = built_work_dir(again);
    assert_eq!(again.pkgs[topx].revision(), first.pkgs[topx].revision());
    assert_eq!(
        rt.block_on(store.snapshot()),
        again.expected(0..PACKAGES.len())
    );
    assert_stock_reuses(&python, &recipes, &store, &store.spec(), &[]);
}

/// Through the helper, a build from a `b3://` store is fetched by one
/// `alitx fetch` that starts with the build's first package: the work dir's
/// TARS/ (package links, past revisions' links from the manifest and from
/// the listing, tarballs) is byte for byte what stock aliBuild fetches,
/// nothing is built, aliBuild's own fetch never runs (its `--debug` lines
/// are absent), and the end of the build says how long aliBuild waited in
/// its fetch calls; aliBuild unpacks a package before `alitx fetch` ends.
/// With `ALITX_FETCH=0` aliBuild fetches, to the same; and so it does when
/// the prefetch is killed or the store refuses it.
#[test]
fn the_helper_prefetches_what_stock_alibuild_fetches() {
    let Some((python, recipes)) = setup("s3") else {
        return;
    };
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3"));
    let writer = tempfile::tempdir().unwrap();
    assert_exit(
        &run(&mut recipes.build(&python, true, writer.path(), &store.spec())),
        0,
    );
    // Past revisions of zlibx: one in its manifest, one only listed.
    let old = |rev: &str| format!("zlibx-v0.9-{rev}.{ARCH}.tar.gz");
    let target = |rev: &str| format!("{ARCH}/store/ab/{}/{}", "ab".repeat(20), old(rev));
    rt.block_on(async {
        let manifest = format!("{}\t{}\n", old("1"), target("1"));
        store
            .put_foreign(&format!("TARS/{ARCH}/zlibx.manifest"), manifest.as_bytes())
            .await;
        let link = format!("{}\n", target("2"));
        store
            .put_foreign(&format!("TARS/{ARCH}/zlibx/{}", old("2")), link.as_bytes())
            .await;
    });

    let read_only = store.spec().replace("::rw", "");
    let build_from_store = |helper: bool, env: &[(&str, &str)]| {
        let wd = tempfile::tempdir().unwrap();
        let before = recipes.built();
        let out = run(recipes
            .build(&python, helper, wd.path(), &read_only)
            .arg("--debug")
            .envs(env.iter().copied()));
        assert_exit(&out, 0);
        let log = output(&out);
        assert_eq!(recipes.built(), before, "nothing built: {log}");
        (log, tree(&wd.path().join("TARS")))
    };
    let alibuild_fetching = [
        "Fetching symlink manifest",
        "Updating remote store for package",
    ];
    let (log, stock) = build_from_store(false, &[]);
    assert!(alibuild_fetching.iter().all(|l| log.contains(l)), "{log}");
    for rev in ["1", "2"] {
        assert_eq!(
            stock.get(&format!("{ARCH}/zlibx/{} ->", old(rev))),
            Some(&format!("../../{}", target(rev)).into_bytes()),
            "{rev}"
        );
    }
    let tarballs = stock.keys().filter(|k| k.ends_with(".tar.gz")).count();
    assert_eq!(tarballs, PACKAGES.len(), "{stock:?}");

    let (log, ours) = build_from_store(true, &[]);
    assert!(
        log.contains("alibuild-alitx: aliBuild waited ")
            && log.contains(" fetch calls (alitx fetch prefetched 4 packages in ")
            && log.contains(": 4 tarballs fetched ("),
        "{log}"
    );
    assert!(!alibuild_fetching.iter().any(|l| log.contains(l)), "{log}");
    assert_eq!(ours, stock);

    // An `alitx` for the helper: `script`, run by sh.
    let wrapper = |name: &str, script: &str| {
        let path = recipes.dir.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let alitx = env!("CARGO_BIN_EXE_alitx");

    // aliBuild's fetch of a package waits for that package's line, not for
    // alitx fetch to end: an alitx fetch that ends only once aliBuild has
    // unpacked a package (else after 20 s) holds up nothing.
    let unpacked = recipes.dir.path().join("unpacked before the fetch ended");
    let held = wrapper(
        "alitx-held-fetch",
        &format!(
            r#"[ "$1" = fetch ] || exec {alitx} "$@"
{alitx} "$@"; code=$?
previous=
for arg; do [ "$previous" = --work-dir ] && work_dir=$arg; previous=$arg; done
for i in $(seq 200); do
  for hash in "$work_dir"/{ARCH}/*/*/.build-hash; do
    [ -e "$hash" ] && {{ echo "$hash" > "{}"; exit $code; }}
  done
  sleep 0.1
done
exit $code
"#,
            unpacked.display()
        ),
    );
    let (log, ours) = build_from_store(true, &[("ALITX", &held)]);
    assert!(
        unpacked.exists(),
        "aliBuild unpacked nothing before alitx fetch ended: {log}"
    );
    assert!(
        log.contains(" fetch calls (alitx fetch prefetched 4 packages in "),
        "{log}"
    );
    assert_eq!(ours, stock);

    let (log, ours) = build_from_store(true, &[("ALITX_FETCH", "0")]);
    assert!(
        log.contains(" fetch calls (aliBuild's own fetch)")
            && alibuild_fetching.iter().all(|l| log.contains(l)),
        "{log}"
    );
    assert_eq!(ours, stock);

    // A prefetch that dies leaves the fetch to aliBuild, and at most a
    // file beside a tarball's place, which aliBuild does not take for one.
    let (log, mut ours) = build_from_store(true, &[("ALITX_FAILPOINT", "fetch-placing zlibx")]);
    assert!(
        log.contains("alibuild-alitx: alitx fetch failed (killed by SIGKILL): aliBuild fetches itself every package alitx had not finished")
            && log.contains(" fetch calls (alitx fetch failed: aliBuild's own fetch)")
            && alibuild_fetching.iter().all(|l| log.contains(l)),
        "{log}"
    );
    ours.retain(|path, _| !path.ends_with(".alitx-fetch"));
    assert_eq!(ours, stock);

    // A store that refuses alitx's prefetch (its credentials here): one
    // warning, and aliBuild fetches every package itself.
    let refused = wrapper(
        "alitx-refused-fetch",
        &format!(
            "[ \"$1\" = fetch ] && export AWS_SECRET_ACCESS_KEY=refused\nexec {alitx} \"$@\"\n"
        ),
    );
    let (log, ours) = build_from_store(true, &[("ALITX", &refused)]);
    assert_eq!(
        log.matches("alibuild-alitx: alitx fetch could not fetch any package (")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("): aliBuild fetches every package itself")
            && log.contains(", 4 failed)")
            && alibuild_fetching.iter().all(|l| log.contains(l)),
        "{log}"
    );
    assert_eq!(ours, stock);
}

/// The helper checks each tarball aliBuild fetches against the record alitx
/// left when it published it, before aliBuild unpacks it: on RGW (`b3://`)
/// and from a local-directory store (read as `localhost:/path`, see
/// above). Intact revisions are reused; one byte flipped (same size) or a
/// truncated tarball is refused, the fetched file deleted, the build
/// stopped with the commands that fix the store; a revision without a
/// record (as stock aliBuild publishes it) passes.
#[test]
fn helper_refuses_a_fetched_tarball_that_differs_from_its_record_on_rgw() {
    fetches_are_checked_against_records("s3");
}

/// The same through the gateway's HTTPS endpoint, aliBuild's boto3 and
/// alitx trusting its CA through `AWS_CA_BUNDLE`.
#[test]
fn helper_refuses_a_fetched_tarball_that_differs_from_its_record_over_https() {
    fetches_are_checked_against_records("s3-https");
}

#[test]
fn helper_refuses_a_fetched_tarball_that_differs_from_its_record_locally() {
    fetches_are_checked_against_records("local");
}

fn fetches_are_checked_against_records(backend: &str) {
    let Some((python, recipes)) = setup(backend) else {
        return;
    };
    let rt = runtime();
    let store = match backend {
        "local" => local_store_in_use(rt),
        _ => rt.block_on(TestStore::new(backend)),
    };
    let writer = tempfile::tempdir().unwrap();
    let rw = match backend {
        "local" => format!("{}::rw", store.spec()),
        _ => store.spec(),
    };
    assert_exit(
        &run(recipes
            .build(&python, true, writer.path(), &rw)
            .envs(store.cli_env())),
        0,
    );
    let writer = built_work_dir(writer);
    assert_eq!(rt.block_on(store.records()).len(), PACKAGES.len());

    let rsh = recipes.dir.path().join("local-rsh");
    fs::write(&rsh, "#!/bin/sh\nshift\nexec sh -c \"$*\"\n").unwrap();
    fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let read_spec = match backend {
        "local" => format!("localhost:{}", store.spec()),
        _ => store.spec().replace("::rw", ""),
    };
    // A build through the helper that only reads the store, in a fresh work dir.
    let read = |env: &[(&str, &str)]| {
        let wd = tempfile::tempdir().unwrap();
        let before = recipes.built();
        let out = run(recipes
            .build(&python, true, wd.path(), &read_spec)
            .envs(store.cli_env())
            .env("RSYNC_RSH", &rsh)
            .envs(env.iter().copied()));
        let built: Vec<String> = recipes.built()[before.len()..].to_vec();
        (out, wd, built)
    };
    let (out, _, built) = read(&[]);
    assert_exit(&out, 0);
    assert!(built.is_empty(), "every package reused: {}", output(&out));
    // From b3:// the helper's prefetch refuses a damaged tarball; with it
    // off, and from rsync stores, its check of what aliBuild fetched does.
    let own_fetch: &[(&str, &str)] = &[("ALITX_FETCH", "0")];
    let refusals: &[(&[(&str, &str)], &str)] = match backend {
        "local" => &[(&[], "; deleted ")],
        _ => &[
            (&[], "; alitx fetch left nothing at "),
            (own_fetch, "; deleted "),
        ],
    };

    let tarball = |i: usize| writer.pkgs[i].revision().store_key();
    let original = |i: usize| fs::read(writer.tarball_path(i)).unwrap();
    let (zlibx, midx) = (1, 2);
    let mut flipped = original(zlibx);
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    rt.block_on(store.put_foreign(&tarball(zlibx), &flipped));
    let whole = original(midx);
    rt.block_on(store.put_foreign(&tarball(midx), &whole[..whole.len() - 100]));
    for (i, damage) in [
        (zlibx, "its SHA-256 is"),
        (midx, "bytes, its publication record"),
    ] {
        for (env, fate) in refusals {
            let (out, wd, built) = read(env);
            assert_exit(&out, 1);
            let log = output(&out);
            assert!(log.contains(fate), "{backend} {env:?}: {log}");
            let rev = writer.pkgs[i].revision();
            let id = format!("{ARCH}/{}", rev.full_version());
            assert!(
                log.contains(&format!(
                    "the tarball of {id} fetched from {read_spec} does not match what was published"
                )) && log.contains(damage),
                "{backend}: {log}"
            );
            let names = format!(
                "--remote-store {read_spec} --architecture {ARCH} --package {} --version {} --revision {}",
                rev.package, rev.version, rev.revision
            );
            assert!(log.contains(&format!("`alitx verify {names}`")), "{log}");
            assert!(
                log.contains(&format!("`alitx repair {names} --unpublish`")),
                "{log}"
            );
            assert!(
                !wd.path().join(rev.store_key()).exists(),
                "{backend}: the damaged tarball was deleted before unpacking"
            );
            assert!(
                !wd.path()
                    .join(format!(
                        "{ARCH}/{}/{}-{}",
                        rev.package, rev.version, rev.revision
                    ))
                    .exists(),
                "{backend}: nothing of it was unpacked"
            );
            assert!(
                !built.contains(&rev.package),
                "{backend}: the build stopped: {built:?}"
            );
        }
        // Repaired by hand: the next run reaches the next damaged package.
        rt.block_on(store.put_foreign(&tarball(i), &original(i)));
    }

    // A record without the size and SHA-256 metadata (as an older alitx
    // wrote it) is checked by its body (by the helper's own check: alitx
    // fetch always reads the body).
    let record_key = alitx::record::key_of(&writer.pkgs[zlibx].revision());
    let record = rt.block_on(async { store.open().await.get(&record_key).await.unwrap() });
    let parsed = alitx::record::parse(&record_key, record.as_deref().unwrap()).unwrap();
    let info = rt.block_on(async { store.open().await.head(&record_key).await.unwrap() });
    let metadata = info.unwrap().metadata;
    assert_eq!(
        (metadata.get("alitx-size"), metadata.get("alitx-sha256")),
        (Some(&parsed.size.to_string()), Some(&parsed.sha256)),
        "{backend}: the record's metadata names what a fetch checks"
    );
    rt.block_on(store.put_foreign(&record_key, &record.unwrap()));
    let (out, _, built) = read(own_fetch);
    assert_exit(&out, 0);
    assert!(built.is_empty(), "{backend}: {}", output(&out));
    rt.block_on(store.put_foreign(&tarball(zlibx), &flipped));
    let (out, _, _) = read(own_fetch);
    assert_exit(&out, 1);
    assert!(
        output(&out).contains("its SHA-256 is"),
        "{backend}: {}",
        output(&out)
    );
    rt.block_on(store.put_foreign(&tarball(zlibx), &original(zlibx)));

    // Without a record (as stock aliBuild publishes), a revision passes.
    rt.block_on(async {
        let backend = store.open().await;
        backend
            .delete(&alitx::record::key_of(&writer.pkgs[midx].revision()))
            .await
            .unwrap();
    });
    let (out, _, built) = read(&[]);
    assert_exit(&out, 0);
    assert!(built.is_empty(), "{backend}: {}", output(&out));
}
