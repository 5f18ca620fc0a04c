//! TLS served from PEM files: the certificate resolver that follows its files, mTLS's client verifier, and the
//! configuration a service built with the library serves (`MICRO_TLS_CERT`, `MICRO_TLS_KEY`). `micro server`
//! builds its own TLS (self-signed certificates too) on these.
//!
//! **Files.** The certificate file holds the chain in PEM, the server's certificate first (as Let's Encrypt's
//! `fullchain.pem`); the key file holds one PEM private key (PKCS#8, PKCS#1 or SEC1). A file that cannot be read
//! or parsed, or a key that does not belong to the certificate, is an error that names the file ([`TlsError`]).
//!
//! **Rotation.** [`ReloadingCert`] is the rustls certificate resolver. On a handshake, at most once per
//! [`RELOAD_CHECK`], it compares the files' modification times, sizes and inodes with those it loaded; when they
//! changed, it reads them again and serves the new certificate from the next handshake on. Open connections keep
//! the certificate they were made with. When the new files do not parse, or the key and the certificate do not
//! match yet (a rotation half done), the old certificate stays and a warning names the file; the next change is
//! tried again.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often, at most, the certificate files are checked for changes (on a handshake).
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// What is wrong with the TLS settings; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// What the file is for (`TLS certificate`, `TLS key`, `client CA`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("the {what} {} is not valid: {reason}", path.display())]
    Invalid {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the TLS key {} does not belong to the certificate {} (its public key differs); give the key the \
         certificate was issued for",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A file cannot be written (self-signed certificates).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something else: making a certificate, or rustls refusing the configuration.
    #[error("TLS: {0}")]
    Other(String),
}

/// A rustls server configuration serving the certificate of `cert` with the key of `key` (re-read when they
/// change), requiring client certificates issued by the CAs of `client_ca` when given, with ALPN `alpn`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ReloadingCert::new(cert.to_path_buf(), key.to_path_buf(), provider.clone())?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?;
    let builder = match client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The TLS of a service built with the library (`MICRO_TLS_CERT`, `MICRO_TLS_KEY`): ALPN `h2`, these files re-read
/// when they change, without mTLS.
pub fn service_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(cert, key, None, &[b"h2"]).map(Arc::new)
}

/// The certificate resolver that follows its files (see "Rotation" in the module docs).
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    every: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' stamps when `key` was read.
    stamps: Option<(Stamp, Stamp)>,
    /// When the files were last checked.
    checked: Instant,
    /// The stamps of files that failed to load (warned about once; tried again when they change).
    failed: Option<(Stamp, Stamp)>,
}

/// What tells a file changed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

impl ReloadingCert {
    /// Reads `cert` and `key`; fails, naming the file, when they cannot be used.
    pub fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamps = stamp(&cert).zip(stamp(&key));
        let loaded = certified_key(&cert, &key, &provider)?;
        let state = Loaded { key: Arc::new(loaded), stamps, checked: Instant::now(), failed: None };
        Ok(Self { cert, key, provider, every: RELOAD_CHECK, state: Mutex::new(state) })
    }

    /// Checks the files every `every` instead of [`RELOAD_CHECK`].
    pub fn checking_every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// The certificate to serve: the one loaded, or the files' new one when they changed (checked at most every
    /// [`RELOAD_CHECK`]).
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() < self.every {
            return state.key.clone();
        }
        state.checked = Instant::now();
        let Some(stamps) = stamp(&self.cert).zip(stamp(&self.key)) else {
            // A file is missing, perhaps for a moment during a rotation: keep serving the old certificate.
            tracing::debug!(cert = %self.cert.display(), key = %self.key.display(), "a TLS file is missing");
            return state.key.clone();
        };
        if state.stamps.as_ref() == Some(&stamps) || state.failed.as_ref() == Some(&stamps) {
            return state.key.clone();
        }
        match certified_key(&self.cert, &self.key, &self.provider) {
            Ok(key) => {
                tracing::info!(cert = %self.cert.display(), "reloaded the TLS certificate");
                state.key = Arc::new(key);
                state.stamps = Some(stamps);
                state.failed = None;
            }
            Err(e) => {
                tracing::warn!("{e}; still serving the previous TLS certificate");
                state.failed = Some(stamps);
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reads a file, naming it in the error.
pub fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// The PEM certificates of a file; at least one.
pub fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(invalid("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

/// The certificate chain of `cert` with the key of `key`, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    const CERT: &str = "TLS certificate";
    const KEY: &str = "TLS key";
    let chain = certificates(CERT, cert)?;
    let pem = read(KEY, key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        what: KEY,
        path: key.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "it holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".into()
            }
            e => format!("bad PEM ({e})"),
        },
    })?;
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| TlsError::Invalid {
        what: KEY,
        path: key.to_path_buf(),
        reason: format!("unsupported key ({e})"),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch { cert: cert.to_path_buf(), key: key.to_path_buf() })
        }
        Err(e) => Err(TlsError::Invalid { what: CERT, path: cert.to_path_buf(), reason: e.to_string() }),
    }
}

/// The verifier of client certificates issued by the CAs of `path` (mTLS).
pub fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    const WHAT: &str = "client CA";
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(WHAT, path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: WHAT,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| TlsError::Invalid {
        what: WHAT,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
