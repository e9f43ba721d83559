//! What only the local-directory store has to get right: metadata that a
//! foreign object re-created at a reused inode number never inherits,
//! temporary files a killed writer leaves (reported by `check`, removed by
//! `repair`, or freed with their staged upload), completion by
//! put-if-absent, and a full disk (refused early with both figures; abort
//! and delete still work).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::common::*;
use alitx::error::ErrorKind;
use alitx::layout::Revision;
use alitx::storage::{LocalStore, Metadata, ObjectInfo, PutMode, Store, UploadedPart};
use bytes::Bytes;

const MIB: usize = 1 << 20;

fn txn(id: &str) -> Metadata {
    [("alitx-txn".to_string(), id.to_string())].into()
}

fn revision() -> Revision {
    Revision::new(ARCH, "zlibx", "v1.0", "1", &hash_of("zlibx")).unwrap()
}

fn open(root: &Path) -> Arc<dyn Store> {
    Arc::new(LocalStore::new(root.to_path_buf()))
}

/// `n` bytes that differ for every `seed`.
fn filled(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn stage(
    store: &dyn Store,
    key: &str,
    metadata: &Metadata,
    parts: &[Bytes],
) -> (String, Vec<UploadedPart>) {
    let id = store.create_upload(key, metadata).await.unwrap();
    let mut uploaded = Vec::new();
    for (number, data) in (1..).zip(parts) {
        uploaded.push(
            store
                .upload_part(key, &id, number, data.clone())
                .await
                .unwrap(),
        );
    }
    (id, uploaded)
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            } else {
                let rel = entry
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string();
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}

fn internal(root: &Path, sub: &str) -> PathBuf {
    root.join(".alitx-store").join(sub)
}

// ------------------------------------------------------------ inode reuse

/// Remove the object at `path` outside alitx and make a new one there with
/// `recreate`, until the filesystem hands out the old inode number again:
/// ext4 gives the lowest free number of the directory's group, so each
/// re-creation that got another number is parked in `park` (same
/// filesystem, outside the store) to use that number up. The number of
/// tries, or `None` if the old number never came back.
fn recreate_at_same_inode(path: &Path, park: &Path, recreate: impl Fn(&Path)) -> Option<usize> {
    let ino = fs::symlink_metadata(path).unwrap().ino();
    fs::create_dir_all(park).unwrap();
    fs::remove_file(path).unwrap();
    for attempt in 1..=2000 {
        recreate(path);
        if fs::symlink_metadata(path).unwrap().ino() == ino {
            return Some(attempt);
        }
        fs::rename(path, park.join(attempt.to_string())).unwrap();
    }
    None
}

#[test]
fn a_foreign_link_at_a_reused_inode_has_no_alitx_metadata() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = open(&root);
        let link = revision().package_link();
        store.put_link_if_absent(&link, &txn("t1")).await.unwrap();
        let ours = store.head(&link.key).await.unwrap().unwrap();
        assert_eq!(ours.metadata, txn("t1"));

        // Someone removes the link and makes it again, with the same body.
        let path = root.join(&link.key);
        let Some(tries) = recreate_at_same_inode(&path, &dir.path().join("park"), |p| {
            symlink(&link.symlink_target, p).unwrap()
        }) else {
            eprintln!(
                "skipped: this filesystem never reused the inode number of {}",
                path.display()
            );
            return;
        };
        eprintln!("inode number reused after {tries} re-creation(s)");
        assert_eq!(
            store.head(&link.key).await.unwrap(),
            Some(ObjectInfo {
                size: ours.size,
                metadata: Metadata::new(),
                website_redirect: None,
            }),
            "the foreign link inherited alitx's metadata"
        );
        assert_eq!(
            store.get(&link.key).await.unwrap().unwrap(),
            Bytes::from(link.body.clone())
        );

        // Deleting the foreign link takes the stale sidecar with it, so a
        // later object cannot match it either.
        store.delete(&link.key).await.unwrap();
        assert_eq!(files_under(&internal(&root, "meta")), Vec::<String>::new());
    });
}

