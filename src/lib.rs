//! alitx: a transactional uploader for aliBuild remote stores.
//!
//! An upload writes an intent journal first, stages the tarball invisibly,
//! writes the revision's links, and only then makes the tarball appear: the
//! one atomic step readers treat as the commit point. An interrupted upload
//! is rolled forward or back from its journal. See `docs/protocol.md`.

pub mod budget;
pub mod check;
pub mod cli;
pub mod deletion;
pub mod error;
pub mod failpoint;
pub mod fetch;
pub mod journal;
pub mod layout;
pub mod liveness;
pub mod machine;
pub mod ownership;
pub mod progress;
pub mod record;
pub mod recovery;
pub mod removed;
pub mod repair;
pub mod storage;
pub mod tarball;
pub mod txn;
pub mod verify;
pub mod workdir;

/// `bytes` random bytes as hex, for transaction and upload ids.
pub fn random_hex(bytes: usize) -> String {
    machine::current().random_hex(bytes)
}

/// Seconds since the Unix epoch, by this machine's clock.
pub fn now_secs() -> i64 {
    machine::current().now_secs()
}

/// `n` and the noun, plural unless `n` is 1: "1 key", "3 keys".
pub fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
