//! The command line: argument parsing, output (human or `--json`), and the
//! mapping of results to exit codes. Each command's work lives elsewhere.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::check;
use crate::error::{exit, Error, ErrorKind, Result};
use crate::journal::DEFAULT_PREFIX;
use crate::layout::Revision;
use crate::recovery::{self, Outcome, Selection};
use crate::repair;
use crate::storage;
use crate::txn::{self, Options};
use crate::workdir;

const AFTER_HELP: &str = "\
Exit codes: 0 success (also: already published), 1 error, 3 conflict (another
object or build holds one of the revision's keys), 4 a live upload owns the
journal, 5 `check` found something to repair (`repair`: left something for
a later run or a person, and said why).

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
~/.aws/credentials); the endpoint from --endpoint-url, else AWS_ENDPOINT_URL,
else https://s3.cern.ch.";

/// Transactional uploads to aliBuild remote stores: a killed upload never
/// leaves a partial revision behind.
#[derive(Parser, Debug)]
#[command(name = "alitx", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish one package revision from an aliBuild work dir.
    ///
    /// Writes the intent journal, uploads the tarball's parts while writing
    /// the package link and the dist links, then makes the tarball appear:
    /// readers never see a partial revision. Re-running a killed upload
    /// finishes it.
    #[command(after_help = AFTER_HELP, disable_version_flag = true)]
    Upload(UploadArgs),
    /// List the journals of open, abandoned or unretired transactions.
    #[command(after_help = AFTER_HELP)]
    Journals {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Finish or undo the transactions of uploads that died.
    ///
    /// With no JOURNAL, handles every pending journal whose owner is gone
    /// (lease expired, or same host and its pid is dead). A journal rolls
    /// forward when --work-dir still holds its exact files, back otherwise.
    #[command(after_help = AFTER_HELP)]
    Resume {
        #[command(flatten)]
        store: StoreArgs,
        /// aliBuild work dir holding the interrupted revisions' files.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Only journals of this architecture.
        #[arg(long, value_name = "ARCH")]
        architecture: Option<String>,
        /// Act even on journals whose lease is live (their owner must be dead).
        #[arg(long)]
        force: bool,
        /// Journal ids (ARCH/PKG-VERSION-REVISION, as `journals` prints) or keys.
        journals: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Undo transactions: delete what they wrote, abort their staged upload,
    /// retire their journal. Objects they did not write are never touched.
    #[command(after_help = AFTER_HELP)]
    Rollback {
        #[command(flatten)]
        store: StoreArgs,
        /// Act even on journals whose lease is live (their owner must be dead).
        #[arg(long)]
        force: bool,
        /// Journal ids (ARCH/PKG-VERSION-REVISION, as `journals` prints) or keys.
        #[arg(required = true)]
        journals: Vec<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Find partial revisions left by any uploader (stock aliBuild or alitx).
    ///
    /// Walks TARS/ and classifies every package revision: complete; partial
    /// (with the reason); in flight (a live alitx journal covers it);
    /// abandoned (its journal's owner is gone). Also reports journals and
    /// staged uploads older than --stale-uploads-after. Changes nothing.
    /// Exit 0 when the store is clean, 5 when `repair` has work to do.
    #[command(after_help = AFTER_HELP)]
    Check {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        scan: ScanArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove the leftovers `check` finds, and nothing else.
    ///
    /// Deletes each partial revision's own keys (tarball first, then its dist
    /// links, then its package link, which frees the revision number), rolls
    /// abandoned journals back exactly as `rollback` does, and aborts stale
    /// staged uploads no journal references. Never touches a complete
    /// revision, one a live journal covers, or one touched less than
    /// --min-age ago. Exit 0 when everything was repaired (or --dry-run),
    /// 5 when something was left alone (said why), 1 on an error.
    #[command(after_help = AFTER_HELP)]
    Repair {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        scan: ScanArgs,
        /// Print every key it would delete and every upload it would abort;
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Args, Debug)]
struct ScanArgs {
    /// Only this architecture (default: every TARS/<arch>/ in the store).
    #[arg(long, value_name = "ARCH")]
    architecture: Option<String>,
    /// Only this package's revisions.
    #[arg(long, value_name = "PKG")]
    package: Option<String>,
    /// A partial revision written less than this long ago may be a stock
    /// upload still running: reported as recent, never repaired
    /// (e.g. 90s, 10m, 2h, 1d; 0 to repair at once).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    min_age: Duration,
    /// Report staged (multipart) uploads older than this; repair aborts those
    /// no pending journal references.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    stale_uploads_after: Duration,
    /// Listings and reads in flight at once.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=512))]
    concurrency: u64,
}

impl ScanArgs {
    fn options(&self, journal_prefix: &str) -> check::ScanOptions {
        check::ScanOptions {
            architecture: self.architecture.clone(),
            package: self.package.clone(),
            journal_prefix: journal_prefix.to_string(),
            min_age: self.min_age,
            stale_uploads_after: self.stale_uploads_after,
            concurrency: self.concurrency as usize,
        }
    }
}

/// `90`, `90s`, `10m`, `2h`, `1d`.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if seconds > 0 => Ok(Duration::from_secs(n * seconds)),
        _ => Err(format!(
            "{text:?} is not a duration: use a whole number with s, m, h or d (e.g. 10m)"
        )),
    }
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// b3://BUCKET or s3://BUCKET (a trailing ::rw is accepted), or
    /// file:///ABS/PATH or a directory path for a local store.
    #[arg(long, value_name = "STORE")]
    remote_store: String,
    /// S3 endpoint [default: $AWS_ENDPOINT_URL, else https://s3.cern.ch].
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Where journals live in the store, outside TARS/.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    journal_prefix: String,
    /// Seconds an uploader's lease lasts without renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    lease_seconds: u64,
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// Print one JSON document describing the result on stdout.
    #[arg(long)]
    json: bool,
    /// More detail on stderr (-v steps, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Args, Debug)]
struct UploadArgs {
    /// aliBuild work dir (the one holding TARS/).
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,
    /// aliBuild architecture, e.g. slc9_x86-64.
    #[arg(long, value_name = "ARCH")]
    architecture: String,
    /// Package name, e.g. O2.
    #[arg(long, value_name = "PKG")]
    package: String,
    /// Package version, e.g. v1.2.3.
    #[arg(long, value_name = "VER")]
    version: String,
    /// aliBuild revision, e.g. 1.
    #[arg(long, value_name = "REV")]
    revision: String,
    /// The package's 40-character build hash.
    #[arg(long, value_name = "HASH")]
    hash: String,
    #[command(flatten)]
    store: StoreArgs,
    /// Tarball part size in MiB (5 to 512).
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(5..=512))]
    part_size: u64,
    /// Parts uploaded in parallel.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,
    /// Links written in parallel.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=256))]
    link_concurrency: u64,
    #[command(flatten)]
    output: OutputArgs,
}