#[test]
fn a_foreign_file_at_a_reused_inode_has_no_alitx_metadata() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = open(&root);
        let key = revision().store_key();
        store
            .put(
                &key,
                Bytes::from_static(b"ours"),
                &txn("t1"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let path = root.join(&key);
        let Some(_) = recreate_at_same_inode(&path, &dir.path().join("park"), |p| {
            fs::write(p, b"ours").unwrap()
        }) else {
            eprintln!(
                "skipped: this filesystem never reused the inode number of {}",
                path.display()
            );
            return;
        };
        let info = store.head(&key).await.unwrap().unwrap();
        assert_eq!(
            info.metadata,
            Metadata::new(),
            "foreign file inherited alitx's metadata"
        );
    });
}

#[test]
fn a_foreign_rewrite_of_the_same_inode_has_no_alitx_metadata() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        let key = revision().store_key();
        store
            .put(
                &key,
                Bytes::from_static(b"ours"),
                &txn("t1"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let path = root.path().join(&key);
        let ino = fs::metadata(&path).unwrap().ino();
        // `cp other key` truncates and rewrites the same inode.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&path, b"theirs, longer").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        let info = store.head(&key).await.unwrap().unwrap();
        assert_eq!(info.metadata, Metadata::new());
        assert_eq!(info.size, 14);
    });
}

#[test]
fn untouched_objects_keep_their_metadata_across_replacement_and_relinking() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        let key = ".alitx/journals/x.json";
        store
            .put(
                key,
                Bytes::from_static(b"1"),
                &txn("t1"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        store
            .put(
                key,
                Bytes::from_static(b"22"),
                &txn("t2"),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let info = store.head(key).await.unwrap().unwrap();
        assert_eq!((info.size, info.metadata), (2, txn("t2")));
        // One sidecar: the replaced object's went with it.
        let sidecars = files_under(&internal(root.path(), "meta"));
        assert_eq!(sidecars.len(), 1, "{sidecars:?}");
        assert_eq!(
            files_under(&internal(root.path(), "tmp")),
            Vec::<String>::new()
        );
    });
}

// ---------------------------------------------------- killed writers' files

/// Set `path`'s modification time (not its target's) `secs` into the past.
fn age(path: &Path, secs: i64) {
    let out = Command::new("touch")
        .args(["-h", "-d", &format!("@{}", alitx::now_secs() - secs)])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_temporary_file_left_by_a_killed_writer_is_reported_by_check_and_removed_by_repair() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("local"));
    let wd = WorkDir::chain(2, 0);
    assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
    let package_link = wd.pkgs[1].revision().package_link();
    // Killed between preparing the package link and linking it into place.
    alitx_killed_at(
        &wd.upload_args(1, &store),
        &format!("local-placing {}", package_link.key),
    );
    let tmp = internal(store.root(), "tmp");
    let temps = files_under(&tmp);
    assert_eq!(temps.len(), 1, "{temps:?}");
    let temp = &temps[0];
    assert!(
        temp.starts_with(&format!("{}.", package_link.key)),
        "{temp}"
    );
    let hex = temp.rsplit('.').nth(1).unwrap().to_string();
    let upload_id = format!("tmp-{hex}");

    // Fresh, it may still be written: not reported.
    let backend = rt.block_on(store.open());
    assert!(rt
        .block_on(backend.list_uploads(&package_link.key))
        .unwrap()
        .is_empty());
    age(&tmp.join(temp), 3600);
    let check = alitx(&store.cmd("check", &["--json", "--stale-uploads-after", "30m"]));
    assert_exit(&check, 5);
    let report = json(&check);
    let stale = report["stale_uploads"].as_array().unwrap();
    assert_eq!(stale.len(), 1, "{report}");
    assert_eq!(stale[0]["key"], package_link.key.as_str());
    assert_eq!(stale[0]["upload_id"], upload_id.as_str());
    assert!(
        stale[0]["age_seconds"].as_i64().unwrap() >= 3600,
        "{report}"
    );
    assert!(stale[0]["journal"].is_null(), "{report}");
    let text = alitx(&store.cmd("check", &["--stale-uploads-after", "30m"]));
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains(&format!("stale upload  {}  {upload_id}", package_link.key)),
        "{out}"
    );

    let repair = alitx(&store.cmd(
        "repair",
        &["--json", "--min-age", "0", "--stale-uploads-after", "30m"],
    ));
    assert_exit(&repair, 0);
    let report = json(&repair);
    assert_eq!(
        report["aborted_uploads"][0]["upload_id"],
        upload_id.as_str(),
        "{report}"
    );
    assert_eq!(files_under(&tmp), Vec::<String>::new());
    assert_eq!(rt.block_on(store.snapshot()), wd.expected(0..1));
    let check = alitx(&store.cmd("check", &["--stale-uploads-after", "0"]));
    assert_exit(&check, 0);
}

