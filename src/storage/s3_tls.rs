//! Which certificate authorities an `https://` S3 endpoint is checked
//! against, the way boto3 and the aws CLI choose them: the PEM bundle named
//! by `AWS_CA_BUNDLE`, else the `ca_bundle` of the selected AWS profile
//! (`AWS_PROFILE`, in `~/.aws/config` or `~/.aws/credentials`), and then
//! that bundle alone; without either, the system's root certificates
//! (`SSL_CERT_FILE` and `SSL_CERT_DIR` override where they are read from).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_smithy_http_client::tls::{TlsContext, TrustStore};
use aws_types::os_shim_internal::{Env, Fs};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

/// Where the trusted certificate authorities come from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A PEM bundle named by `setting` (`AWS_CA_BUNDLE`, or a profile's
    /// `ca_bundle`), trusted alone.
    Bundle { path: PathBuf, setting: String },
    /// The system's root certificates.
    System,
}

impl Trust {
    /// `ca_bundle` (`AWS_CA_BUNDLE`, see [`super::S3Config`]), else the
    /// bundle the selected profile names, else the system's store.
    pub async fn resolve(ca_bundle: Option<&Path>) -> Trust {
        if let Some(path) = ca_bundle {
            return Trust::Bundle {
                path: path.into(),
                setting: "AWS_CA_BUNDLE".into(),
            };
        }
        // A profile file that does not parse leaves the choice to the system
        // store; the credentials provider reports the file itself.
        let profiles =
            aws_config::profile::load(&Fs::real(), &Env::real(), &Default::default(), None)
                .await
                .ok();
        match profiles
            .as_ref()
            .and_then(|p| Some((p.get("ca_bundle")?, p.selected_profile())))
        {
            Some((path, profile)) if !path.is_empty() => Trust::Bundle {
                path: path.into(),
                setting: format!("ca_bundle of AWS profile {profile:?}"),
            },
            _ => Trust::System,
        }
    }

    /// The SDK's TLS settings that trust these authorities. A bundle that
    /// cannot be read or holds no certificate is an input error.
    pub fn tls_context(&self) -> Result<TlsContext> {
        let store = match self {
            Trust::System => TrustStore::default(),
            Trust::Bundle { path, setting } => {
                TrustStore::empty().with_pem_certificate(read_bundle(path, setting)?)
            }
        };
        TlsContext::builder()
            .with_trust_store(store)
            .build()
            .map_err(|err| Error::input(format!("cannot set up TLS: {err}")))
    }

    /// rustls's settings that trust these authorities (the system's as
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` say), with the SDK's crypto.
    pub fn rustls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        match self {
            Trust::System => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
            Trust::Bundle { path, setting } => {
                let pem = read_bundle(path, setting)?;
                roots.add_parsable_certificates(
                    CertificateDer::pem_slice_iter(&pem).filter_map(|cert| cert.ok()),
                );
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::input(format!("cannot set up TLS: {err}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// What the server's certificate was checked against, for messages.
    pub fn describe(&self) -> String {
        match self {
            Trust::Bundle { path, setting } => {
                format!("the CA bundle {} ({setting})", path.display())
            }
            Trust::System => "the system's root certificates".into(),
        }
    }
}

const CERTIFICATE_MARK: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The PEM bundle at `path`, named by `setting`: an input error if it
/// cannot be read or holds no certificate.
fn read_bundle(path: &Path, setting: &str) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|err| {
        Error::input(format!(
            "cannot read the CA bundle {} named by {setting}: {err}; \
             point {setting} at a readable PEM file of certificate authorities",
            path.display()
        ))
    })?;
    if !pem
        .windows(CERTIFICATE_MARK.len())
        .any(|w| w == CERTIFICATE_MARK)
    {
        return Err(Error::input(format!(
            "the CA bundle {} named by {setting} holds no PEM certificate \
             (no {:?} line); point {setting} at a PEM file of certificate authorities",
            path.display(),
            std::str::from_utf8(CERTIFICATE_MARK).unwrap_or_default()
        )));
    }
    Ok(pem)
}

/// Whether a failure's cause chain is the server's certificate failing the
/// check (rustls words it "invalid peer certificate: ...").
pub fn is_certificate_error(cause: &str) -> bool {
    cause.contains("invalid peer certificate")
}

/// The error for a server certificate that `trust` does not accept.
pub fn untrusted(endpoint: &str, trust: &Trust, cause: &str) -> Error {
    Error::store(format!(
        "the TLS certificate of {endpoint} is not trusted ({cause}); it was checked against {}. \
         If the server uses a private certificate authority, set AWS_CA_BUNDLE (as for boto3 and \
         the aws CLI) or SSL_CERT_FILE to a PEM file holding that authority's certificate",
        trust.describe()
    ))
}
