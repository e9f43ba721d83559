//! The transaction's decisions, as pure functions from what was read to what
//! to do: how an `upload` starts, what an owned transaction does next, what
//! a failure leaves behind, and whether a rebuild may adopt a revision an
//! earlier upload left unpublished. The engine reads, calls these, and
//! executes the answer; each row is a unit test below.

use std::time::Duration;

use crate::error::ErrorKind;
use crate::journal::State;

use super::Intent;

/// The revision's store tarball, as the store holds it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tarball {
    Absent,
    /// Published by this transaction (it carries the transaction's id).
    Ours,
    /// Published by another uploader: the journal's key, or the tarball
    /// the revision's package link names.
    Foreign,
}

/// What `upload` found before writing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartFacts {
    /// The state of a journal of this revision, if one exists.
    pub journal: Option<State>,
    pub tarball: bool,
    pub package_link: bool,
}

/// How `upload` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A committed journal's writer died before retiring it: retire it, then
    /// start again.
    RetireCommitted,
    /// A pending journal: take it over if its owner is gone, then continue.
    TakeOver,
    /// The tarball is there: the revision is published if every link is.
    CheckPublished,
    /// A package link without tarball: adopt it if it is this very build's
    /// unpublished revision, else the number is taken.
    CheckAdoption,
    /// Nothing of the revision is there: write the journal and publish.
    Begin,
}

pub fn start(facts: StartFacts) -> Start {
    match facts {
        StartFacts {
            journal: Some(State::Committed),
            ..
        } => Start::RetireCommitted,
        StartFacts {
            journal: Some(State::Pending),
            ..
        } => Start::TakeOver,
        StartFacts { tarball: true, .. } => Start::CheckPublished,
        StartFacts {
            package_link: true, ..
        } => Start::CheckAdoption,
        StartFacts { .. } => Start::Begin,
    }
}

/// Whether the work dir can complete the journal's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalFiles {
    /// Its tarball and links are exactly the journal's.
    Match,
    /// They differ: why.
    Mismatch(String),
    /// No work dir holding them was given.
    None,
}

/// Why a transaction is rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollBackWhy {
    /// `alitx rollback` asked for it.
    Asked,
    LocalMismatch(String),
    NoWorkDir,
}

/// What an owned transaction does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Its tarball is published: restore missing links, commit. Never undone.
    FinishPublished,
    /// Another uploader published the revision: delete nothing, retire.
    LeaveToForeign,
    RollForward,
    RollBack(RollBackWhy),
}

pub fn plan(tarball: Tarball, intent: Intent, local: LocalFiles) -> Plan {
    match (tarball, intent, local) {
        (Tarball::Ours, _, _) => Plan::FinishPublished,
        (Tarball::Foreign, _, _) => Plan::LeaveToForeign,
        (Tarball::Absent, Intent::Back, _) => Plan::RollBack(RollBackWhy::Asked),
        (Tarball::Absent, Intent::Forward, LocalFiles::Match) => Plan::RollForward,
        (Tarball::Absent, Intent::Forward, LocalFiles::Mismatch(why)) => {
            Plan::RollBack(RollBackWhy::LocalMismatch(why))
        }
        (Tarball::Absent, Intent::Forward, LocalFiles::None) => {
            Plan::RollBack(RollBackWhy::NoWorkDir)
        }
    }
}

/// The journal, as read again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalNow {
    /// It still names this process as owner.
    Ours,
    /// Gone: another process finished or rolled back the transaction.
    Retired,
    /// Another process owns it now.
    TakenOver,
}

/// What the store holds after a step failed; `None` where it could not be
/// read (the store does not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureFacts {
    pub kind: ErrorKind,
    pub journal: Option<JournalNow>,
    pub tarball: Option<Tarball>,
}

/// What a failed step leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aftermath {
    /// Another owner published this very transaction: success.
    AlreadyPublished,
    /// The journal keeps what was sent, for `resume` (or for its new owner).
    KeepForResume,
    /// Another uploader published the revision: delete nothing, retire.
    LeaveToForeign,
    /// The transaction was rolled back by another process while this one
    /// still wrote: delete, under the rule, the links it wrote late.
    SweepLateLinks,
    /// A conflict or a tarball that failed verification: undo the
    /// transaction, nothing of it stays.
    Undo,
}

