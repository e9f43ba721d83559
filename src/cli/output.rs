//! What the commands print: human-readable lines or one `--json` document
//! on stdout, errors on stderr, and the exit code a set of outcomes maps to.

use clap::CommandFactory;
use serde::Serialize;

use crate::check;
use crate::counted;
use crate::error::exit;
use crate::fetch::{FetchReport, State};
use crate::recovery::{self, Outcome};
use crate::repair::{self, ActionKind};
use crate::verify::{Class, Remedy, VerifyReport};

use super::args::Cli;

/// One line per journal: id, state, hash, owner, age and lease.
pub(super) fn print_journals(entries: &[recovery::JournalEntry], json: bool) {
    if json {
        print_json(entries);
    } else if entries.is_empty() {
        println!("no journals: no upload is in flight or abandoned");
    } else {
        for e in entries {
            match (&e.owner, &e.lease) {
                (Some(owner), Some(lease)) => println!(
                    "{}  {}  hash {}  owner pid {} on {} ({})  age {}s  lease {} ({}s)",
                    e.id,
                    e.state,
                    e.hash.as_deref().unwrap_or(""),
                    owner.pid,
                    owner.host,
                    owner.tool,
                    e.age_seconds.unwrap_or(0),
                    lease,
                    e.lease_remaining_seconds.unwrap_or(0)
                ),
                _ => println!("{}  invalid: {}", e.id, e.error.as_deref().unwrap_or("")),
            }
        }
    }
}

