//! The deterministic simulator (issue 26): the product's own upload,
//! resume, rollback and repair, and a stock aliBuild uploader, run as
//! simulated processes against one in-memory store, on the virtual time of
//! a current-thread runtime with paused time. Each process reads its
//! machine (clock, pid, pid namespace, boot, start ticks) from a
//! [`SimMachine`] through `alitx::machine`; its requests reach the store
//! through a wrapper that delays them (a request lands at a later virtual
//! time, its answer comes later still, so concurrent requests reorder),
//! fails some with a 503, loses some answers after the write happened, and
//! holds a frozen process's requests (one already on the wire still
//! lands). Processes are killed at any await point, frozen and thawed, or
//! see their host's clock stepped. Every choice comes from the seed: a
//! seed replays.
//!
//! The invariants are checked after every write the store applies, and at
//! the end after a final `resume` and `repair`:
//! 1. a visible tarball has every link of its revision's work dir, with its
//!    body;
//! 2. no key of a revision whose tarball was ever visible is deleted;
//! 3. exit 3 only when another hash held the revision during the run, and
//!    an upload that reports its revision published left it complete;
//! 4. after the final resume and repair, no journal, no staged upload and
//!    no revision that is not complete;
//! 5. every publication record matches the tarball in the store.

// The example and the test suite each use part of it.
#![allow(dead_code)]

mod actors;
mod bystanders;
mod process;
mod store;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use alitx::error::{Error, Result};
use alitx::journal::Owner;
use alitx::layout::{Link, Revision};
use alitx::liveness::{self, PidScope, Started};
use alitx::machine::{self, Machine};
use alitx::recovery::{self, Selection};
use alitx::storage::{
    md5_hex, Created, Listing, Metadata, ObjectInfo, ObjectMeta, PendingUpload, PutMode, Segments,
    Store, UploadedPart,
};
use alitx::txn::{self, Options};

use actors::*;
use process::*;
use store::*;
use world::*;

/// What a simulated process runs: the product's commands, and the stock
/// aliBuild uploader they must coexist with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    /// `alitx upload` of the build (adopting a stock upload's leftovers).
    Upload,
    /// `alitx upload` of another build of the same revision (another hash).
    Conflicting,
    /// aliBuild's own upload: package link, dist links, tarball last.
    Stock,
    Resume,
    ResumeForce,
    RollbackForce,
    Repair,
    Check,
    /// A journal that lies, put where none is (a stale copy, a bug, a
    /// hand edit): a committed one whose tarball digest and size are
    /// wrong, or a pending one whose hash is another build's.
    Forger,
    /// `alitx serve-uploads`: the upload answered once published, its
    /// bookkeeping in the background; one that fails or passes the
    /// `--timeout` is retried in the same process.
    Serve,
    /// `alitx repair --unpublish` of the revision.
    Unpublish,
    /// ALICE's clean-up: deletes store tarballs older than the age, keeps
    /// their links (the revision is retired).
    Cleanup,
    /// The manifest cron job: appends a line for every package link it
    /// lists, read-modify-write.
    Manifest,
    /// A build's fetch: `alitx fetch` of the package, either hash.
    Reader,
    /// The CVMFS publisher: finds the revision through `dist-direct`, and
    /// once its tarball exists reads its links.
    Publisher,
}

