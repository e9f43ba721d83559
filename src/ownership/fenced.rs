//! Proving ownership before acting: a fresh read of the journal's owner,
//! and a request sent only within the send window of that read.

use std::time::Duration;

use tracing::debug;

use crate::error::{Error, Result};
use crate::journal::OWNER_METADATA;
use crate::storage::Sent;

use super::{get_journal, settle_time, JournalHandle};

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

impl JournalHandle {
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
    pub(super) async fn fenced<F, Fut>(&self, token: &str, what: &str, request: F) -> Result<()>
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
}
