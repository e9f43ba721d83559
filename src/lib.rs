//! alitx: a transactional uploader for aliBuild remote stores.
//!
//! An upload writes an intent journal first, stages the tarball invisibly,
//! writes the revision's links, and only then makes the tarball appear: the
//! one atomic step readers treat as the commit point. An interrupted upload
//! is rolled forward or back from its journal. See `docs/protocol.md`.

pub mod check;
pub mod cli;
pub mod deletion;
pub mod error;
pub mod failpoint;
pub mod fetch;
pub mod journal;
pub mod layout;
pub mod liveness;
pub mod ownership;
pub mod progress;
pub mod record;
pub mod recovery;
pub mod repair;
pub mod storage;
pub mod tarball;
pub mod txn;
pub mod verify;
pub mod workdir;

use std::io::Read;

/// `bytes` random bytes as hex, for transaction and upload ids.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    hex::encode(buf)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `n` and the noun, plural unless `n` is 1: "1 key", "3 keys".
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
