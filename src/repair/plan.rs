//! Repair's decisions, as a pure function from what `check` found to a
//! plan: one step for each revision that is not complete and that repair
//! acts on or leaves for later (complete, unpublished and in-flight
//! revisions have none: repair never touches them), and the stale staged
//! uploads no pending journal references. `repair` carries the plan out;
//! `--dry-run` reports it. Each decision is a row of the tests below.

use std::fmt;

use crate::check::{CheckReport, LeftAlone, Reason, RevisionReport, State};
use crate::layout::{Link, DIST_DIRS};

use super::report::Upload;
use super::revision_with_hash;

/// What repair does to one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A partial revision: delete its own keys in this order (its dist
    /// links, then its package link, which frees the number), holding its
    /// journal, each through the deletion rule.
    DeleteLeftovers { keys: Vec<String> },
    /// A published revision: re-create, put-if-absent, the links of it the
    /// scan found missing (its package link, its own link in a dist
    /// directory). Nothing is deleted.
    RestoreLinks { links: Vec<Link> },
    /// An abandoned journal: roll it back as `alitx rollback` does.
    RollBack { journal: String },
    /// Nothing, for a later run or a person.
    LeaveAlone { why: Why },
}

/// Why repair leaves a revision alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Touched this long ago, less than `--min-age`: perhaps a stock upload
    /// still running.
    Recent { age_seconds: i64 },
    /// A published revision `check` says repair cannot complete.
    Published(LeftAlone),
    /// What repair would need to know of it is not known.
    Unknown(String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Recent { age_seconds } => write!(
                f,
                "touched {age_seconds}s ago, less than --min-age: it may be a stock upload still running; \
                 run repair later, or pass --min-age 0 if no upload of it is running"
            ),
            Why::Published(why) => Reason::LeftAlone(why.clone()).fmt(f),
            Why::Unknown(why) => f.write_str(why),
        }
    }
}

/// A revision and its step.
#[derive(Debug)]
pub struct Planned<'a> {
    pub revision: &'a RevisionReport,
    pub step: Step,
}

/// What repair does to a store.
#[derive(Debug)]
pub struct RepairPlan<'a> {
    pub steps: Vec<Planned<'a>>,
    /// Stale staged uploads that no pending journal references: aborted.
    pub abort: Vec<Upload>,
}

/// The plan for what `check` found.
pub fn plan(check: &CheckReport) -> RepairPlan<'_> {
    RepairPlan {
        steps: check
            .revisions
            .iter()
            .filter_map(|revision| {
                let step = step(revision)?;
                Some(Planned { revision, step })
            })
            .collect(),
        abort: check
            .stale_uploads
            .iter()
            .filter(|u| u.journal.is_none())
            .map(|u| Upload {
                key: u.key.clone(),
                upload_id: u.upload_id.clone(),
            })
            .collect(),
    }
}

/// The step for one revision, if repair has anything to do with it.
fn step(revision: &RevisionReport) -> Option<Step> {
    let step = match (revision.state, revision.repairable, &revision.journal) {
        (State::Partial, true, _) => Step::DeleteLeftovers {
            keys: revision.keys.clone(),
        },
        (State::PublishedIncomplete, true, _) => match missing_links(revision) {
            Ok(links) => Step::RestoreLinks { links },
            Err(why) => Step::LeaveAlone {
                why: Why::Unknown(why),
            },
        },
        (State::Abandoned, true, Some(journal)) => Step::RollBack {
            journal: journal.clone(),
        },
        (State::Partial | State::PublishedIncomplete | State::Abandoned, ..) => Step::LeaveAlone {
            why: why_left(revision),
        },
        (State::Complete | State::Unpublished | State::InFlight, ..) => return None,
    };
    Some(step)
}

