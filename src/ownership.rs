//! The journal as the lock on its revision: who owns a transaction, how a
//! process becomes its owner, and how it makes sure it still is before it
//! acts.
//!
//! A new transaction owns its journal by creating it with put-if-absent. A
//! gone owner's journal is taken over restic-style, since Ceph RGW has no
//! working `If-Match`: write ourselves in as owner (a fresh random token),
//! wait a settle time, read the journal again, and back off if another
//! owner's stamp is there. From then on every destructive or publishing
//! step is preceded by a fresh read ([`JournalHandle::confirm`]: a HEAD,
//! since every journal write carries its owner's token as metadata); every
//! journal write but the commit mark ([`JournalHandle::mark_committed`])
//! re-reads first and never re-creates a journal that someone else retired;
//! a lease renewal that fails, or finds another owner, stops the
//! transaction before its commit point.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::journal::{Journal, Owner, State, OWNER_METADATA};
use crate::liveness::Liveness;
use crate::storage::{get_small, PutMode, Sent, Small, Store};

/// How long a takeover waits between writing itself in as owner and
/// reading the journal back: longer than one journal write takes, so that
/// of two processes taking over at once both see the later one.
/// `ALITX_TAKEOVER_SETTLE_MS` overrides it (tests vary the timing).
pub fn settle_time() -> Duration {
    let ms = std::env::var("ALITX_TAKEOVER_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms)
}

/// How long after the start of the read that proved ownership a delete may
/// still be sent: half the settle time. A delete sent within it lands before
/// a process that took the journal over meanwhile has ended its settle
/// (every request lands well within the other half, or never), so no
/// deleter's late delete meets what the new owner writes after it.
fn send_window() -> Duration {
    settle_time() / 2
}

/// How many times a delete, or a journal write, re-proves ownership before
/// it gives up on a store (or a process) too slow to send it within
/// [`send_window`].
const FENCED_ATTEMPTS: usize = 5;

/// Read and validate the journal at `key`, if there is one. A HEAD comes
/// first: a missing journal is the common case at the start of an upload,
/// and a HEAD's answer has no body (a GET's 404 carries an error document,
/// which Ceph RGW without `tcp_nodelay` sends ~40 ms late).
pub async fn read_journal(store: &dyn Store, prefix: &str, key: &str) -> Result<Option<Journal>> {
    if store.head(key).await?.is_none() {
        return Ok(None);
    }
    get_journal(store, prefix, key).await
}

/// Read and validate the journal at `key` with a GET, without looking first.
async fn get_journal(store: &dyn Store, prefix: &str, key: &str) -> Result<Option<Journal>> {
    match get_small(store, key, Small::Journal).await? {
        Some(bytes) => Journal::parse(prefix, key, &bytes).map(Some),
        None => Ok(None),
    }
}

/// What an attempt to take a journal over found.
pub enum Takeover {
    /// This process owns the transaction now.
    Owned(Arc<JournalHandle>),
    /// The journal is gone, or committed by its owner, which retires it:
    /// its transaction ended meanwhile.
    Retired,
    /// Its owner is alive, or another process took it over first.
    Busy(Box<Journal>),
}

/// The journal of a transaction this process owns. Every write is a
/// whole-object rewrite, serialised here, that extends the lease and, but
/// for the commit mark, first re-reads the journal.
pub struct JournalHandle {
    store: Arc<dyn Store>,
    prefix: String,
    key: String,
    /// `None` once retired.
    journal: Mutex<Option<Journal>>,
    lease: Duration,
    /// Marks the journal held by this process while the handle exists.
    _held: Held,
    /// Why this process may no longer write, once a renewal failed: it lost
    /// ownership, or the store stopped answering and the lease may run out.
    lost: std::sync::Mutex<Option<Error>>,
    /// For a journal taken over: how its previous owner was judged.
    previous_owner: Option<Liveness>,
}

impl JournalHandle {
    /// The handle of a journal this process just created.
    pub fn created(store: Arc<dyn Store>, prefix: &str, journal: Journal) -> Arc<Self> {
        Self::owning(store, prefix, journal, None)
    }

    fn owning(
        store: Arc<dyn Store>,
        prefix: &str,
        journal: Journal,
        previous_owner: Option<Liveness>,
    ) -> Arc<Self> {
        let lease =
            Duration::from_secs((journal.lease_expires_at - crate::now_secs()).max(1) as u64);
        Arc::new(JournalHandle {
            store,
            prefix: prefix.into(),
            key: Journal::key_of(prefix, &journal.revision),
            _held: Held::new(&journal.owner.token),
            journal: Mutex::new(Some(journal)),
            lease,
            lost: std::sync::Mutex::new(None),
            previous_owner,
        })
    }

    /// Take over the journal at `key` if its owner is gone (or `force`),
    /// deciding on a copy read now, never on an older one.
    pub async fn take_over(
        store: Arc<dyn Store>,
        prefix: &str,
        key: &str,
        lease: Duration,
        force: bool,
    ) -> Result<Takeover> {
        let Some(current) = read_journal(&*store, prefix, key).await? else {
            return Ok(Takeover::Retired);
        };
        // An owner that is this very process without a handle on the
        // journal (see [`abandoned_here`]) is as gone as a dead one.
        let previous_owner = match current.liveness() {
            Liveness::Live if abandoned_here(&current.owner) => Liveness::OwnerDead,
            liveness => liveness,
        };
        if !force && previous_owner == Liveness::Live {
            return Ok(Takeover::Busy(Box::new(current)));
        }
        // The owner may have retired the journal just before it was found
        // gone: read once more, now that it can no longer act.
        let current = match read_journal(&*store, prefix, key).await? {
            None => return Ok(Takeover::Retired),
            Some(again) if again.owner.token != current.owner.token => {
                return Ok(Takeover::Busy(Box::new(again)))
            }
            Some(again) => again,
        };
        let mut mine = current.clone();
        mine.owner = Owner::this_process();
        mine.takeovers += 1;
        mine.lease_expires_at = crate::now_secs() + lease.as_secs() as i64;
        let token = mine.owner.token.clone();
        if let Err(e) = store
            .put(
                key,
                mine.to_bytes(),
                &mine.journal_metadata(),
                PutMode::Overwrite,
            )
            .await
        {
            if !e.is_no_space() {
                return Err(e);
            }
            // A full local store: free the staged parts of this dead
            // transaction first, then record ourselves.
            if let Some(upload_id) = &current.tarball.upload_id {
                warn!("{key}: no space for the journal; aborting the staged upload {upload_id} to free it");
                store.abort_upload(&current.tarball.key, upload_id).await?;
            }
            store
                .put(
                    key,
                    mine.to_bytes(),
                    &mine.journal_metadata(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        tokio::time::sleep(settle_time()).await;
        Ok(match read_journal(&*store, prefix, key).await? {
            None => Takeover::Retired,
            // Its owner was committing as we wrote (the commit mark is
            // written without reading first): finished, and being retired.
            Some(now) if now.owner.token != token && now.state == State::Committed => {
                debug!("{key}: its owner committed it meanwhile");
                Takeover::Retired
            }
            Some(now) if now.owner.token != token => {
                debug!("{key}: another process took it over first");
                Takeover::Busy(Box::new(now))
            }
            Some(now) => Takeover::Owned(Self::owning(store, prefix, now, Some(previous_owner))),
        })
    }

    /// How the owner this process took the journal over from was judged
    /// (`None` for a journal it created).
    pub fn previous_owner(&self) -> Option<Liveness> {
        self.previous_owner
    }

    /// The journal's key in the store.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The journal as the store holds it now, if it still exists.
    pub async fn reread(&self) -> Result<Option<Journal>> {
        read_journal(&*self.store, &self.prefix, &self.key).await
    }

    pub async fn snapshot(&self) -> Journal {
        self.journal
            .lock()
            .await
            .clone()
            .expect("journal used after retirement")
    }

    /// An error if a lease renewal already found the journal lost: a cheap
    /// check, without a read, for steps that repeat many times.
    pub fn ensure_not_lost(&self) -> Result<()> {
        match &*self.lost.lock().expect("lost flag") {
            Some(why) => Err(Error::new(why.kind, why.message.clone())),
            None => Ok(()),
        }
    }

    /// Read the journal again: an error unless it still names this
    /// process as owner.
    pub async fn confirm(&self) -> Result<()> {
        let token = match self.journal.lock().await.as_ref() {
            Some(journal) => journal.owner.token.clone(),
            None => return Err(Error::lost_ownership(format!("{} is retired", self.key))),
        };
        self.confirm_token(&token).await
    }

    /// One HEAD: the journal's metadata names its owner. Only a journal
    /// without that metadata (an older alitx wrote it) or with another
    /// owner is read in full, to say who.
    async fn confirm_token(&self, token: &str) -> Result<()> {
        self.ensure_not_lost()?;
        let now = match self.store.head(&self.key).await? {
            None => None,
            Some(info) if info.metadata.get(OWNER_METADATA).map(String::as_str) == Some(token) => {
                return Ok(())
            }
            Some(_) => get_journal(&*self.store, &self.prefix, &self.key).await?,
        };
        match now {
            None => Err(Error::lost_ownership(format!(
                "the journal {} was retired by another process while this one worked on it",
                self.key
            ))),
            Some(now) if now.owner.token != token => Err(Error::lost_ownership(format!(
                "the journal {} was taken over by {} (pid {} on {}) while this process worked on it",
                self.key, now.owner.tool, now.owner.pid, now.owner.host
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Delete `key` as the journal's owner: confirm ownership, then send the
    /// delete only within [`send_window`] of the confirming read's start,
    /// by the monotonic clock (a process frozen in between proves it again).
    pub async fn delete_as_owner(&self, key: &str) -> Result<()> {
        let token = match self.journal.lock().await.as_ref() {
            Some(journal) => journal.owner.token.clone(),
            None => return Err(Error::lost_ownership(format!("{} is retired", self.key))),
        };
        let store = &self.store;
        self.fenced(&token, key, |deadline| store.delete_before(key, deadline))
            .await
    }

    /// Send one request, given the deadline it must leave by, within
    /// [`send_window`] of the start of a read that proved `token` still
    /// owns the journal, by the monotonic clock; a process stalled past it
    /// proves ownership again. `what` names the key the request is about.
    async fn fenced<F, Fut>(&self, token: &str, what: &str, request: F) -> Result<()>
    where
        F: Fn(tokio::time::Instant) -> Fut,
        Fut: std::future::Future<Output = Result<Sent>>,
    {
        for _ in 0..FENCED_ATTEMPTS {
            let proof = tokio::time::Instant::now();
            self.confirm_token(token).await?;
            if request(proof + send_window()).await? == Sent::Yes {
                return Ok(());
            }
            debug!(
                "{what}: ownership of {} proven too long ago to send the request; proving it again",
                self.key
            );
        }
        Err(Error::store(format!(
            "{what} was not changed: {FENCED_ATTEMPTS} times in a row, proving that this process still owns {} \
             took longer than {} ms; run the command again when the store answers faster",
            self.key,
            send_window().as_millis()
        )))
    }

    /// Change the journal and write it, after confirming ownership; a
    /// retired journal is never written again.
    pub async fn update(&self, change: impl FnOnce(&mut Journal)) -> Result<()> {
        self.write(Confirm::First, change).await
    }

    /// Mark the journal committed once its tarball is published, without
    /// reading it first: every owner of a published transaction finishes
    /// it alike (commit mark, record, retirement), so overwriting a new
    /// owner's journal, or writing one it has just retired, changes no
    /// outcome; the retirement that follows removes it either way. One
    /// round trip less on every upload's critical path.
    pub async fn mark_committed(&self) -> Result<()> {
        self.write(Confirm::No, |j| j.state = State::Committed)
            .await
    }

    async fn write(&self, confirm: Confirm, change: impl FnOnce(&mut Journal)) -> Result<()> {
        let mut guard = self.journal.lock().await;
        let Some(journal) = guard.as_mut() else {
            return Ok(());
        };
        let mut next = journal.clone();
        change(&mut next);
        next.lease_expires_at = crate::now_secs() + self.lease.as_secs() as i64;
        let (body, metadata) = (next.to_bytes(), next.journal_metadata());
        let mode = PutMode::Overwrite;
        match confirm {
            Confirm::No => {
                self.store.put(&self.key, body, &metadata, mode).await?;
            }
            // Sent within the send window of the read that proved
            // ownership, like a delete: a write held up past it could land
            // after a takeover's settle, or bring back a journal another
            // process retired.
            Confirm::First => {
                let (store, key, token) = (&self.store, &self.key, &journal.owner.token);
                self.fenced(token, key, |deadline| {
                    store.put_before(key, body.clone(), &metadata, mode, deadline)
                })
                .await?;
            }
        }
        *journal = next;
        Ok(())
    }

    /// Delete the journal: the transaction is over.
    pub async fn retire(&self) -> Result<()> {
        let mut guard = self.journal.lock().await;
        self.store.delete(&self.key).await?;
        guard.take();
        Ok(())
    }

    /// Renew the lease every third of its length until the returned guard
    /// is dropped. A renewal the store did not answer is retried every
    /// twelfth of the lease while more than a sixth of it is left; one that
    /// finds another owner, or runs out of lease, marks the ownership lost:
    /// the next [`confirm`](Self::confirm) fails. Between
    /// renewals the task holds no handle, so that the journal counts as let
    /// go of ([`abandoned_here`]) as soon as its upload drops its own.
    pub fn keep_alive(self: &Arc<Self>) -> KeepAlive {
        let (weak, lease) = (Arc::downgrade(self), self.lease);
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        crate::machine::spawn(async move {
            // The journal was just written (created, taken over or
            // renewed by the caller): the lease runs from about now.
            let mut renewed_at = tokio::time::Instant::now();
            let mut wait = lease / 3;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.notified() => return,
                }
                let Some(handle) = weak.upgrade() else {
                    return;
                };
                let attempt = tokio::time::Instant::now();
                let Err(e) = handle.update(|j| j.renewals += 1).await else {
                    (renewed_at, wait) = (attempt, lease / 3);
                    continue;
                };
                // A store that did not answer is not a new owner: retry
                // while the lease has more than a sixth to run. Another
                // owner, or a lease that may run out, stops every write.
                let retry = lease / 12;
                let time_left = (renewed_at + lease).saturating_duration_since(attempt + retry);
                if e.kind != ErrorKind::LostOwnership && time_left > lease / 6 {
                    warn!(
                        "renewing the lease on {}: {e}; retrying in {} s",
                        handle.key,
                        retry.as_secs()
                    );
                    wait = retry;
                    continue;
                }
                warn!("renewing the lease on {}: {e}", handle.key);
                *handle.lost.lock().expect("lost flag") = Some(Error::new(
                    e.kind,
                    format!("renewing the lease on {} failed: {e}", handle.key),
                ));
                return;
            }
        });
        KeepAlive(stop)
    }
}

/// The owner tokens of the journals this process acquired, each with
/// whether a [`JournalHandle`] of it still exists.
fn acquired() -> &'static std::sync::Mutex<HashMap<String, bool>> {
    static ACQUIRED: OnceLock<std::sync::Mutex<HashMap<String, bool>>> = OnceLock::new();
    ACQUIRED.get_or_init(Default::default)
}

/// Whether `owner` is this very process and no handle of it holds the
/// journal any more: an upload of this process failed and left it (as one
/// of `serve-uploads` does, which goes on), and nothing here works on it.
pub fn abandoned_here(owner: &Owner) -> bool {
    let machine = crate::machine::current();
    let this_process = owner.pid == machine.pid() && machine.pid_scope().can_check(owner);
    this_process
        && acquired()
            .lock()
            .expect("acquired journals")
            .get(&owner.token)
            == Some(&false)
}

/// A journal held by this process, from its acquisition until the handle
/// is dropped.
struct Held(String);

impl Held {
    fn new(token: &str) -> Self {
        let mut acquired = acquired().lock().expect("acquired journals");
        acquired.insert(token.to_string(), true);
        Held(token.to_string())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut acquired = acquired().lock().expect("acquired journals");
        acquired.insert(std::mem::take(&mut self.0), false);
    }
}

/// Stops the lease renewals when dropped: at once between renewals; a
/// renewal under way ends first (aborting it would leave its write in
/// flight, to land after a retirement and bring the journal back; it
/// holds the journal's lock, which the retirement waits for).
pub struct KeepAlive(Arc<tokio::sync::Notify>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Whether a journal write reads the journal first to confirm its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    First,
    No,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{test_journal, DEFAULT_PREFIX};
    use crate::storage::LocalStore;

    /// A handle on a journal written to a fresh local store.
    async fn owned(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<JournalHandle>, Journal) {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.to_path_buf()));
        let journal = test_journal();
        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        store
            .put(
                &key,
                journal.to_bytes(),
                &journal.journal_metadata(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let handle = JournalHandle::created(store.clone(), DEFAULT_PREFIX, journal.clone());
        (store, handle, journal)
    }

    /// Write `journal` back as another process's, as a takeover does.
    async fn taken_over_by_another(store: &dyn Store, journal: &Journal) {
        let mut taken = journal.clone();
        taken.owner = Owner::this_process();
        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        let metadata = taken.journal_metadata();
        store
            .put(&key, taken.to_bytes(), &metadata, PutMode::Overwrite)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn confirm_reads_the_owner_from_metadata_and_sees_a_takeover() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, journal) = owned(dir.path()).await;
        handle.confirm().await.unwrap();

        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        taken_over_by_another(&*store, &journal).await;
        let err = handle.confirm().await.unwrap_err();
        assert!(err.message.contains("taken over"), "{err}");

        store.delete(&key).await.unwrap();
        let err = handle.confirm().await.unwrap_err();
        assert!(err.message.contains("retired"), "{err}");
    }

    /// A journal this process acquired is its own live upload's while the
    /// handle exists, and gone once it was dropped: `serve-uploads` retries
    /// an upload that failed in the same process at once.
    #[tokio::test]
    async fn a_journal_this_process_let_go_of_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, handle, journal) = owned(dir.path()).await;
        assert!(!journal.owner_gone(), "held by a running upload");
        drop(handle);
        assert!(journal.owner_gone(), "its upload failed and let it go");
        let mut other = journal.clone();
        other.owner = Owner::this_process();
        assert!(!other.owner_gone(), "never acquired by a handle here");
    }

    /// The commit mark is written without reading the journal first: over
    /// a journal another owner took over (which finishes the published
    /// transaction alike), and where that owner already retired it.
    #[tokio::test]
    async fn the_commit_mark_is_written_without_confirming_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, journal) = owned(dir.path()).await;
        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        taken_over_by_another(&*store, &journal).await;
        assert!(handle.update(|j| j.renewals += 1).await.is_err());
        handle.mark_committed().await.unwrap();
        let marked = read_journal(&*store, DEFAULT_PREFIX, &key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(marked.state, State::Committed);
        assert_eq!(marked.owner.token, journal.owner.token);

        store.delete(&key).await.unwrap();
        handle.mark_committed().await.unwrap();
        handle.retire().await.unwrap();
        assert!(store.head(&key).await.unwrap().is_none());
    }

    /// A forced takeover whose journal its owner marks committed while the
    /// takeover settles finds the transaction finished (it is retired
    /// next), not another owner to back off from.
    #[tokio::test]
    async fn a_takeover_that_meets_its_owners_commit_mark_finds_it_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (store, owner, journal) = owned(dir.path()).await;
        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        let takeover = tokio::spawn({
            let (store, key) = (store.clone(), key.clone());
            async move {
                let lease = Duration::from_secs(60);
                JournalHandle::take_over(store, DEFAULT_PREFIX, &key, lease, true).await
            }
        });
        // Once the takeover has written itself in, the owner commits.
        loop {
            let now = read_journal(&*store, DEFAULT_PREFIX, &key).await.unwrap();
            if now.unwrap().owner.token != journal.owner.token {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        owner.mark_committed().await.unwrap();
        let found = takeover.await.unwrap().unwrap();
        assert!(matches!(found, Takeover::Retired));
    }

    #[tokio::test]
    async fn confirm_reads_a_journal_without_owner_metadata_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, journal) = owned(dir.path()).await;
        let key = Journal::key_of(DEFAULT_PREFIX, &journal.revision);
        // As an alitx older than the owner metadata writes it.
        store
            .put(
                &key,
                journal.to_bytes(),
                &Default::default(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        handle.confirm().await.unwrap();

        let mut taken = journal.clone();
        taken.owner = Owner::this_process();
        store
            .put(
                &key,
                taken.to_bytes(),
                &Default::default(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        assert!(handle.confirm().await.is_err());
    }
}