#[test]
fn a_completion_killed_while_assembling_leaves_its_copy_with_the_staged_upload() {
    let rt = runtime();
    for heal in ["resume", "rollback"] {
        let store = rt.block_on(TestStore::new("local"));
        let wd = WorkDir::chain(1, 12 << 20);
        let mut upload = wd.upload_args(0, &store);
        upload.extend(args(&["--part-size", "5"]));
        alitx_killed_at(&upload, "local-assembling");
        let uploads = internal(store.root(), "uploads");
        let staged = files_under(&uploads);
        let copy: Vec<_> = staged
            .iter()
            .filter(|f| f.contains("/assembling."))
            .collect();
        assert_eq!(copy.len(), 1, "{staged:?}");
        assert!(fs::metadata(uploads.join(copy[0])).unwrap().len() > 0);
        assert_eq!(
            files_under(&internal(store.root(), "tmp")),
            Vec::<String>::new()
        );

        let journal = alitx::journal::Journal::id_of(&wd.pkgs[0].revision());
        let out = match heal {
            "resume" => alitx(&wd.resume_args(&store, &[])),
            _ => alitx(&store.cmd("rollback", &[&journal])),
        };
        assert_exit(&out, 0);
        let published = if heal == "resume" { 0..1 } else { 0..0 };
        assert_eq!(
            rt.block_on(store.snapshot()),
            wd.expected(published),
            "{heal}"
        );
        assert_eq!(
            files_under(&uploads),
            Vec::<String>::new(),
            "{heal}: staged files left"
        );
        assert_eq!(
            files_under(&internal(store.root(), "tmp")),
            Vec::<String>::new()
        );
    }
}

// ------------------------------------------------------ put-if-absent completion

#[test]
fn completion_never_replaces_an_object_that_appeared_meanwhile() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        let key = revision().store_key();
        let parts = [filled(5 * MIB, 1), filled(100, 2)];
        let (id, uploaded) = stage(&*store, &key, &txn("t1"), &parts).await;
        store
            .put(
                &key,
                Bytes::from_static(b"foreign"),
                &Metadata::new(),
                PutMode::Create,
            )
            .await
            .unwrap();

        let err = store
            .complete_upload(&key, &id, &uploaded)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
        assert!(
            err.to_string().contains(&format!("{key} already exists")),
            "{err}"
        );
        assert!(err.to_string().contains("staged upload is kept"), "{err}");
        assert_eq!(
            store.get(&key).await.unwrap().unwrap(),
            Bytes::from_static(b"foreign")
        );
        assert_eq!(
            store.list_parts(&key, &id).await.unwrap(),
            Some(uploaded.clone())
        );

        // Once the foreign object is gone, the kept parts complete.
        store.delete(&key).await.unwrap();
        store.complete_upload(&key, &id, &uploaded).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap(), parts.concat());
        assert_eq!(store.head(&key).await.unwrap().unwrap().metadata, txn("t1"));
    });
}