impl Actor {
    pub const ALL: [Actor; 15] = [
        Actor::Upload,
        Actor::Conflicting,
        Actor::Stock,
        Actor::Resume,
        Actor::ResumeForce,
        Actor::RollbackForce,
        Actor::Repair,
        Actor::Check,
        Actor::Forger,
        Actor::Serve,
        Actor::Unpublish,
        Actor::Cleanup,
        Actor::Manifest,
        Actor::Reader,
        Actor::Publisher,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Actor::Upload => "upload",
            Actor::Conflicting => "conflicting",
            Actor::Stock => "stock",
            Actor::Resume => "resume",
            Actor::ResumeForce => "resume-force",
            Actor::RollbackForce => "rollback-force",
            Actor::Repair => "repair",
            Actor::Check => "check",
            Actor::Forger => "forger",
            Actor::Serve => "serve",
            Actor::Unpublish => "unpublish",
            Actor::Cleanup => "cleanup",
            Actor::Manifest => "manifest",
            Actor::Reader => "reader",
            Actor::Publisher => "publisher",
        }
    }

    pub fn parse(name: &str) -> Option<Actor> {
        Actor::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A seeded random source (splitmix64): small, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `range` (inclusive bounds).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The Unix time at which every simulation starts, and the boot of its
/// hosts 1000 s before.
const EPOCH: i64 = 1_800_000_000;
const BOOT: i64 = EPOCH - 1000;
const TICKS_PER_SECOND: u64 = 100;
const ARCH: &str = "slc9_x86-64";
const LEASE: Duration = Duration::from_secs(20);
const AGE: Duration = Duration::from_secs(10);

/// Milliseconds of virtual time since the simulation started.
fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// What one simulated run found.
pub struct Run {
    pub seed: u64,
    pub world: Arc<Mutex<World>>,
    pub log: Vec<String>,
}

impl Run {
    pub fn violations(&self) -> Vec<Violation> {
        self.world.lock().unwrap().violations.clone()
    }

    /// The violations, each with the history of the keys it broke, and the
    /// command that replays the seed.
    pub fn explain(&self, actors: &[Actor]) -> String {
        let world = self.world.lock().unwrap();
        let mut out = String::new();
        let names: Vec<&str> = actors.iter().map(|a| a.name()).collect();
        let _ = writeln!(
            out,
            "seed {} failed; replay: scripts/simulate.sh --from {} --seeds 1 --actors {} --verbose",
            self.seed,
            self.seed,
            names.join(",")
        );
        for line in &self.log {
            let _ = writeln!(out, "  {line}");
        }
        for v in &world.violations {
            let _ = writeln!(
                out,
                "invariant {} at {:.3}s: {}",
                v.invariant,
                v.at_ms as f64 / 1000.0,
                v.message
            );
            out.push_str(&world.history_of(&v.keys));
        }
        out
    }
}

/// Run one seed with processes drawn from `actors`.
pub fn run(seed: u64, actors: &[Actor]) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // Processes run as local tasks: the product's futures are not all
    // `Send` as a spawned task's must be.
    let local = tokio::task::LocalSet::new();
    runtime.block_on(local.run_until(simulate(seed, actors)))
}

struct Plan {
    actor: Actor,
    start: Duration,
    kill_at: Option<Duration>,
    freeze: Option<(Duration, Duration)>,
    host: usize,
    pid_ns: usize,
}

async fn simulate(seed: u64, actors: &[Actor]) -> Run {
    let dirs = work_dirs();
    let builds = dirs.builds.iter().map(|(_, _, b)| b.clone()).collect();
    let world = Arc::new(Mutex::new(World::new(builds)));
    let machines = Arc::new(Machines::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut rng = Rng::new(seed);
    let count = rng.between(2, 6) as usize;
    let plans: Vec<Plan> = (0..count)
        .map(|_| {
            let actor = actors[rng.between(0, actors.len() as u64 - 1) as usize];
            let start = Duration::from_millis(rng.between(0, 60_000));
            let kill_at = rng
                .chance(30)
                .then(|| start + Duration::from_millis(rng.between(0, 5_000)));
            // Any process, the stock uploader too, stalls up to a minute:
            // stock aliBuild takes no lock, so repair may remove the links
            // of one stalled past `--min-age`; invariant 4 checks that a
            // later repair puts them back once its tarball comes.
            let freeze = rng.chance(30).then(|| {
                (
                    start + Duration::from_millis(rng.between(0, 5_000)),
                    Duration::from_millis(rng.between(100, 60_000)),
                )
            });
            Plan {
                actor,
                start,
                kill_at,
                freeze,
                host: rng.between(0, 1) as usize,
                pid_ns: rng.between(0, 2) as usize,
            }
        })
        .collect();
    if rng.chance(20) {
        let (host, at) = (rng.between(0, 1) as usize, rng.between(0, 60_000));
        let machines = machines.clone();
        let log = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            *machines
                .clock_steps
                .lock()
                .unwrap()
                .entry(host)
                .or_default() += 10;
            log.lock().unwrap().push(format!(
                "{:.3}s: node-{host}'s clock steps 10 s forward",
                at as f64 / 1000.0
            ));
        });
    }
    let mut running = Vec::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let name = format!(
            "{}#{i}@node-{}/ns{}",
            plan.actor.name(),
            plan.host,
            plan.pid_ns
        );
        let process_seed = rng.next();
        let (world, machines, log) = (world.clone(), machines.clone(), log.clone());
        running.push(tokio::task::spawn_local(async move {
            tokio::time::sleep(plan.start).await;
            let process = Arc::new(Process {
                name: name.clone(),
                host: plan.host,
                pid_ns: plan.pid_ns,
                pid: 100 + i as u32,
                start_ticks: (1_000_000 + elapsed_ms(world.lock().unwrap().start)) / 10,
                frozen: watch::channel(false).0,
                alive: Mutex::new(true),
                tasks: Mutex::new(Vec::new()),
            });
            let fate = run_process(&process, &plan, process_seed, &world, &machines).await;
            log.lock().unwrap().push(format!(
                "{name} started at {:.3}s: {fate}",
                plan.start.as_secs_f64()
            ));
        }));
    }
    for process in running {
        process.await.unwrap();
    }
    // Every process has ended: once every lease has run out, one final
    // resume and repair, then the end state.
    tokio::time::sleep(LEASE * 3).await;
    let finals = [
        (Actor::Resume, "final-resume"),
        (Actor::Repair, "final-repair"),
    ];
    for (i, (actor, name)) in finals.into_iter().enumerate() {
        let process = Arc::new(Process {
            name: name.into(),
            host: 9,
            pid_ns: 9,
            pid: 10 + i as u32,
            start_ticks: 1,
            frozen: watch::channel(false).0,
            alive: Mutex::new(true),
            tasks: Mutex::new(Vec::new()),
        });
        machines.processes.lock().unwrap().push(process.clone());
        let store = Arc::new(SimStore {
            world: world.clone(),
            process: process.clone(),
            network: CLEAN,
            rng: Mutex::new(Rng::new(seed ^ 0xf1)),
        });
        let machine = sim_machine(&process, &machines, &world, seed);
        let fate = machine::run_on(machine, act(actor, store, 0, Duration::ZERO)).await;
        log.lock().unwrap().push(format!("{name}: {fate}"));
    }
    let final_check = SimStore {
        world: world.clone(),
        process: machines.processes.lock().unwrap().last().unwrap().clone(),
        network: CLEAN,
        rng: Mutex::new(Rng::new(seed)),
    };
    let scan = scan_options(Duration::ZERO);
    let found = alitx::check::scan(&final_check, &scan).await.unwrap();
    check_end(&world, &found);
    let log = log.lock().unwrap().clone();
    Run { seed, world, log }
}

