//! The publication record: a small JSON object alitx leaves outside `TARS/`
//! when a transaction commits, at `.alitx/published/<arch>/<pkg>-<ver>-<rev>.json`.
//! It says what was published (the store tarball's key, size and SHA-256,
//! and a digest of the revision's link keys), by which transaction, by whom
//! and when. `alitx verify` and the aliBuild helper's fetch check a store
//! tarball against it; stock readers never list it.
//!
//! A record read back from the store is untrusted input: [`parse`] checks
//! that it describes the revision whose key it is stored at, and that every
//! field has the shape alitx writes.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::failpoint::failpoint;
use crate::journal::{Journal, SHA256_METADATA, TXN_METADATA};
use crate::layout::Revision;
use crate::storage::{get_small, Created, ObjectInfo, PutMode, Small, Store};

/// Bump when the format changes incompatibly; readers refuse versions they
/// do not know instead of guessing.
pub const FORMAT: u32 = 1;

/// Where records live: outside `TARS/`, beside the journals.
pub const PREFIX: &str = ".alitx/published/";

/// User metadata of a record holding the tarball's size (beside its
/// SHA-256 in `alitx-sha256`): the aliBuild helper checks a fetch with
/// one HEAD of the record.
pub const SIZE_METADATA: &str = "alitx-size";

/// A record is a few hundred bytes; anything much larger is not one.
pub const MAX_SIZE: u64 = Small::Record.limit();

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub revision: Revision,
    /// The store tarball: `TARS/<arch>/store/<h2>/<hash>/<tarball>`.
    pub key: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the tarball's bytes.
    pub sha256: String,
    /// The transaction that published it (also on every object it wrote).
    pub txn: String,
    /// Who published it.
    pub owner: Publisher,
    /// Unix seconds when the record was written, right after publishing.
    pub published_at: i64,
    pub links: LinksDigest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    pub host: String,
    /// `alitx <version>`.
    pub tool: String,
}

/// The revision's link keys (package link and dist links), as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksDigest {
    pub count: usize,
    /// SHA-256 of the sorted keys, each followed by `\n`.
    pub keys_sha256: String,
}

impl LinksDigest {
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys: Vec<&str> = keys.into_iter().collect();
        keys.sort_unstable();
        let mut sha = Sha256::new();
        for key in &keys {
            sha.update(key.as_bytes());
            sha.update(b"\n");
        }
        LinksDigest {
            count: keys.len(),
            keys_sha256: hex::encode(sha.finalize()),
        }
    }
}

/// `.alitx/published/<arch>/<pkg>-<ver>-<rev>.json`
pub fn key_of(revision: &Revision) -> String {
    key_for(&revision.architecture, &revision.full_version())
}

/// The record key of `<pkg>-<ver>-<rev>` (`full_version`) in `architecture`.
pub fn key_for(architecture: &str, full_version: &str) -> String {
    format!("{PREFIX}{architecture}/{full_version}.json")
}

impl Record {
    /// The record of `journal`'s transaction, whose tarball was published
    /// with the SHA-256 `sha256`.
    pub fn of(journal: &Journal, sha256: &str) -> Self {
        Record {
            format: FORMAT,
            revision: journal.revision.clone(),
            key: journal.tarball.key.clone(),
            size: journal.tarball.size,
            sha256: sha256.to_string(),
            txn: journal.txn.clone(),
            owner: Publisher {
                host: journal.owner.host.clone(),
                tool: journal.owner.tool.clone(),
            },
            published_at: crate::now_secs(),
            links: LinksDigest::of(journal.links().map(|l| l.key.as_str())),
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        serde_json::to_vec_pretty(self)
            .expect("record serialises")
            .into()
    }

    /// Whether `other` records the same publication: same transaction, same
    /// bytes. Only the time it was written may differ.
    fn same_publication(&self, other: &Record) -> bool {
        (&self.txn, &self.key, self.size, &self.sha256)
            == (&other.txn, &other.key, other.size, &other.sha256)
    }
}

/// What vouches for the tarball a record is to describe.
#[derive(Debug, Clone, Copy)]
pub enum Evidence<'a> {
    /// This process published it in this transaction, from bytes it
    /// verified against the journal.
    PublishedHere,
    /// What the store holds at the tarball's key (`None`: nothing). A
    /// journal read back is a claim until that tarball agrees with it.
    Found(Option<&'a ObjectInfo>),
}

/// How the store's tarball contradicts the journal that claims it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contradiction {
    Absent,
    /// It carries no transaction id, or another one.
    OtherTransaction,
    Size {
        journal: u64,
        store: u64,
    },
    Sha256 {
        journal: String,
        store: String,
    },
}

