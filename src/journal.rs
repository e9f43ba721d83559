//! The intent journal: one JSON object per in-flight revision, written with
//! put-if-absent before any data moves, so that two writers of the same
//! revision collide here, and so that a crash can be rolled forward or back.
//!
//! A journal read back from the store is untrusted input: [`Journal::parse`]
//! checks that every key it names lies inside the paths of the revision it
//! describes, recomputed from that revision's names and hash.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Link, Revision};
use crate::liveness;
pub use crate::liveness::Liveness;
use crate::workdir::FileIdentity;

/// Bump when the format changes incompatibly; older tools refuse newer
/// journals instead of guessing.
pub const FORMAT: u32 = 1;

/// Where journals live unless `--journal-prefix` says otherwise: outside
/// `TARS/`, so no reader of the store ever lists them.
pub const DEFAULT_PREFIX: &str = ".alitx/journals/";

/// The tarball part sizes an upload may use, in MiB (`--part-size`): a
/// journal read back that names another is not trusted, since its part
/// size sizes the buffers of a resume.
pub const PART_SIZE_MIB: std::ops::RangeInclusive<u64> = 5..=512;

/// User metadata naming the transaction that wrote an object.
pub const TXN_METADATA: &str = "alitx-txn";

/// User metadata naming the journal's owner (its token): a HEAD tells who
/// owns a transaction without reading the journal's body.
pub const OWNER_METADATA: &str = "alitx-owner";

/// User metadata holding the tarball's SHA-256 (on a tarball published by
/// one PUT, and on the journal once the whole file was verified).
pub const SHA256_METADATA: &str = "alitx-sha256";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Intent recorded; the revision may be partly written.
    Pending,
    /// The tarball is published; only retiring the journal remains.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// Unique id of this transaction, also stored on every object it writes.
    pub txn: String,
    pub state: State,
    pub revision: Revision,
    pub tarball: TarballRecord,
    /// Every link to write, the package link first.
    pub links: Vec<LinkRecord>,
    pub owner: Owner,
    /// Unix seconds after which the owner is presumed dead.
    pub lease_expires_at: i64,
    /// How often the owner renewed its lease: growing while it works.
    #[serde(default)]
    pub renewals: u64,
    /// How often the journal changed owner (each takeover counts one).
    #[serde(default)]
    pub takeovers: u64,
    /// The transaction completes a revision an earlier upload of the same
    /// build left unpublished: links with exactly its bodies that it did
    /// not write count as its own claim (and are never its to delete).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopts: bool,
    /// Set when a deleter (`repair`, `repair --unpublish`) holds the
    /// journal as the revision's lock: it uploads nothing, and `links` is
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleter: Option<DeleterKind>,
    /// The links a deleter removes, each with the body and redirect it
    /// had, recorded before the first delete: what is put back if the
    /// revision turns out published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removes: Vec<Link>,
}

/// Which deleter holds a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleterKind {
    Repair,
    Unpublish,
}

impl std::fmt::Display for DeleterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeleterKind::Repair => "repair",
            DeleterKind::Unpublish => "repair --unpublish",
        })
    }
}

/// The hash a deleter's journal names when no link of the revision tells
/// it: no build has it, so its store tarball never exists.
pub const UNKNOWN_HASH: &str = "0000000000000000000000000000000000000000";

/// The longest link body a deleter's journal records (a link names one
/// store key).
const MAX_REMOVED_BODY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TarballRecord {
    pub key: String,
    pub size: u64,
    /// The local file's modification time when the journal was written.
    pub mtime_ns: i128,
    /// Set once the whole file was read and verified.
    pub sha256: Option<String>,
    pub part_size: u64,
    /// Set once the staged upload exists.
    pub upload_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    #[serde(flatten)]
    pub link: Link,
    pub body_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub started_at: i64,
    pub tool: String,
    /// Random, new at every acquisition: the owner's stamp. A process acts
    /// on a journal only while the copy it just read carries its token.
    #[serde(default)]
    pub token: String,
    /// The pid namespace the pid is counted in, `pid:[INODE]`, and the
    /// kernel's boot id: the pid is checked only by a process that shares
    /// both (and the host). Absent in an older alitx's journal.
    #[serde(default)]
    pub pid_ns: Option<String>,
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The owner process's start in clock ticks since boot (field 22 of
    /// `/proc/self/stat`): within its boot, it tells the process from a
    /// later one with the same pid whatever the wall clock did meanwhile.
    /// Absent in an older alitx's journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
}

impl Owner {
    /// This process, as a new owner with a fresh token.
    pub fn this_process() -> Self {
        let machine = crate::machine::current();
        let here = machine.pid_scope();
        Owner {
            host: here.host,
            pid: machine.pid(),
            started_at: machine.now_secs(),
            tool: format!("alitx {}", env!("CARGO_PKG_VERSION")),
            token: machine.random_hex(8),
            pid_ns: here.pid_ns,
            boot_id: here.boot_id,
            start_ticks: machine.start_ticks(),
        }
    }
}

