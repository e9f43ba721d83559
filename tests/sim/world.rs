//! The store's objects and history, and the invariants checked on them.

use super::*;

/// One write the store applied, for the history of its key.
#[derive(Debug, Clone)]
pub struct Event {
    pub at_ms: u64,
    pub process: String,
    pub what: String,
    pub key: String,
}

#[derive(Debug, Clone)]
pub(super) struct Object {
    pub(super) body: Bytes,
    pub(super) metadata: Metadata,
    pub(super) redirect: Option<String>,
    pub(super) modified: i64,
}

#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub(super) key: String,
    pub(super) metadata: Metadata,
    pub(super) parts: BTreeMap<u32, Bytes>,
    pub(super) initiated: i64,
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
    pub(super) start: Instant,
    pub(super) objects: BTreeMap<String, Object>,
    pub(super) staged: BTreeMap<String, Staged>,
    pub(super) next_upload: u64,
    pub history: Vec<Event>,
    pub(super) builds: Vec<Build>,
    /// Tarball keys that were visible at some moment.
    pub(super) published: BTreeSet<String>,
    /// After each write: the hashes that held some key of the revision.
    pub(super) presence: Vec<(u64, BTreeSet<String>)>,
    /// Tarball keys invariant 1 was found broken for (reported once).
    pub(super) broken: BTreeSet<String>,
    /// Tarballs a stock upload made visible: what it wrote is aliBuild's
    /// business, not checked.
    pub(super) stock_published: BTreeSet<String>,
    /// Tarballs deleted by ALICE's clean-up or a named `--unpublish`, and
    /// when: a report of publication before is not made false by them.
    pub(super) removed: Vec<(u64, String)>,
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
    pub(super) fn new(builds: Vec<Build>) -> Self {
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
            removed: Vec::new(),
            violations: Vec::new(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        elapsed_ms(self.start)
    }

    pub(super) fn now_secs(&self) -> i64 {
        EPOCH + (self.now_ms() / 1000) as i64
    }

    pub(super) fn violation(&mut self, invariant: u8, message: String, keys: Vec<String>) {
        let at_ms = self.now_ms();
        self.violations.push(Violation {
            invariant,
            at_ms,
            message,
            keys,
        });
    }

    /// Record a write and check invariants 1 and 2 right after it.
    pub(super) fn wrote(&mut self, process: &str, what: &str, key: &str) {
        let at_ms = self.now_ms();
        self.history.push(Event {
            at_ms,
            process: process.into(),
            what: what.into(),
            key: key.into(),
        });
        let tarball_of = self.builds.iter().any(|b| b.tarball_key == key);
        let operator = process.starts_with("cleanup") || process.starts_with("unpublish");
        if what == "delete" && operator && tarball_of {
            self.removed.push((at_ms, key.to_string()));
        }
        if what == "delete" && process.starts_with("unpublish") {
            // The revision named is no longer published (invariant 2 does
            // not hold it); invariant 1 still holds a visible tarball.
            for build in &self.builds {
                if build.tarball_key == key || build.links.iter().any(|l| l.key == key) {
                    self.published.remove(&build.tarball_key);
                    self.broken.remove(&build.tarball_key);
                }
            }
        }
        if what == "delete" && !operator && !self.objects.contains_key(key) {
            if let Some(build) = self.builds.iter().find(|b| {
                self.published.contains(&b.tarball_key)
                    && !self.stock_published.contains(&b.tarball_key)
                    && (b.tarball_key == key || b.links.iter().any(|l| l.key == key))
            }) {
                let message = format!(
                    "{process} deleted {key}, a key of the published build {}",
                    build.hash
                );
                let keys = vec![build.tarball_key.clone(), key.to_string()];
                self.violation(2, message, keys);
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
    pub(super) fn holders(&self) -> BTreeSet<String> {
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
    pub(super) fn held_by_another(&self, ours: &str, from: u64, to: u64) -> bool {
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
    pub(super) fn complete(&self, build: &Build) -> bool {
        self.objects.contains_key(&build.tarball_key)
            && build.links.iter().all(|l| {
                self.objects.get(&l.key).map(|o| o.body.as_ref()) == Some(l.body.as_bytes())
            })
    }

    /// Whether a clean-up or an unpublish deleted `tarball_key` since
    /// `from` (ms).
    pub(super) fn removed_since(&self, tarball_key: &str, from: u64) -> bool {
        self.removed
            .iter()
            .any(|(at, key)| *at >= from && key == tarball_key)
    }

    /// The history of `keys`, one line per write.
    pub fn history_of(&self, keys: &[String]) -> String {
        self.history_where(|key| keys.iter().any(|k| k == key))
    }

    /// The history of every key `wanted` accepts, one line per write.
    pub fn history_where(&self, wanted: impl Fn(&str) -> bool) -> String {
        let mut out = String::new();
        for e in self.history.iter().filter(|e| wanted(&e.key)) {
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

/// Invariants 4 and 5, once the final resume and repair ran: `found` is
/// what a final check classified.
pub(super) fn check_end(world: &Arc<Mutex<World>>, found: &alitx::check::CheckReport) {
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
    // A stock upload stalled past `--min-age` may have put its tarball over
    // links repair removed: the final repair put them back, unless the
    // revision went to another build meanwhile.
    let visible: Vec<Build> = w
        .builds
        .iter()
        .filter(|b| w.objects.contains_key(&b.tarball_key))
        .cloned()
        .collect();
    if let [build] = &visible[..] {
        if !w.complete(build) {
            let message = format!(
                "the tarball of {} is left without some of its links",
                build.hash
            );
            let mut keys = vec![build.tarball_key.clone()];
            keys.extend(build.links.iter().map(|l| l.key.clone()));
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
        // A record outlives a tarball retired by a clean-up.
        let matches = w
            .objects
            .get(&record.key)
            .is_none_or(|t| hex::encode(Sha256::digest(&t.body)) == record.sha256);
        if !matches {
            let message = format!("{key} does not match the tarball {}", record.key);
            w.violation(5, message, vec![key, record.key]);
        }
    }
}
