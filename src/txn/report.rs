//! What a transaction did: how it ended and its report, for humans and
//! for `--json`.

use serde::Serialize;

use crate::error::Error;
use crate::layout::Revision;
use crate::storage::Store;

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// This run published the revision.
    Committed,
    /// The store already held the complete revision; nothing was written.
    AlreadyPublished,
    /// The transaction was undone; nothing of it remains.
    RolledBack,
}

/// What a transaction did, for humans and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Status,
    pub journal: String,
    pub txn: Option<String>,
    pub revision: Revision,
    pub store: String,
    pub keys_written: Vec<String>,
    pub keys_deleted: Vec<String>,
    pub tarball_bytes: u64,
    pub tarball_sha256: Option<String>,
    /// Tarball bytes sent in this run (parts the store already held are not).
    pub bytes_sent: u64,
    pub parts_total: u32,
    pub parts_reused: u32,
    pub duration_seconds: f64,
    /// This run completed a revision an earlier upload of the same build
    /// left unpublished (its links were there, its tarball was not).
    pub adopted: bool,
}

impl Report {
    pub(super) fn new(
        status: Status,
        journal: String,
        revision: &Revision,
        store: &dyn Store,
    ) -> Self {
        Report {
            status,
            journal,
            txn: None,
            revision: revision.clone(),
            store: store.describe(),
            keys_written: vec![],
            keys_deleted: vec![],
            tarball_bytes: 0,
            tarball_sha256: None,
            bytes_sent: 0,
            parts_total: 0,
            parts_reused: 0,
            duration_seconds: 0.0,
            adopted: false,
        }
    }
}

/// How a transaction this process drove ended.
#[derive(Debug)]
pub enum Ended {
    /// Published, found published, or rolled back as asked.
    Done(Report),
    /// A conflict or a tarball that failed verification: the transaction
    /// was undone (`report`), nothing of it stays; `cause` says why.
    Undone { report: Report, cause: Error },
}