impl fmt::Display for Contradiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contradiction::Absent => write!(f, "the store holds no tarball there"),
            Contradiction::OtherTransaction => {
                write!(f, "the tarball there was not written by its transaction")
            }
            Contradiction::Size { journal, store } => write!(
                f,
                "the tarball there holds {store} bytes, the journal says {journal}"
            ),
            Contradiction::Sha256 { journal, store } => write!(
                f,
                "the tarball there has the SHA-256 {store}, the journal says {journal}"
            ),
        }
    }
}

/// Why `tarball` is not the one `journal`'s transaction published with the
/// SHA-256 `sha256`, if it is not: the one it published carries the
/// transaction's id and the journal's size, and the same SHA-256 where the
/// store object has one.
pub fn contradiction(
    journal: &Journal,
    sha256: &str,
    tarball: Option<&ObjectInfo>,
) -> Option<Contradiction> {
    let Some(tarball) = tarball else {
        return Some(Contradiction::Absent);
    };
    if tarball.metadata.get(TXN_METADATA) != Some(&journal.txn) {
        return Some(Contradiction::OtherTransaction);
    }
    if tarball.size != journal.tarball.size {
        return Some(Contradiction::Size {
            journal: journal.tarball.size,
            store: tarball.size,
        });
    }
    match tarball.metadata.get(SHA256_METADATA) {
        Some(store) if store != sha256 => Some(Contradiction::Sha256 {
            journal: sha256.to_string(),
            store: store.clone(),
        }),
        _ => None,
    }
}

/// Leave the record of `journal`'s transaction, whose tarball is published
/// with the SHA-256 `sha256`, unless `evidence` contradicts the journal:
/// then no record is written, with a warning. Created with put-if-absent: a record of the
/// same publication already there (a retried request, an earlier roll
/// forward of the same transaction) is success. A record of anything else
/// is stale: it describes a revision that was removed from the store and
/// has now been published again (its tarball, just published, carries this
/// transaction's id). It is replaced, with a warning naming both, since
/// every fetch of the revision is checked against it.
pub async fn write(
    store: &dyn Store,
    journal: &Journal,
    sha256: &str,
    evidence: Evidence<'_>,
) -> Result<()> {
    if let Evidence::Found(tarball) = evidence {
        if let Some(why) = contradiction(journal, sha256, tarball) {
            warn!(
                "{}: {why}: the journal {} claims what the store does not bear out; \
                 no publication record written",
                journal.tarball.key,
                journal.id()
            );
            return Ok(());
        }
    }
    let record = Record::of(journal, sha256);
    let key = key_of(&journal.revision);
    let mut metadata = journal.object_metadata();
    // What a fetch checks, readable by a HEAD without the body.
    metadata.insert(SHA256_METADATA.into(), record.sha256.clone());
    metadata.insert(SIZE_METADATA.into(), record.size.to_string());
    let created = store
        .put(&key, record.to_bytes(), &metadata, PutMode::Create)
        .await?;
    if created == Created::AlreadyExists {
        match read_key(store, &key).await {
            Ok(Some(existing)) if existing.same_publication(&record) => {
                debug!("{key} already records this publication");
            }
            found => {
                let what = match found {
                    Ok(Some(other)) => format!(
                        "transaction {} (SHA-256 {}, published at {} by {})",
                        other.txn, other.sha256, other.published_at, other.owner.host
                    ),
                    Ok(None) => "an object deleted meanwhile".into(),
                    Err(e) => format!("something unreadable ({e})"),
                };
                warn!(
                    "{key} recorded {what}, not this publication (transaction {}): replacing it",
                    journal.txn
                );
                store
                    .put(&key, record.to_bytes(), &metadata, PutMode::Overwrite)
                    .await?;
            }
        }
    }
    debug!("publication record {key} written");
    failpoint("after-record");
    Ok(())
}

/// The record of the revision `<arch>/<pkg>-<ver>-<rev>` (its hash is not
/// part of the key: compare it), if there is one; an error if there is one
/// that cannot be trusted (kind `Verification`, saying why).
pub async fn read(store: &dyn Store, revision: &Revision) -> Result<Option<Record>> {
    read_key(store, &key_of(revision)).await
}

/// [`read`] by the record's key.
pub async fn read_key(store: &dyn Store, key: &str) -> Result<Option<Record>> {
    match get_small(store, key, Small::Record).await? {
        Some(body) => parse(key, &body).map(Some),
        None => Ok(None),
    }
}