fn why_left(revision: &RevisionReport) -> Why {
    if revision.recent {
        return Why::Recent {
            age_seconds: revision.age_seconds.unwrap_or(0),
        };
    }
    let said = revision.reasons.iter().find_map(|r| match r {
        Reason::LeftAlone(why) => Some(why.clone()),
        _ => None,
    });
    match (said, &revision.journal) {
        (Some(why), _) => Why::Published(why),
        (None, None) if revision.state == State::Abandoned => {
            Why::Unknown(format!("{}: its journal is not known", revision.id()))
        }
        (None, _) => Why::Unknown(format!("{}: check found nothing to do", revision.id())),
    }
}

/// The links of a published revision the scan found missing, as stock
/// aliBuild writes them: its package link, its own link in a dist
/// directory.
fn missing_links(revision: &RevisionReport) -> Result<Vec<Link>, String> {
    let published =
        revision_with_hash(revision, revision.hash.as_deref()).map_err(|e| e.message)?;
    let own = published.store_key();
    let mut links = Vec::new();
    if revision
        .reasons
        .contains(&Reason::TarballWithoutPackageLink)
    {
        links.push(published.package_link());
    }
    for dir in DIST_DIRS {
        let missing = revision.reasons.iter().any(|r| {
            matches!(r, Reason::DistLinkMissing { dir: d } | Reason::OwnDistLinkMissing { dir: d } if *d == dir)
        });
        if missing {
            links.push(published.dist_link(dir, &own).map_err(|e| e.message)?);
        }
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::StaleUpload;

    const ARCH: &str = "slc9_x86-64";
    const HASH: &str = "5b82c7e1d0a9f3b6e4c2a1908f7d6e5c4b3a2910";

    fn revision(state: State, repairable: bool, reasons: Vec<Reason>) -> RevisionReport {
        RevisionReport {
            architecture: ARCH.into(),
            package: "O2".into(),
            version: Some("nightly".into()),
            revision: Some("1".into()),
            tarball: format!("O2-nightly-1.{ARCH}.tar.gz"),
            hash: Some(HASH.into()),
            state,
            recent: false,
            repairable,
            age_seconds: Some(7200),
            reasons,
            warnings: Vec::new(),
            journal: None,
            keys: vec![
                format!("TARS/{ARCH}/dist/O2/O2-nightly-1/O2-nightly-1.{ARCH}.tar.gz"),
                format!("TARS/{ARCH}/O2/O2-nightly-1.{ARCH}.tar.gz"),
            ],
        }
    }

    fn check(revisions: Vec<RevisionReport>, stale_uploads: Vec<StaleUpload>) -> CheckReport {
        CheckReport {
            clean: false,
            store: "b3://bucket".into(),
            architectures: vec![ARCH.into()],
            revisions,
            journals: Vec::new(),
            stale_uploads,
            summary: Default::default(),
        }
    }

    fn only_step(revision: RevisionReport) -> Option<Step> {
        let report = check(vec![revision], Vec::new());
        let mut steps = plan(&report).steps;
        assert!(steps.len() <= 1);
        steps.pop().map(|planned| planned.step)
    }

    fn store_key() -> String {
        format!("TARS/{ARCH}/store/5b/{HASH}/O2-nightly-1.{ARCH}.tar.gz")
    }

    /// A partial revision that is old enough loses its keys, in check's
    /// order; a recent one is left alone, saying how old it is.
    #[test]
    fn partial_revisions_lose_their_keys_unless_recent() {
        let old = revision(
            State::Partial,
            true,
            vec![Reason::DistLinkMissing { dir: "dist" }],
        );
        let keys = old.keys.clone();
        assert_eq!(only_step(old), Some(Step::DeleteLeftovers { keys }));
        let mut recent = revision(State::Partial, false, Vec::new());
        recent.recent = true;
        recent.age_seconds = Some(12);
        let step = only_step(recent);
        assert_eq!(
            step,
            Some(Step::LeaveAlone {
                why: Why::Recent { age_seconds: 12 }
            })
        );
        let Some(Step::LeaveAlone { why }) = step else {
            unreachable!()
        };
        assert!(why
            .to_string()
            .starts_with("touched 12s ago, less than --min-age"));
    }

    /// A published revision gets back exactly the links the scan found
    /// missing, as stock aliBuild writes them; one check cannot complete
    /// is left alone with check's reason.
    #[test]
    fn published_revisions_get_back_the_links_they_lack() {
        let published = |reasons| revision(State::PublishedIncomplete, true, reasons);
        let package_link = format!("TARS/{ARCH}/O2/O2-nightly-1.{ARCH}.tar.gz");
        let dist =
            |dir: &str| format!("TARS/{ARCH}/{dir}/O2/O2-nightly-1/O2-nightly-1.{ARCH}.tar.gz");
        for (reasons, expected) in [
            (
                vec![Reason::TarballWithoutPackageLink],
                vec![package_link.clone()],
            ),
            (
                vec![
                    Reason::DistLinkMissing {
                        dir: "dist-runtime",
                    },
                    Reason::OwnDistLinkMissing { dir: "dist" },
                ],
                vec![dist("dist"), dist("dist-runtime")],
            ),
            (
                vec![
                    Reason::TarballWithoutPackageLink,
                    Reason::OwnDistLinkMissing { dir: "dist-direct" },
                ],
                vec![package_link.clone(), dist("dist-direct")],
            ),
        ] {
            let Some(Step::RestoreLinks { links }) = only_step(published(reasons.clone())) else {
                panic!("{reasons:?}: not a restore");
            };
            let keys: Vec<&str> = links.iter().map(|l| l.key.as_str()).collect();
            assert_eq!(keys, expected, "{reasons:?}");
            for link in &links {
                let body = match &link.redirect {
                    Some(_) => store_key(),
                    None => store_key()["TARS/".len()..].to_string(),
                };
                assert_eq!(link.body, body, "{}", link.key);
            }
        }
        let foreign = LeftAlone::PackageLinkNamesSomethingElse;
        assert_eq!(
            only_step(revision(
                State::PublishedIncomplete,
                false,
                vec![Reason::LeftAlone(foreign.clone())]
            )),
            Some(Step::LeaveAlone {
                why: Why::Published(foreign)
            })
        );
        let mut nameless = published(vec![Reason::TarballWithoutPackageLink]);
        nameless.version = None;
        let Some(Step::LeaveAlone {
            why: Why::Unknown(why),
        }) = only_step(nameless)
        else {
            panic!("a revision without a version is restored");
        };
        assert!(
            why.contains("version, revision or hash is not known"),
            "{why}"
        );
    }

    /// An abandoned journal is rolled back; what repair never touches has
    /// no step.
    #[test]
    fn abandoned_journals_roll_back_and_the_rest_has_no_step() {
        let mut abandoned = revision(State::Abandoned, true, Vec::new());
        abandoned.journal = Some(format!("{ARCH}/O2-nightly-1"));
        assert_eq!(
            only_step(abandoned.clone()),
            Some(Step::RollBack {
                journal: format!("{ARCH}/O2-nightly-1")
            })
        );
        abandoned.journal = None;
        assert!(matches!(
            only_step(abandoned),
            Some(Step::LeaveAlone {
                why: Why::Unknown(_)
            })
        ));
        for state in [State::Complete, State::Unpublished, State::InFlight] {
            assert_eq!(
                only_step(revision(state, false, Vec::new())),
                None,
                "{state:?}"
            );
        }
    }

    /// Stale staged uploads are aborted unless a pending journal references
    /// them (its rollback frees them).
    #[test]
    fn stale_uploads_without_a_journal_are_aborted() {
        let stale = |id: &str, journal: Option<&str>| StaleUpload {
            key: format!("TARS/{ARCH}/store/5b/{HASH}/{id}"),
            upload_id: id.into(),
            age_seconds: Some(90_000),
            journal: journal.map(Into::into),
        };
        let report = check(
            Vec::new(),
            vec![stale("orphan", None), stale("owned", Some("j"))],
        );
        assert_eq!(
            plan(&report).abort,
            [Upload {
                key: format!("TARS/{ARCH}/store/5b/{HASH}/orphan"),
                upload_id: "orphan".into()
            }]
        );
    }
}
