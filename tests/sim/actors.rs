//! What a simulated process runs: the product's commands, as `src/cli`
//! calls them, and the other writers of the store.

use super::*;

/// The two builds of the revision, each in a work dir of its own: the
/// same package, version and revision, two hashes.
pub(super) struct WorkDirs {
    pub(super) _dir: tempfile::TempDir,
    pub(super) builds: Vec<(PathBuf, Revision, Build)>,
}

pub(super) fn work_dirs() -> &'static WorkDirs {
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
pub(super) fn write_work_dir(root: &Path, revision: &Revision) {
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

/// How an actor's command ended, as its exit code and report tell.
#[derive(Debug)]
pub(super) enum Fate {
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

pub(super) fn failed(e: Error) -> Fate {
    match e.exit_code() {
        3 => Fate::Conflict(e.message),
        code => Fate::Failed(code, e.message),
    }
}

pub(super) fn options() -> Options {
    Options {
        lease: LEASE,
        adopt_after: AGE,
        ..Options::default()
    }
}

/// The product's own command, called as `src/cli` calls it, or another
/// of the store's writers and readers (`bystanders`).
pub(super) async fn act(
    actor: Actor,
    store: Arc<SimStore>,
    build: usize,
    min_age: Duration,
) -> Fate {
    let (dir, revision, _) = &work_dirs().builds[build];
    let world = store.world.clone();
    let options = options();
    let force = matches!(actor, Actor::ResumeForce | Actor::RollbackForce);
    let selection = Selection {
        ids: &[],
        architecture: None,
        force,
    };
    let local = || alitx::workdir::read_revision(dir, revision.clone()).unwrap();
    match actor {
        Actor::Upload | Actor::Conflicting => {
            upload_fate(txn::upload(store, local(), &options).await)
        }
        Actor::Serve => serve(store, local()).await,
        Actor::Stock => stock_upload(&*store, build).await,
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
        Actor::Repair | Actor::Check | Actor::Unpublish => {
            let found = match alitx::check::scan(&*store, &scan_options(min_age)).await {
                Ok(found) => found,
                Err(e) => return failed(e),
            };
            let report = match actor {
                Actor::Check => return Fate::Done(format!("check clean: {}", found.clean)),
                Actor::Unpublish => {
                    let target = alitx::repair::Unpublish {
                        package: revision.package.clone(),
                        version: revision.version.clone(),
                        revision: revision.revision.clone(),
                        ignore_dependents: false,
                        concurrency: 8,
                    };
                    alitx::repair::unpublish(store, found, &target, &options, false).await
                }
                _ => alitx::repair::repair(store, found, &options, false, 8).await,
            };
            let report = match report {
                Ok(report) => report,
                Err(e) => return failed(e),
            };
            // As the command's exit status: 1 where an action failed.
            match report.first_failure() {
                Some(failure) => Fate::Failed(1, failure.message.clone()),
                None => Fate::Done(format!(
                    "{}: deleted {:?}, left over {}",
                    actor.name(),
                    report.deleted().len(),
                    report.left_over
                )),
            }
        }
        Actor::Cleanup => bystanders::clean_up(&store).await,
        Actor::Manifest => bystanders::write_manifest(&*store).await,
        Actor::Publisher => bystanders::publish_to_cvmfs(&*store, &world).await,
        Actor::Reader => bystanders::fetch(store, &world).await,
    }
}

fn upload_fate(uploaded: Result<txn::Report>) -> Fate {
    match uploaded {
        Ok(report) => match report.status {
            status @ (txn::Status::Committed | txn::Status::AlreadyPublished) => {
                Fate::Published(status)
            }
            other => Fate::Done(format!("{other:?}")),
        },
        Err(e) => failed(e),
    }
}

/// `serve-uploads` given the build's line: the upload is answered once
/// published, its bookkeeping goes on in the background; a failed one, or
/// one stopped by `--timeout` (its future dropped where it was), is
/// retried by the same process, as a build retries a line.
async fn serve(store: Arc<dyn Store>, local: alitx::workdir::LocalRevision) -> Fate {
    let finishers = txn::Finishers::default();
    let options = Options {
        bookkeeping: txn::Bookkeeping::Background(finishers.clone()),
        ..options()
    };
    let journal = alitx::journal::Journal::key_of(&options.journal_prefix, &local.revision);
    let mut fate = Fate::Done("no line served".into());
    for _ in 0..2 {
        finishers.wait(Some(&journal)).await;
        let timeout = u64::from_str_radix(&machine::current().random_hex(1), 16).unwrap();
        let timeout = Duration::from_millis(500 + timeout * 100);
        let upload = txn::upload(store.clone(), local.clone(), &options);
        fate = match tokio::time::timeout(timeout, upload).await {
            Ok(uploaded) => upload_fate(uploaded),
            Err(_) => failed(Error::store("stopped after --timeout".to_string())),
        };
        if !matches!(fate, Fate::Failed(..)) {
            break;
        }
    }
    finishers.wait(None).await;
    fate
}

/// aliBuild's own upload: its links, then the tarball. It stops where
/// another build's link holds a key: the simulator does not blame alitx
/// for a stock upload that publishes over another build's links.
async fn stock_upload(store: &dyn Store, build: usize) -> Fate {
    let (dir, _, ours) = &work_dirs().builds[build];
    for link in &ours.links {
        match store.put_link_if_absent(link, &Metadata::new()).await {
            Ok(Created::Yes) => {}
            Ok(Created::AlreadyExists) => {
                let held = store.get(&link.key).await;
                if !matches!(held, Ok(Some(body)) if body == link.body.as_bytes()) {
                    return Fate::Done("stock upload stopped at another build's link".into());
                }
            }
            Err(e) => return failed(e),
        }
    }
    let body = std::fs::read(dir.join(&ours.tarball_key)).unwrap();
    let mode = PutMode::Overwrite;
    match store
        .put(&ours.tarball_key, body.into(), &Metadata::new(), mode)
        .await
    {
        Ok(_) => Fate::Done("stock upload".into()),
        Err(e) => failed(e),
    }
}

/// Put a lying journal of the revision where none is, well-formed (the
/// product refuses malformed ones, left for the operator): a committed one
/// of build 0 whose tarball digest and size are wrong, or a pending one of
/// build 1 (whose dependency links have build 0's bodies). Either carries
/// the transaction id a link of the revision carries, as a stale copy of a
/// real journal would. Its owner is this process, which ends at once: the
/// journal is abandoned.
pub(super) async fn forge_journal(store: &dyn Store) -> Fate {
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

pub(super) fn scan_options(min_age: Duration) -> alitx::check::ScanOptions {
    alitx::check::ScanOptions {
        architecture: None,
        package: None,
        journal_prefix: alitx::journal::DEFAULT_PREFIX.into(),
        min_age,
        stale_uploads_after: min_age,
        concurrency: 8,
    }
}

pub(super) fn outcomes_line(outcomes: &[recovery::Outcome]) -> String {
    outcomes
        .iter()
        .map(|o| format!("{}: {}", o.action, o.message))
        .collect::<Vec<_>>()
        .join("; ")
}
