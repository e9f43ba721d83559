//! The command line's definitions: commands, flags, their defaults and
//! validation (clap). Parsing only; `output` prints, `mod.rs` dispatches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::check;
use crate::error::Result;
use crate::fetch;
use crate::journal::DEFAULT_PREFIX;
use crate::record;
use crate::storage::{self, Connections, LocalRoot};
use crate::txn::Options;
use crate::verify;

const AFTER_HELP: &str = "\
Exit codes: 0 success (also: already published), 1 error, 2 usage (a bad
command line), 3 conflict (another object or build holds one of the
revision's keys; `repair --unpublish`: other revisions depend on it), 4 a
live upload owns the journal (or took it over from this one), 5 `check`
found something to repair (`repair`: left something for a later run or a
person, and said why), 6 `verify` found a corrupt revision (`fetch`: a
corrupt tarball).

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
~/.aws/credentials); the endpoint from --endpoint-url, else AWS_ENDPOINT_URL,
else https://s3.cern.ch.";

/// `alitx --version`: the crate's version and the commit it was built from
/// (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ALITX_COMMIT"),
    ")"
);

/// Transactional uploads to aliBuild remote stores: a killed upload never
/// leaves a partial revision behind.
#[derive(Parser, Debug)]
#[command(name = "alitx", version = VERSION, after_help = AFTER_HELP)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Publish one package revision from an aliBuild work dir.
    ///
    /// Writes the intent journal, uploads the tarball's parts while writing
    /// the package link and the dist links, then makes the tarball appear:
    /// readers never see a partial revision. Re-running a killed upload
    /// finishes it.
    #[command(after_help = AFTER_HELP, disable_version_flag = true)]
    Upload(UploadArgs),
    /// Run uploads handed over on standard input, in this one process.
    ///
    /// Each input line is a JSON array of `alitx upload` arguments; each
    /// upload's answer is one line of JSON on standard output: the report
    /// `alitx upload --json` prints, or {"status": "error", "error": {...},
    /// "exit_code": N}. An upload is answered once its revision is
    /// published, which is what readers see; its journal is then finished
    /// (marked committed, publication record, retired) while the next
    /// upload starts, and before the process ends. Connections to a store
    /// (and their TLS sessions) stay open from one upload to the next. Ends
    /// at the end of input. Killed, it leaves what a killed `alitx upload`
    /// of the upload in progress leaves: its journal, which the next upload
    /// of it or `alitx resume` finishes. scripts/alibuild-alitx runs one
    /// per build.
    #[command(after_help = AFTER_HELP)]
    ServeUploads {
        #[command(flatten)]
        output: OutputArgs,
    },
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
    /// Deletes each partial revision's own keys (its dist links, then its
    /// package link, which frees the revision number) as long as it has no
    /// store tarball; re-creates, never deletes, the missing links of a
    /// published revision that the store alone determines (its package
    /// link, its own link in each dist directory); rolls abandoned journals
    /// back exactly as `rollback` does, and aborts stale staged uploads no
    /// journal references. Never deletes anything of a published revision,
    /// one a live journal covers, or one touched less than --min-age ago.
    /// A revision with every link but no tarball (`unpublished`: it may
    /// have been published and retired) is kept: its number stays
    /// reserved. The one exception: `--unpublish` with --package, --version
    /// and --revision removes that revision, tarball included.
    /// Exit 0 when everything was repaired, 5 when something was left
    /// alone (said why), 1 on an error; --dry-run exits as the real run
    /// would.
    #[command(after_help = AFTER_HELP)]
    Repair {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        scan: ScanArgs,
        /// Print every key it would delete and every upload it would abort,
        /// and what --min-age 0 would add; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Remove the one revision named by --package, --version and
        /// --revision, tarball included, although it is published (readers
        /// may already use it): only for a revision known to be bad.
        ///
        /// Refused (exit 3, nothing deleted) while other revisions' dist
        /// links name its tarball: they are listed. TARS/<arch>/<pkg>.manifest
        /// is left alone: it keeps the number reserved, and a rebuild of the
        /// same hash publishes the revision again.
        #[arg(long, requires_all = ["package", "version", "revision"])]
        unpublish: bool,
        /// With --unpublish: remove the revision even though other
        /// revisions' dist links name its tarball (they break).
        #[arg(long, requires = "unpublish")]
        ignore_dependents: bool,
        /// With --unpublish: the revision's version.
        #[arg(long, value_name = "VER", requires = "unpublish")]
        version: Option<String>,
        /// With --unpublish: the revision number.
        #[arg(long, value_name = "REV", requires = "unpublish")]
        revision: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Read published revisions back and check them against their records.
    ///
    /// For each selected revision, streams the store tarball once and checks
    /// that its size and SHA-256 are those of its publication record, that
    /// it is a complete gzip'd tar whose entries lie under its own
    /// <arch>/<pkg>/<ver>-<rev>/, and that its package link and its own dist
    /// links name it. Classes: verified, corrupt (with the reasons), no-record
    /// (a stock upload: checked all the same, SHA-256 reported), unreadable.
    /// Changes nothing. Exit 0 when nothing is corrupt or unreadable, 6 when
    /// something is corrupt, 1 when something could not be read.
    #[command(after_help = AFTER_HELP, disable_version_flag = true)]
    Verify(VerifyArgs),
    /// Fetch what a build needs from the store into an aliBuild work dir.
    ///
    /// Lays the work dir out as aliBuild's own fetch from a b3:// store
    /// does: for each PKG, its links in TARS/<arch>/<pkg>/ (the lines of
    /// TARS/<arch>/<pkg>.manifest and the links listed that it lacks; the
    /// directory's other symlinks are removed), and the tarball of the first
    /// HASH the store has, in TARS/<arch>/store/<h2>/<hash>/. All packages at
    /// once; each tarball is read in parallel ranges and checked as it
    /// arrives: against its publication record (size, SHA-256) and as a
    /// complete gzip'd tar of its revision. It is written beside its place
    /// and renamed there only once complete and checked: a killed fetch
    /// leaves no partial tarball, and a re-run fetches only what is missing
    /// (a tarball in place with the right size, and SHA-256 where a record
    /// tells it, is kept). Exit 0 when every package is fetched, present,
    /// or not in the store; 6 when a tarball is corrupt (nothing is left in
    /// its place; the message says which revision and the commands that
    /// fix the store); 1 on any other failure. The packages are served in
    /// the order given (a build's order): the first ones finish first, and
    /// --json-lines reports each one as soon as it is done.
    #[command(after_help = AFTER_HELP, disable_version_flag = true)]
    Fetch(FetchArgs),
    /// Print a completion script for SHELL on stdout.
    ///
    /// bash: `alitx completions bash > ~/.local/share/bash-completion/completions/alitx`;
    /// zsh: into a directory on $fpath as `_alitx`;
    /// fish: `alitx completions fish > ~/.config/fish/completions/alitx.fish`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The output flags, for commands that have them.
    pub(super) fn output(&self) -> Option<&OutputArgs> {
        match self {
            Command::Completions { .. } => None,
            Command::Upload(a) => Some(&a.output),
            Command::ServeUploads { output } => Some(output),
            Command::Journals { output, .. }
            | Command::Resume { output, .. }
            | Command::Rollback { output, .. }
            | Command::Check { output, .. }
            | Command::Repair { output, .. } => Some(output),
            Command::Verify(a) => Some(&a.output),
            Command::Fetch(a) => Some(&a.output),
        }
    }

    /// Whether the command prints lines of JSON (`fetch --json-lines`).
    pub(super) fn json_lines(&self) -> bool {
        matches!(self, Command::Fetch(a) if a.json_lines)
    }

    /// The store flags, for commands that talk to a store.
    pub(super) fn store(&self) -> Option<&StoreArgs> {
        match self {
            Command::Completions { .. } | Command::ServeUploads { .. } => None,
            Command::Upload(a) => Some(&a.store),
            Command::Journals { store, .. }
            | Command::Resume { store, .. }
            | Command::Rollback { store, .. }
            | Command::Check { store, .. }
            | Command::Repair { store, .. } => Some(store),
            Command::Verify(a) => Some(&a.store),
            Command::Fetch(a) => Some(&a.store),
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct ScanArgs {
    /// Only this architecture (default: every TARS/<arch>/ in the store).
    #[arg(long, value_name = "ARCH")]
    pub(super) architecture: Option<String>,
    /// Only this package's revisions.
    #[arg(long, value_name = "PKG")]
    pub(super) package: Option<String>,
    /// A partial revision written less than this long ago may be a stock
    /// upload still running: reported as recent, never repaired
    /// (e.g. 90s, 10m, 2h, 1d; 0 to repair at once).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub(super) min_age: Duration,
    /// Report staged (multipart) uploads older than this; repair aborts those
    /// no pending journal references.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub(super) stale_uploads_after: Duration,
    /// Listings and reads in flight at once.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub(super) concurrency: u64,
}

impl ScanArgs {
    pub(super) fn options(&self, journal_prefix: &str) -> check::ScanOptions {
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

/// A journal prefix: relative, ending in '/', and apart from the keys
/// readers use and the publication records (a journal written over a
/// record would destroy it, and every record would list as a journal).
fn parse_journal_prefix(prefix: &str) -> std::result::Result<String, String> {
    let relative = prefix.ends_with('/')
        && !prefix.starts_with('/')
        && prefix
            .trim_end_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    let overlaps = ["TARS/", record::PREFIX]
        .into_iter()
        .find(|taken| prefix.starts_with(taken) || taken.starts_with(prefix));
    match (relative, overlaps) {
        (true, None) => Ok(prefix.to_string()),
        (false, _) => Err(format!(
            "{prefix:?} is not a relative path ending in '/' (default {DEFAULT_PREFIX})"
        )),
        (true, Some(taken)) => Err(format!(
            "{prefix:?} overlaps {taken}, which holds {}: journals live apart (default {DEFAULT_PREFIX})",
            match taken {
                "TARS/" => "the store's packages",
                _ => "the publication records",
            }
        )),
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
pub(super) struct StoreArgs {
    /// b3://BUCKET or s3://BUCKET (a trailing ::rw is accepted), or
    /// file:///ABS/PATH or a directory path for a local store.
    #[arg(long, value_name = "STORE")]
    pub(super) remote_store: String,
    /// S3 endpoint [default: $AWS_ENDPOINT_URL, else https://s3.cern.ch].
    #[arg(long, value_name = "URL")]
    pub(super) endpoint_url: Option<String>,
    /// Where journals live in the store: a relative path ending in '/',
    /// outside TARS/ and .alitx/published/ (the publication records).
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_journal_prefix)]
    pub(super) journal_prefix: String,
    /// Seconds an uploader's lease lasts without renewal.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub(super) lease_seconds: u64,
    /// Stop with exit 1 when the command has not finished after this long
    /// (e.g. 90s, 10m, 2h; 0: no limit). An upload stopped so keeps its
    /// journal: the same upload, or `resume`, finishes it. Each S3 request
    /// also has its own limits: 10 s to connect, an attempt that sends
    /// nothing and receives nothing for 20 s ends, 4 attempts.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub(super) timeout: Duration,
}

#[derive(Args, Debug)]
pub(super) struct OutputArgs {
    /// Print one JSON document describing the result on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// More detail on stderr (-v steps, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
}

#[derive(Args, Debug)]
pub(super) struct UploadArgs {
    /// aliBuild work dir (the one holding TARS/).
    #[arg(long, value_name = "DIR")]
    pub(super) work_dir: PathBuf,
    /// aliBuild architecture, e.g. slc9_x86-64.
    #[arg(long, value_name = "ARCH")]
    pub(super) architecture: String,
    /// Package name, e.g. O2.
    #[arg(long, value_name = "PKG")]
    pub(super) package: String,
    /// Package version, e.g. v1.2.3.
    #[arg(long, value_name = "VER")]
    pub(super) version: String,
    /// aliBuild revision, e.g. 1.
    #[arg(long, value_name = "REV")]
    pub(super) revision: String,
    /// The package's 40-character build hash.
    #[arg(long, value_name = "HASH")]
    pub(super) hash: String,
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// Tarball part size in MiB (5 to 512).
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(crate::journal::PART_SIZE_MIB))]
    pub(super) part_size: u64,
    /// Parts uploaded in parallel.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(super) concurrency: u64,
    /// Links written in parallel.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(super) link_concurrency: u64,
    /// When the revision's package link already names this very build but
    /// its tarball is missing (an earlier upload was killed after its links,
    /// or the clean-up retired the tarball), complete it only if nothing of
    /// it moved for this long (e.g. 15m, 1h): a younger one may belong to an
    /// upload still running, and exits 4 saying when to retry. Any key of
    /// it that differs from this build's is a conflict (exit 3).
    #[arg(long, value_name = "DURATION", env = "ALITX_ADOPT_AFTER", default_value = "15m", value_parser = parse_duration)]
    pub(super) adopt_after: Duration,
    #[command(flatten)]
    pub(super) output: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// Only this architecture (default: every one in the store).
    #[arg(long, value_name = "ARCH")]
    pub(super) architecture: Option<String>,
    /// Only this package's revisions.
    #[arg(long, value_name = "PKG")]
    pub(super) package: Option<String>,
    /// Only revisions of this version.
    #[arg(long, value_name = "VER")]
    pub(super) version: Option<String>,
    /// Only this revision number.
    #[arg(long, value_name = "REV")]
    pub(super) revision: Option<String>,
    /// Revisions read at once; the tarball bytes held in memory (ranged
    /// GETs of up to 16 MiB, in flight or not yet verified) stay below
    /// N × 8 MiB.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(super) concurrency: u64,
    #[command(flatten)]
    pub(super) output: OutputArgs,
}

#[derive(Args, Debug)]
pub(super) struct FetchArgs {
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// aliBuild work dir (the one holding TARS/); created if missing.
    #[arg(long, value_name = "DIR")]
    pub(super) work_dir: PathBuf,
    /// aliBuild architecture, e.g. slc9_x86-64.
    #[arg(long, value_name = "ARCH")]
    pub(super) architecture: String,
    /// Requests in flight to the store at once, all packages together
    /// (listings, links, ranged GETs of tarballs).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(super) concurrency: u64,
    /// Tarball bytes held in memory at once, in MiB (ranged GETs of up to
    /// 8 MiB in flight, or not yet written and checked).
    #[arg(long, value_name = "MIB", default_value_t = 96, value_parser = clap::value_parser!(u64).range(8..=4096))]
    pub(super) memory: u64,
    /// A package of the build and the hashes its tarball may have, best
    /// first, as aliBuild's remote_hashes: e.g. zlib@<40 hex>,<40 hex>.
    /// A PKG without hashes fetches its links only.
    #[arg(required = true, value_name = "PKG[@HASH[,HASH...]]")]
    pub(super) packages: Vec<fetch::Wanted>,
    /// Print on stdout one line of JSON per package as soon as it is done
    /// (its links laid and its tarball in place, or known absent, failed or
    /// corrupt), with the fields of a package of --json's `packages`; then
    /// one last line with --json's other fields (`clean`, `store`,
    /// `work_dir`, `architecture`, `summary`). A fetch that fails as a whole
    /// prints --json's error object (`status`, `error`, `exit_code`) as a
    /// line instead.
    #[arg(long, conflicts_with = "json")]
    pub(super) json_lines: bool,
    #[command(flatten)]
    pub(super) output: OutputArgs,
}

impl FetchArgs {
    pub(super) fn options(&self) -> fetch::FetchOptions {
        fetch::FetchOptions {
            concurrency: self.concurrency as usize,
            memory: self.memory << 20,
            progress: !self.output.json && !self.json_lines && std::io::stderr().is_terminal(),
            ..fetch::FetchOptions::new(
                &self.store.remote_store,
                self.work_dir.clone(),
                &self.architecture,
            )
        }
    }
}

impl VerifyArgs {
    pub(super) fn options(&self) -> verify::VerifyOptions {
        verify::VerifyOptions {
            architecture: self.architecture.clone(),
            package: self.package.clone(),
            version: self.version.clone(),
            revision: self.revision.clone(),
            concurrency: self.concurrency as usize,
            progress: !self.output.json && std::io::stderr().is_terminal(),
            ..verify::VerifyOptions::default()
        }
    }
}

impl StoreArgs {
    pub(super) fn options(&self) -> Options {
        Options {
            journal_prefix: self.journal_prefix.clone(),
            lease: Duration::from_secs(self.lease_seconds.max(1)),
            ..Options::default()
        }
    }

    /// Open the store for a one-shot command, with a few connections; a
    /// local one must exist, except for `upload` (`LocalRoot::MayCreate`),
    /// which says when it started a new one.
    pub(super) async fn open(
        &self,
        local_root: LocalRoot,
    ) -> Result<std::sync::Arc<dyn storage::Store>> {
        let few = Connections::AtMost(storage::FEW_CONNECTIONS);
        self.open_with(local_root, few).await
    }

    /// Open an existing store for a command that keeps `in_flight` reads
    /// going at once (a scan, the journals, a fetch): as many connections.
    pub(super) async fn open_for_reads(
        &self,
        in_flight: usize,
    ) -> Result<std::sync::Arc<dyn storage::Store>> {
        let connections = Connections::AtMost(in_flight);
        self.open_with(LocalRoot::MustExist, connections).await
    }

    /// [`open`](Self::open), an S3 store opening `connections`.
    pub(super) async fn open_with(
        &self,
        local_root: LocalRoot,
        connections: Connections,
    ) -> Result<std::sync::Arc<dyn storage::Store>> {
        if let Some(created) = storage::prepare_local_root(&self.remote_store, local_root)? {
            eprintln!("alitx: started a new local store in {}", created.display());
        }
        storage::open_with(
            &self.remote_store,
            self.endpoint_url.as_deref(),
            connections,
        )
        .await
    }
}
