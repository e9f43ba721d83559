//! Taking a gone owner's journal over: write ourselves in as owner, wait
//! the settle time, read it back, and back off if another owner's stamp is
//! there.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::error::Result;
use crate::journal::{Journal, Owner, State};
use crate::liveness::Liveness;
use crate::storage::{PutMode, Store};

use super::{abandoned_here, read_journal, settle_time, JournalHandle};

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

impl JournalHandle {
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
}
