//! Test support shared by the integration tests: stores to test against
//! (a temporary directory, and a fresh bucket on the real S3 server that
//! `scripts/test.sh` starts), aliBuild-like work dirs, and the CLI.
//!
//! S3 tests need `AWS_ENDPOINT_URL` and credentials in the environment (as
//! `scripts/test.sh` sets them). Without them they fail, so a run that
//! skipped S3 is never mistaken for a green one, unless `ALITX_SKIP_S3=1`
//! says so explicitly.

pub mod not_s3;
pub mod proxy;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use alitx::layout::{Revision, DIST_DIRS};
use alitx::storage::{self, PutMode, S3Config, S3Store, Store};
use aws_sdk_s3::Client;

pub const ARCH: &str = "slc9_x86-64";

/// A store under test, with an independent view of what readers see.
/// `https`: alitx reaches the bucket over the gateway's HTTPS endpoint
/// (the independent view stays on plain HTTP).
pub enum TestStore {
    Local {
        dir: tempfile::TempDir,
    },
    S3 {
        bucket: String,
        client: Client,
        https: bool,
    },
}

/// The backends to run a test against: always the local directory, and
/// RGW unless explicitly skipped.
pub fn backends() -> Vec<&'static str> {
    if std::env::var("ALITX_SKIP_S3").as_deref() == Ok("1") {
        vec!["local"]
    } else {
        vec!["local", "s3"]
    }
}

/// Run `body` once per backend of [`backends`], each time with a fresh
/// store made on the shared [`runtime`]; `kind` names the backend, for
/// failure messages. The store goes (with its bucket) when `body` returns.
pub fn each_backend(mut body: impl FnMut(&str, TestStore)) {
    for kind in backends() {
        body(kind, runtime().block_on(TestStore::new(kind)));
    }
}

/// The one runtime every test of a binary shares. The SDK's HTTP
/// connection pool is process-wide: a connection opened on a runtime that a
/// finished test has dropped hangs the next request that picks it up.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The backends and, unless S3 is skipped, S3 over HTTPS (`s3-https`).
pub fn backends_and_https() -> Vec<&'static str> {
    let mut kinds = backends();
    if kinds.contains(&"s3") {
        kinds.push("s3-https");
    }
    kinds
}

/// The gateway's HTTPS endpoint and the CA bundle that signs its
/// certificate, as `scripts/rgw.sh env` exports them.
pub fn https_endpoint() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the tests through scripts/test.sh, whose gateway also serves \
                 HTTPS (a gateway started by an older scripts/rgw.sh does not: stop and start it again)"
            )
        })
    };
    (
        var("ALITX_TEST_HTTPS_ENDPOINT"),
        var("ALITX_TEST_CA_BUNDLE"),
    )
}

pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect(
        "AWS_ENDPOINT_URL is not set: run the tests through scripts/test.sh (it starts Ceph RGW), \
         or set ALITX_SKIP_S3=1 to run only the local-directory tests",
    )
}

pub async fn s3_client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .load()
        .await;
    // A request the server never answers fails the test instead of hanging it.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .operation_attempt_timeout(std::time::Duration::from_secs(120))
        .build();
    let conf = aws_sdk_s3::config::Builder::from(&config)
        .timeout_config(timeouts)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(conf)
}

/// A test's bucket goes when the test is done, whatever its outcome: the
/// test gateway keeps every object in memory, and the whole suite's
/// tarballs would not fit.
impl Drop for TestStore {
    fn drop(&mut self) {
        let TestStore::S3 { bucket, client, .. } = self else {
            return;
        };
        // From a thread of its own: a drop may happen inside the runtime.
        std::thread::scope(|scope| {
            scope.spawn(|| runtime().block_on(delete_bucket(client, bucket)));
        });
    }
}

/// Delete a bucket with everything in it; failures only leave garbage.
async fn delete_bucket(client: &Client, bucket: &str) {
    if let Ok(uploads) = client.list_multipart_uploads().bucket(bucket).send().await {
        for u in uploads.uploads() {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(u.key().unwrap_or_default())
                .upload_id(u.upload_id().unwrap_or_default())
                .send()
                .await;
        }
    }
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(Ok(page)) = pages.next().await {
        for object in page.contents() {
            let _ = client
                .delete_object()
                .bucket(bucket)
                .key(object.key().unwrap_or_default())
                .send()
                .await;
        }
    }
    let _ = client.delete_bucket().bucket(bucket).send().await;
}

