//! Filesystem steps that survive a crash or a power loss: directories made
//! and names published with the parent directory fsynced, temporary names
//! that never outlive a failed step, and the free-space figure.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Make `name`'s entry in `dir` durable after a `link`, `rename`, `unlink`,
/// `mkdir` or `rmdir` in `dir`.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Make the removal of `path` durable: fsync its directory or, where
/// another delete emptied and pruned that directory meanwhile, the nearest
/// one left above it (whose entry for the pruned one is then gone).
pub fn fsync_removal(path: &Path) -> io::Result<()> {
    let mut dir = path.parent().expect("removed paths have a parent");
    loop {
        match fsync_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match dir.parent() {
                Some(above) => dir = above,
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// `mkdir -p`, fsyncing the parent of every directory it creates.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    make_dirs(dir, true)
}

/// `mkdir -p`; with `sync`, the parent of every directory it creates is
/// fsynced (not needed for temporary names: nothing survives by them).
fn make_dirs(dir: &Path, sync: bool) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_dirs(dir.parent().ok_or(e)?, sync)?;
            match fs::create_dir(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Err(e) => return Err(e),
    }
    if sync {
        fsync_dir(dir.parent().expect("a created directory has a parent"))?;
    }
    Ok(())
}

/// Run `create`, which makes the name `path`, after making its directory
/// durably; again if a concurrent delete (or a temporary name dropped)
/// pruned that directory, or one above it, while it was being made or
/// before `create` ran.
pub fn create_in<T>(path: &Path, create: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    create_after_mkdir(path, true, create)
}

/// `create_in` for a temporary name: its directories need no fsync.
pub fn create_temp_in<T>(path: &Path, create: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    create_after_mkdir(path, false, create)
}

fn create_after_mkdir<T>(
    path: &Path,
    sync: bool,
    mut create: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let dir = path.parent().expect("created paths have a parent");
    // Each retry follows another writer's prune: the operations of one
    // process run side by side, many at a time in one directory.
    let mut attempts = 0;
    loop {
        match make_dirs(dir, sync).and_then(|()| create()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 100 => attempts += 1,
            done => return done,
        }
    }
}

/// Create or overwrite `path` with `bytes`, then fsync it and its
/// directory; on failure (a full disk) nothing of it stays.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = create_in(path, || File::create(path)).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written.and_then(|()| fsync_dir(path.parent().expect("written paths have a parent")))
}

/// Remove the now-empty directories from `path`'s parent up to, not
/// including, `stop`.
pub fn prune_empty_dirs(path: &Path, stop: &Path) {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == stop || !d.starts_with(stop) || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// A temporary name, removed (with the directories it leaves empty, up to
/// `prune_up_to`) when dropped: after a link or rename published its inode
/// under the final name, or when a step failed half-way (a full disk) so
/// that nothing it wrote stays behind.
pub struct Temp {
    pub path: PathBuf,
    prune_up_to: PathBuf,
}

impl Temp {
    /// Create `path` as a new file holding `bytes`, fsynced.
    pub fn write(path: PathBuf, prune_up_to: &Path, bytes: &[u8]) -> io::Result<Temp> {
        let (temp, mut file) = Temp::create(path, prune_up_to)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(temp)
    }

    /// Create `path` as a new empty file, for the caller to fill.
    pub fn create(path: PathBuf, prune_up_to: &Path) -> io::Result<(Temp, File)> {
        let file = create_temp_in(&path, || File::create_new(&path))?;
        Ok((Temp::adopt(path, prune_up_to), file))
    }

    /// Take charge of a name the caller just created.
    pub fn adopt(path: PathBuf, prune_up_to: &Path) -> Temp {
        Temp {
            path,
            prune_up_to: prune_up_to.to_path_buf(),
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        prune_empty_dirs(&self.path, &self.prune_up_to);
    }
}

/// Bytes an unprivileged writer can still put on `path`'s filesystem
/// (`statvfs`: `f_bavail × f_frsize`).
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` is plain old data, and the call only writes it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is valid for writes.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // 32-bit targets have narrower fields
    Ok(u64::from(stat.f_bavail) * u64::from(stat.f_frsize))
}
