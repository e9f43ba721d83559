//! The transaction engine: publish one package revision so that readers
//! never see it partial, and roll an interrupted one forward or back.
//!
//! Order of writes (see `docs/protocol.md`):
//! intent journal → staged tarball parts ∥ (package link claim → dist links)
//! → complete the staged upload (the commit point readers see) → journal
//! committed → journal retired. The decisions are pure functions in
//! [`plan`]; `publish` and `undo` execute them, `adopt` reads what a
//! rebuild may complete. The engine talks only to [`Store`]; who may act
//! on a journal is `ownership`'s business, what may be deleted
//! `deletion`'s.

mod adopt;
mod bookkeeping;
mod commit;
mod drive;
pub mod plan;
mod publish;
mod report;
mod send;
mod undo;
mod upload;

use std::time::Duration;

use crate::journal::Journal;
use crate::storage::ObjectInfo;

pub use bookkeeping::{Bookkeeping, Finishers};
pub use commit::retire_committed;
pub use drive::{continue_owned, mismatch};
pub use report::{Ended, Report, Status};
pub use undo::rollback_keys;
pub use upload::upload;

/// Tunables of one upload.
#[derive(Debug, Clone)]
pub struct Options {
    pub journal_prefix: String,
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
    /// Link writes in flight at once.
    pub link_concurrency: usize,
    pub lease: Duration,
    /// Draw a progress bar of the tarball's bytes on stderr.
    pub progress: bool,
    /// A revision an earlier upload left unpublished is completed by a
    /// rebuild of the same hash only once it was quiet this long.
    pub adopt_after: Duration,
    /// When the report is given: after the journal's bookkeeping, or once
    /// the revision is published.
    pub bookkeeping: Bookkeeping,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            journal_prefix: crate::journal::DEFAULT_PREFIX.into(),
            part_size: 8 << 20,
            concurrency: 8,
            link_concurrency: 64,
            lease: Duration::from_secs(120),
            progress: false,
            adopt_after: Duration::from_secs(15 * 60),
            bookkeeping: Bookkeeping::BeforeReport,
        }
    }
}

/// What a process continuing a journaled transaction wants done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Publish: roll forward when the local files match the journal, back
    /// otherwise.
    Forward,
    /// Undo it, unless the revision is already published (then it is
    /// final, and only the journal's bookkeeping is finished).
    Back,
}

/// Whether `info` describes an object this transaction wrote.
fn is_ours(info: &ObjectInfo, journal: &Journal) -> bool {
    crate::deletion::written_by(info, &journal.txn)
}
