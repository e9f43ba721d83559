//! A package's tarball: the first candidate hash the store has, read in
//! parallel ranges into a file beside its place in the work dir, checked as
//! it streams (against the publication record, and as a gzip'd tar of the
//! revision), renamed into place only when complete and checked.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::{Fetcher, PackageReport, State};
use crate::error::{Error, ErrorKind, Result};
use crate::failpoint::failpoint;
use crate::layout::{self, Revision};
use crate::record::{self, Record};

/// Why a tarball is refused: what the store holds is not what was
/// published, or not a tarball of the revision.
struct Corrupt(String);

impl From<Corrupt> for Error {
    fn from(Corrupt(why): Corrupt) -> Self {
        Error::verification(why)
    }
}

impl Fetcher {
    /// Fetch the tarball `report.hashes` names into `report` (its requests
    /// and memory served at `priority`); an error for a store or local
    /// failure.
    pub(super) async fn fetch_tarball(
        &self,
        priority: u64,
        report: &mut PackageReport,
    ) -> Result<()> {
        if report.hashes.is_empty() {
            report.state = State::LinksOnly;
            return Ok(());
        }
        let listings = futures::future::try_join_all(report.hashes.iter().map(|hash| {
            let dir = format!("TARS/{}/store/{}/{hash}/", self.architecture, &hash[..2]);
            async move {
                self.request(priority, self.store.list_dir(&dir, false))
                    .await
            }
        }))
        .await?;
        // aliBuild fetches the first object of the first candidate's directory.
        let Some((hash, key)) = report
            .hashes
            .iter()
            .zip(listings)
            .find_map(|(hash, listing)| Some((hash.clone(), listing.objects.first()?.key.clone())))
        else {
            report.state = State::NotInStore;
            return Ok(());
        };
        report.hash = Some(hash.clone());
        let name = key.rsplit('/').next().unwrap_or_default().to_string();
        let revision = layout::tarball_full_version(&self.architecture, &name)
            .and_then(|full| layout::split_full_version(&report.package, full))
            .map(|(version, rev)| {
                Revision::new(&self.architecture, &report.package, version, rev, &hash)
            })
            .unwrap_or_else(|| {
                Err(Error::input(format!(
                    "{key} is not a tarball of {}: cannot tell its revision",
                    report.package
                )))
            })?;
        let path = self.work_dir.join(&key);
        report.path = Some(key.clone());
        match self.place(priority, &revision, &key, &path, report).await {
            Err(e) if e.kind == ErrorKind::Verification => {
                report.state = State::Corrupt;
                report
                    .reasons
                    .push(self.refusal(&revision, &path, &e.message));
                report.corruption = Some(e.message);
                Ok(())
            }
            other => other,
        }
    }

    /// Read the store tarball at `key` into `path`, unless it is there
    /// already; a `Verification` error when the store's copy is refused.
    async fn place(
        &self,
        priority: u64,
        revision: &Revision,
        key: &str,
        path: &Path,
        report: &mut PackageReport,
    ) -> Result<()> {
        let (info, record) = tokio::join!(
            self.request(priority, self.store.head(key)),
            self.request(priority, record::read(&*self.store, revision))
        );
        let info = info?.ok_or_else(|| {
            Error::store(format!(
                "{key} was deleted while it was fetched; fetch again"
            ))
        })?;
        let record = match record {
            Err(e) if e.kind == ErrorKind::Verification => return Err(e),
            other => other?,
        };
        let record = record.filter(|record| describes(record, revision));
        // aliBuild reads a store object that redirects to another key there.
        let (source, size) = match info.website_redirect.as_deref() {
            None => (key.to_string(), info.size),
            Some(redirect) => {
                let target = layout::redirect_key(redirect).ok_or_else(|| {
                    Corrupt(format!(
                        "it redirects to {redirect:?}, not a key of this store"
                    ))
                })?;
                let found = self.request(priority, self.store.head(target)).await?;
                let found = found.ok_or_else(|| {
                    Corrupt(format!("it redirects to {target}, which does not exist"))
                })?;
                (target.to_string(), found.size)
            }
        };
        report.size = Some(size);
        if let Some(record) = &record {
            check_against(record, size, None)?;
        }
        if self.in_place(path, size, record.as_ref()).await? {
            report.state = State::Present;
            report.sha256 = record.map(|r| r.sha256);
            return Ok(());
        }
        let sha256 = self
            .download(priority, &source, size, revision, path, record.as_ref())
            .await?;
        report.state = State::Fetched;
        report.sha256 = Some(sha256);
        report.checked_against_record = Some(record.is_some());
        Ok(())
    }