impl FailureFacts {
    /// Whether this process no longer owns the transaction.
    pub fn lost(&self) -> bool {
        self.kind == ErrorKind::LostOwnership
            || matches!(
                self.journal,
                Some(JournalNow::Retired | JournalNow::TakenOver)
            )
    }
}

pub fn aftermath(facts: FailureFacts) -> Aftermath {
    let lost = facts.lost();
    match facts.tarball {
        None => Aftermath::KeepForResume,
        Some(Tarball::Ours) if lost => Aftermath::AlreadyPublished,
        Some(Tarball::Ours) => Aftermath::KeepForResume,
        Some(Tarball::Foreign) => Aftermath::LeaveToForeign,
        Some(Tarball::Absent) if lost => match facts.journal {
            Some(JournalNow::Retired) => Aftermath::SweepLateLinks,
            _ => Aftermath::KeepForResume,
        },
        Some(Tarball::Absent) => match facts.kind {
            // Nothing to resume where another upload holds the revision
            // (a live one of the same build: a fresh start adopts it later).
            ErrorKind::Conflict | ErrorKind::Verification | ErrorKind::LiveLease => Aftermath::Undo,
            _ => Aftermath::KeepForResume,
        },
    }
}

/// What the store holds of a revision whose package link exists without
/// its tarball, compared with what this upload would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionFacts {
    /// The package link as read for adoption.
    pub package_link: PackageLinkNow,
    /// Existing keys of the revision that differ from what this upload
    /// would write there (body or redirect), or that it would not write.
    pub differing: Vec<String>,
    /// Seconds since the revision's newest key was written, or a part of a
    /// staged upload of its tarball received.
    pub quiet_for: i64,
}

/// The package link, read again when an upload weighs adoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageLinkNow {
    /// Exactly the body this upload writes.
    Ours,
    /// Another body: another build's, or something else.
    Other,
    /// Deleted since the upload's first look.
    Gone,
}

/// Whether a rebuild of the same hash may complete the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// Same build, quiet long enough: write the missing links, publish.
    Adopt,
    /// Same build, but an upload may still be writing it: retry after
    /// this many seconds.
    TooRecent { retry_after: i64 },
    /// The package link went since the first look: look again.
    Gone,
    /// The package link names another build.
    Taken,
    /// Same package link, but these keys differ from this build's.
    Differs(Vec<String>),
}

