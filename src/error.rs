//! The error type every command returns, and the exit code each kind maps to.
//!
//! Exit codes are a contract with scripts and Jenkins jobs: 0 success, 1 any
//! other error, 3 conflict (someone else holds one of our keys), 4 a live
//! upload owns the journal (or took it over from us), 5 `check` found
//! something to repair (or `repair` left something for later), 6 `verify`
//! found a corrupt revision.

use std::fmt;

/// Process exit codes; keep the numbers stable.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const CONFLICT: i32 = 3;
    pub const LIVE_LEASE: i32 = 4;
    pub const NEEDS_REPAIR: i32 = 5;
    pub const CORRUPT: i32 = 6;
}

/// What went wrong, in words for the operator, with the kind that decides the
/// exit code.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command line, names or work dir: nothing was written.
    Input,
    /// The tarball failed verification.
    Verification,
    /// Another object or transaction already holds one of our keys.
    Conflict,
    /// Another uploader published the revision's tarball while our
    /// transaction was open: a conflict, after which nothing of the
    /// revision was deleted and our journal was retired.
    ForeignPublished,
    /// A journal is owned by an upload whose lease is still live.
    LiveLease,
    /// Another process took this transaction's journal over, or retired it,
    /// while this one worked: this one stopped.
    LostOwnership,
    /// The store could not be reached, refused our credentials, or failed.
    Store,
    /// A journal is not one alitx can trust.
    Journal,
    /// Local I/O failed.
    Io,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Input, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
    pub fn store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, message)
    }
    pub fn journal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Journal, message)
    }
    pub fn verification(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Verification, message)
    }
    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{what}: {err}"))
    }
    pub fn lost_ownership(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::LostOwnership, message)
    }

    /// A local write failed because the filesystem is full.
    pub fn is_no_space(&self) -> bool {
        self.kind == ErrorKind::Io
            && self
                .message
                .contains(&std::io::Error::from_raw_os_error(libc::ENOSPC).to_string())
    }

    /// Prefix the message with what we were doing.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// Append what follows from the error (what was undone, what to run).
    pub fn context_after(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{}; {what}", self.message);
        self
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Conflict | ErrorKind::ForeignPublished => exit::CONFLICT,
            ErrorKind::LiveLease | ErrorKind::LostOwnership => exit::LIVE_LEASE,
            _ => exit::ERROR,
        }
    }

    /// A short machine-readable name for `--json` output.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::Input => "input",
            ErrorKind::Verification => "verification",
            ErrorKind::Conflict | ErrorKind::ForeignPublished => "conflict",
            ErrorKind::LiveLease => "live-lease",
            ErrorKind::LostOwnership => "lost-ownership",
            ErrorKind::Store => "store",
            ErrorKind::Journal => "journal",
            ErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Every cause under `err`, outermost first (`err` itself when it has none).
pub fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![];
    let mut current = err.source();
    while let Some(e) = current {
        parts.push(e.to_string());
        current = e.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
