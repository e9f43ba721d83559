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
pub mod plan;
mod publish;
mod undo;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::Journal;
use crate::layout::{Link, Revision};
use crate::liveness::Liveness;
use crate::ownership::{read_journal, JournalHandle, Takeover};
use crate::storage::{get_small, Created, ObjectInfo, PutMode, Small, Store};
use crate::workdir::LocalRevision;

pub use bookkeeping::{Bookkeeping, Finishers};
use plan::{Adoption, Aftermath, LocalFiles, Plan, Start, Tarball};
pub use publish::retire_committed;
use publish::{read_whole_if_small, Staging, WholeTarball};
pub use undo::rollback_keys;

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
    fn new(status: Status, journal: String, revision: &Revision, store: &dyn Store) -> Self {
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

/// How a transaction this process drove ended.
#[derive(Debug)]
pub enum Ended {
    /// Published, found published, or rolled back as asked.
    Done(Report),
    /// A conflict or a tarball that failed verification: the transaction
    /// was undone (`report`), nothing of it stays; `cause` says why.
    Undone { report: Report, cause: Error },
}

/// Rounds `upload` takes at most: each one that does not end it found a
/// journal and finished it first.
const UPLOAD_ROUNDS: usize = 5;

/// Publish the revision read from the work dir: the `upload` command.
pub async fn upload(
    store: Arc<dyn Store>,
    local: LocalRevision,
    options: &Options,
) -> Result<Report> {
    let started = Instant::now();
    let txn = crate::random_hex(8);
    let store_key = local.revision.store_key();
    // A tarball that fits in one part is read and verified while the store
    // is first read, so that a bad one is refused before anything is
    // written; the first look at the revision and the staged upload of
    // its tarball (recorded by the intent) go out with the preflight.
    let staging = async {
        let whole = read_whole_if_small(&local, options).await;
        let metadata = staged_metadata(&txn, whole.as_ref().ok().and_then(Option::as_ref));
        (whole, store.create_upload(&store_key, &metadata).await)
    };
    let (reachable, first_look, (whole, staged)) = tokio::join!(
        store.preflight(),
        look(&*store, &local.revision, &options.journal_prefix),
        staging
    );
    // The preflight's error says best what is wrong with the store.
    reachable?;
    debug!("store reachable: {}", store.describe());
    let mut unstarted = Unstarted {
        txn,
        upload_id: staged.ok(),
        whole: Some(whole),
    };
    let mut first_look = Some(first_look);
    let rounds = async {
        for _ in 0..UPLOAD_ROUNDS {
            let found = match first_look.take() {
                Some(found) => found?,
                None => look(&*store, &local.revision, &options.journal_prefix).await?,
            };
            if let Some(mut report) =
                upload_round(&store, &local, found, &mut unstarted, options).await?
            {
                report.duration_seconds = started.elapsed().as_secs_f64();
                return Ok(report);
            }
        }
        // Busy, not a conflict: no other hash is known to hold the revision.
        Err(Error::new(
            ErrorKind::LiveLease,
            format!(
                "{} kept changing in the store while this upload started ({UPLOAD_ROUNDS} journals found and finished): \
                 another process is uploading the same revision; check with `alitx journals` and re-run",
                local.revision.full_version()
            ),
        ))
    };
    let ended = rounds.await;
    // A staged upload no intent journal recorded: nobody else would free it.
    unstarted.abort_upload(&*store, &store_key).await;
    ended
}

/// The metadata of the tarball an upload stages: its transaction's id,
/// and the SHA-256 of a tarball read whole (which `verify` reads back).
fn staged_metadata(txn: &str, whole: Option<&WholeTarball>) -> crate::storage::Metadata {
    let mut metadata: crate::storage::Metadata =
        [(crate::journal::TXN_METADATA.to_string(), txn.to_string())].into();
    if let Some(whole) = whole {
        metadata.insert(
            crate::journal::SHA256_METADATA.into(),
            whole.sha256().into(),
        );
    }
    metadata
}

/// What an upload prepared before its intent journal exists: its
/// transaction id, the staged upload of its tarball (created with the
/// first look, carrying that id), and the tarball read whole if it fits
/// in one part.
struct Unstarted {
    txn: String,
    upload_id: Option<String>,
    whole: Option<Result<Option<WholeTarball>>>,
}

impl Unstarted {
    /// Abort the staged upload, if no intent journal recorded it; a
    /// failure only leaves it to `repair`'s stale-upload abort.
    async fn abort_upload(&mut self, store: &dyn Store, key: &str) {
        if let Some(upload_id) = self.upload_id.take() {
            if let Err(e) = store.abort_upload(key, &upload_id).await {
                warn!("{key}: aborting the unused staged upload {upload_id} failed ({e}); `alitx repair` aborts it once stale");
            }
        }
    }
}

/// What the store holds of a revision when an upload round starts: its
/// journal, if any, and the facts [`plan::start`] decides on.
struct Found {
    journal: Option<Journal>,
    facts: plan::StartFacts,
}

/// Read the revision's journal, store tarball and package link at once.
async fn look(store: &dyn Store, revision: &Revision, prefix: &str) -> Result<Found> {
    let (journal_key, store_key) = (Journal::key_of(prefix, revision), revision.store_key());
    let link_key = revision.package_link().key;
    let (journal, tarball, package_link) = tokio::try_join!(
        read_journal(store, prefix, &journal_key),
        store.head(&store_key),
        store.head(&link_key),
    )?;
    let facts = plan::StartFacts {
        journal: journal.as_ref().map(|j| j.state),
        tarball: tarball.is_some(),
        package_link: package_link.is_some(),
    };
    Ok(Found { journal, facts })
}

/// What follows from one look at the store: the report once the upload is
/// over, `None` when a journal found was finished first and the store
/// must be read again.
async fn upload_round(
    store: &Arc<dyn Store>,
    local: &LocalRevision,
    found: Found,
    unstarted: &mut Unstarted,
    options: &Options,
) -> Result<Option<Report>> {
    let revision = &local.revision;
    let prefix = &options.journal_prefix;
    let journal_key = Journal::key_of(prefix, revision);
    match plan::start(found.facts) {
        Start::RetireCommitted => {
            // The last writer died after publishing, before retiring.
            info!("retiring committed journal {journal_key}");
            let existing = found.journal.expect("a committed journal");
            retire_committed(&**store, &existing, prefix).await?;
            Ok(None)
        }
        Start::TakeOver => {
            // The takeover aborts every staged upload of the tarball key,
            // this one's too: a new one is staged if this upload begins.
            unstarted
                .abort_upload(&**store, &revision.store_key())
                .await;
            let takeover =
                JournalHandle::take_over(store.clone(), prefix, &journal_key, options.lease, false)
                    .await?;
            let handle = match takeover {
                Takeover::Busy(owner) => return Err(live_lease_error(&owner)),
                Takeover::Retired => return Ok(None),
                Takeover::Owned(handle) => handle,
            };
            info!("took over abandoned journal {journal_key}");
            let other_build = handle.snapshot().await.revision != *revision;
            match continue_owned(
                store.clone(),
                &handle,
                Some(local),
                Intent::Forward,
                options,
            )
            .await?
            {
                // It described other bytes (undone) or another build
                // (finished or undone, it is not this upload's outcome):
                // look again, for ours.
                Ended::Done(report) if report.status == Status::RolledBack || other_build => {
                    Ok(None)
                }
                Ended::Done(report) => Ok(Some(report)),
                Ended::Undone { cause, .. } => {
                    warn!("{cause}; starting a new transaction");
                    Ok(None)
                }
            }
        }
        Start::CheckPublished => {
            let restored = complete_links(&**store, revision, &local.links).await?;
            if !restored.is_empty() {
                warn!(
                    "{} is published: restored {} missing links",
                    revision.full_version(),
                    restored.len()
                );
            }
            let mut report = Report::new(
                Status::AlreadyPublished,
                Journal::id_of(revision),
                revision,
                &**store,
            );
            report.tarball_bytes = local.tarball.size;
            report.keys_written = restored;
            Ok(Some(report))
        }
        Start::CheckAdoption => {
            // The quiet time counts every staged upload of the key: not
            // this one's, just created.
            unstarted
                .abort_upload(&**store, &revision.store_key())
                .await;
            let facts = adopt::facts(&**store, local).await?;
            match plan::adoption(facts, options.adopt_after) {
                Adoption::Adopt => {
                    info!(
                        "{} was left unpublished by an earlier upload of this very build: completing it",
                        revision.full_version()
                    );
                    begin(store, local, unstarted, true, options)
                        .await
                        .map(Some)
                }
                Adoption::TooRecent { retry_after } => {
                    Err(adopt::too_recent(revision, retry_after))
                }
                Adoption::Gone => Ok(None),
                Adoption::Taken => Err(taken_error(revision)),
                Adoption::Differs(keys) => Err(adopt::differs(revision, &keys)),
            }
        }
        Start::Begin => begin(store, local, unstarted, false, options)
            .await
            .map(Some),
    }
}

/// Write the intent journal and drive a new transaction to its end.
async fn begin(
    store: &Arc<dyn Store>,
    local: &LocalRevision,
    unstarted: &mut Unstarted,
    adopting: bool,
    options: &Options,
) -> Result<Report> {
    let revision = &local.revision;
    let prefix = &options.journal_prefix;
    let journal_key = Journal::key_of(prefix, revision);
    let whole = unstarted.whole.take().transpose()?.flatten();
    // A full local disk is refused now, with both figures, not half-way.
    store.ensure_space(local.tarball.size).await?;
    let mut journal = Journal::new(
        unstarted.txn.clone(),
        revision,
        local.tarball,
        &local.links,
        options.part_size as u64,
        options.lease,
    );
    let upload_id = match unstarted.upload_id.clone() {
        Some(upload_id) => upload_id,
        None => {
            let metadata = staged_metadata(&journal.txn, whole.as_ref());
            let upload_id = store.create_upload(&journal.tarball.key, &metadata).await?;
            unstarted.upload_id = Some(upload_id.clone());
            upload_id
        }
    };
    journal.tarball.upload_id = Some(upload_id.clone());
    journal.tarball.sha256 = whole.as_ref().map(|whole| whole.sha256().to_string());
    journal.adopts = adopting;

    // Intent: the journal is the first write; a concurrent writer of the
    // same revision collides here. Until it is stored, the staged upload
    // is aborted if this upload ends.
    failpoint("before-record-upload");
    match store
        .put(&journal_key, journal.to_bytes(), &journal.journal_metadata(), PutMode::Create)
        .await?
    {
        Created::Yes => {}
        Created::AlreadyExists => match read_journal(&**store, prefix, &journal_key).await? {
            // A retried request whose first answer was lost: it is ours.
            Some(stored) if stored.txn == journal.txn => {
                debug!("intent: the journal's first write had stored it")
            }
            Some(other) => return Err(live_lease_error(&other)),
            // Busy, not a conflict: nothing says another hash holds it.
            None => {
                return Err(Error::new(
                    ErrorKind::LiveLease,
                    format!(
                        "another upload of {} started and finished while this one was starting; re-run to check the result",
                        revision.full_version()
                    ),
                ))
            }
        },
    }
    unstarted.upload_id = None;
    debug!("intent: journal {journal_key} written");
    failpoint("after-intent");
    let handle = JournalHandle::created(store.clone(), prefix, journal);
    let ended = drive(
        store.clone(),
        &handle,
        Some(local),
        Staging::Fresh { upload_id, whole },
        Tarball::Absent,
        Intent::Forward,
        options,
    )
    .await?;
    match ended {
        Ended::Done(mut report) => {
            report.adopted = adopting;
            Ok(report)
        }
        Ended::Undone { cause, .. } => {
            Err(cause.context_after("nothing of this upload was left in the store"))
        }
    }
}

/// Continue a transaction whose journal this process now owns (after
/// [`JournalHandle::take_over`]): finish it if its tarball is published,
/// else roll it forward (with `local` files that match it) or back.
pub async fn continue_owned(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    intent: Intent,
    options: &Options,
) -> Result<Ended> {
    let started = Instant::now();
    let journal = handle.snapshot().await;
    if journal.deleter.is_some() {
        // A deleter's lock, abandoned: its links go back if the revision
        // is published, and the journal is retired.
        let mut report = Report::new(Status::RolledBack, journal.id(), &journal.revision, &*store);
        report.keys_written = crate::repair::finish_abandoned(&*store, handle).await?;
        report.duration_seconds = started.elapsed().as_secs_f64();
        return Ok(Ended::Done(report));
    }
    let options = Options {
        part_size: journal.tarball.part_size as usize,
        ..options.clone()
    };
    // Fence the previous owner out before anything is decided: its staged
    // uploads are aborted, so the tarball read next stays as it is unless
    // this process publishes it. A dead owner's can be resumed (its
    // completion in flight would publish this very transaction).
    let resumes_staged = handle.previous_owner() == Some(Liveness::OwnerDead)
        && intent == Intent::Forward
        && local.is_some_and(|local| mismatch(&journal, local).is_none());
    undo::fence(&*store, &journal, resumes_staged).await?;
    let tarball = undo::tarball_now(&*store, &journal).await?;
    let staging = Staging::Recorded;
    let mut ended = drive(store, handle, local, staging, tarball, intent, &options).await?;
    let (Ended::Done(report) | Ended::Undone { report, .. }) = &mut ended;
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(ended)
}

/// Why the local files cannot complete `journal`, if they cannot.
pub fn mismatch(journal: &Journal, local: &LocalRevision) -> Option<String> {
    if local.revision != journal.revision {
        return Some("the work dir holds a different build of this revision".into());
    }
    if (local.tarball.size, local.tarball.mtime_ns)
        != (journal.tarball.size, journal.tarball.mtime_ns)
    {
        return Some(format!(
            "{} changed since the journal was written",
            local.tarball_path.display()
        ));
    }
    let planned: Vec<&Link> = journal.links().collect();
    let found: Vec<&Link> = local.links.iter().collect();
    if planned != found {
        return Some("the work dir's links differ from the journal's".into());
    }
    None
}

/// Drive an owned transaction to its end, with the lease renewed meanwhile:
/// execute [`plan::plan`], and on failure what [`plan::aftermath`] says.
async fn drive(
    store: Arc<dyn Store>,
    handle: &Arc<JournalHandle>,
    local: Option<&LocalRevision>,
    staging: Staging,
    tarball: Tarball,
    intent: Intent,
    options: &Options,
) -> Result<Ended> {
    let _renewals = handle.keep_alive();
    let journal = handle.snapshot().await;
    let local_files = match local.map(|local| (local, mismatch(&journal, local))) {
        Some((_, None)) => LocalFiles::Match,
        Some((_, Some(why))) => LocalFiles::Mismatch(why),
        None => LocalFiles::None,
    };
    let result = match plan::plan(tarball, intent, local_files) {
        Plan::FinishPublished => publish::finish_published(&*store, handle, options).await,
        Plan::LeaveToForeign => return Err(undo::leave_to_foreign(&*store, handle, &journal).await),
        Plan::RollForward => {
            let local = local.expect("a matching work dir");
            publish::roll_forward(store.clone(), handle, local, staging, options).await
        }
        Plan::RollBack(why) => {
            match why {
                plan::RollBackWhy::Asked => {}
                plan::RollBackWhy::LocalMismatch(why) => {
                    warn!("rolling back {}: {why}", journal.id())
                }
                plan::RollBackWhy::NoWorkDir => info!(
                    "rolling back {}: no work dir with its files was given",
                    journal.id()
                ),
            }
            undo::roll_back(&*store, handle).await
        }
    };
    let err = match result {
        Ok(report) => return Ok(Ended::Done(report)),
        Err(err) => err,
    };
    let (facts, now) = undo::failure_facts(&*store, handle, &journal, err.kind).await;
    // Failing because another process took over or retired the journal
    // (its completion removed our staged upload, say) is losing it,
    // whatever the request said.
    let err = match (&now, err.kind) {
        (_, ErrorKind::LostOwnership) | (None, _) => err,
        (Some(now), _) => {
            debug!("{err}");
            undo::lost_error(handle.key(), now)
        }
    };
    match plan::aftermath(facts) {
        Aftermath::AlreadyPublished => {
            info!("{err}");
            let mut report = Report::new(
                Status::AlreadyPublished,
                journal.id(),
                &journal.revision,
                &*store,
            );
            report.txn = Some(journal.txn.clone());
            report.tarball_bytes = journal.tarball.size;
            report.tarball_sha256 = journal.tarball.sha256.clone();
            Ok(Ended::Done(report))
        }
        Aftermath::KeepForResume => Err(kept_for_resume(err, &journal)),
        Aftermath::LeaveToForeign => Err(undo::leave_to_foreign(&*store, handle, &journal).await),
        // Rolled back by another process while this one still wrote: what
        // it wrote since is swept, under the one deletion rule.
        Aftermath::SweepLateLinks => Err(match undo::sweep_late_links(&*store, &journal).await {
            Ok(0) => err,
            Ok(n) => err.context_after(format!(
                "its transaction was rolled back; the {} this process wrote after that were deleted",
                crate::counted(n, "link")
            )),
            Err(e) => err.context_after(format!("removing the links it wrote late failed ({e})")),
        }),
        Aftermath::Undo => {
            warn!("undoing {}: {err}", journal.id());
            match undo::roll_back(&*store, handle).await {
                Ok(report) => Ok(Ended::Undone { report, cause: err }),
                Err(undo) if undo.kind == ErrorKind::ForeignPublished => Err(undo),
                Err(undo) => Err(Error::store(format!(
                    "{err}; undoing it failed too ({undo}); run `alitx rollback {}`",
                    journal.id()
                ))),
            }
        }
    }
}

fn kept_for_resume(err: Error, journal: &Journal) -> Error {
    if err.kind == ErrorKind::LostOwnership {
        return err.context_after("this process stopped and left the transaction to its new owner");
    }
    let id = journal.id();
    err.context_after(format!(
        "the journal {id} keeps what was sent: re-run the same command, or `alitx resume`, to finish; `alitx rollback {id}` to undo"
    ))
}

/// Whether `info` describes an object this transaction wrote.
fn is_ours(info: &ObjectInfo, journal: &Journal) -> bool {
    crate::deletion::written_by(info, &journal.txn)
}

fn live_lease_error(journal: &Journal) -> Error {
    let o = &journal.owner;
    let doing = match journal.deleter {
        Some(deleter) => format!("repaired (`{deleter}`)"),
        None => "uploaded".into(),
    };
    Error::new(
        ErrorKind::LiveLease,
        format!(
            "{} is being {doing} by {} (pid {} on {}, started {}s ago; lease valid {}s more): \
             wait for it, or if that process is dead run `alitx resume --force {}`",
            journal.revision.full_version(),
            o.tool,
            o.pid,
            o.host,
            crate::now_secs() - o.started_at,
            journal.lease_expires_at - crate::now_secs(),
            journal.id()
        ),
    )
}

/// With this build's tarball published: every link is there exactly, or
/// missing and put back (they are this very build's, whoever published it:
/// the state a deleter that met the publication, or a stock upload killed
/// after its tarball, leaves), or a conflict naming the partial revision
/// where another body holds a key. Returns the keys put back.
async fn complete_links(
    store: &dyn Store,
    revision: &Revision,
    links: &[Link],
) -> Result<Vec<String>> {
    // A link that cannot be read is a store error, never a missing link.
    let outcomes: Vec<LinkNow> = futures::stream::iter(links)
        .map(|link| async move {
            match get_small(store, &link.key, Small::Link).await? {
                Some(body) if body == link.body.as_bytes() => return Ok(LinkNow::Exact),
                Some(_) => return Ok(LinkNow::Different),
                None => {}
            }
            let metadata = crate::storage::Metadata::new();
            Ok::<_, Error>(match store.put_link_if_absent(link, &metadata).await? {
                Created::Yes => LinkNow::Restored(link.key.clone()),
                Created::AlreadyExists => match get_small(store, &link.key, Small::Link).await? {
                    Some(body) if body == link.body.as_bytes() => LinkNow::Exact,
                    _ => LinkNow::Different,
                },
            })
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    let different = outcomes
        .iter()
        .filter(|o| **o == LinkNow::Different)
        .count();
    if different > 0 {
        return Err(Error::conflict(format!(
            "{} is in the store but {different} of its links hold other bodies: a partial revision left by another uploader; \
             inspect it with `alitx check --package {}`",
            revision.store_key(),
            revision.package
        )));
    }
    Ok(outcomes
        .into_iter()
        .filter_map(|o| match o {
            LinkNow::Restored(key) => Some(key),
            _ => None,
        })
        .collect())
}

/// One link of a published build, as [`complete_links`] found it.
#[derive(Debug, PartialEq, Eq)]
enum LinkNow {
    Exact,
    Restored(String),
    Different,
}

/// The package link exists but the tarball does not: refused before writing
/// anything.
fn taken_error(revision: &Revision) -> Error {
    let link = revision.package_link();
    Error::conflict(format!(
            "{} already exists but {} does not: revision {} of {} is taken by another build or is a leftover of a killed upload; \
             `alitx check --package {}` tells which",
            link.key,
            revision.store_key(),
            revision.revision,
            revision.package,
            revision.package
        ))
}
