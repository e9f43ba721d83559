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

mod fenced;
mod renewal;
mod takeover;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::journal::{Journal, Owner, State};
use crate::liveness::Liveness;
use crate::storage::{get_small, PutMode, Small, Store};

pub use renewal::KeepAlive;
pub use takeover::Takeover;

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
