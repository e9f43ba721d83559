//! Everything alitx reads from the machine it runs on: the wall clock, this
//! process's pid and where it is counted, whether another pid still names
//! the process that recorded it, and randomness. The product asks the
//! [`current`] machine: [`RealMachine`] unless a caller runs it inside
//! [`run_on`], as the deterministic simulator does with machines of its
//! own, so that what it tests is the product's code, not a copy.

use std::future::Future;
use std::io::Read;
use std::sync::{Arc, OnceLock};

use tokio::task::{AbortHandle, JoinHandle};

use crate::journal::Owner;
use crate::liveness::{self, PidScope};

pub trait Machine: Send + Sync {
    /// Seconds since the Unix epoch, by this machine's wall clock.
    fn now_secs(&self) -> i64;

    /// This process's pid.
    fn pid(&self) -> u32;

    /// This process's start in clock ticks since boot: with the boot id it
    /// names this process whatever the wall clock does.
    fn start_ticks(&self) -> Option<u64>;

    /// Where this process's pid is counted.
    fn pid_scope(&self) -> PidScope;

    /// Whether `owner.pid`, in this process's scope, still names the
    /// process that recorded itself as `owner`.
    fn owner_running(&self, owner: &Owner) -> bool;

    /// `bytes` random bytes as hex.
    fn random_hex(&self, bytes: usize) -> String;

    /// A task [`spawn`] started on behalf of this machine's process: a
    /// simulated process ends its tasks when it is killed.
    fn spawned(&self, _task: AbortHandle) {}
}

/// The machine this binary runs on: the kernel, `/proc` and the clock.
#[derive(Debug, Default)]
pub struct RealMachine {
    scope: OnceLock<PidScope>,
}

impl Machine for RealMachine {
    fn now_secs(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn start_ticks(&self) -> Option<u64> {
        liveness::own_start_ticks()
    }

    fn pid_scope(&self) -> PidScope {
        self.scope.get_or_init(liveness::read_scope).clone()
    }

    fn owner_running(&self, owner: &Owner) -> bool {
        liveness::process_running(owner)
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf))
            .expect("reading /dev/urandom");
        hex::encode(buf)
    }
}

tokio::task_local! {
    static CURRENT: Arc<dyn Machine>;
}

/// The machine the running task belongs to.
pub fn current() -> Arc<dyn Machine> {
    CURRENT.try_with(Arc::clone).unwrap_or_else(|_| real())
}

fn real() -> Arc<dyn Machine> {
    static REAL: OnceLock<Arc<dyn Machine>> = OnceLock::new();
    REAL.get_or_init(|| Arc::new(RealMachine::default()))
        .clone()
}

/// Run `fut` as a process of `machine`: every read of the machine in it,
/// and in the tasks it starts with [`spawn`], goes to `machine`.
pub async fn run_on<F: Future>(machine: Arc<dyn Machine>, fut: F) -> F::Output {
    CURRENT.scope(machine, fut).await
}

/// `tokio::spawn`, keeping the task on the spawner's machine (task-locals
/// do not follow a spawned task by themselves).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CURRENT.try_with(Arc::clone) {
        Ok(machine) => {
            let task = tokio::spawn(CURRENT.scope(machine.clone(), fut));
            machine.spawned(task.abort_handle());
            task
        }
        Err(_) => tokio::spawn(fut),
    }
}
