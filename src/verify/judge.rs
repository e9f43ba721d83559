//! The verdict on one revision: its package link, record, tarball and own
//! dist links, each checked against the others.

use tracing::warn;

use super::read::Reader;
use super::select::{read_record, Candidate};
use super::{Class, Damaged, RevisionReport};
use crate::error::{ErrorKind, Result};
use crate::journal::SHA256_METADATA;
use crate::layout::{self, LinkKind, Revision, DIST_DIRS};
use crate::record::{self, LinksDigest, Record};
use crate::storage::{get_small, md5_hex, Small};

impl Reader {
    /// `record`, unless it is of another build than the one the package
    /// link names: its hash's tarball gone, the linked one there (the
    /// revision was unpublished, a late record of it came back, another
    /// hash took the number). That says nothing about the linked tarball,
    /// which is then judged as one without a record.
    async fn unless_of_another_build(
        &self,
        record: Record,
        candidate: &Candidate,
        linked: &str,
    ) -> Result<Option<Record>> {
        let linked_key =
            layout::store_key(&candidate.architecture, linked, &candidate.tarball_name());
        let (theirs, ours) =
            tokio::join!(self.store.head(&record.key), self.store.head(&linked_key));
        if theirs?.is_some() || ours?.is_none() {
            return Ok(Some(record));
        }
        warn!(
            "the publication record of {} names hash {}, whose tarball is gone, not {linked}, the hash its package link names: \
             a record of an earlier build, not checked against",
            candidate.id(),
            record.revision.hash
        );
        Ok(None)
    }