impl StoreArgs {
    fn options(&self) -> Result<Options> {
        let prefix = &self.journal_prefix;
        let valid = prefix.ends_with('/')
            && !prefix.starts_with('/')
            && !prefix.starts_with("TARS/")
            && prefix
                .trim_end_matches('/')
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !valid {
            return Err(Error::input(format!(
                "invalid --journal-prefix {prefix:?}: a relative path ending in '/', outside TARS/ (default {DEFAULT_PREFIX})"
            )));
        }
        Ok(Options {
            journal_prefix: prefix.clone(),
            lease: Duration::from_secs(self.lease_seconds.max(1)),
            ..Options::default()
        })
    }

    async fn open(&self) -> Result<std::sync::Arc<dyn storage::Store>> {
        storage::open(&self.remote_store, self.endpoint_url.as_deref()).await
    }
}

/// Parse the command line, run the command, and return the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let output = match &cli.command {
        Command::Upload(a) => &a.output,
        Command::Journals { output, .. }
        | Command::Resume { output, .. }
        | Command::Rollback { output, .. }
        | Command::Check { output, .. }
        | Command::Repair { output, .. } => output,
    };
    init_logging(output.verbose);
    let json = output.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            if json {
                print_json(&json!({
                    "status": "error",
                    "error": { "kind": err.kind_name(), "message": err.message },
                    "exit_code": err.exit_code(),
                }));
            }
            eprintln!("alitx: error: {err}");
            err.exit_code()
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // Only our own events: the SDK's debug logs would show request headers.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,alitx={level}"
        )))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn run(command: Command) -> Result<i32> {
    match command {
        Command::Upload(args) => upload(args).await,
        Command::Journals { store, output } => {
            let options = store.options()?;
            let entries =
                recovery::list_journals(&*store.open().await?, &options.journal_prefix).await?;
            if output.json {
                print_json(&entries);
            } else if entries.is_empty() {
                println!("no journals: no upload is in flight or abandoned");
            } else {
                for e in &entries {
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
            Ok(exit::OK)
        }
        Command::Resume {
            store,
            work_dir,
            architecture,
            force,
            journals,
            output,
        } => {
            let options = store.options()?;
            let selection = Selection {
                ids: &journals,
                architecture: architecture.as_deref(),
                force,
            };
            let outcomes = recovery::resume(
                store.open().await?,
                &options,
                work_dir.as_deref(),
                &selection,
            )
            .await?;
            Ok(report_outcomes(
                &outcomes,
                output.json,
                "nothing to resume: no abandoned journals",
            ))
        }
        Command::Rollback {
            store,
            force,
            journals,
            output,
        } => {
            let options = store.options()?;
            let selection = Selection {
                ids: &journals,
                architecture: None,
                force,
            };
            let outcomes = recovery::rollback(store.open().await?, &options, &selection).await?;
            Ok(report_outcomes(
                &outcomes,
                output.json,
                "nothing to roll back",
            ))
        }
        Command::Check {
            store,
            scan,
            output,
        } => {
            let options = store.options()?;
            let report = check::scan(
                &*store.open().await?,
                &scan.options(&options.journal_prefix),
            )
            .await?;
            if output.json {
                print_json(&report);
            } else {
                print_check(&report);
            }
            Ok(if report.clean {
                exit::OK
            } else {
                exit::NEEDS_REPAIR
            })
        }
        Command::Repair {
            store,
            scan,
            dry_run,
            output,
        } => {
            let options = store.options()?;
            let backend = store.open().await?;
            let found = check::scan(&*backend, &scan.options(&options.journal_prefix)).await?;
            let report =
                repair::repair(backend, found, &options, dry_run, scan.concurrency as usize)
                    .await?;
            if output.json {
                print_json(&report);
            } else {
                print_repair(&report);
            }
            Ok(if report.actions.iter().any(|a| a.action == "failed") {
                exit::ERROR
            } else if report.left_over && !dry_run {
                exit::NEEDS_REPAIR
            } else {
                exit::OK
            })
        }
    }
}

/// One line per revision that is not complete, per journal and per stale
/// upload, then the counts.
fn print_check(report: &check::CheckReport) {
    for r in report
        .revisions
        .iter()
        .filter(|r| r.state != check::State::Complete)
    {
        let state = serde_json::to_value(r.state).expect("state serialises");
        println!(
            "{}{}  {}  {}",
            state.as_str().unwrap_or(""),
            if r.recent { " (recent)" } else { "" },
            r.id(),
            r.reasons.join("; ")
        );
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
    say_if_empty(report);
    println!(
        "{} revisions: {} complete, {} partial ({} recent), {} in flight, {} abandoned; {} journals ({} invalid), {} stale uploads; {} keys listed in {:.1}s",
        s.revisions,
        s.complete,
        s.partial,
        s.recent,
        s.in_flight,
        s.abandoned,
        s.journals,
        s.invalid_journals,
        s.stale_uploads,
        s.keys_listed,
        s.seconds
    );
    if !report.clean {
        println!("`alitx repair --dry-run` lists what repair would remove");
    }
}

fn say_if_empty(report: &check::CheckReport) {
    if report.architectures.is_empty() {
        println!("{} has no TARS/<arch>/: nothing to check", report.store);
    }
}

/// Every key deleted (or that would be), what was left alone and why.
fn print_repair(report: &repair::RepairReport) {
    say_if_empty(&report.check);
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for a in &report.actions {
        match a.action.as_str() {
            "left-alone" | "failed" => println!("{}  {}: {}", a.action, a.revision, a.message),
            _ => {
                println!("{}  {}: {}", a.action, a.revision, a.message);
                for key in &a.keys {
                    println!("  {verb} {key}");
                }
            }
        }
    }
    let uploads = report
        .aborted_uploads
        .as_ref()
        .or(report.would_abort_uploads.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for u in uploads {
        let verb = if report.dry_run {
            "would abort"
        } else {
            "aborted"
        };
        println!("{verb} staged upload {} {}", u.key, u.upload_id);
    }
    let keys: usize = report.actions.iter().map(|a| a.keys.len()).sum();
    if report.dry_run {
        println!(
            "{keys} keys and {} staged uploads would go; dry run: nothing changed",
            uploads.len()
        );
    } else {
        println!(
            "{keys} keys deleted, {} staged uploads aborted",
            uploads.len()
        );
    }
}

async fn upload(args: UploadArgs) -> Result<i32> {
    let revision = Revision::new(
        &args.architecture,
        &args.package,
        &args.version,
        &args.revision,
        &args.hash,
    )?;
    let local = workdir::read_revision(&args.work_dir, revision)?;
    let options = Options {
        part_size: (args.part_size << 20) as usize,
        concurrency: args.concurrency as usize,
        link_concurrency: args.link_concurrency as usize,
        progress: !args.output.json && std::io::stderr().is_terminal(),
        ..args.store.options()?
    };
    let store = args.store.open().await?;
    let report = txn::upload(store, local, &options).await?;
    if args.output.json {
        print_json(&report);
    } else {
        println!("{}", recovery::summary(&report));
    }
    Ok(exit::OK)
}

/// Print per-journal outcomes; the exit code is the worst one's.
fn report_outcomes(outcomes: &[Outcome], json: bool, nothing: &str) -> i32 {
    if json {
        print_json(&outcomes);
    } else if outcomes.is_empty() {
        println!("{nothing}");
    }
    let mut code = exit::OK;
    for outcome in outcomes {
        if !json && outcome.error.is_none() {
            println!("{}: {}: {}", outcome.id, outcome.action, outcome.message);
        }
        if let Some(err) = &outcome.error {
            eprintln!("alitx: error: {}: {err}", outcome.id);
            code = code.max(err.exit_code());
        }
    }
    // A refused live journal (4) outranks a plain failure (1) only if no
    // failure happened: a failure needs attention first.
    if outcomes.iter().any(|o| {
        o.error
            .as_ref()
            .is_some_and(|e| e.kind != ErrorKind::LiveLease)
    }) {
        code = exit::ERROR;
    }
    code
}

fn print_json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serialises")
    );
}