#[test]
fn completion_that_finds_its_own_object_succeeds_and_drops_the_parts() {
    runtime().block_on(async {
        let root = tempfile::tempdir().unwrap();
        let store = open(root.path());
        let key = revision().store_key();
        let parts = [filled(5 * MIB, 3), filled(7, 4)];
        // Two staged uploads of the same transaction (a takeover restaged).
        let (first, first_parts) = stage(&*store, &key, &txn("t1"), &parts).await;
        let (second, second_parts) = stage(&*store, &key, &txn("t1"), &parts).await;
        let (other, other_parts) = stage(&*store, &key, &txn("t2"), &parts).await;
        store
            .complete_upload(&key, &first, &first_parts)
            .await
            .unwrap();
        store
            .complete_upload(&key, &second, &second_parts)
            .await
            .unwrap();
        let err = store
            .complete_upload(&key, &other, &other_parts)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");

        assert_eq!(store.get(&key).await.unwrap().unwrap(), parts.concat());
        let pending: Vec<String> = store
            .list_uploads("")
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.upload_id)
            .collect();
        assert_eq!(pending, [other]);
    });
}

// ---------------------------------------------------------------- full disk

/// A 20 MiB tmpfs, unmounted when dropped; `None` (the test then says it
/// is skipped) where mounting is not allowed.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=20m", "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: cannot mount a small tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill the filesystem up to its last byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&[0]);
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn ensure_space_refuses_early_with_both_figures() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    runtime().block_on(async {
        let root = disk.path().join("store");
        let store = open(&root);
        // Before the store exists, its filesystem is measured.
        store.ensure_space(5 * MIB as u64).await.unwrap();
        store.preflight().await.unwrap();
        store.ensure_space(9 * MIB as u64).await.unwrap();
        let err = store.ensure_space(12 * MIB as u64).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&root.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!(
                "staging {} bytes needs {} bytes",
                12 * MIB,
                25 * MIB
            )),
            "{msg}"
        );
        let available = alitx_available(&msg);
        assert!(
            (19 * MIB as u64..=20 * MIB as u64).contains(&available),
            "{msg}"
        );
        assert!(files_under(&root).is_empty(), "refusing wrote something");
    });
}

/// The "only N bytes" figure of an `ensure_space` error.
fn alitx_available(msg: &str) -> u64 {
    let (_, rest) = msg.split_once("only ").expect("an available figure");
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_full_disk_fails_cleanly_and_abort_and_delete_still_free_space() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    runtime().block_on(async {
        let root = disk.path().join("store");
        let store = open(&root);
        store.preflight().await.unwrap();
        let key = revision().store_key();
        let link = revision().package_link();
        store.put_link_if_absent(&link, &txn("t1")).await.unwrap();
        let parts = [filled(5 * MIB, 5), filled(2 * MIB, 6)];
        let (id, uploaded) = stage(&*store, &key, &txn("t1"), &parts).await;

        // 7 MiB staged, 13 MiB left: 7 MiB more for the assembled copy.
        let filler = disk.path().join("filler");
        fs::write(&filler, vec![1u8; 8 * MIB]).unwrap();
        let err = store
            .complete_upload(&key, &id, &uploaded)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert_eq!(store.head(&key).await.unwrap(), None);
        assert_eq!(
            store.list_parts(&key, &id).await.unwrap(),
            Some(uploaded.clone())
        );
        let staged = files_under(&internal(&root, "uploads"));
        assert!(
            staged.iter().all(|f| !f.contains("assembling")),
            "the half-assembled copy stays on a full disk: {staged:?}"
        );
        let err = store
            .put(
                ".alitx/journals/j.json",
                filled(MIB * 6, 7),
                &txn("t1"),
                PutMode::Overwrite,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert_eq!(files_under(&internal(&root, "tmp")), Vec::<String>::new());

        // Completely full: freeing still works.
        fs::remove_file(&filler).unwrap();
        disk.fill();
        store.abort_upload(&key, &id).await.unwrap();
        assert_eq!(store.list_uploads("").await.unwrap(), Vec::new());
        disk.fill();
        store.delete(&link.key).await.unwrap();
        assert_eq!(store.head(&link.key).await.unwrap(), None);
        assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());
    });
}