/// The flags of `repair` that unpublish `r`, then `extra`.
pub fn unpublish_flags<'a>(r: &'a Revision, extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "--package",
        &r.package,
        "--version",
        &r.version,
        "--revision",
        &r.revision,
        "--unpublish",
    ];
    all.extend(extra);
    all
}

/// Every key readers can see: publication records left out.
async fn readable_keys(store: &dyn Store) -> Vec<String> {
    let keys = store.list("").await.unwrap();
    keys.into_iter()
        .filter(|key| {
            !key.starts_with(alitx::record::PREFIX) && !key.starts_with(alitx::removed::PREFIX)
        })
        .collect()
}

/// The bodies of `keys`, read 16 at a time (one by one, a snapshot of
/// hundreds of links on the gateway takes seconds); a key deleted since it
/// was listed is left out, as a later listing would.
async fn bodies(store: &dyn Store, keys: Vec<String>) -> BTreeMap<String, Vec<u8>> {
    use futures::StreamExt;
    futures::stream::iter(keys)
        .map(|key| async move {
            let body = store.get(&key).await.unwrap()?;
            Some((key, body.to_vec()))
        })
        .buffer_unordered(16)
        .filter_map(|read| async move { read })
        .collect()
        .await
}

impl TestStore {
    pub async fn new(kind: &str) -> TestStore {
        match kind {
            "local" => TestStore::Local {
                dir: tempfile::tempdir().unwrap(),
            },
            "s3" | "s3-https" => {
                let client = s3_client().await;
                let bucket = format!("alitx-test-{}", alitx::random_hex(6));
                client.create_bucket().bucket(&bucket).send().await.unwrap();
                let https = kind == "s3-https";
                TestStore::S3 {
                    bucket,
                    client,
                    https,
                }
            }
            other => panic!("unknown backend {other}"),
        }
    }

