//! The `upload` command: rounds of a look at the store and what follows
//! from it (a journal found finished first, a published revision checked,
//! an adoption decided), until a new transaction begins and is driven to
//! its end.

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::journal::Journal;
use crate::layout::{Link, Revision};
use crate::ownership::{read_journal, JournalHandle, Takeover};
use crate::storage::{get_small, Created, PutMode, Small, Store};
use crate::workdir::LocalRevision;

use super::drive::{continue_owned, drive};
use super::plan::{self, Adoption, Start, Tarball};
use super::send::{read_whole_if_small, Staging, WholeTarball};
use super::{adopt, retire_committed, Ended, Intent, Options, Report, Status};

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