/// One line per revision that is not complete, per journal and per stale
/// upload, then the counts.
pub(super) fn print_check(report: &check::CheckReport, package: Option<&str>) {
    for r in &report.revisions {
        let state = serde_json::to_value(r.state).expect("state serialises");
        if r.state != check::State::Complete {
            println!(
                "{}{}  {}  {}",
                state.as_str().unwrap_or(""),
                if r.recent { " (recent)" } else { "" },
                r.id(),
                r.reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        for warning in &r.warnings {
            println!("warning  {}  {warning}", r.id());
        }
    }
    for j in &report.journals {
        println!(
            "journal  {}  {}{}",
            j.id,
            j.state,
            j.lease
                .as_ref()
                .map(|l| format!(", owner {l}"))
                .or_else(|| j.error.as_ref().map(|e| format!(": {e}")))
                .unwrap_or_default()
        );
    }
    for u in &report.stale_uploads {
        println!(
            "stale upload  {}  {}  age {}s{}",
            u.key,
            u.upload_id,
            u.age_seconds.unwrap_or(0),
            u.journal
                .as_ref()
                .map(|j| format!(" (journal {j})"))
                .unwrap_or_default()
        );
    }
    let s = &report.summary;
    say_if_empty(report, package);
    println!(
        "{}: {} complete, {} partial ({} recent), {} published-incomplete, {} unpublished, {} in flight, {} abandoned, {} with warnings; {} ({} invalid), {}; {} listed in {:.1}s",
        counted(s.revisions, "revision"),
        s.complete,
        s.partial,
        s.recent,
        s.published_incomplete,
        s.unpublished,
        s.in_flight,
        s.abandoned,
        s.warnings,
        counted(s.journals, "journal"),
        s.invalid_journals,
        counted(s.stale_uploads, "stale upload"),
        counted(s.keys_listed, "key"),
        s.seconds
    );
    if !report.clean {
        println!("`alitx repair --dry-run` lists what repair would remove");
    }
}

/// Say so when the walk found nothing to look at: no architecture at all,
/// or no trace of the `--package` asked for.
pub(super) fn say_if_empty(report: &check::CheckReport, package: Option<&str>) {
    if report.architectures.is_empty() {
        println!("{} has no TARS/<arch>/: nothing to check", report.store);
    } else if let Some(package) = package.filter(|_| report.revisions.is_empty()) {
        println!(
            "package {package} is absent from {} ({}): no package link, dist link, tarball or journal of it; check --package",
            report.store,
            report.architectures.join(", ")
        );
    }
}

/// Per revision, the step and every key deleted or re-created (in a dry
/// run: the plan, and what would be), what was left alone and why.
pub(super) fn print_repair(report: &repair::RepairReport, package: Option<&str>) {
    say_if_empty(&report.check, package);
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for a in &report.actions {
        println!(
            "{}  {}: {}",
            a.action.name(report.dry_run),
            a.revision,
            a.message
        );
        let failed = matches!(a.action, ActionKind::LeftAlone | ActionKind::Failed);
        for key in &a.keys {
            // A failure half-way: the keys deleted before it.
            println!("  {} {key}", if failed { "deleted" } else { verb });
        }
        for key in &a.restored {
            println!(
                "  {} {key}",
                if report.dry_run {
                    "would restore"
                } else {
                    "restored"
                }
            );
        }
    }
    for r in report
        .check
        .revisions
        .iter()
        .filter(|r| r.state == check::State::Unpublished)
    {
        println!(
            "kept  {}: every link without its tarball: it may have been published and retired, so its number stays reserved",
            r.id()
        );
    }
    let uploads = &report.aborted_uploads;
    for u in uploads {
        let verb = if report.dry_run {
            "would abort"
        } else {
            "aborted"
        };
        println!("{verb} staged upload {} {}", u.key, u.upload_id);
    }
    // Left alone only for being younger than --min-age: what --min-age 0
    // would add, key by key.
    let young: Vec<_> = report.check.revisions.iter().filter(|r| r.recent).collect();
    if !young.is_empty() {
        let keys: usize = young.iter().map(|r| r.keys.len()).sum();
        println!(
            "with --min-age 0 it would also delete {} of {} younger than --min-age:",
            counted(keys, "key"),
            counted(young.len(), "partial revision")
        );
        for revision in young {
            for key in &revision.keys {
                println!("  {key}");
            }
        }
    }
    let keys = counted(report.actions.iter().map(|a| a.keys.len()).sum(), "key");
    let uploads = counted(uploads.len(), "staged upload");
    if report.dry_run {
        println!("{keys} and {uploads} would go; dry run: nothing changed");
    } else {
        println!("{keys} deleted, {uploads} aborted");
    }
}

/// One line per package, then the counts.
pub(super) fn print_fetch(report: &FetchReport) {
    for p in &report.packages {
        let state = serde_json::to_value(p.state).expect("state serialises");
        let tarball = match (&p.path, p.state) {
            (Some(path), State::Fetched | State::Present) => format!("  {path}"),
            _ => String::new(),
        };
        println!(
            "{}  {}  {}{tarball}",
            state.as_str().unwrap_or(""),
            p.package,
            counted(p.links.unwrap_or(0), "link")
        );
    }
    let s = &report.summary;
    println!(
        "{} into {}: {} fetched ({} bytes), {} present, {} not in the store, {} corrupt, {} failed, {} in {:.1}s",
        counted(s.packages, "package"),
        report.work_dir,
        s.fetched,
        s.bytes_read,
        s.present,
        s.not_in_store,
        s.corrupt,
        s.failed,
        counted(s.links, "link"),
        s.seconds
    );
}

/// One line per corrupt or unreadable revision with its reasons, then the
/// counts, then for each corrupt revision the command that removes it.
pub(super) fn print_verify(report: &VerifyReport, remote_store: &str) {
    for r in &report.revisions {
        let class = match r.class {
            Class::Corrupt => "corrupt",
            Class::Unreadable => "unreadable",
            Class::Verified | Class::NoRecord => continue,
        };
        println!("{class}  {}  {}", r.id, r.reasons.join("; "));
    }
    let s = &report.summary;
    println!(
        "{} revisions: {} verified, {} corrupt, {} without a record (stock uploads), {} unreadable; \
         {} package links without tarball or record not verified; {} bytes read in {:.1}s",
        s.revisions,
        s.verified,
        s.corrupt,
        s.no_record,
        s.unreadable,
        s.not_published,
        s.bytes_read,
        s.seconds
    );
    let remedies: Vec<_> = report
        .revisions
        .iter()
        .filter_map(|r| Some((r, r.remedy()?)))
        .collect();
    if remedies
        .iter()
        .any(|(_, remedy)| *remedy == Remedy::Unpublish)
    {
        println!(
            "a revision whose tarball fails must not be used: remove it, then build it again (its next build publishes it anew):"
        );
    }
    for (r, remedy) in remedies {
        match remedy {
            Remedy::Unpublish => println!(
                "  alitx repair --remote-store {remote_store} --architecture {} --package {} --version {} --revision {} --unpublish",
                r.architecture, r.package, r.version, r.revision
            ),
            Remedy::DeleteRecord { key } => println!(
                "{}: its tarball is intact, its publication record {key} is not: no command rewrites the record of a \
                 published revision; delete that key from {remote_store} (with any S3 client; in a local store, the file \
                 of that path), and the revision verifies as no-record, as a stock upload does",
                r.id
            ),
            Remedy::RepairLinks => println!(
                "{}: its tarball is intact, its links are not: `alitx check --package {}` says what is wrong, and \
                 `alitx repair` re-creates the missing links of a published revision",
                r.id, r.package
            ),
        }
    }
}

/// One journal's outcome: a line on stdout, or the error on stderr.
pub(super) fn print_outcome(outcome: &Outcome) {
    match &outcome.error {
        None => println!("{}: {}: {}", outcome.id, outcome.action, outcome.message),
        Some(err) => eprintln!("alitx: error: {}: {err}", outcome.id),
    }
}

/// The exit code of a set of outcomes. Their text lines were printed as
/// each ended ([`print_outcome`]); `--json` prints them all now, with the
/// errors on stderr.
pub(super) fn report_outcomes(outcomes: &[Outcome], json: bool, nothing: &str) -> i32 {
    if json {
        print_json(&outcomes);
        outcomes
            .iter()
            .filter(|o| o.error.is_some())
            .for_each(print_outcome);
    } else if outcomes.is_empty() {
        println!("{nothing}");
    }
    let mut code = exit::OK;
    for err in outcomes.iter().filter_map(|o| o.error.as_ref()) {
        code = code.max(err.exit_code());
    }
    // A refused live journal (4) or a conflict (3) outranks a plain
    // failure (1) only if no failure happened: a failure needs attention
    // first.
    if outcomes.iter().any(|o| {
        o.error
            .as_ref()
            .is_some_and(|e| e.exit_code() == exit::ERROR)
    }) {
        code = exit::ERROR;
    }
    code
}

pub(super) fn print_json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serialises")
    );
}

/// `value` as one line of JSON on stdout (`--json-lines`).
pub(super) fn print_json_line<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).expect("output serialises")
    );
}

/// The shell completion script clap derives from the command definitions.
pub(super) fn print_completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "alitx", &mut std::io::stdout());
}
