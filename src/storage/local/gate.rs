//! The order of one process's operations on a key (or a staged upload).
//!
//! Each operation of the local store runs on a blocking thread, and once
//! started it runs to its end even when its caller stops waiting for it (a
//! sibling failed, the lease renewal was stopped): a write could then land
//! after the read, write or delete its caller made next, unseen by it. So
//! an operation first passes the gates of the names it touches, shared or
//! exclusive, and holds them until it has ended: a write starts only after
//! every operation begun before it on those names, and a read after every
//! write begun before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::RwLock;

/// How an operation passes a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Beside other shared ones: reads, and the parts of a staged upload.
    Shared,
    /// Alone, after every operation begun before it: writes and deletes;
    /// listing, completing or aborting a staged upload.
    Exclusive,
}

/// One gate a name, while an operation is at it or waiting.
#[derive(Debug, Default)]
pub struct Gates(Arc<Mutex<HashMap<String, Arc<RwLock<()>>>>>);

/// An operation's way through its gates, held until it is dropped.
pub struct Passes {
    gates: Gates,
    held: Vec<(String, Box<dyn Send + Sync>)>,
}

impl Gates {
    /// Pass the gates of `names`, in order.
    pub async fn pass(&self, names: Vec<(String, Access)>) -> Passes {
        let mut passes = Passes {
            gates: Gates(self.0.clone()),
            held: Vec::with_capacity(names.len()),
        };
        for (name, access) in names {
            let gate = self.map().entry(name.clone()).or_default().clone();
            let guard: Box<dyn Send + Sync> = match access {
                Access::Shared => Box::new(gate.read_owned().await),
                Access::Exclusive => Box::new(gate.write_owned().await),
            };
            passes.held.push((name, guard));
        }
        passes
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RwLock<()>>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Passes {
    /// Leave the gates; one nobody else holds or waits at goes.
    fn drop(&mut self) {
        let mut map = self.gates.map();
        for (name, guard) in self.held.drain(..) {
            drop(guard);
            if map
                .get(&name)
                .is_some_and(|gate| Arc::strong_count(gate) == 1)
            {
                map.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(access: Access) -> Vec<(String, Access)> {
        vec![("key k".to_string(), access)]
    }

    #[tokio::test]
    async fn exclusive_waits_for_earlier_passes_and_unused_gates_go() {
        let gates = Gates::default();
        let first = gates.pass(name(Access::Shared)).await;
        let beside = gates.pass(name(Access::Shared)).await;
        let exclusive = gates.pass(name(Access::Exclusive));
        tokio::pin!(exclusive);
        assert!(futures::poll!(&mut exclusive).is_pending());
        drop(first);
        assert!(futures::poll!(&mut exclusive).is_pending());
        drop(beside);
        let alone = exclusive.await;
        let after = gates.pass(name(Access::Shared));
        tokio::pin!(after);
        assert!(futures::poll!(&mut after).is_pending());
        drop(alone);
        drop(after.await);
        assert!(gates.map().is_empty());
    }
}
