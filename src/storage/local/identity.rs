//! Which inode a metadata sidecar describes, in figures a foreign
//! re-creation of the object cannot reproduce.
//!
//! ext4 hands a freed inode number out again at once (measured: a symlink
//! removed and re-created at the same path gets the same number every
//! time), so an inode number alone does not tell alitx's object from a
//! foreign one made after it. An [`Identity`] adds:
//! - the kernel's file handle (`name_to_handle_at(2)`): on ext4, xfs, btrfs
//!   and tmpfs it holds the inode number *and generation*, which the
//!   filesystem draws afresh each time it allocates the inode;
//! - the birth time (`statx` `STATX_BTIME`, nanoseconds) where the
//!   filesystem records it;
//! - the modification time in nanoseconds and the size, which also catch a
//!   foreign rewrite of the same inode in place (`cp new old`).
//!
//! Where a filesystem offers no file handle or birth time those fields are
//! `None` on both sides of the comparison, and the remaining ones decide.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// What tells one inode from any other that held the same number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ino: u64,
    /// `<handle type>:<hex handle>`, where the filesystem gives one.
    pub handle: Option<String>,
    pub birth_ns: Option<i128>,
    pub mtime_ns: i128,
    pub size: u64,
}

impl Identity {
    /// The inode at `path` (a symlink itself, never its target) and its
    /// metadata, every figure read through one descriptor so that they all
    /// describe the same inode even if the path is replaced meanwhile.
    pub fn of(path: &Path) -> io::Result<(fs::Metadata, Identity)> {
        let pinned = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(path)?;
        let meta = pinned.metadata()?;
        let birth_ns = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128);
        let identity = Identity {
            ino: meta.ino(),
            handle: file_handle(&pinned),
            birth_ns,
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            size: meta.len(),
        };
        Ok((meta, identity))
    }
}

/// `struct file_handle` with room for the largest handle (`MAX_HANDLE_SZ`).
#[repr(C)]
struct FileHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; 128],
}

/// The file handle of the inode `pinned` refers to, or `None` where the
/// filesystem cannot export one.
fn file_handle(pinned: &File) -> Option<String> {
    let mut handle = FileHandle {
        handle_bytes: 128,
        handle_type: 0,
        f_handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `handle` is a valid `struct file_handle` whose
    // `handle_bytes` says how much room follows; the kernel writes at most
    // that much, and `mount_id` is a valid int.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            pinned.as_raw_fd(),
            c"".as_ptr(),
            &mut handle as *mut FileHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    let len = (handle.handle_bytes as usize).min(handle.f_handle.len());
    (rc == 0).then(|| {
        format!(
            "{}:{}",
            handle.handle_type,
            hex::encode(&handle.f_handle[..len])
        )
    })
}