    /// The verdict on one revision; `None` if it is not published.
    pub(super) async fn verify_revision(&self, candidate: Candidate) -> Option<RevisionReport> {
        let mut report = RevisionReport {
            id: candidate.id(),
            architecture: candidate.architecture.clone(),
            package: candidate.package.clone(),
            version: candidate.version.clone(),
            revision: candidate.revision.clone(),
            hash: None,
            class: Class::Corrupt,
            reasons: Vec::new(),
            tarball: None,
            size: None,
            sha256: None,
            entries: None,
            record: None,
            damaged: Damaged::default(),
        };
        match self.check(&candidate, &mut report).await {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) if matches!(e.kind, ErrorKind::Store | ErrorKind::Io) => {
                report.reasons.push(e.message);
                report.class = Class::Unreadable;
                return Some(report);
            }
            Err(e) => {
                report.reasons.push(e.message);
                report.damaged.links = true;
            }
        }
        report.class = if !report.reasons.is_empty() {
            Class::Corrupt
        } else if report.record.is_some() {
            Class::Verified
        } else {
            Class::NoRecord
        };
        Some(report)
    }

    /// Fill in `report`, pushing every reason the revision is corrupt; an
    /// error when the store could not be read. `Ok(false)` when the
    /// revision is not published.
    async fn check(&self, candidate: &Candidate, report: &mut RevisionReport) -> Result<bool> {
        let store = &*self.store;
        let arch = &candidate.architecture;
        let link_key = format!(
            "TARS/{arch}/{}/{}",
            candidate.package,
            candidate.tarball_name()
        );
        let record_key = record::key_for(arch, &candidate.full_version());
        let (link_body, record) = tokio::join!(
            async {
                match candidate.has_package_link {
                    true => get_small(store, &link_key, Small::Link).await,
                    false => Ok(None),
                }
            },
            async {
                match &candidate.orphan_record {
                    Some(parsed) => Ok(Some(parsed.clone())),
                    None => read_record(store, &record_key).await,
                }
            }
        );
        let (link_body, record) = (link_body?, record?);
        let record = match record {
            Some(Ok(record)) => Some(record),
            Some(Err(why)) => {
                report.reasons.push(why);
                report.damaged.record = true;
                None
            }
            None => None,
        };

        // The hash: the record's, else the package link's.
        let linked_hash = link_body
            .as_deref()
            .and_then(|body| hash_named_by(arch, &candidate.tarball_name(), body));
        let record = match (record, &linked_hash) {
            (Some(record), Some(linked)) if record.revision.hash != *linked => {
                self.unless_of_another_build(record, candidate, linked)
                    .await?
            }
            (record, _) => record,
        };
        let link_problem = match (&link_body, &linked_hash, &record) {
            (None, _, Some(_)) => Some(format!("its package link {link_key} is missing")),
            (Some(body), None, _) => Some(format!(
                "its package link {link_key} does not name a store tarball of this revision (it says {:?})",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            (Some(_), Some(linked), Some(record)) if *linked != record.revision.hash => {
                Some(format!(
                    "its package link names hash {linked}, its publication record hash {}",
                    record.revision.hash
                ))
            }
            _ => None,
        };
        if let Some(problem) = link_problem {
            report.reasons.push(problem);
            report.damaged.links = true;
        }
        let Some(hash) = record
            .as_ref()
            .map(|r| r.revision.hash.clone())
            .or(linked_hash)
        else {
            // Nothing says which tarball: corrupt if the package link
            // exists (said above), else gone since the listing.
            return Ok(!report.reasons.is_empty());
        };
        let revision = Revision::new(
            arch,
            &candidate.package,
            &candidate.version,
            &candidate.revision,
            &hash,
        )?;
        report.hash = Some(hash);
        report.record = record.clone();
        let store_key = revision.store_key();
        report.tarball = Some(store_key.clone());

        let Some(info) = store.head(&store_key).await? else {
            if record.is_none() && report.reasons.is_empty() {
                return Ok(false);
            }
            report
                .reasons
                .push(format!("its store tarball {store_key} is missing"));
            report.damaged.tarball = true;
            return Ok(true);
        };
        // aliBuild follows a store object that redirects to another key.
        let source = match info
            .website_redirect
            .as_deref()
            .map(|r| r.trim_start_matches('/'))
        {
            Some(target) if layout::redirect_key(target).is_some() => self
                .store
                .head(target)
                .await?
                .map(|i| (target.to_string(), i.size)),
            Some(target) => {
                report.reasons.push(format!(
                    "its store tarball redirects to {target:?}, not a key of this store"
                ));
                report.damaged.tarball = true;
                return Ok(true);
            }
            None => Some((store_key.clone(), info.size)),
        };
        let Some((source, size)) = source else {
            report
                .reasons
                .push("its store tarball redirects to a key that does not exist".into());
            report.damaged.tarball = true;
            return Ok(true);
        };
        report.size = Some(size);
        self.bar.inc_length(size);
        let (read, link_problems) = tokio::join!(
            // One priority for every revision: first come, first served.
            self.read_tarball(0, &source, size, &revision, None),
            self.check_links(&revision, &link_key, link_body.is_some(), record.as_ref())
        );
        let (read, link_problems) = (read?, link_problems?);
        report.sha256 = read.sha256.clone();
        if let Some(record) = &record {
            let mut differs = false;
            if record.size != size {
                differs = true;
                report.reasons.push(format!(
                    "the store tarball has {size} bytes, its publication record {}",
                    record.size
                ));
            }
            if let Some(sha256) = read.sha256.as_ref().filter(|s| **s != record.sha256) {
                differs = true;
                report.reasons.push(format!(
                    "the store tarball's SHA-256 is {sha256}, its publication record's {} \
                     (published by transaction {} on {} at {})",
                    record.sha256, record.txn, record.owner.host, record.published_at
                ));
            }
            // The bytes read are those the tarball was uploaded with (its
            // own SHA-256 metadata says so): the record is what is wrong.
            let intact =
                read.sha256.is_some() && info.metadata.get(SHA256_METADATA) == read.sha256.as_ref();
            match differs && intact {
                true => report.damaged.record = true,
                false => report.damaged.tarball |= differs,
            }
        }
        match read.verdict {
            Ok(entries) => report.entries = Some(entries),
            Err(e) => {
                report
                    .reasons
                    .push(format!("the store tarball: {}", e.message));
                report.damaged.tarball = true;
            }
        }
        report.damaged.links |= !link_problems.is_empty();
        report.reasons.extend(link_problems);
        Ok(true)
    }

    /// Why its links are wrong, if they are: its own link in each dist
    /// directory must name the tarball, and its links be the ones published.
    async fn check_links(
        &self,
        revision: &Revision,
        link_key: &str,
        has_package_link: bool,
        record: Option<&Record>,
    ) -> Result<Vec<String>> {
        let store_key = revision.store_key();
        let own_body_md5 = md5_hex(store_key.as_bytes());
        let mut reasons = Vec::new();
        let mut keys: Vec<String> = has_package_link
            .then(|| link_key.to_string())
            .into_iter()
            .collect();
        let listings = futures::future::try_join_all(DIST_DIRS.map(|dir| {
            let prefix = revision.dist_prefix(dir);
            async move { self.store.list_dir(&prefix, false).await }
        }))
        .await?;
        for (dir, listing) in DIST_DIRS.iter().zip(listings) {
            let own = revision.dist_link(dir, &store_key)?;
            match listing.objects.iter().find(|o| o.key == own.key) {
                None => reasons.push(format!("its own {dir} link {} is missing", own.key)),
                Some(found) => {
                    // Read unless the listed MD5 is that of the exact body.
                    let names_it = found.md5.as_deref() == Some(&own_body_md5) || {
                        let body = get_small(&*self.store, &own.key, Small::Link)
                            .await?
                            .unwrap_or_default();
                        layout::link_target(&revision.architecture, LinkKind::Dist, &body)
                            .is_some_and(|target| target == store_key)
                    };
                    if !names_it {
                        reasons.push(format!(
                            "its own {dir} link {} does not name {store_key}",
                            own.key
                        ));
                    }
                }
            }
            keys.extend(listing.objects.into_iter().map(|o| o.key));
        }
        if let Some(record) = record {
            let now = LinksDigest::of(keys.iter().map(String::as_str));
            if now != record.links {
                reasons.push(format!(
                    "its links are not the ones published ({} now, {} when published)",
                    now.count, record.links.count
                ));
            }
        }
        Ok(reasons)
    }
}

/// The hash a package link body names, read as aliBuild's readers read
/// it, if it names a store tarball called `tarball`.
fn hash_named_by(arch: &str, tarball: &str, body: &[u8]) -> Option<String> {
    let key = layout::link_target(arch, LinkKind::Package, body)?;
    let (_, hash, name) = layout::parse_store_key(arch, &key).ok()?;
    (name == tarball).then(|| hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_from_package_link_bodies() {
        let arch = "slc9_x86-64";
        let hash = "5b82364561d097dcbef08ccc08bb1f4cf4de725c";
        let body = format!("{arch}/store/5b/{hash}/zlib-v1-1.{arch}.tar.gz");
        let tarball = format!("zlib-v1-1.{arch}.tar.gz");
        for accepted in [body.clone(), format!("../../{body}\n")] {
            assert_eq!(
                hash_named_by(arch, &tarball, accepted.as_bytes()),
                Some(hash.into())
            );
        }
        assert_eq!(
            hash_named_by(arch, "other-v1-1.tar.gz", body.as_bytes()),
            None
        );
        assert_eq!(hash_named_by(arch, &tarball, b"../../etc/passwd"), None);
    }
}