impl Journal {
    pub fn new(
        txn: String,
        revision: &Revision,
        tarball: FileIdentity,
        links: &[Link],
        part_size: u64,
        lease: Duration,
    ) -> Self {
        Journal {
            format: FORMAT,
            txn,
            state: State::Pending,
            revision: revision.clone(),
            tarball: TarballRecord {
                key: revision.store_key(),
                size: tarball.size,
                mtime_ns: tarball.mtime_ns,
                sha256: None,
                part_size,
                upload_id: None,
            },
            links: links
                .iter()
                .map(|link| LinkRecord {
                    body_sha256: hex::encode(Sha256::digest(link.body.as_bytes())),
                    link: link.clone(),
                })
                .collect(),
            owner: Owner::this_process(),
            lease_expires_at: crate::now_secs() + lease.as_secs() as i64,
            renewals: 0,
            takeovers: 0,
            adopts: false,
            deleter: None,
            removes: Vec::new(),
        }
    }

    /// The journal a deleter holds as the revision's lock while it deletes
    /// `removes` (recorded with their bodies).
    pub fn for_deleter(
        kind: DeleterKind,
        revision: &Revision,
        removes: Vec<Link>,
        lease: Duration,
    ) -> Self {
        let identity = FileIdentity {
            size: 0,
            mtime_ns: 0,
        };
        let mut journal = Journal::new(
            crate::random_hex(8),
            revision,
            identity,
            &[],
            8 << 20,
            lease,
        );
        journal.deleter = Some(kind);
        journal.removes = removes;
        journal
    }

    /// `<arch>/<pkg>-<ver>-<rev>`: what `journals` prints and commands take.
    pub fn id_of(revision: &Revision) -> String {
        format!("{}/{}", revision.architecture, revision.full_version())
    }

    pub fn key_of(prefix: &str, revision: &Revision) -> String {
        format!("{prefix}{}.json", Self::id_of(revision))
    }

    pub fn id(&self) -> String {
        Self::id_of(&self.revision)
    }

    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.iter().map(|r| &r.link)
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec_pretty(self)
            .expect("journal serialises")
            .into()
    }

    /// Parse and validate a journal read from `key`.
    pub fn parse(prefix: &str, key: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::Journal,
                format!("journal {key} cannot be trusted: {why}"),
            )
        };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("it is not valid JSON ({e})")))?;
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == FORMAT as u64 => {}
            Some(f) => {
                return Err(bad(format!(
                    "unknown format version {f} (this alitx reads version {FORMAT}); use the alitx that wrote it"
                )))
            }
            None => return Err(bad("it has no format version".into())),
        }
        let journal: Journal = serde_json::from_value(value).map_err(|e| bad(format!("{e}")))?;
        let revision = journal.revision.validated().map_err(|e| bad(e.message))?;
        if key != Self::key_of(prefix, &revision) {
            return Err(bad(format!(
                "it describes {} but is stored at another revision's key",
                Self::id_of(&revision)
            )));
        }
        if journal.tarball.key != revision.store_key() {
            return Err(bad(format!(
                "its tarball key {} is not this revision's",
                journal.tarball.key
            )));
        }
        match journal.deleter {
            None if journal.links.first().map(|r| &r.link) != Some(&revision.package_link()) => {
                return Err(bad(
                    "its first link is not this revision's package link".into()
                ))
            }
            None if !journal.removes.is_empty() => {
                return Err(bad("an upload's journal that removes links".into()))
            }
            Some(_) if !journal.links.is_empty() => {
                return Err(bad("a deleter's journal that writes links".into()))
            }
            _ => {}
        }
        for link in &journal.removes {
            if !revision.owns_key(&link.key)
                || link.key == revision.store_key()
                || link.body.len() > MAX_REMOVED_BODY
            {
                return Err(bad(format!(
                    "it removes {}, which is not a link of {}",
                    link.key,
                    Self::id_of(&revision)
                )));
            }
        }
        for record in &journal.links {
            if !revision.owns_link(&record.link) {
                return Err(bad(format!(
                    "it names {}, which is not a link of {}",
                    record.link.key,
                    Self::id_of(&revision)
                )));
            }
            if record.body_sha256 != hex::encode(Sha256::digest(record.link.body.as_bytes())) {
                return Err(bad(format!(
                    "the digest of {} does not match its body",
                    record.link.key
                )));
            }
        }
        let part_size = journal.tarball.part_size;
        if part_size % (1 << 20) != 0 || !PART_SIZE_MIB.contains(&(part_size >> 20)) {
            return Err(bad(format!(
                "its part size {part_size} is not a whole number of MiB from {} to {}",
                PART_SIZE_MIB.start(),
                PART_SIZE_MIB.end()
            )));
        }
        let id_ok = |id: &str| {
            !id.is_empty() && id.len() <= 1024 && id.bytes().all(|b| b.is_ascii_graphic())
        };
        if !id_ok(&journal.txn)
            || journal
                .tarball
                .upload_id
                .as_deref()
                .is_some_and(|id| !id_ok(id))
        {
            return Err(bad("its transaction or upload id is malformed".into()));
        }
        let owner = &journal.owner;
        if !owner
            .pid_ns
            .as_deref()
            .is_none_or(liveness::is_pid_namespace)
            || !owner.boot_id.as_deref().is_none_or(liveness::is_boot_id)
        {
            return Err(bad(
                "its owner's pid namespace or boot id is malformed".into()
            ));
        }
        Ok(journal)
    }

    /// Whether the owner still runs: by its process where its pid can be
    /// checked from here, by the lease elsewhere (see [`liveness::judge`]).
    pub fn liveness(&self) -> Liveness {
        let machine = crate::machine::current();
        liveness::judge(
            &self.owner,
            &machine.pid_scope(),
            || machine.owner_running(&self.owner),
            machine.now_secs(),
            self.lease_expires_at,
        )
    }

    /// Whether the owner is gone: its liveness says so, or it is this very
    /// process and no upload of it holds the journal any more (see
    /// [`crate::ownership::abandoned_here`]).
    pub fn owner_gone(&self) -> bool {
        self.liveness() != Liveness::Live || crate::ownership::abandoned_here(&self.owner)
    }

    /// The journal object's own metadata: its owner's token, and the
    /// tarball's SHA-256 once known.
    pub fn journal_metadata(&self) -> crate::storage::Metadata {
        let mut metadata: crate::storage::Metadata =
            [(OWNER_METADATA.to_string(), self.owner.token.clone())].into();
        if let Some(sha) = &self.tarball.sha256 {
            metadata.insert(SHA256_METADATA.to_string(), sha.clone());
        }
        metadata
    }

    /// Metadata every object of this transaction carries.
    pub fn object_metadata(&self) -> crate::storage::Metadata {
        [(TXN_METADATA.to_string(), self.txn.clone())].into()
    }
}