/// Parse and validate the record read from `key`.
pub fn parse(key: &str, bytes: &[u8]) -> Result<Record> {
    let bad = |why: String| {
        Error::verification(format!(
            "the publication record {key} cannot be trusted: {why}"
        ))
    };
    if bytes.len() as u64 > MAX_SIZE {
        return Err(bad(format!("it is larger than {MAX_SIZE} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("it is not valid JSON ({e})")))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == FORMAT as u64 => {}
        Some(f) => {
            return Err(bad(format!(
                "unknown format version {f} (this alitx reads version {FORMAT}); use a newer alitx"
            )))
        }
        None => return Err(bad("it has no format version".into())),
    }
    let record: Record = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let described = record.revision.validated().map_err(|e| bad(e.message))?;
    if key != key_of(&described) {
        return Err(bad(format!(
            "it describes {}, another revision",
            Journal::id_of(&described)
        )));
    }
    if record.key != described.store_key() {
        return Err(bad(format!(
            "its tarball key {} is not the revision's",
            record.key
        )));
    }
    let hex64 =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex64(&record.sha256) || !hex64(&record.links.keys_sha256) {
        return Err(bad("a SHA-256 in it is not 64 lowercase hex digits".into()));
    }
    let printable = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if !printable(&record.txn) || !printable(&record.owner.host) || !printable(&record.owner.tool) {
        return Err(bad(
            "its transaction id or owner is empty, too long or holds control characters".into(),
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        crate::journal::test_journal()
    }

    #[test]
    fn round_trips_at_its_revision_key() {
        let j = journal();
        let record = Record::of(&j, &"0a".repeat(32));
        let key = key_of(&j.revision);
        assert_eq!(key, ".alitx/published/a/p-v-1.json");
        assert_eq!(record.key, j.revision.store_key());
        assert_eq!((record.size, record.txn.as_str()), (10, "t1"));
        assert_eq!(record.links.count, 2);
        let parsed = parse(&key, &record.to_bytes()).unwrap();
        assert_eq!(parsed, record);
        assert_eq!(
            LinksDigest::of(["b", "a"]),
            LinksDigest::of(["a", "b"]),
            "the digest does not depend on the order"
        );
    }

    #[test]
    fn a_record_is_written_only_for_the_tarball_its_journal_describes() {
        let j = journal();
        let sha = "0a".repeat(32);
        let tarball = |txn: Option<&str>, size: u64, sha256: Option<&str>| ObjectInfo {
            size,
            metadata: txn
                .map(|t| (TXN_METADATA.to_string(), t.to_string()))
                .into_iter()
                .chain(sha256.map(|s| (SHA256_METADATA.to_string(), s.to_string())))
                .collect(),
            website_redirect: None,
        };
        let other_sha = "0b".repeat(32);
        let cases = [
            (Some(tarball(Some("t1"), 10, Some(&sha))), None),
            (Some(tarball(Some("t1"), 10, None)), None),
            (None, Some(Contradiction::Absent)),
            (
                Some(tarball(None, 10, Some(&sha))),
                Some(Contradiction::OtherTransaction),
            ),
            (
                Some(tarball(Some("t2"), 10, Some(&sha))),
                Some(Contradiction::OtherTransaction),
            ),
            (
                Some(tarball(Some("t1"), 11, Some(&sha))),
                Some(Contradiction::Size {
                    journal: 10,
                    store: 11,
                }),
            ),
            (
                Some(tarball(Some("t1"), 10, Some(&other_sha))),
                Some(Contradiction::Sha256 {
                    journal: sha.clone(),
                    store: other_sha.clone(),
                }),
            ),
        ];
        for (found, expected) in cases {
            assert_eq!(
                contradiction(&j, &sha, found.as_ref()),
                expected,
                "{found:?}"
            );
        }
    }

    #[test]
    fn refuses_forged_and_foreign_records() {
        let j = journal();
        let key = key_of(&j.revision);
        let good = serde_json::to_value(Record::of(&j, &"0a".repeat(32))).unwrap();
        let forged = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut value = good.clone();
            change(&mut value);
            serde_json::to_vec(&value).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("not json", b"{not json".to_vec()),
            ("newer format", forged(&|v| v["format"] = 99.into())),
            (
                "no format",
                forged(&|v| v["format"] = serde_json::Value::Null),
            ),
            (
                "another revision",
                forged(&|v| v["revision"]["revision"] = "2".into()),
            ),
            (
                "another tarball",
                forged(&|v| v["key"] = "TARS/a/store/00/x/p-v-1.a.tar.gz".into()),
            ),
            ("short sha", forged(&|v| v["sha256"] = "abc".into())),
            (
                "upper-case sha",
                forged(&|v| v["sha256"] = "0A".repeat(32).into()),
            ),
            (
                "bad name",
                forged(&|v| v["revision"]["package"] = "../x".into()),
            ),
            (
                "control",
                forged(&|v| v["owner"]["host"] = "a\u{1b}[2J".into()),
            ),
            ("empty txn", forged(&|v| v["txn"] = "".into())),
            ("huge", vec![b' '; MAX_SIZE as usize + 1]),
        ];
        for (what, bytes) in cases {
            let err = parse(&key, &bytes)
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert_eq!(err.kind, crate::error::ErrorKind::Verification, "{what}");
            assert!(err.message.contains(&key), "{what}: {err}");
        }
        let elsewhere = ".alitx/published/a/q-v-1.json";
        assert!(parse(elsewhere, &serde_json::to_vec(&good).unwrap()).is_err());
    }
}