    /// Whether `path` already holds the tarball: `size` bytes, and the
    /// record's SHA-256 when there is one.
    async fn in_place(&self, path: &Path, size: u64, record: Option<&Record>) -> Result<bool> {
        if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size) {
            return Ok(false);
        }
        let Some(record) = record else {
            return Ok(true);
        };
        let owned = path.to_path_buf();
        let sha256 = tokio::task::spawn_blocking(move || crate::tarball::sha256_of(&owned))
            .await
            .map_err(|e| Error::io("hashing task", std::io::Error::other(e)))??;
        Ok(sha256 == record.sha256)
    }

    /// Stream `source` into a file beside `path`, checked, then rename it
    /// into place; its SHA-256. Whatever fails, the file beside is removed.
    async fn download(
        &self,
        priority: u64,
        source: &str,
        size: u64,
        revision: &Revision,
        path: &Path,
        record: Option<&Record>,
    ) -> Result<String> {
        let beside = beside(path);
        let dir = path.parent().expect("a store path has a directory");
        let io = |what: &Path, e| Error::io(what.display(), e);
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let file = std::fs::File::create(&beside).map_err(|e| io(&beside, e))?;
        let copy = file.try_clone().map_err(|e| io(&beside, e))?;
        self.reader.bar.inc_length(size);
        let checked: Result<String> = async {
            let read = self
                .reader
                .read_tarball(priority, source, size, revision, Some(copy))
                .await?;
            // Bytes other than the published ones are said so first, as
            // `verify` says it, whatever the gzip+tar check found of them.
            if let (Some(record), Some(sha256)) = (record, &read.sha256) {
                check_against(record, size, Some(sha256))?;
            }
            read.verdict
                .map_err(|e| Corrupt(format!("the store tarball: {}", e.message)))?;
            let sha256 = read
                .sha256
                .ok_or_else(|| Error::store(format!("{source}: fewer bytes than its {size}")))?;
            file.sync_all().map_err(|e| io(&beside, e))?;
            failpoint(&format!("fetch-placing {}", revision.package));
            std::fs::rename(&beside, path).map_err(|e| io(path, e))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, e))?;
            Ok(sha256)
        }
        .await;
        if checked.is_err() {
            let _ = std::fs::remove_file(&beside);
        }
        checked
    }

    /// What fetch says of a refused tarball: the revision, why, and the
    /// commands that fix the store.
    fn refusal(&self, revision: &Revision, path: &Path, why: &str) -> String {
        let names = format!(
            "--remote-store {} --architecture {} --package {} --version {} --revision {}",
            self.remote_store,
            revision.architecture,
            revision.package,
            revision.version,
            revision.revision
        );
        format!(
            "the tarball of {}/{} in {} does not match what was published ({why}); nothing was \
             left at {}. The store holds a damaged copy: `alitx verify {names}` shows what is \
             wrong, `alitx repair {names} --unpublish` removes the revision, then build again",
            revision.architecture,
            revision.full_version(),
            self.store.describe(),
            path.display()
        )
    }
}

/// The download's name while it is written: hidden, and no `.tar.gz`, so
/// that neither aliBuild nor `fetch` takes it for a tarball.
fn beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.alitx-fetch"))
}

/// Whether `record` is of this build of `revision`: a record naming
/// another hash under its number (the revision was unpublished, a late
/// record of it came back, another build took the number) says nothing
/// about these bytes, which are then checked as a record-less tarball.
fn describes(record: &Record, revision: &Revision) -> bool {
    let ours = record.revision.hash == revision.hash;
    if !ours {
        warn!(
            "the publication record of {} names hash {}, not {}, the hash the store holds it under: \
             a record of an earlier build, not checked against",
            revision.full_version(),
            record.revision.hash,
            revision.hash
        );
    }
    ours
}

/// Refuse a tarball of `size` bytes (with `sha256`, once read) that is not
/// the one `record` describes.
fn check_against(
    record: &Record,
    size: u64,
    sha256: Option<&str>,
) -> std::result::Result<(), Corrupt> {
    if record.size != size {
        return Err(Corrupt(format!(
            "it has {size} bytes, its publication record {}",
            record.size
        )));
    }
    match sha256 {
        Some(sha256) if sha256 != record.sha256 => Err(Corrupt(format!(
            "its SHA-256 is {sha256}, its publication record's {}",
            record.sha256
        ))),
        _ => Ok(()),
    }
}
