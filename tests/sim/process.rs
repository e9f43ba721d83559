//! The processes and the machines they read (clock, pid, liveness).

use super::*;

/// One simulated process: where it runs, its pid, its fate.
#[derive(Debug)]
pub struct Process {
    pub(super) name: String,
    pub(super) host: usize,
    pub(super) pid_ns: usize,
    pub(super) pid: u32,
    pub(super) start_ticks: u64,
    pub(super) frozen: watch::Sender<bool>,
    pub(super) alive: Mutex<bool>,
    pub(super) tasks: Mutex<Vec<AbortHandle>>,
}

/// Every host's clock offset, and the processes running on them.
#[derive(Debug, Default)]
pub struct Machines {
    pub(super) clock_steps: Mutex<BTreeMap<usize, i64>>,
    pub(super) processes: Mutex<Vec<Arc<Process>>>,
}

impl Machines {
    pub(super) fn offset(&self, host: usize) -> i64 {
        *self.clock_steps.lock().unwrap().get(&host).unwrap_or(&0)
    }
}

/// The machine a simulated process reads.
pub struct SimMachine {
    pub(super) process: Arc<Process>,
    pub(super) machines: Arc<Machines>,
    pub(super) world: Arc<Mutex<World>>,
    pub(super) rng: Mutex<Rng>,
}

pub(super) fn scope_of(host: usize, pid_ns: usize) -> PidScope {
    PidScope {
        host: format!("node-{host}"),
        pid_ns: Some(format!("pid:[40265{pid_ns:05}]")),
        boot_id: Some(format!("00000000-0000-4000-8000-{host:012}")),
    }
}

impl Machine for SimMachine {
    fn now_secs(&self) -> i64 {
        self.world.lock().unwrap().now_secs() + self.machines.offset(self.process.host)
    }

    fn pid(&self) -> u32 {
        self.process.pid
    }

    fn start_ticks(&self) -> Option<u64> {
        Some(self.process.start_ticks)
    }

    fn pid_scope(&self) -> PidScope {
        scope_of(self.process.host, self.process.pid_ns)
    }

    fn owner_running(&self, owner: &Owner) -> bool {
        let processes = self.machines.processes.lock().unwrap();
        let btime = BOOT + self.machines.offset(self.process.host);
        processes.iter().any(|p| {
            p.pid == owner.pid
                && scope_of(p.host, p.pid_ns).can_check(owner)
                && *p.alive.lock().unwrap()
                && liveness::is_recorded_owner(
                    owner,
                    &Started {
                        ticks: p.start_ticks,
                        at: Some(btime + (p.start_ticks / TICKS_PER_SECOND) as i64),
                    },
                )
        })
    }

    fn random_hex(&self, bytes: usize) -> String {
        let mut rng = self.rng.lock().unwrap();
        (0..bytes)
            .map(|_| format!("{:02x}", rng.next() as u8))
            .collect()
    }

    fn spawned(&self, task: AbortHandle) {
        self.process.tasks.lock().unwrap().push(task);
    }
}