fn sim_machine(
    process: &Arc<Process>,
    machines: &Arc<Machines>,
    world: &Arc<Mutex<World>>,
    seed: u64,
) -> Arc<dyn Machine> {
    Arc::new(SimMachine {
        process: process.clone(),
        machines: machines.clone(),
        world: world.clone(),
        rng: Mutex::new(Rng::new(seed ^ process.pid as u64)),
    })
}

/// Run one process to its end, its kill or its freeze as planned; say how
/// it ended.
async fn run_process(
    process: &Arc<Process>,
    plan: &Plan,
    seed: u64,
    world: &Arc<Mutex<World>>,
    machines: &Arc<Machines>,
) -> String {
    machines.processes.lock().unwrap().push(process.clone());
    let store = Arc::new(SimStore {
        world: world.clone(),
        process: process.clone(),
        network: FAULTY,
        rng: Mutex::new(Rng::new(seed)),
    });
    let machine = sim_machine(process, machines, world, seed);
    let from_ms = world.lock().unwrap().now_ms();
    let build = if plan.actor == Actor::Conflicting {
        1
    } else {
        0
    };
    let root =
        tokio::task::spawn_local(machine::run_on(machine, act(plan.actor, store, build, AGE)));
    process.tasks.lock().unwrap().push(root.abort_handle());
    if let Some((at, length)) = plan.freeze {
        let process = process.clone();
        let start = plan.start;
        tokio::spawn(async move {
            tokio::time::sleep(at - start).await;
            process.frozen.send_replace(true);
            tokio::time::sleep(length).await;
            process.frozen.send_replace(false);
        });
    }
    if let Some(at) = plan.kill_at {
        let process = process.clone();
        let start = plan.start;
        tokio::spawn(async move {
            tokio::time::sleep(at - start).await;
            *process.alive.lock().unwrap() = false;
            for task in process.tasks.lock().unwrap().iter() {
                task.abort();
            }
        });
    }
    let fate = root.await;
    *process.alive.lock().unwrap() = false;
    for task in process.tasks.lock().unwrap().iter() {
        task.abort();
    }
    let Ok(fate) = fate else {
        return "killed".into();
    };
    let to_ms = world.lock().unwrap().now_ms();
    let mut w = world.lock().unwrap();
    let (_, _, ours) = &work_dirs().builds[build];
    match &fate {
        Fate::Conflict(_) if !w.held_by_another(&ours.hash, from_ms, to_ms) => {
            let message = format!(
                "{} exited 3 although no other hash held the revision",
                process.name
            );
            w.violation(3, message, vec![ours.tarball_key.clone()]);
        }
        Fate::Published(_) if !w.complete(ours) && !w.removed_since(&ours.tarball_key, from_ms) => {
            let message = format!(
                "{} exited 0 reporting the revision published, which is not complete",
                process.name
            );
            let mut keys = vec![ours.tarball_key.clone()];
            keys.extend(ours.links.iter().map(|l| l.key.clone()));
            w.violation(3, message, keys);
        }
        _ => {}
    }
    format!("{fate:?}")
}
