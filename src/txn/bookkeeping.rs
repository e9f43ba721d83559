//! Where the bookkeeping after publication runs: the commit mark, the
//! publication record and the journal's retirement. Readers see the
//! revision complete once its tarball is published, so `serve-uploads`
//! answers then and finishes the journal while the next upload starts; a
//! process killed meanwhile leaves what an upload killed right after
//! publishing leaves (`after-publish`), which `resume` or the next upload
//! of the revision finishes.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// When an upload's report is given.
#[derive(Debug, Clone, Default)]
pub enum Bookkeeping {
    /// After the bookkeeping: `alitx upload`.
    #[default]
    BeforeReport,
    /// Once the tarball is published; the bookkeeping goes on in a task that
    /// `Finishers` holds until someone waits for it.
    Background(Finishers),
}

/// Bookkeeping tasks still running, by journal key.
#[derive(Debug, Clone, Default)]
pub struct Finishers(Arc<Mutex<Vec<Finisher>>>);

/// A journal's key, and the task finishing it.
type Finisher = (String, JoinHandle<()>);

impl Finishers {
    pub(super) fn push(&self, journal_key: String, task: JoinHandle<()>) {
        self.0.lock().expect("finishers").push((journal_key, task));
    }

    /// Wait until the journal at `journal_key` (every journal, for `None`)
    /// has no bookkeeping running: an upload of the same revision must not
    /// meet its own predecessor's journal.
    pub async fn wait(&self, journal_key: Option<&str>) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut pending = self.0.lock().expect("finishers");
            let (waited, kept) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(key, _)| journal_key.is_none_or(|wanted| wanted == key));
            *pending = kept;
            waited.into_iter().map(|(_, task)| task).collect()
        };
        for task in tasks {
            // A panic in the task has been printed; the journal stays for
            // `resume`, as after any failed bookkeeping.
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    /// A task that ends once told to, and says when it has.
    fn task(finishers: &Finishers, key: &str) -> (oneshot::Sender<()>, Arc<AtomicBool>) {
        let (go, wait) = oneshot::channel();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let task = tokio::spawn(async move {
            let _ = wait.await;
            flag.store(true, Ordering::SeqCst);
        });
        finishers.push(key.into(), task);
        (go, done)
    }

    #[tokio::test]
    async fn waiting_for_a_journal_waits_for_its_tasks_only() {
        let finishers = Finishers::default();
        let (go_a, a) = task(&finishers, "journals/a");
        let (go_b, b) = task(&finishers, "journals/b");
        let other = finishers.wait(Some("journals/c"));
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), other).await;
        assert!(waited.is_ok(), "another journal's tasks were waited for");
        go_a.send(()).unwrap();
        finishers.wait(Some("journals/a")).await;
        assert!(a.load(Ordering::SeqCst));
        assert!(!b.load(Ordering::SeqCst));
        go_b.send(()).unwrap();
        finishers.wait(None).await;
        assert!(b.load(Ordering::SeqCst));
        assert!(finishers.0.lock().unwrap().is_empty());
    }
}