pub fn adoption(facts: AdoptionFacts, adopt_after: Duration) -> Adoption {
    let adopt_after = adopt_after.as_secs() as i64;
    if facts.package_link == PackageLinkNow::Gone {
        Adoption::Gone
    } else if facts.package_link == PackageLinkNow::Other {
        Adoption::Taken
    } else if !facts.differing.is_empty() {
        Adoption::Differs(facts.differing)
    } else if facts.quiet_for < adopt_after {
        Adoption::TooRecent {
            retry_after: adopt_after - facts.quiet_for,
        }
    } else {
        Adoption::Adopt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_table() {
        use State::*;
        #[rustfmt::skip]
        let rows = [
            // journal,          tarball, link,  start
            (Some(Committed),    true,    true,  Start::RetireCommitted),
            (Some(Committed),    false,   false, Start::RetireCommitted),
            (Some(Pending),      true,    true,  Start::TakeOver),
            (Some(Pending),      false,   false, Start::TakeOver),
            (None,               true,    true,  Start::CheckPublished),
            (None,               true,    false, Start::CheckPublished),
            (None,               false,   true,  Start::CheckAdoption),
            (None,               false,   false, Start::Begin),
        ];
        for (journal, tarball, package_link, expected) in rows {
            let facts = StartFacts {
                journal,
                tarball,
                package_link,
            };
            assert_eq!(start(facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn plan_table() {
        use Intent::*;
        use Tarball::*;
        let mismatch = || LocalFiles::Mismatch("changed".into());
        let rows = [
            (Ours, Forward, LocalFiles::Match, Plan::FinishPublished),
            (Ours, Back, LocalFiles::None, Plan::FinishPublished),
            (Ours, Forward, mismatch(), Plan::FinishPublished),
            (Foreign, Forward, LocalFiles::Match, Plan::LeaveToForeign),
            (Foreign, Back, LocalFiles::None, Plan::LeaveToForeign),
            (
                Absent,
                Back,
                LocalFiles::Match,
                Plan::RollBack(RollBackWhy::Asked),
            ),
            (Absent, Forward, LocalFiles::Match, Plan::RollForward),
            (
                Absent,
                Forward,
                mismatch(),
                Plan::RollBack(RollBackWhy::LocalMismatch("changed".into())),
            ),
            (
                Absent,
                Forward,
                LocalFiles::None,
                Plan::RollBack(RollBackWhy::NoWorkDir),
            ),
        ];
        for (tarball, intent, local, expected) in rows {
            let row = format!("{tarball:?} {intent:?} {local:?}");
            assert_eq!(plan(tarball, intent, local), expected, "{row}");
        }
    }

    #[test]
    fn aftermath_table() {
        use Aftermath::*;
        use ErrorKind::{Conflict, Io, LostOwnership, Store, Verification};
        use JournalNow::{Retired, TakenOver};
        use Tarball::{Absent, Foreign, Ours};
        let mine = Some(JournalNow::Ours);
        #[rustfmt::skip]
        let rows = [
            // kind,         journal now,     tarball now,   aftermath
            // The store did not answer: nothing can be judged.
            (Store,          None,            None,          KeepForResume),
            (Conflict,       mine,            None,          KeepForResume),
            (Verification,   None,            None,          KeepForResume),
            // Our tarball is published.
            (Store,          mine,            Some(Ours),    KeepForResume),
            (Conflict,       mine,            Some(Ours),    KeepForResume),
            (LostOwnership,  mine,            Some(Ours),    AlreadyPublished),
            (Store,          Some(TakenOver), Some(Ours),    AlreadyPublished),
            (Store,          Some(Retired),   Some(Ours),    AlreadyPublished),
            // Someone else's tarball.
            (Store,          mine,            Some(Foreign), LeaveToForeign),
            (Conflict,       None,            Some(Foreign), LeaveToForeign),
            (LostOwnership,  Some(Retired),   Some(Foreign), LeaveToForeign),
            // Nothing published, ownership lost.
            (LostOwnership,  Some(Retired),   Some(Absent),  SweepLateLinks),
            (Store,          Some(Retired),   Some(Absent),  SweepLateLinks),
            (LostOwnership,  Some(TakenOver), Some(Absent),  KeepForResume),
            (Conflict,       Some(TakenOver), Some(Absent),  KeepForResume),
            (LostOwnership,  None,            Some(Absent),  KeepForResume),
            (LostOwnership,  mine,            Some(Absent),  KeepForResume),
            // Nothing published, still ours.
            (Conflict,       mine,            Some(Absent),  Undo),
            (Verification,   mine,            Some(Absent),  Undo),
            (Conflict,       None,            Some(Absent),  Undo),
            (Store,          mine,            Some(Absent),  KeepForResume),
            (Io,             mine,            Some(Absent),  KeepForResume),
        ];
        for (kind, journal, tarball, expected) in rows {
            let facts = FailureFacts {
                kind,
                journal,
                tarball,
            };
            assert_eq!(aftermath(facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn adoption_table() {
        let after = Duration::from_secs(900);
        let facts = |link: PackageLinkNow, differing: &[&str], quiet_for: i64| AdoptionFacts {
            package_link: link,
            differing: differing.iter().map(|k| k.to_string()).collect(),
            quiet_for,
        };
        let rows = [
            (facts(PackageLinkNow::Ours, &[], 900), Adoption::Adopt),
            (facts(PackageLinkNow::Ours, &[], 86_400), Adoption::Adopt),
            (
                facts(PackageLinkNow::Ours, &[], 899),
                Adoption::TooRecent { retry_after: 1 },
            ),
            (
                facts(PackageLinkNow::Ours, &[], 0),
                Adoption::TooRecent { retry_after: 900 },
            ),
            (facts(PackageLinkNow::Other, &[], 86_400), Adoption::Taken),
            (facts(PackageLinkNow::Other, &["k"], 0), Adoption::Taken),
            (facts(PackageLinkNow::Gone, &[], 86_400), Adoption::Gone),
            (
                facts(PackageLinkNow::Ours, &["k"], 86_400),
                Adoption::Differs(vec!["k".into()]),
            ),
            (
                facts(PackageLinkNow::Ours, &["k"], 0),
                Adoption::Differs(vec!["k".into()]),
            ),
        ];
        for (facts, expected) in rows {
            let row = format!("{facts:?}");
            assert_eq!(adoption(facts, after), expected, "{row}");
        }
    }
}
