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
}

impl Actor {
    pub const ALL: [Actor; 9] = [
        Actor::Upload,
        Actor::Conflicting,
        Actor::Stock,
        Actor::Resume,
        Actor::ResumeForce,
        Actor::RollbackForce,
        Actor::Repair,
        Actor::Check,
        Actor::Forger,
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

/// One write the store applied, for the history of its key.
#[derive(Debug, Clone)]
pub struct Event {
    pub at_ms: u64,
    pub process: String,
    pub what: String,
    pub key: String,
}

#[derive(Debug, Clone)]
struct Object {
    body: Bytes,
    metadata: Metadata,
    redirect: Option<String>,
    modified: i64,
}

#[derive(Debug, Clone)]
struct Staged {
    key: String,
    metadata: Metadata,
    parts: BTreeMap<u32, Bytes>,
    initiated: i64,
}

/// A build of the revision: its hash, tarball key and every link of its
/// work dir.
#[derive(Debug, Clone)]
pub struct Build {
    pub hash: String,
    pub tarball_key: String,
    pub links: Vec<Link>,
}

/// The store as every process sees it, its history, and the violations
/// found so far.
#[derive(Debug)]
pub struct World {
    start: Instant,
    objects: BTreeMap<String, Object>,
    staged: BTreeMap<String, Staged>,
    next_upload: u64,
    pub history: Vec<Event>,
    builds: Vec<Build>,
    /// Tarball keys that were visible at some moment.
    published: BTreeSet<String>,
    /// After each write: the hashes that held some key of the revision.
    presence: Vec<(u64, BTreeSet<String>)>,
    /// Tarball keys invariant 1 was found broken for (reported once).
    broken: BTreeSet<String>,
    /// Tarballs a stock upload made visible: what it wrote is aliBuild's
    /// business, not checked.
    stock_published: BTreeSet<String>,
    pub violations: Vec<Violation>,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: u8,
    pub at_ms: u64,
    pub message: String,
    pub keys: Vec<String>,
}

impl World {
    fn new(builds: Vec<Build>) -> Self {
        World {
            start: Instant::now(),
            objects: BTreeMap::new(),
            staged: BTreeMap::new(),
            next_upload: 0,
            history: Vec::new(),
            builds,
            published: BTreeSet::new(),
            presence: vec![(0, BTreeSet::new())],
            broken: BTreeSet::new(),
            stock_published: BTreeSet::new(),
            violations: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        elapsed_ms(self.start)
    }

    fn now_secs(&self) -> i64 {
        EPOCH + (self.now_ms() / 1000) as i64
    }

    fn violation(&mut self, invariant: u8, message: String, keys: Vec<String>) {
        let at_ms = self.now_ms();
        self.violations.push(Violation {
            invariant,
            at_ms,
            message,
            keys,
        });
    }

    /// Record a write and check invariants 1 and 2 right after it.
    fn wrote(&mut self, process: &str, what: &str, key: &str) {
        let at_ms = self.now_ms();
        self.history.push(Event {
            at_ms,
            process: process.into(),
            what: what.into(),
            key: key.into(),
        });
        if what == "delete" && !self.objects.contains_key(key) {
            if let Some(build) = self.builds.iter().find(|b| {
                self.published.contains(&b.tarball_key)
                    && !self.stock_published.contains(&b.tarball_key)
                    && (b.tarball_key == key || b.links.iter().any(|l| l.key == key))
            }) {
                let message = format!(
                    "{process} deleted {key}, a key of the published build {}",
                    build.hash
                );
                self.violation(2, message, vec![key.to_string()]);
            }
        }
        if process.starts_with("stock") && self.builds.iter().any(|b| b.tarball_key == key) {
            self.stock_published.insert(key.to_string());
        }
        for build in self.builds.clone() {
            if !self.objects.contains_key(&build.tarball_key)
                || self.stock_published.contains(&build.tarball_key)
            {
                continue;
            }
            self.published.insert(build.tarball_key.clone());
            let broken: Vec<String> = build
                .links
                .iter()
                .filter(|l| {
                    self.objects.get(&l.key).map(|o| o.body.as_ref()) != Some(l.body.as_bytes())
                })
                .map(|l| l.key.clone())
                .collect();
            if !broken.is_empty() && !self.broken.contains(&build.tarball_key) {
                self.broken.insert(build.tarball_key.clone());
                let message = format!(
                    "after {process}'s {what} of {key}: the tarball of {} is visible without {} of its links",
                    build.hash,
                    broken.len()
                );
                let mut keys = vec![build.tarball_key.clone()];
                keys.extend(broken);
                self.violation(1, message, keys);
            }
        }
        let holders = self.holders();
        self.presence.push((at_ms, holders));
    }

    /// The hashes some key of the revision names now: a tarball, a link's
    /// body, the journal.
    fn holders(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for build in &self.builds {
            let holds_link = build.links.iter().any(|l| {
                self.objects
                    .get(&l.key)
                    .is_some_and(|o| o.body.as_ref() == l.body.as_bytes())
            });
            let holds_journal = self.objects.iter().any(|(k, o)| {
                k.starts_with(alitx::journal::DEFAULT_PREFIX)
                    && String::from_utf8_lossy(&o.body).contains(&build.hash)
            });
            if holds_link || holds_journal || self.objects.contains_key(&build.tarball_key) {
                found.insert(build.hash.clone());
            }
        }
        found
    }

    /// Whether a hash other than `ours` held the revision between `from`
    /// and `to` (ms).
    fn held_by_another(&self, ours: &str, from: u64, to: u64) -> bool {
        let before = self
            .presence
            .iter()
            .rev()
            .find(|(at, _)| *at <= from)
            .into_iter();
        let during = self
            .presence
            .iter()
            .filter(|(at, _)| (from..=to).contains(at));
        before
            .chain(during)
            .any(|(_, hashes)| hashes.iter().any(|h| h != ours))
    }

    /// Whether `build` is published and complete now.
    fn complete(&self, build: &Build) -> bool {
        self.objects.contains_key(&build.tarball_key)
            && build.links.iter().all(|l| {
                self.objects.get(&l.key).map(|o| o.body.as_ref()) == Some(l.body.as_bytes())
            })
    }

    /// The history of `keys`, one line per write.
    pub fn history_of(&self, keys: &[String]) -> String {
        let mut out = String::new();
        for e in self.history.iter().filter(|e| keys.contains(&e.key)) {
            let _ = writeln!(
                out,
                "  {:>9.3}s {:<22} {:<9} {}",
                e.at_ms as f64 / 1000.0,
                e.process,
                e.what,
                e.key
            );
        }
        out
    }
}

/// How a process's requests reach the store.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Percent of requests failed with a 503 before they reach the store.
    pub unavailable: u64,
    /// Percent of answers lost after the store applied the request.
    pub lost: u64,
    /// Percent of answers held up to a minute on their way back (or of
    /// 503s, before they come). A request itself lands within 200 ms of
    /// leaving or never: the settle time of a takeover and the send window
    /// of a delete (docs/protocol.md) are sized on that bound.
    pub slow: u64,
}

const FAULTY: Network = Network {
    unavailable: 2,
    lost: 2,
    slow: 5,
};
/// A stock uploader's network: faulty, but never slow enough to make a
/// running upload look abandoned to repair.
const STOCK_NETWORK: Network = Network { slow: 0, ..FAULTY };
const CLEAN: Network = Network {
    unavailable: 0,
    lost: 0,
    slow: 0,
};

/// One simulated process: where it runs, its pid, its fate.
#[derive(Debug)]
pub struct Process {
    name: String,
    host: usize,
    pid_ns: usize,
    pid: u32,
    start_ticks: u64,
    frozen: watch::Sender<bool>,
    alive: Mutex<bool>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// Every host's clock offset, and the processes running on them.
#[derive(Debug, Default)]
pub struct Machines {
    clock_steps: Mutex<BTreeMap<usize, i64>>,
    processes: Mutex<Vec<Arc<Process>>>,
}

impl Machines {
    fn offset(&self, host: usize) -> i64 {
        *self.clock_steps.lock().unwrap().get(&host).unwrap_or(&0)
    }
}

/// The machine a simulated process reads.
pub struct SimMachine {
    process: Arc<Process>,
    machines: Arc<Machines>,
    world: Arc<Mutex<World>>,
    rng: Mutex<Rng>,
}

fn scope_of(host: usize, pid_ns: usize) -> PidScope {
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

/// A process's connection to the store.
#[derive(Debug)]
pub struct SimStore {
    world: Arc<Mutex<World>>,
    process: Arc<Process>,
    network: Network,
    rng: Mutex<Rng>,
}

impl SimStore {
    fn delay(&self, slow_allowed: bool) -> Duration {
        let mut rng = self.rng.lock().unwrap();
        let ms = if slow_allowed && rng.chance(self.network.slow) {
            rng.between(1_000, 60_000)
        } else {
            rng.between(1, 200)
        };
        Duration::from_millis(ms)
    }

    async fn thawed(&self) {
        let mut frozen = self.process.frozen.subscribe();
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
    }

    /// Send `op` to the store: it lands after a delay even if this process
    /// is frozen or killed meanwhile; the answer comes back later, to a
    /// thawed process, or is lost.
    async fn request<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&mut World, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.thawed().await;
        let unavailable = self.rng.lock().unwrap().chance(self.network.unavailable);
        let on_the_way = self.delay(false);
        if unavailable {
            tokio::time::sleep(self.delay(true)).await;
            return Err(Error::store(format!("{what}: 503 Service Unavailable")));
        }
        let (world, name) = (self.world.clone(), self.process.name.clone());
        let landed = tokio::spawn(async move {
            tokio::time::sleep(on_the_way).await;
            op(&mut world.lock().unwrap(), &name)
        });
        let answer = landed.await.expect("a request never panics");
        tokio::time::sleep(self.delay(true)).await;
        self.thawed().await;
        if self.rng.lock().unwrap().chance(self.network.lost) {
            return Err(Error::store(format!("{what}: connection reset")));
        }
        answer
    }
}

fn info(o: &Object) -> ObjectInfo {
    ObjectInfo {
        size: o.body.len() as u64,
        metadata: o.metadata.clone(),
        website_redirect: o.redirect.clone(),
    }
}

#[async_trait]
impl Store for SimStore {
    fn describe(&self) -> String {
        "simulated store".into()
    }

    async fn preflight(&self) -> Result<()> {
        self.request("preflight", |_, _| Ok(())).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let key = key.to_string();
        self.request("HEAD", move |w, _| Ok(w.objects.get(&key).map(info)))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let key = key.to_string();
        self.request("GET", move |w, _| {
            Ok(w.objects.get(&key).map(|o| o.body.clone()))
        })
        .await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<Segments>> {
        let key = key.to_string();
        self.request("GET range", move |w, _| {
            Ok(w.objects.get(&key).map(|o| {
                let from = (offset as usize).min(o.body.len());
                let to = (offset.saturating_add(len) as usize).min(o.body.len());
                Segments::from(o.body.slice(from..to))
            }))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
        mode: PutMode,
    ) -> Result<Created> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        self.request("PUT", move |w, who| {
            if mode == PutMode::Create && w.objects.contains_key(&key) {
                return Ok(Created::AlreadyExists);
            }
            let modified = w.now_secs();
            let object = Object {
                body,
                metadata,
                redirect: None,
                modified,
            };
            w.objects.insert(key.clone(), object);
            w.wrote(who, "put", &key);
            Ok(Created::Yes)
        })
        .await
    }

    async fn put_link_if_absent(&self, link: &Link, metadata: &Metadata) -> Result<Created> {
        let (link, metadata) = (link.clone(), metadata.clone());
        self.request("PUT link", move |w, who| {
            if w.objects.contains_key(&link.key) {
                return Ok(Created::AlreadyExists);
            }
            let modified = w.now_secs();
            let object = Object {
                body: Bytes::from(link.body.clone()),
                metadata,
                redirect: link.redirect.clone(),
                modified,
            };
            w.objects.insert(link.key.clone(), object);
            w.wrote(who, "link", &link.key);
            Ok(Created::Yes)
        })
        .await
    }

    /// A frozen process's request with a deadline leaves once it is
    /// thawed, and the deadline is checked then, as in the product.
    async fn about_to_send(&self) {
        self.thawed().await;
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.request("DELETE", move |w, who| {
            if w.objects.remove(&key).is_some() {
                w.wrote(who, "delete", &key);
            }
            Ok(())
        })
        .await
    }

    async fn list_dir(&self, prefix: &str, recursive: bool) -> Result<Listing> {
        let prefix = prefix.to_string();
        self.request("LIST", move |w, _| {
            let mut listing = Listing::default();
            for (key, o) in w.objects.range(prefix.clone()..) {
                let Some(rest) = key.strip_prefix(&prefix) else {
                    break;
                };
                match rest.split_once('/') {
                    Some((dir, _)) if !recursive => {
                        let dir = format!("{prefix}{dir}/");
                        if listing.prefixes.last() != Some(&dir) {
                            listing.prefixes.push(dir);
                        }
                    }
                    _ => listing.objects.push(ObjectMeta {
                        key: key.clone(),
                        size: o.body.len() as u64,
                        last_modified: Some(o.modified),
                        md5: Some(md5_hex(&o.body)),
                    }),
                }
            }
            Ok(listing)
        })
        .await
    }

    async fn create_upload(&self, key: &str, metadata: &Metadata) -> Result<String> {
        let (key, metadata) = (key.to_string(), metadata.clone());
        self.request("CreateMultipartUpload", move |w, who| {
            w.next_upload += 1;
            let id = format!("upload-{}", w.next_upload);
            let initiated = w.now_secs();
            w.staged.insert(
                id.clone(),
                Staged {
                    key: key.clone(),
                    metadata,
                    parts: BTreeMap::new(),
                    initiated,
                },
            );
            w.wrote(who, "stage", &key);
            Ok(id)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        data: Bytes,
    ) -> Result<UploadedPart> {
        let (key, id) = (key.to_string(), upload_id.to_string());
        self.request("UploadPart", move |w, _| {
            let received_at = Some(w.now_secs());
            let staged = w
                .staged
                .get_mut(&id)
                .filter(|s| s.key == key)
                .ok_or_else(|| Error::store("NoSuchUpload"))?;
            staged.parts.insert(number, data.clone());
            Ok(UploadedPart {
                number,
                size: data.len() as u64,
                md5: md5_hex(&data),
                received_at,
            })
        })
        .await
    }

    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<UploadedPart>>> {
        let (key, id) = (key.to_string(), upload_id.to_string());
        self.request("ListParts", move |w, _| {
            Ok(w.staged.get(&id).filter(|s| s.key == key).map(|s| {
                s.parts
                    .iter()
                    .map(|(&number, data)| UploadedPart {
                        number,
                        size: data.len() as u64,
                        md5: md5_hex(data),
                        received_at: Some(s.initiated),
                    })
                    .collect()
            }))
        })
        .await
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<()> {
        let (key, id, parts) = (key.to_string(), upload_id.to_string(), parts.to_vec());
        self.request("CompleteMultipartUpload", move |w, who| {
            let staged = w
                .staged
                .get(&id)
                .filter(|s| s.key == key)
                .ok_or_else(|| Error::store("NoSuchUpload"))?;
            let mut body = Vec::new();
            for part in &parts {
                let data = staged
                    .parts
                    .get(&part.number)
                    .filter(|d| md5_hex(d) == part.md5)
                    .ok_or_else(|| Error::store("InvalidPart"))?;
                body.extend_from_slice(data);
            }
            let staged = w.staged.remove(&id).expect("found above");
            let modified = w.now_secs();
            let object = Object {
                body: body.into(),
                metadata: staged.metadata,
                redirect: None,
                modified,
            };
            w.objects.insert(key.clone(), object);
            w.wrote(who, "complete", &key);
            Ok(())
        })
        .await
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> Result<()> {
        let id = upload_id.to_string();
        self.request("AbortMultipartUpload", move |w, who| {
            if let Some(staged) = w.staged.remove(&id) {
                w.wrote(who, "abort", &staged.key);
            }
            Ok(())
        })
        .await
    }

    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let prefix = prefix.to_string();
        self.request("ListMultipartUploads", move |w, _| {
            Ok(w.staged
                .iter()
                .filter(|(_, s)| s.key.starts_with(&prefix))
                .map(|(id, s)| PendingUpload {
                    key: s.key.clone(),
                    upload_id: id.clone(),
                    initiated: Some(s.initiated),
                })
                .collect())
        })
        .await
    }
}

/// The two builds of the revision, each in a work dir of its own: the
/// same package, version and revision, two hashes.
struct WorkDirs {
    _dir: tempfile::TempDir,
    builds: Vec<(PathBuf, Revision, Build)>,
}

fn work_dirs() -> &'static WorkDirs {
    static DIRS: OnceLock<WorkDirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let builds = ["a1", "b2"]
            .iter()
            .map(|seed| {
                let path = dir.path().join(seed);
                let hash = hex::encode(&Sha256::digest(seed.as_bytes())[..20]);
                let revision = Revision::new(ARCH, "pkg", "v1", "1", &hash).unwrap();
                write_work_dir(&path, &revision);
                let local = alitx::workdir::read_revision(&path, revision.clone()).unwrap();
                let build = Build {
                    hash,
                    tarball_key: revision.store_key(),
                    links: local.links,
                };
                (path, revision, build)
            })
            .collect();
        WorkDirs { _dir: dir, builds }
    })
}

/// A tarball as aliBuild packs one, and its links: the package link and,
/// in each dist directory, the package's own link and one dependency's.
fn write_work_dir(root: &Path, revision: &Revision) {
    let tarball = root.join(revision.store_key());
    std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&tarball).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let prefix = revision.install_prefix();
    let meta = format!(
        "{{\"package\": \"{}\", \"hash\": \"{}\"}}\n",
        revision.package, revision.hash
    );
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(meta.len() as u64);
    tar.append_data(
        &mut header,
        format!("./{prefix}/.meta.json"),
        meta.as_bytes(),
    )
    .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let link = root.join(revision.package_link().key);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(revision.package_link().symlink_target, &link).unwrap();
    let dep = alitx::layout::store_key(ARCH, &"de".repeat(20), &format!("dep-1-1.{ARCH}.tar.gz"));
    for dist in ["dist", "dist-direct", "dist-runtime"] {
        let dir = root.join(revision.dist_prefix(dist));
        std::fs::create_dir_all(&dir).unwrap();
        for target in [revision.store_key(), dep.clone()] {
            let name = target.rsplit('/').next().unwrap().to_string();
            std::os::unix::fs::symlink(format!("../../../../../{target}"), dir.join(name)).unwrap();
        }
    }
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
            // Stock aliBuild takes no lock: only `--min-age` (AGE here)
            // keeps repair off a stock upload that is still running, so a
            // stock process stalls for less than that, by freeze or by a
            // slow network alike (see STOCK_NETWORK).
            let longest_freeze = match actor {
                Actor::Stock => AGE.as_millis() as u64 / 2,
                _ => 60_000,
            };
            let freeze = rng.chance(30).then(|| {
                (
                    start + Duration::from_millis(rng.between(0, 5_000)),
                    Duration::from_millis(rng.between(100, longest_freeze)),
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
        network: match plan.actor {
            Actor::Stock => STOCK_NETWORK,
            _ => FAULTY,
        },
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
        Fate::Published(_) if !w.complete(ours) => {
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

/// How an actor's command ended, as its exit code and report tell.
#[derive(Debug)]
enum Fate {
    /// Exit 0, the revision published (committed or already published),
    /// with the report's status.
    Published(txn::Status),
    /// Exit 0, anything else.
    Done(String),
    /// Exit 3, with its message.
    Conflict(String),
    Failed(i32, String),
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

fn failed(e: Error) -> Fate {
    match e.exit_code() {
        3 => Fate::Conflict(e.message),
        code => Fate::Failed(code, e.message),
    }
}

fn options() -> Options {
    Options {
        lease: LEASE,
        adopt_after: AGE,
        ..Options::default()
    }
}

/// The product's own command, called as `src/cli` calls it.
async fn act(actor: Actor, store: Arc<SimStore>, build: usize, min_age: Duration) -> Fate {
    let (dir, revision, ours) = &work_dirs().builds[build];
    let store: Arc<dyn Store> = store;
    let options = options();
    let force = matches!(actor, Actor::ResumeForce | Actor::RollbackForce);
    let selection = Selection {
        ids: &[],
        architecture: None,
        force,
    };
    match actor {
        Actor::Upload | Actor::Conflicting => {
            let local = alitx::workdir::read_revision(dir, revision.clone()).unwrap();
            match txn::upload(store, local, &options).await {
                Ok(report) => match report.status {
                    status @ (txn::Status::Committed | txn::Status::AlreadyPublished) => {
                        Fate::Published(status)
                    }
                    other => Fate::Done(format!("{other:?}")),
                },
                Err(e) => failed(e),
            }
        }
        Actor::Stock => {
            // It stops where another build's link holds a key: the
            // simulator does not blame alitx for a stock upload that
            // publishes over another build's links.
            for link in &ours.links {
                match store.put_link_if_absent(link, &Metadata::new()).await {
                    Ok(Created::Yes) => {}
                    Ok(Created::AlreadyExists) => {
                        let held = store.get(&link.key).await;
                        if !matches!(held, Ok(Some(body)) if body == link.body.as_bytes()) {
                            return Fate::Done(
                                "stock upload stopped at another build's link".into(),
                            );
                        }
                    }
                    Err(e) => return failed(e),
                }
            }
            let body = std::fs::read(dir.join(&ours.tarball_key)).unwrap();
            match store
                .put(
                    &ours.tarball_key,
                    body.into(),
                    &Metadata::new(),
                    PutMode::Overwrite,
                )
                .await
            {
                Ok(_) => Fate::Done("stock upload".into()),
                Err(e) => failed(e),
            }
        }
        Actor::Resume | Actor::ResumeForce => {
            let work_dir = Some(dir.as_path());
            match recovery::resume(store, &options, work_dir, &selection, &|_| {}).await {
                Ok(outcomes) => Fate::Done(outcomes_line(&outcomes)),
                Err(e) => failed(e),
            }
        }
        Actor::RollbackForce => match recovery::rollback(store, &options, &selection).await {
            Ok(outcomes) => Fate::Done(outcomes_line(&outcomes)),
            Err(e) => failed(e),
        },
        Actor::Forger => forge_journal(&*store).await,
        Actor::Repair | Actor::Check => {
            let scan = scan_options(min_age);
            let found = match alitx::check::scan(&*store, &scan).await {
                Ok(found) => found,
                Err(e) => return failed(e),
            };
            if actor == Actor::Check {
                return Fate::Done(format!("check clean: {}", found.clean));
            }
            match alitx::repair::repair(store, found, &options, false, 8).await {
                Ok(report) => Fate::Done(format!(
                    "repair: deleted {:?}, left over {}",
                    report.deleted().len(),
                    report.left_over
                )),
                Err(e) => failed(e),
            }
        }
    }
}

/// Put a lying journal of the revision where none is, well-formed (the
/// product refuses malformed ones, left for the operator): a committed one
/// of build 0 whose tarball digest and size are wrong, or a pending one of
/// build 1 (whose dependency links have build 0's bodies). Either carries
/// the transaction id a link of the revision carries, as a stale copy of a
/// real journal would. Its owner is this process, which ends at once: the
/// journal is abandoned.
async fn forge_journal(store: &dyn Store) -> Fate {
    let random = machine::current().random_hex(32);
    let stale = random.as_bytes()[0] % 2 == 0;
    let (_, revision, build) = &work_dirs().builds[if stale { 0 } else { 1 }];
    let mut txn = random.clone();
    for link in &build.links {
        match store.head(&link.key).await {
            Ok(Some(info)) => {
                if let Some(id) = info.metadata.get(alitx::journal::TXN_METADATA) {
                    txn = id.clone();
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => return failed(e),
        }
    }
    let file = alitx::workdir::FileIdentity {
        size: 4242,
        mtime_ns: 1,
    };
    let part_size = 8 << 20;
    let mut journal =
        alitx::journal::Journal::new(txn, revision, file, &build.links, part_size, LEASE);
    if stale {
        journal.state = alitx::journal::State::Committed;
        journal.tarball.sha256 = Some(random);
    }
    let key = alitx::journal::Journal::key_of(&options().journal_prefix, revision);
    let written = store
        .put(
            &key,
            journal.to_bytes(),
            &journal.journal_metadata(),
            PutMode::Create,
        )
        .await;
    match written {
        Ok(Created::Yes) if stale => Fate::Done("forged a stale committed journal".into()),
        Ok(Created::Yes) => Fate::Done("forged a journal of another hash".into()),
        Ok(Created::AlreadyExists) => Fate::Done("a journal was there".into()),
        Err(e) => failed(e),
    }
}

fn scan_options(min_age: Duration) -> alitx::check::ScanOptions {
    alitx::check::ScanOptions {
        architecture: None,
        package: None,
        journal_prefix: alitx::journal::DEFAULT_PREFIX.into(),
        min_age,
        stale_uploads_after: min_age,
        concurrency: 8,
    }
}

fn outcomes_line(outcomes: &[recovery::Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| format!("{}: {}", o.action, o.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Invariants 4 and 5, once the final resume and repair ran: `found` is
/// what a final check classified.
fn check_end(world: &Arc<Mutex<World>>, found: &alitx::check::CheckReport) {
    let mut w = world.lock().unwrap();
    for revision in &found.revisions {
        use alitx::check::State;
        if matches!(
            revision.state,
            State::Partial | State::PublishedIncomplete | State::InFlight | State::Abandoned
        ) {
            let keys = w
                .builds
                .iter()
                .flat_map(|b| {
                    b.links
                        .iter()
                        .map(|l| l.key.clone())
                        .chain([b.tarball_key.clone()])
                })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let message = format!("{} is left {:?}", revision.tarball, revision.state);
            w.violation(4, message, keys);
        }
    }
    let journals: Vec<String> = w
        .objects
        .keys()
        .filter(|k| k.starts_with(alitx::journal::DEFAULT_PREFIX))
        .cloned()
        .collect();
    if !journals.is_empty() {
        w.violation(4, "a journal is left".into(), journals);
    }
    let staged: Vec<String> = w.staged.values().map(|s| s.key.clone()).collect();
    if !staged.is_empty() {
        w.violation(4, "a staged upload is left".into(), staged);
    }
    let records: Vec<(String, Bytes)> = w
        .objects
        .iter()
        .filter(|(k, _)| k.starts_with(alitx::record::PREFIX))
        .map(|(k, o)| (k.clone(), o.body.clone()))
        .collect();
    for (key, body) in records {
        let record: alitx::record::Record = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                w.violation(5, format!("{key} is not a record: {e}"), vec![key]);
                continue;
            }
        };
        let matches = w
            .objects
            .get(&record.key)
            .is_some_and(|t| hex::encode(Sha256::digest(&t.body)) == record.sha256);
        if !matches {
            let message = format!("{key} does not match the tarball {}", record.key);
            w.violation(5, message, vec![key, record.key]);
        }
    }
}
