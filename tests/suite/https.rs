//! alitx over the test gateway's HTTPS endpoint (a throwaway CA that
//! `scripts/rgw.sh` makes): an upload killed mid-way and resumed, and the
//! certificate authorities chosen as boto3 and the aws CLI choose them —
//! `AWS_CA_BUNDLE`, a profile's `ca_bundle`, `SSL_CERT_FILE` — with a clear
//! error when none of them holds the server's CA.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// The variables that choose certificate authorities or a profile.
const TRUST_VARIABLES: [&str; 6] = [
    "AWS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

/// `alitx ARGS` against the HTTPS endpoint with only `trust` choosing the
/// certificate authorities: none of [`TRUST_VARIABLES`] is inherited, and
/// the AWS config files are empty files in `home` (keys come from the
/// environment, as `scripts/test.sh` sets them).
fn alitx_over_https(args: &[String], home: &Path, trust: &[(&str, &str)]) -> Output {
    let (endpoint, _) = https_endpoint();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alitx"));
    for name in TRUST_VARIABLES {
        cmd.env_remove(name);
    }
    for file in ["config", "credentials"] {
        let path = home.join(file);
        if !path.exists() {
            std::fs::write(&path, "").unwrap();
        }
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_ENDPOINT_URL", endpoint)
        .envs(trust.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

/// An S3 test store with one package published through plain HTTP, and the
/// read-only commands that must work over HTTPS with a given trust setting.
struct Published {
    store: TestStore,
    wd: WorkDir,
    home: tempfile::TempDir,
}

impl Published {
    fn new() -> Published {
        let store = runtime().block_on(TestStore::new("s3"));
        let wd = WorkDir::chain(1, 0);
        assert_exit(&alitx(&wd.upload_args(0, &store)), 0);
        let home = tempfile::tempdir().unwrap();
        Published { store, wd, home }
    }

    /// Every kind of command (a write, a listing, a full read, a scan)
    /// succeeds over HTTPS with `trust`.
    fn every_command_works_with(&self, trust: &[(&str, &str)], what: &str) {
        for command in [
            self.wd.upload_args(0, &self.store),
            self.store.cmd("journals", &[]),
            self.wd.resume_args(&self.store, &[]),
            self.store.cmd("check", &["--architecture", ARCH]),
            self.store.cmd("verify", &["--architecture", ARCH]),
        ] {
            let out = alitx_over_https(&command, self.home.path(), trust);
            assert!(
                out.status.success(),
                "{what}: alitx {} failed: {}",
                command[0],
                stderr(&out)
            );
        }
        assert_exact(&self.store, &self.wd, &[0], what);
    }
}

#[test]
fn aws_ca_bundle_alone_is_enough_for_every_command() {
    let (_, ca) = https_endpoint();
    Published::new().every_command_works_with(&[("AWS_CA_BUNDLE", &ca)], "AWS_CA_BUNDLE");
}

#[test]
fn ssl_cert_file_alone_is_enough_for_every_command() {
    let (_, ca) = https_endpoint();
    Published::new().every_command_works_with(&[("SSL_CERT_FILE", &ca)], "SSL_CERT_FILE");
}

#[test]
fn a_profiles_ca_bundle_is_enough_for_every_command() {
    let (_, ca) = https_endpoint();
    let published = Published::new();
    let config = published.home.path().join("config");
    std::fs::write(
        &config,
        format!("[default]\nregion = us-east-1\n\n[profile gateway]\nca_bundle = {ca}\n"),
    )
    .unwrap();
    published.every_command_works_with(&[("AWS_PROFILE", "gateway")], "profile ca_bundle");
}

/// Nothing names the gateway's CA: the error says the certificate is not
/// trusted, against what it was checked, and which variables to set;
/// nothing is written and no secret is shown.
#[test]
fn an_untrusted_certificate_says_which_variables_to_set() {
    let store = runtime().block_on(TestStore::new("s3"));
    let wd = WorkDir::chain(1, 0);
    let home = tempfile::tempdir().unwrap();
    let out = alitx_over_https(&wd.upload_args(0, &store), home.path(), &[]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    let (endpoint, _) = https_endpoint();
    for needed in [
        format!("the TLS certificate of {endpoint} is not trusted"),
        "UnknownIssuer".into(),
        "checked against the system's root certificates".into(),
        "set AWS_CA_BUNDLE".into(),
        "SSL_CERT_FILE".into(),
    ] {
        assert!(err.contains(&needed), "missing {needed:?} in: {err}");
    }
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert!(!err.contains(&secret), "the secret key leaked: {err}");
    assert!(runtime().block_on(store.keys()).is_empty());
}

/// A bundle that cannot be read, or holds no certificate, is bad input:
/// said before anything is written.
#[test]
fn an_unusable_ca_bundle_is_an_input_error() {
    let store = runtime().block_on(TestStore::new("s3"));
    let wd = WorkDir::chain(1, 0);
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("no-such-ca.pem");
    let not_pem = home.path().join("not-pem.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    for (bundle, says) in [
        (&missing, "cannot read the CA bundle"),
        (&not_pem, "holds no PEM certificate"),
    ] {
        let bundle = bundle.display().to_string();
        let out = alitx_over_https(
            &wd.upload_args(0, &store),
            home.path(),
            &[("AWS_CA_BUNDLE", &bundle)],
        );
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.contains(&bundle) && err.contains("AWS_CA_BUNDLE"),
            "{err}"
        );
    }
    assert!(runtime().block_on(store.keys()).is_empty());
}

/// Killed with two parts of a multipart upload staged over HTTPS, the
/// upload is finished by `resume` over HTTPS, reusing what was staged.
#[test]
fn an_upload_killed_over_https_is_resumed_over_https() {
    let rt = runtime();
    let store = rt.block_on(TestStore::new("s3-https"));
    let wd = WorkDir::chain(1, 24 << 20);
    let env = store.cli_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut upload = wd.upload_args(0, &store);
    upload.extend(args(&["--part-size", "5", "--concurrency", "2"]));
    let killed = alitx_env(
        &upload,
        &[env.clone(), vec![("ALITX_FAILPOINT", "part-sent-2")]].concat(),
    );
    assert_eq!(killed.status.signal(), Some(9), "{}", stderr(&killed));
    assert_eq!(rt.block_on(store.pending_uploads()), 1);

    let out = alitx_env(&wd.resume_args(&store, &["--json"]), &env);
    assert_exit(&out, 0);
    let outcomes = json(&out);
    assert_eq!(outcomes[0]["action"], "rolled-forward");
    assert!(outcomes[0]["report"]["parts_reused"].as_u64().unwrap() >= 1);
    assert_exact(&store, &wd, &[0], "resumed over HTTPS");
    assert_eq!(rt.block_on(store.pending_uploads()), 0);
}
