//! Lease renewals: a task that rewrites the journal every third of its
//! lease while the transaction runs, and marks the ownership lost when it
//! cannot.

use std::sync::Arc;

use tracing::warn;

use crate::error::{Error, ErrorKind};

use super::JournalHandle;

impl JournalHandle {
    /// Renew the lease every third of its length until the returned guard
    /// is dropped. A renewal the store did not answer is retried every
    /// twelfth of the lease while more than a sixth of it is left; one that
    /// finds another owner, or runs out of lease, marks the ownership lost:
    /// the next [`confirm`](Self::confirm) fails. Between
    /// renewals the task holds no handle, so that the journal counts as let
    /// go of ([`abandoned_here`](super::abandoned_here)) as soon as its
    /// upload drops its own.
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
