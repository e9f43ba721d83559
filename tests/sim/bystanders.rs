//! The store's other writers and readers, as ALICE runs them beside
//! aliBuild and alitx: the clean-up, the manifest cron job, the CVMFS
//! publisher, and a build's fetch. The readers check what they see
//! against the invariants, as it is seen.

use super::*;

/// ALICE's clean-up: every store tarball older than the age goes, its
/// links stay (the revision is retired, its number reserved). It runs
/// months after an upload, when no journal of its revision is left (every
/// build starts with `alitx resume`): here, a delete that lands while the
/// revision has a journal is not applied, as months would have let the
/// journal finish first. (A journal whose owner died right after
/// publishing, before its bookkeeping, and whose tarball is then cleaned
/// up, looks like an upload killed before publishing: its resume would
/// roll it back.)
pub(super) async fn clean_up(store: &SimStore) -> Fate {
    let listing = match store.list_dir(&format!("TARS/{ARCH}/store/"), true).await {
        Ok(listing) => listing,
        Err(e) => return failed(e),
    };
    let now = machine::current().now_secs();
    let (_, revision, _) = &work_dirs().builds[0];
    let journal = alitx::journal::Journal::key_of(alitx::journal::DEFAULT_PREFIX, revision);
    let mut deleted = 0;
    for object in listing.objects {
        if object
            .last_modified
            .is_some_and(|at| now - at >= AGE.as_secs() as i64)
        {
            let journal = journal.clone();
            let gone = store
                .request("DELETE", move |w, who| {
                    let old = !w.objects.contains_key(&journal);
                    if old && w.objects.remove(&object.key).is_some() {
                        w.wrote(who, "delete", &object.key);
                    }
                    Ok(old)
                })
                .await;
            match gone {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => return failed(e),
            }
        }
    }
    Fate::Done(format!("clean-up deleted {deleted} tarballs"))
}

/// The manifest cron job: a line `<name>\t<body>` appended for every
/// package link listed that the manifest lacks, whether or not its tarball
/// exists; read, modified and put back without a lock.
pub(super) async fn write_manifest(store: &dyn Store) -> Fate {
    let key = format!("TARS/{ARCH}/pkg.manifest");
    let mut manifest = match store.get(&key).await {
        Ok(body) => body
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        Err(e) => return failed(e),
    };
    let listing = match store.list_dir(&format!("TARS/{ARCH}/pkg/"), false).await {
        Ok(listing) => listing,
        Err(e) => return failed(e),
    };
    let mut added = 0;
    for object in listing.objects {
        let name = object.key.rsplit('/').next().unwrap_or_default();
        if manifest.lines().any(|l| l.split('\t').next() == Some(name)) {
            continue;
        }
        match store.get(&object.key).await {
            Ok(Some(body)) => {
                let body = String::from_utf8_lossy(&body);
                let _ = writeln!(manifest, "{name}\t{}", body.trim_end());
                added += 1;
            }
            Ok(None) => {}
            Err(e) => return failed(e),
        }
    }
    if added > 0 {
        let written = store
            .put(&key, manifest.into(), &Metadata::new(), PutMode::Overwrite)
            .await;
        if let Err(e) = written {
            return failed(e);
        }
    }
    Fate::Done(format!("manifest: {added} lines added"))
}

/// The CVMFS publisher: finds the revision through its own link in
/// `dist-direct`, and once the tarball that link names exists, reads every
/// link of the revision. One missing then, unless a clean-up or an
/// unpublish removed the tarball meanwhile, breaks invariant 1 as a reader
/// sees it.
pub(super) async fn publish_to_cvmfs(store: &dyn Store, world: &Arc<Mutex<World>>) -> Fate {
    let from = world.lock().unwrap().now_ms();
    let (_, revision, _) = &work_dirs().builds[0];
    let own = format!(
        "{}{}",
        revision.dist_prefix("dist-direct"),
        revision.store_key().rsplit('/').next().unwrap_or_default()
    );
    let body = match store.get(&own).await {
        Ok(Some(body)) => body,
        Ok(None) => return Fate::Done("publisher: nothing to publish".into()),
        Err(e) => return failed(e),
    };
    let named = String::from_utf8_lossy(&body);
    let Some(build) = work_dirs()
        .builds
        .iter()
        .map(|(_, _, b)| b)
        .find(|b| named.trim_end().ends_with(&b.tarball_key))
    else {
        return Fate::Done("publisher: an unknown tarball".into());
    };
    match store.head(&build.tarball_key).await {
        Ok(Some(_)) => {}
        Ok(None) => return Fate::Done("publisher: not published yet".into()),
        Err(e) => return failed(e),
    }
    let mut missing = Vec::new();
    for link in &build.links {
        match store.get(&link.key).await {
            Ok(Some(body)) if body == link.body.as_bytes() => {}
            Ok(_) => missing.push(link.key.clone()),
            Err(e) => return failed(e),
        }
    }
    let mut w = world.lock().unwrap();
    let excused =
        w.stock_published.contains(&build.tarball_key) || w.removed_since(&build.tarball_key, from);
    if missing.is_empty() || excused {
        return Fate::Done(format!("publisher: published {}", build.hash));
    }
    let message = format!(
        "the publisher saw the tarball of {} and then not {} of its links",
        build.hash,
        missing.len()
    );
    let mut keys = vec![build.tarball_key.clone()];
    keys.extend(missing);
    w.violation(1, message, keys);
    Fate::Done("publisher: links missing".into())
}

/// A build's fetch of the package, either hash, into a work dir of its
/// own: a tarball it calls corrupt (not what its record says) breaks
/// invariant 5 as a reader sees it, and stops a build.
pub(super) async fn fetch(store: Arc<SimStore>, world: &Arc<Mutex<World>>) -> Fate {
    let work_dir = tempfile::tempdir().unwrap();
    let hashes = work_dirs()
        .builds
        .iter()
        .map(|(_, _, b)| b.hash.clone())
        .collect();
    let wanted = vec![alitx::fetch::Wanted {
        package: "pkg".into(),
        hashes,
    }];
    let options = alitx::fetch::FetchOptions::new("b3://sim", work_dir.path().into(), ARCH);
    let report = match alitx::fetch::fetch(store, wanted, &options).await {
        Ok(report) => report,
        Err(e) => return failed(e),
    };
    for package in &report.packages {
        if package.state == alitx::fetch::State::Corrupt {
            let message = format!(
                "a fetch found the store's tarball corrupt: {:?}",
                package.reasons
            );
            let keys = work_dirs()
                .builds
                .iter()
                .map(|(_, _, b)| b.tarball_key.clone())
                .collect();
            world.lock().unwrap().violation(5, message, keys);
        }
    }
    let states: Vec<_> = report.packages.iter().map(|p| p.state).collect();
    Fate::Done(format!("fetch: {states:?}"))
}
