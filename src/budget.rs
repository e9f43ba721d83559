//! A budget of units (requests in flight, memory) shared by many tasks,
//! handed out by priority: the waiter with the lowest priority number
//! first, waiters of one priority in the order they came. The first waiter
//! is served before any other, even one that would fit: a large request is
//! never starved by smaller ones. `fetch` gives each package its place in
//! the build order, so that the packages a build needs first get the
//! store's requests and the memory first; `verify` gives every read the
//! same priority, which makes it first come, first served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub struct Budget {
    state: Mutex<State>,
}

struct State {
    available: usize,
    /// By (priority, arrival): the units wanted and where to send them.
    waiters: BTreeMap<(u64, u64), (usize, oneshot::Sender<Grant>)>,
    arrivals: u64,
}

/// Units of a budget, given back when dropped.
pub struct Grant {
    budget: Arc<Budget>,
    units: usize,
}

impl Budget {
    pub fn new(units: usize) -> Arc<Self> {
        Arc::new(Budget {
            state: Mutex::new(State {
                available: units,
                waiters: BTreeMap::new(),
                arrivals: 0,
            }),
        })
    }

    /// `units` of the budget, once every waiter before this one (by
    /// priority, then arrival) has been served and they are free. A waiter
    /// dropped before it is served takes nothing.
    pub async fn acquire(self: &Arc<Self>, priority: u64, units: usize) -> Grant {
        let granted = {
            let mut state = self.state.lock().expect("budget lock");
            let (sender, receiver) = oneshot::channel();
            let arrival = state.arrivals;
            state.arrivals += 1;
            state.waiters.insert((priority, arrival), (units, sender));
            self.serve(&mut state);
            receiver
        };
        granted
            .await
            .expect("a waiter is served while the budget lives")
    }

    /// Serve the waiters in order while the first one's units are free.
    fn serve(self: &Arc<Self>, state: &mut State) {
        while let Some(entry) = state.waiters.first_entry() {
            let units = entry.get().0;
            if units > state.available {
                return;
            }
            let (_, sender) = entry.remove();
            state.available -= units;
            let grant = Grant {
                budget: self.clone(),
                units,
            };
            // A waiter that was dropped meanwhile gives its units back.
            if let Err(mut unwanted) = sender.send(grant) {
                state.available += std::mem::take(&mut unwanted.units);
            }
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if self.units == 0 {
            return;
        }
        let mut state = self.budget.state.lock().expect("budget lock");
        state.available += self.units;
        self.budget.serve(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `acquire`'s grant, if it is served within 50 ms.
    async fn served(acquire: impl std::future::Future<Output = Grant>) -> Option<Grant> {
        tokio::time::timeout(Duration::from_millis(50), acquire)
            .await
            .ok()
    }

    #[tokio::test]
    async fn waiters_are_served_by_priority_then_arrival() {
        let budget = Budget::new(2);
        let held = budget.acquire(0, 2).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        // (priority, name), in the order they start waiting.
        let waiters = [
            (5, "late package"),
            (1, "first package"),
            (5, "late again"),
            (3, "middle"),
        ];
        let mut tasks = Vec::new();
        for (priority, name) in waiters {
            let (budget, order) = (budget.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _grant = budget.acquire(priority, 1).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "served while nothing was free"
        );
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["first package", "middle", "late package", "late again"]
        );
    }

    #[tokio::test]
    async fn the_first_waiter_is_not_overtaken_by_a_smaller_one() {
        let budget = Budget::new(4);
        let three = budget.acquire(0, 3).await;
        let big = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(1, 4).await }
        });
        tokio::task::yield_now().await;
        // One unit is free, but the waiter before it wants four.
        assert!(served(budget.acquire(2, 1)).await.is_none());
        drop(three);
        let big = big.await.unwrap();
        assert!(served(budget.acquire(2, 1)).await.is_none());
        drop(big);
        assert!(served(budget.acquire(2, 4)).await.is_some());
    }

    #[tokio::test]
    async fn a_waiter_dropped_before_it_is_served_takes_nothing() {
        let budget = Budget::new(1);
        let held = budget.acquire(0, 1).await;
        assert!(served(budget.acquire(0, 1)).await.is_none());
        drop(held);
        let again = served(budget.acquire(1, 1)).await;
        assert!(again.is_some(), "the dropped waiter kept its unit");
    }
}