/// `upload` arguments for package `i` of `wd` into the store at `path`.
fn upload_into(wd: &WorkDir, i: usize, path: &Path) -> Vec<String> {
    let mut all = wd.upload_args(
        i,
        &TestStore::Local {
            dir: tempfile::tempdir().unwrap(),
        },
    );
    let at = all.iter().position(|a| a == "--remote-store").unwrap();
    all[at + 1] = path.display().to_string();
    all.extend(args(&["--part-size", "5"]));
    all
}

#[test]
fn on_a_full_disk_upload_is_refused_early_and_a_killed_upload_can_still_be_rolled_back() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let store = disk.path().join("store");
    fs::create_dir(&store).unwrap();

    // Larger than the disk: refused before anything is written, with both
    // figures.
    let big = WorkDir::chain(1, 24 << 20);
    let out = alitx(&upload_into(&big, 0, &store));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(err.contains("not enough free space"), "{err}");
    assert!(err.contains("needs") && err.contains("bytes"), "{err}");
    assert_eq!(
        fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != ".alitx-store")
            .count(),
        0,
        "nothing written"
    );

    // An upload killed with its parts staged, then the disk fills up:
    // rollback must still undo it (it frees the staged parts when the
    // journal rewrite finds no space).
    let wd = WorkDir::chain(1, 7 << 20);
    alitx_killed_at(&upload_into(&wd, 0, &store), "after-bulk");
    let filler = disk.fill();
    let id = alitx::journal::Journal::id_of(&wd.pkgs[0].revision());
    let out = alitx(&on_store("rollback", &store.display().to_string(), &[&id]));
    assert_exit(&out, 0);
    // What it removed is kept, for a stock upload of the build that might
    // still publish it.
    let left: Vec<String> = walk_keys(&store);
    let removed = alitx::removed::key_of(&wd.pkgs[0].revision());
    assert_eq!(left, [removed], "left after rollback");
    fs::remove_file(filler).unwrap();
}

/// Every object key under a local store (`.alitx-store/` excluded).
fn walk_keys(root: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".alitx-store") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                keys.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    keys
}

// ---------------------------------------------------------------- durability

/// One system call of an `strace -f -y` log: its name, its arguments' path
/// strings (a relative one joined to its directory descriptor's path), and
/// whether it succeeded.
struct Syscall {
    name: String,
    paths: Vec<String>,
    removes_dir: bool,
}

fn parse_strace(log: &str) -> Vec<Syscall> {
    let mut calls = Vec::new();
    for call in joined_calls(log) {
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if !args.ends_with("= 0") {
            continue;
        }
        // Descriptors print as `N</path>`, strings as `"path"`.
        let mut paths = Vec::new();
        let mut dir = None;
        let mut rest = args;
        while let Some(start) = rest.find(['<', '"']) {
            let closing = if rest.as_bytes()[start] == b'<' {
                '>'
            } else {
                '"'
            };
            let Some(len) = rest[start + 1..].find(closing) else {
                break;
            };
            let text = rest[start + 1..start + 1 + len].to_string();
            if closing == '>' {
                dir = Some(text.clone());
                if name.starts_with("fsync") {
                    paths.push(text);
                }
            } else if text.starts_with('/') {
                paths.push(text);
            } else if let Some(dir) = &dir {
                paths.push(format!("{dir}/{text}"));
            }
            rest = &rest[start + len + 2..];
        }
        calls.push(Syscall {
            name: name.trim().to_string(),
            paths,
            removes_dir: args.contains("AT_REMOVEDIR"),
        });
    }
    calls
}