    /// The environment an `alitx` command needs to reach this store: for
    /// HTTPS, the endpoint and `AWS_CA_BUNDLE`.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        match self {
            TestStore::S3 { https: true, .. } => {
                let (endpoint, ca_bundle) = https_endpoint();
                vec![("AWS_ENDPOINT_URL", endpoint), ("AWS_CA_BUNDLE", ca_bundle)]
            }
            _ => vec![],
        }
    }

    /// The argv of `alitx <command> --remote-store <this store> <extra>...`.
    pub fn cmd(&self, command: &str, extra: &[&str]) -> Vec<String> {
        on_store(command, &self.spec(), extra)
    }

    /// What `--remote-store` takes.
    pub fn spec(&self) -> String {
        match self {
            TestStore::Local { dir } => dir.path().display().to_string(),
            TestStore::S3 { bucket, .. } => format!("b3://{bucket}::rw"),
        }
    }

    pub fn root(&self) -> &Path {
        match self {
            TestStore::Local { dir } => dir.path(),
            TestStore::S3 { .. } => panic!("an S3 store has no local root"),
        }
    }

    /// The store through alitx's own backend (for the conformance suite and
    /// for seeding foreign objects).
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            TestStore::S3 {
                bucket,
                https: true,
                ..
            } => {
                let (endpoint, ca_bundle) = https_endpoint();
                let mut config = S3Config::from_env(bucket.clone(), Some(&endpoint)).unwrap();
                config.ca_bundle = Some(ca_bundle.into());
                Arc::new(S3Store::connect(config).await.unwrap())
            }
            _ => storage::open(&self.spec(), None).await.unwrap(),
        }
    }

    /// Every key readers can see (internal backend state excluded), with
    /// its body; publication records (which hold times and transaction ids)
    /// are left to [`TestStore::records`].
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let store = self.open().await;
        let keys = readable_keys(&*store).await;
        bodies(&*store, keys).await
    }

    /// The publication records in the store, by key, parsed.
    pub async fn records(&self) -> BTreeMap<String, alitx::record::Record> {
        let store = self.open().await;
        let keys = store.list(alitx::record::PREFIX).await.unwrap();
        bodies(&*store, keys)
            .await
            .into_iter()
            .map(|(key, body)| {
                let record = alitx::record::parse(&key, &body).unwrap();
                (key, record)
            })
            .collect()
    }

    /// The keys of a snapshot, without reading their bodies.
    pub async fn keys(&self) -> Vec<String> {
        readable_keys(&*self.open().await).await
    }

    /// Staged uploads that were neither completed nor aborted.
    pub async fn pending_uploads(&self) -> usize {
        self.open().await.list_uploads("").await.unwrap().len()
    }

    /// Put an object that alitx did not write (no transaction metadata).
    pub async fn put_foreign(&self, key: &str, body: &[u8]) {
        self.open()
            .await
            .put(
                key,
                body.to_vec().into(),
                &Default::default(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
}

/// One package of a generated work dir.
#[derive(Clone, Debug)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub revision: String,
    pub hash: String,
    pub deps: Vec<usize>,
}

impl Pkg {
    pub fn revision(&self) -> Revision {
        Revision::new(ARCH, &self.name, &self.version, &self.revision, &self.hash).unwrap()
    }
}

/// A generated aliBuild work dir (`sw/`) holding packages, each with a
/// real tarball and the symlinks aliBuild leaves.
pub struct WorkDir {
    pub dir: tempfile::TempDir,
    pub pkgs: Vec<Pkg>,
}

pub fn hash_of(name: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(name.as_bytes())[..20])
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A chain of `n` packages, each depending on all earlier ones, with a
    /// small tarball; `payload` extra bytes of incompressible content go
    /// into the last one.
    pub fn chain(n: usize, payload: u64) -> WorkDir {
        let pkgs: Vec<Pkg> = (0..n)
            .map(|i| Pkg {
                name: format!("pkg{i}"),
                version: format!("v{i}.0"),
                revision: "1".into(),
                hash: hash_of(&format!("pkg{i}")),
                deps: (0..i).collect(),
            })
            .collect();
        Self::with(pkgs, payload)
    }

    /// Independent packages with these names, version `v1`, revision 1.
    pub fn named(names: &[&str]) -> WorkDir {
        let pkgs = names
            .iter()
            .map(|name| Pkg {
                name: name.to_string(),
                version: "v1".into(),
                revision: "1".into(),
                hash: hash_of(name),
                deps: Vec::new(),
            })
            .collect();
        Self::with(pkgs, 0)
    }

    /// A work dir holding `pkgs`, the last one's tarball `payload` bytes
    /// larger.
    fn with(pkgs: Vec<Pkg>, payload: u64) -> WorkDir {
        let n = pkgs.len();
        let wd = WorkDir {
            dir: tempfile::tempdir().unwrap(),
            pkgs,
        };
        for i in 0..n {
            wd.write_package(i, if i == n - 1 { payload } else { 0 });
        }
        wd
    }

    /// The real aliBuild 1.17.48 work dir in `examples/sw-example.tar.gz`.
    pub fn sample() -> WorkDir {
        let dir = tempfile::tempdir().unwrap();
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sw-example.tar.gz");
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "extracting {}", archive.display());
        let moved = tempfile::tempdir().unwrap();
        fs::rename(dir.path().join("sw/TARS"), moved.path().join("TARS")).unwrap();
        let pkg = |name: &str, version: &str, hash: &str, deps: Vec<usize>| Pkg {
            name: name.into(),
            version: version.into(),
            revision: "1".into(),
            hash: hash.into(),
            deps,
        };
        WorkDir {
            dir: moved,
            pkgs: vec![
                pkg(
                    "defaults-release",
                    "v1",
                    "ccc4fbc1b274890de57ec71201613317b11c589c",
                    vec![],
                ),
                pkg(
                    "zlibx",
                    "v1.0",
                    "5b82364561d097dcbef08ccc08bb1f4cf4de725c",
                    vec![0],
                ),
                pkg(
                    "midx",
                    "v2.0",
                    "00478b69c97749a97825f79cba216c885a7fffbd",
                    vec![0, 1],
                ),
                pkg(
                    "topx",
                    "v3.0",
                    "d142077c0c23b6270c09b4a8333c6f0796a59426",
                    vec![0, 1, 2],
                ),
            ],
        }
    }

    pub fn tarball_path(&self, i: usize) -> PathBuf {
        self.path().join(self.pkgs[i].revision().store_key())
    }

    /// Write package `i`'s tarball and links, as aliBuild does after a build.
    pub fn write_package(&self, i: usize, payload: u64) {
        let pkg = &self.pkgs[i];
        let rev = pkg.revision();
        let tarball = self.tarball_path(i);
        fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        write_tarball(&tarball, &rev, payload);
        let link = self.path().join(rev.package_link().key);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(rev.package_link().symlink_target, &link).unwrap();
        for dist in DIST_DIRS {
            let dir = self.path().join(rev.dist_prefix(dist));
            fs::create_dir_all(&dir).unwrap();
            for &d in pkg.deps.iter().chain(std::iter::once(&i)) {
                let dep = self.pkgs[d].revision();
                let target = format!("../../../../../{}", dep.store_key());
                std::os::unix::fs::symlink(target, dir.join(dep.tarball_name())).unwrap();
            }
        }
    }

    /// Add `n` extra dist links (to made-up dependencies) in each dist dir.
    pub fn add_dist_links(&self, i: usize, n: usize) {
        let rev = self.pkgs[i].revision();
        for dist in DIST_DIRS {
            let dir = self.path().join(rev.dist_prefix(dist));
            for k in 0..n {
                let hash = hash_of(&format!("extra{k}"));
                let name = format!("extra{k}-v1-1.{ARCH}.tar.gz");
                let target = format!(
                    "../../../../../{}",
                    alitx::layout::store_key(ARCH, &hash, &name)
                );
                std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
            }
        }
    }

    /// The `alitx upload` arguments for package `i`.
    pub fn upload_args(&self, i: usize, store: &TestStore) -> Vec<String> {
        self.upload_args_to(i, &store.spec())
    }

    /// The `alitx upload` arguments for package `i` to any `--remote-store`.
    pub fn upload_args_to(&self, i: usize, store: &str) -> Vec<String> {
        let p = &self.pkgs[i];
        [
            "upload",
            "--work-dir",
            &self.path().display().to_string(),
            "--architecture",
            ARCH,
            "--package",
            &p.name,
            "--version",
            &p.version,
            "--revision",
            &p.revision,
            "--hash",
            &p.hash,
            "--remote-store",
            store,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `alitx resume` on `store` with this work dir's files, plus `extra`
    /// arguments.
    pub fn resume_args(&self, store: &TestStore, extra: &[&str]) -> Vec<String> {
        let mut all = store.cmd(
            "resume",
            &["--work-dir", &self.path().display().to_string()],
        );
        all.extend(args(extra));
        all
    }

    /// What the store must hold after packages `0..=last` were published:
    /// every key with its exact body, as aliBuild's readers expect.
    pub fn expected(&self, packages: impl IntoIterator<Item = usize>) -> BTreeMap<String, Vec<u8>> {
        let mut expected = BTreeMap::new();
        for i in packages {
            let rev = self.pkgs[i].revision();
            expected.insert(rev.store_key(), fs::read(self.tarball_path(i)).unwrap());
            let link = rev.package_link();
            expected.insert(link.key, link.body.into_bytes());
            for dist in DIST_DIRS {
                let dir = self.path().join(rev.dist_prefix(dist));
                for entry in fs::read_dir(&dir).unwrap() {
                    let entry = entry.unwrap();
                    let target = fs::read_link(entry.path()).unwrap().display().to_string();
                    let body = target.trim_start_matches("../../../../../").to_string();
                    let key = format!(
                        "{}{}",
                        rev.dist_prefix(dist),
                        entry.file_name().to_string_lossy()
                    );
                    expected.insert(key, body.into_bytes());
                }
            }
        }
        expected
    }
}

/// A gzip'd tar in aliBuild's shape: `./`, `./<arch>/`, `./<arch>/<pkg>/`,
/// then the install prefix with a `.meta.json` and `payload` bytes of
/// incompressible data.
pub fn write_tarball(path: &Path, rev: &Revision, payload: u64) {
    let file = fs::File::create(path).unwrap();
    let level = if payload > 0 {
        flate2::Compression::none()
    } else {
        flate2::Compression::fast()
    };
    let gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), level);
    let mut tar = tar::Builder::new(gz);
    let prefix = rev.install_prefix();
    for dir in [
        "./".to_string(),
        format!("./{ARCH}/"),
        format!("./{ARCH}/{}/", rev.package),
        format!("./{prefix}/"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, &dir, std::io::empty()).unwrap();
    }
    let meta = format!(
        "{{\"package\": \"{}\", \"hash\": \"{}\"}}\n",
        rev.package, rev.hash
    );
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(meta.len() as u64);
    tar.append_data(&mut h, format!("./{prefix}/.meta.json"), meta.as_bytes())
        .unwrap();
    if payload > 0 {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(payload);
        tar.append_data(
            &mut h,
            format!("./{prefix}/data.bin"),
            Noise::new(payload, &rev.hash),
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// Fast incompressible bytes (xorshift), deterministic per seed.
pub struct Noise {
    left: u64,
    state: u64,
}

impl Noise {
    pub fn new(len: u64, seed: &str) -> Self {
        let state = seed.bytes().fold(0x9E3779B97F4A7C15u64, |s, b| {
            (s ^ b as u64).wrapping_mul(0x100000001B3)
        }) | 1;
        Noise { left: len, state }
    }
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (self.left as usize).min(buf.len())
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Whether an S3 object grants READ to everyone (the `public-read` ACL).
pub async fn is_public_read(client: &Client, bucket: &str, key: &str) -> bool {
    let acl = client
        .get_object_acl()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    acl.grants().iter().any(|g| {
        g.grantee()
            .and_then(|who| who.uri())
            .is_some_and(|uri| uri.ends_with("/global/AllUsers"))
            && g.permission().map(|p| p.as_str()) == Some("READ")
    })
}

/// Run the alitx binary.
pub fn alitx(args: &[String]) -> Output {
    alitx_env(args, &[])
}

pub fn alitx_env(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alitx"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Run the alitx binary; kill it and fail if it has not ended within `limit`
/// (a command that waits forever must fail a test, not hang it).
pub fn alitx_within(args: &[String], limit: std::time::Duration) -> Output {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_alitx"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            pipe.read_to_end(&mut all).map(|_| all)
        })
    };
    let readers = (
        read_all(Box::new(child.stdout.take().unwrap())),
        read_all(Box::new(child.stderr.take().unwrap())),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("alitx {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: readers.0.join().unwrap().unwrap(),
        stderr: readers.1.join().unwrap().unwrap(),
    }
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The argv of `alitx <command> --remote-store <spec> <extra>...`.
pub fn on_store(command: &str, spec: &str, extra: &[&str]) -> Vec<String> {
    let mut all = args(&[command, "--remote-store", spec]);
    all.extend(args(extra));
    all
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Run alitx with `ALITX_FAILPOINT=point`; assert it died by SIGKILL there.
pub fn alitx_killed_at(args: &[String], point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = alitx_env(args, &[("ALITX_FAILPOINT", point)]);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: not killed: {:?} {}",
        out.status,
        stderr(&out)
    );
}

/// Put `links` (key → body) of `revision` as stock aliBuild writes them:
/// no alitx metadata, dist link redirects without the leading `/`.
pub async fn put_stock_links(
    store: &TestStore,
    revision: &Revision,
    links: &BTreeMap<String, Vec<u8>>,
) {
    let backend = store.open().await;
    for (key, body) in links {
        let body = String::from_utf8(body.clone()).unwrap();
        let package_link = *key == revision.package_link().key;
        let link = alitx::layout::Link {
            key: key.clone(),
            symlink_target: match package_link {
                true => format!("../../{body}"),
                false => format!("../../../../../{body}"),
            },
            redirect: (!package_link).then(|| body.clone()),
            body,
        };
        backend
            .put_link_if_absent(&link, &Default::default())
            .await
            .unwrap();
    }
}

/// Make the journal of `revision` look owned by a live upload on another
/// host (a fresh lease), as a running upload elsewhere would leave it.
pub async fn fake_live_owner(store: &TestStore, revision: &Revision) {
    use alitx::journal::{Journal, DEFAULT_PREFIX};
    let key = Journal::key_of(DEFAULT_PREFIX, revision);
    let backend = store.open().await;
    let mut journal: Journal =
        serde_json::from_slice(&backend.get(&key).await.unwrap().unwrap()).unwrap();
    journal.owner.host = "build-node-17".into();
    journal.lease_expires_at = alitx::now_secs() + 3600;
    backend
        .put(
            &key,
            journal.to_bytes(),
            &Default::default(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
}

/// `alitx journals --json` of the store `spec`: the journals as listed.
pub fn list_journals(spec: &str) -> serde_json::Value {
    let out = alitx(&on_store("journals", spec, &["--json"]));
    assert_exit(&out, 0);
    json(&out)
}

/// Assert the exit code, showing the output when it differs.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// What /proc/<pid>/stat tells about a process.
pub struct ProcStat {
    /// `R`, `S`, `T` (stopped), ...; `Z` for a zombie.
    pub state: char,
    pub parent: u32,
}

/// Process `pid` as /proc shows it, or `None` once it is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may itself hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(ProcStat { state, parent })
}

/// The state of process `pid` (`Z` for a zombie), or `None` once it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|stat| stat.state)
}

/// Wait until `child` is stopped (SIGSTOP, a failpoint's `:stop`).
pub fn wait_stopped(child: &std::process::Child, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while process_state(child.id()) != Some('T') {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the process never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Wake a stopped `child` (SIGCONT).
pub fn thaw(child: &std::process::Child) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
}

/// The store holds exactly revisions `published` of `wd`: every key and
/// body readers see, each revision's publication record (its tarball's
/// size, SHA-256 and transaction), no journal, no staged upload.
#[track_caller]
pub fn assert_exact(store: &TestStore, wd: &WorkDir, published: &[usize], what: &str) {
    use sha2::Digest;
    let rt = runtime();
    let snapshot = rt.block_on(store.snapshot());
    let records = rt.block_on(store.records());
    let expected = wd.expected(published.iter().copied());
    // Keys first, then bodies by key: a tarball's bytes make no readable
    // message.
    assert_eq!(
        snapshot.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (key, body) in &expected {
        assert!(snapshot[key] == *body, "{what}: the body of {key} differs");
    }
    let record_keys: BTreeMap<String, usize> = published
        .iter()
        .map(|&i| (alitx::record::key_of(&wd.pkgs[i].revision()), i))
        .collect();
    assert_eq!(
        records.keys().collect::<Vec<_>>(),
        record_keys.keys().collect::<Vec<_>>(),
        "{what}: publication records"
    );
    for (key, &i) in &record_keys {
        let record = &records[key];
        let store_key = wd.pkgs[i].revision().store_key();
        let tarball = &expected[&store_key];
        let txn = rt.block_on(async {
            let info = store.open().await.head(&store_key).await.unwrap().unwrap();
            info.metadata.get(alitx::journal::TXN_METADATA).cloned()
        });
        assert_eq!(
            (&record.key, record.size, &record.sha256, Some(&record.txn)),
            (
                &store_key,
                tarball.len() as u64,
                &hex::encode(sha2::Sha256::digest(tarball)),
                txn.as_ref()
            ),
            "{what}: the record of {store_key}"
        );
    }
    assert_eq!(
        rt.block_on(store.pending_uploads()),
        0,
        "{what}: staged upload left"
    );
}

/// Every entry under `dir`, recursively, relative to it: symlinks with
/// their targets, files with their bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, found: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let kind = fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                found.insert(
                    format!("{name} ->"),
                    target.display().to_string().into_bytes(),
                );
            } else if kind.is_dir() {
                walk(root, &path, found);
            } else {
                found.insert(name, fs::read(&path).unwrap());
            }
        }
    }
    let mut found = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut found);
    }
    found
}