/// Journal ids are `<arch>/<pkg>-<ver>-<rev>`; a full key is accepted too.
pub fn key_from_arg(prefix: &str, arg: &str) -> Result<String> {
    let key = if arg.starts_with(prefix) {
        arg.to_string()
    } else {
        format!("{prefix}{}.json", arg.trim_end_matches(".json"))
    };
    let id = &key[prefix.len()..];
    let valid = id.ends_with(".json")
        && id.split('/').count() == 2
        && id.split('/').all(|c| !c.is_empty() && !c.starts_with('.'))
        && !id.contains(char::is_whitespace);
    if !valid {
        return Err(Error::input(format!(
            "{arg:?} is not a journal id: expected ARCH/PKG-VERSION-REVISION as printed by `alitx journals`"
        )));
    }
    Ok(key)
}

/// A small journal for unit tests: revision `a/p-v-1` with one dist link.
#[cfg(test)]
pub(crate) fn test_journal() -> Journal {
    let revision = Revision::new("a", "p", "v", "1", &"cd".repeat(20)).unwrap();
    let dep = crate::layout::store_key("a", &"ef".repeat(20), "dep-1-1.a.tar.gz");
    let links = vec![
        revision.package_link(),
        revision.dist_link("dist", &dep).unwrap(),
    ];
    let identity = FileIdentity {
        size: 10,
        mtime_ns: 1,
    };
    Journal::new(
        "t1".into(),
        &revision,
        identity,
        &links,
        8 << 20,
        Duration::from_secs(60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        test_journal()
    }

    #[test]
    fn round_trips_and_validates() {
        let j = journal();
        let key = Journal::key_of(DEFAULT_PREFIX, &j.revision);
        assert_eq!(key, ".alitx/journals/a/p-v-1.json");
        assert_eq!(
            Journal::parse(DEFAULT_PREFIX, &key, &j.to_bytes()).unwrap(),
            j
        );
        assert_eq!(key_from_arg(DEFAULT_PREFIX, "a/p-v-1").unwrap(), key);
        assert_eq!(key_from_arg(DEFAULT_PREFIX, &key).unwrap(), key);
        assert!(key_from_arg(DEFAULT_PREFIX, "../../etc").is_err());
    }

    /// A deleter's journal names only links of its own revision, and
    /// only a deleter's journal removes links.
    #[test]
    fn a_deleters_journal_removes_only_its_own_revisions_links() {
        let upload = journal();
        let key = Journal::key_of(DEFAULT_PREFIX, &upload.revision);
        let own = upload.revision.package_link();
        let lease = Duration::from_secs(60);
        let deleter = Journal::for_deleter(
            DeleterKind::Repair,
            &upload.revision,
            vec![own.clone()],
            lease,
        );
        let parsed = Journal::parse(DEFAULT_PREFIX, &key, &deleter.to_bytes()).unwrap();
        assert_eq!(parsed, deleter);
        assert!(String::from_utf8(deleter.to_bytes().to_vec())
            .unwrap()
            .contains(r#""deleter": "repair""#));
        let mut foreign = own.clone();
        foreign.key = "TARS/a/q/q-v-1.a.tar.gz".into();
        let mut writes = deleter.clone();
        writes.links = upload.links.clone();
        let mut removes = upload.clone();
        removes.removes = vec![own];
        for bad in [
            Journal::for_deleter(DeleterKind::Repair, &upload.revision, vec![foreign], lease),
            writes,
            removes,
        ] {
            let err = Journal::parse(DEFAULT_PREFIX, &key, &bad.to_bytes()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Journal);
        }
    }

    #[test]
    fn liveness_follows_the_process_here_and_the_lease_elsewhere() {
        let mut j = journal();
        assert_eq!(j.liveness(), Liveness::Live, "this very process");
        j.lease_expires_at = 0;
        assert_eq!(
            j.liveness(),
            Liveness::Live,
            "a late renewal does not kill a running owner"
        );
        j.owner.started_at -= 3600;
        assert_eq!(
            j.liveness(),
            Liveness::Live,
            "recorded an hour earlier by the wall clock (a clock step): still us"
        );
        j.owner.start_ticks = j.owner.start_ticks.map(|t| t + 1);
        assert_eq!(
            j.liveness(),
            Liveness::OwnerDead,
            "our pid, but another process's start: reused"
        );
        j.owner.pid = u32::MAX;
        assert_eq!(j.liveness(), Liveness::OwnerDead);
        j.owner.pid_ns = Some("pid:[1]".into());
        assert_eq!(j.liveness(), Liveness::Expired, "another container");
        j.owner.host = "build-node-17".into();
        assert_eq!(j.liveness(), Liveness::Expired);
        j.lease_expires_at = crate::now_secs() + 60;
        assert_eq!(j.liveness(), Liveness::Live);
    }

    #[test]
    fn refuses_forged_and_foreign_journals() {
        let key = Journal::key_of(DEFAULT_PREFIX, &journal().revision);
        let mut forged = journal();
        forged.links[1].link.key = "TARS/a/dist/other/other-1-1/dep-1-1.a.tar.gz".into();
        let mut wrong_body = journal();
        wrong_body.links[0].link.body = "a/store/xx/evil".into();
        let mut newer = serde_json::to_value(journal()).unwrap();
        newer["format"] = 99.into();
        let mut bad_ns = journal();
        bad_ns.owner.pid_ns = Some("pid:[1]\n".into());
        let mut bad_boot = journal();
        bad_boot.owner.boot_id = Some("x".repeat(5000));
        let part_size = |size: u64| {
            let mut j = journal();
            j.tarball.part_size = size;
            j.to_bytes().to_vec()
        };
        for bytes in [
            part_size(0),
            part_size(4 << 20),
            part_size((5 << 20) + 1),
            part_size(513 << 20),
            part_size(u64::MAX),
            bad_ns.to_bytes().to_vec(),
            bad_boot.to_bytes().to_vec(),
            forged.to_bytes().to_vec(),
            wrong_body.to_bytes().to_vec(),
            serde_json::to_vec(&newer).unwrap(),
            b"{not json".to_vec(),
        ] {
            assert_eq!(
                Journal::parse(DEFAULT_PREFIX, &key, &bytes)
                    .unwrap_err()
                    .kind,
                ErrorKind::Journal
            );
        }
        for size in [5 << 20, 512 << 20] {
            assert!(Journal::parse(DEFAULT_PREFIX, &key, &part_size(size)).is_ok());
        }
        // An older alitx's owner, without pid namespace and boot id.
        let mut older = serde_json::to_value(journal()).unwrap();
        let owner = older["owner"].as_object_mut().unwrap();
        owner.remove("pid_ns");
        owner.remove("boot_id");
        let parsed = Journal::parse(DEFAULT_PREFIX, &key, &serde_json::to_vec(&older).unwrap());
        assert_eq!(parsed.unwrap().owner.pid_ns, None);
        let elsewhere = ".alitx/journals/a/q-v-1.json";
        assert!(Journal::parse(DEFAULT_PREFIX, elsewhere, &journal().to_bytes()).is_err());
    }
}