/// The calls of an `strace -f` log, one a line. `PID  call(...)`: strace
/// pads the pid, so a short one is followed by more than one space. A call
/// interrupted by another thread's prints as `PID name(args <unfinished
/// ...>`, then `PID <... name resumed>rest`: it is joined up, and placed
/// (strictly, for the check) where an fsync began and where any other call
/// ended.
fn joined_calls(log: &str) -> Vec<String> {
    let mut calls = Vec::new();
    let mut pending: HashMap<&str, (usize, &str)> = HashMap::new();
    for (at, line) in log.lines().enumerate() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if let Some(start) = call.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (at, start));
        } else if let Some(resumed) = call.strip_prefix("<... ") {
            let (Some((began, start)), Some((_, rest))) =
                (pending.remove(pid), resumed.split_once(" resumed>"))
            else {
                continue;
            };
            let at = if start.starts_with("fsync") {
                began
            } else {
                at
            };
            calls.push((at, format!("{start}{rest}")));
        } else {
            calls.push((at, call.to_string()));
        }
    }
    calls.sort_by_key(|(at, _)| *at);
    calls.into_iter().map(|(_, call)| call).collect()
}

/// Run alitx under `strace`; `None` (the test then says it is skipped)
/// without strace.
fn traced(args: &[String]) -> Option<(std::process::Output, String)> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-y", "-qq", "-o"])
        .arg(log.path())
        .args([
            "-e",
            "trace=link,linkat,rename,renameat,renameat2,unlink,unlinkat,fsync",
        ])
        .arg(env!("CARGO_BIN_EXE_alitx"))
        .args(args);
    match cmd.output() {
        Ok(out) if out.status.code() != Some(127) => {
            Some((out, fs::read_to_string(log.path()).unwrap()))
        }
        _ => {
            eprintln!("skipped: strace is not installed");
            None
        }
    }
}

/// Every `link`/`rename` into the store (but into its temporary directory),
/// every `unlink` of a key, and every removal of a staged upload is
/// followed by an fsync of the directory it changed.
fn assert_parent_dirs_fsynced(root: &Path, log: &str) -> usize {
    let root = root.display().to_string();
    let tmp = format!("{root}/.alitx-store/tmp/");
    let internal = format!("{root}/.alitx-store/");
    let uploads = format!("{root}/.alitx-store/uploads/");
    let calls = parse_strace(log);
    let mut checked = 0;
    for (i, call) in calls.iter().enumerate() {
        let changed = match call.name.as_str() {
            "link" | "linkat" | "rename" | "renameat" | "renameat2" => call.paths.last(),
            "unlink" | "unlinkat" => call.paths.last().filter(|p| {
                if call.removes_dir {
                    p.starts_with(&uploads) && !p[uploads.len()..].contains('/')
                } else {
                    !p.starts_with(&internal)
                }
            }),
            _ => None,
        };
        let Some(path) = changed.filter(|p| p.starts_with(&root) && !p.starts_with(&tmp)) else {
            continue;
        };
        let dir = Path::new(path).parent().unwrap().display().to_string();
        assert!(
            calls[i..]
                .iter()
                .any(|c| c.name == "fsync" && c.paths.first() == Some(&dir)),
            "{} {path}: no fsync of {dir} follows",
            call.name
        );
        checked += 1;
    }
    checked
}

#[test]
fn every_publishing_link_rename_and_unlink_is_followed_by_a_directory_fsync() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("local"));
    let wd = WorkDir::chain(2, 12 << 20);
    assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
    let mut upload = wd.upload_args(1, &store);
    upload.extend(args(&["--part-size", "5"]));

    // Deletes and an aborted staged upload: a killed upload rolled back.
    alitx_killed_at(&upload, "after-links");
    let journal = alitx::journal::Journal::id_of(&wd.pkgs[1].revision());
    let rollback = store.cmd("rollback", &[&journal]);
    let Some((out, log)) = traced(&rollback) else {
        return;
    };
    assert_exit(&out, 0);
    let retired = assert_parent_dirs_fsynced(store.root(), &log);
    assert_eq!(rt.block_on(store.snapshot()), wd.expected(0..1));

    // A journal, its rewrites, links, parts and a completed upload.
    let (out, log) = traced(&upload).unwrap();
    assert_exit(&out, 0);
    let published = assert_parent_dirs_fsynced(store.root(), &log);
    assert_eq!(rt.block_on(store.snapshot()), wd.expected(0..2));
    eprintln!("{published} publishing and {retired} retiring calls checked");
    assert!(published >= 12 && retired >= 8, "{published} {retired}");
}
