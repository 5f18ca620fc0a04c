//! TLS for `micro server`: the certificate and key it serves, mTLS, self-signed certificates for development, and
//! rotation without a restart.
//!
//! [`ServerTls::load`] turns the settings ([`TlsSettings`]: `--tls-cert`/`--tls-key`, or `--tls self-signed`, and
//! `--tls-client-ca`) into two rustls configurations that share one certificate and one client verifier:
//!
//! - [`ServerTls::grpc`] for the gRPC proxy, whose ALPN offers `h2` only (gRPC is HTTP/2);
//! - [`ServerTls::http`] for the HTTP API gateway, which offers `h2` and `http/1.1`.
//!
//! Both use the `ring` crypto provider and rustls' safe defaults (TLS 1.2 and 1.3). The handshake itself runs in
//! the connection layer ([`crate::conn`]), within the handshake timeout.
//!
//! **Files.** The certificate file holds the chain in PEM, the server's certificate first (as Let's Encrypt's
//! `fullchain.pem`); the key file holds one PEM private key (PKCS#8, PKCS#1 or SEC1). A file that cannot be read
//! or parsed, or a key that does not belong to the certificate, stops the server at start with a message that
//! names the file ([`TlsError`]).
//!
//! **Rotation.** [`ReloadingCert`] is the rustls certificate resolver. On a handshake, at most once per
//! [`RELOAD_CHECK`], it compares the files' modification times, sizes and inodes with those it loaded; when they
//! changed, it reads them again and serves the new certificate from the next handshake on. Open connections keep
//! the certificate they were made with. When the new files do not parse, or the key and the certificate do not
//! match yet (a rotation half done), the old certificate stays and a warning names the file; the next change is
//! tried again. Renaming new files into place, or replacing a symlink (as Kubernetes secrets do), both work.
//!
//! **mTLS.** With a client CA ([`TlsSettings::client_ca`]), every client must present a certificate that chains
//! to it, or the handshake fails: a client without one never reaches HTTP, let alone auth.
//!
//! **Self-signed** ([`CertSource::SelfSigned`]). For development and private networks: a CA and a server
//! certificate under `<data dir>/tls/` (`ca.pem`, `ca.key` 0600, `server.pem`, `server.key` 0600, and
//! `server.json`, which records what the server certificate was made for). The CA is kept across restarts, so a
//! developer trusts it once (`micro --ca-cert <data dir>/tls/ca.pem`, or `curl --cacert`); its path and SHA-256
//! fingerprint are logged at start. The server certificate names `localhost`, `127.0.0.1`, `::1` and the listen
//! addresses (the host's name too, when listening on every interface), is valid for [`SERVER_VALIDITY`], and is
//! made again at start when the names change, when the CA changed, or when it expires within [`RENEW_BEFORE`].

pub use micro::tls::{RELOAD_CHECK, ReloadingCert, TlsError, service_config};
use micro::tls::{certificates, client_verifier, read};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a self-signed server certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// A self-signed server certificate that expires sooner than this is made again at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How long the self-signed CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Where the server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// A certificate chain and its key, in PEM files (`--tls-cert`, `--tls-key`).
    Files {
        /// The certificate chain, the server's certificate first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A CA and a server certificate made by the server under `<data dir>/tls/` (`--tls self-signed`).
    SelfSigned,
}

/// The TLS settings of `micro server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate.
    pub source: CertSource,
    /// A PEM file of CA certificates: when set, clients must present a certificate issued by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The self-signed CA of a server ([`CertSource::SelfSigned`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfSignedCa {
    /// `<data dir>/tls/ca.pem`, which clients trust.
    pub path: PathBuf,
    /// The SHA-256 fingerprint of the CA certificate (DER), as `AB:CD:…` (what `openssl x509 -fingerprint
    /// -sha256` prints).
    pub sha256: String,
}

/// The server's TLS configurations (see the module docs).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// For the gRPC proxy: ALPN `h2`.
    pub grpc: Arc<rustls::ServerConfig>,
    /// For the HTTP API gateway: ALPN `h2` and `http/1.1`.
    pub http: Arc<rustls::ServerConfig>,
    /// The certificate and key files served (and watched).
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// The CA made for `--tls self-signed`.
    pub self_signed: Option<SelfSignedCa>,
}

impl ServerTls {
    /// Loads (or, for self-signed, makes) the certificate, and builds the configurations. `data_dir` is the server's;
    /// `listen` are the addresses it listens on (named in a self-signed certificate).
    pub fn load(settings: &TlsSettings, data_dir: &Path, listen: &[IpAddr]) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key, self_signed) = match &settings.source {
            CertSource::Files { cert, key } => (cert.clone(), key.clone(), None),
            CertSource::SelfSigned => {
                let made = self_signed(&data_dir.join("tls"), &hosts(listen))?;
                (made.cert, made.key, Some(made.ca))
            }
        };
        let resolver = Arc::new(ReloadingCert::new(cert.clone(), key.clone(), provider.clone())?);
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Other(e.to_string()))?;
        let builder = match &settings.client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
            None => builder.with_no_client_auth(),
        };
        let mut grpc = builder.with_cert_resolver(resolver);
        let mut http = grpc.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self { grpc: Arc::new(grpc), http: Arc::new(http), cert, key, self_signed })
    }
}

impl ServerTls {
    /// The CA file (PEM) that the services the runtime starts trust for this server (their `MICRO_CA_CERT`):
    /// `<data dir>/tls/ca.pem` with `--tls self-signed`; with `--tls-cert`, the certificate file itself. Trusting the
    /// served chain verifies a self-signed certificate and one whose file carries its issuer (a full chain); a
    /// publicly issued certificate verifies with the Mozilla roots anyway. For a certificate of a private CA whose
    /// file holds only the server's certificate, give the services the CA (`micro run --env_vars MICRO_CA_CERT=…`).
    pub fn verifying_ca(&self) -> &Path {
        self.self_signed.as_ref().map_or(&self.cert, |ca| &ca.path)
    }
}

/// What the proxy trusts when it dials a service node that serves TLS: the Mozilla roots, plus the CA certificates
/// of `upstream_ca` (`--tls-upstream-ca`) when given. The file is read and checked now; an unreadable or invalid
/// one is an error that names it.
pub fn upstream_client(upstream_ca: Option<&Path>) -> Result<micro_client::tls::ClientTls, TlsError> {
    const WHAT: &str = "upstream CA";
    let ca_pem = match upstream_ca {
        None => None,
        Some(path) => {
            let text = String::from_utf8(read(WHAT, path)?).map_err(|_| TlsError::Invalid {
                what: WHAT,
                path: path.to_path_buf(),
                reason: "it is not PEM text".into(),
            })?;
            micro_client::tls::check_certificates(&text).map_err(|reason| TlsError::Invalid {
                what: WHAT,
                path: path.to_path_buf(),
                reason,
            })?;
            Some(text)
        }
    };
    Ok(micro_client::tls::ClientTls { ca_pem, ..Default::default() })
}

/// `AB:CD:…`: the SHA-256 of `der` in upper-case hex pairs.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The names a self-signed server certificate is made for: `localhost`, `127.0.0.1`, `::1`, every specific
/// listen address, and the host's name when one listens on every interface. Sorted, without repeats.
pub fn hosts(listen: &[IpAddr]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    for ip in listen {
        if ip.is_unspecified() {
            if let Some(name) = host_name() {
                hosts.push(name);
            }
        } else {
            hosts.push(ip.to_string());
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The host's name (Linux), when it is a valid DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    valid.then_some(name)
}

/// The files of a self-signed set-up.
struct SelfSigned {
    ca: SelfSignedCa,
    cert: PathBuf,
    key: PathBuf,
}

/// What `server.json` records about the server certificate.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct ServerRecord {
    /// The names it was made for.
    hosts: Vec<String>,
    /// When it expires, in seconds since the Unix epoch.
    not_after: u64,
    /// The fingerprint of the CA that issued it.
    ca_sha256: String,
}

/// Default parameters whose `not_before` is `at` (rcgen's date type is the `time` crate's, which micro does not
/// depend on: arithmetic on the field is how to make dates).
fn params_at(at: SystemTime) -> CertificateParams {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut params = CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since;
    params
}

fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A random positive serial number (RFC 5280: at most 20 octets, positive).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The CA's parameters: the subject is derived from its key, so that the issuer of a new server certificate is
/// the same whenever the CA is loaded again.
fn ca_params(key: &KeyPair, now: SystemTime) -> CertificateParams {
    let id = fingerprint(key.public_key_raw()).replace(':', "");
    let mut params = params_at(now);
    let start = params.not_before;
    params.not_before = start - Duration::from_secs(86_400);
    params.not_after = start + CA_VALIDITY;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "micro");
    dn.push(DnType::CommonName, format!("micro development CA {}", &id[..12]));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(serial());
    params
}

/// Writes `bytes` to `path` through a temporary file renamed into place, with `mode` (on Unix).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| TlsError::Write { path: path.to_path_buf(), source })
}

/// Makes (or keeps) the self-signed CA and server certificate in `dir` for `hosts`.
fn self_signed(dir: &Path, hosts: &[String]) -> Result<SelfSigned, TlsError> {
    micro_core::fs::create_private_dir(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    let now = SystemTime::now();
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (ca_key, ca_der) = if ca_pem.exists() && ca_key_path.exists() {
        let pem = String::from_utf8(read("self-signed CA key", &ca_key_path)?).unwrap_or_default();
        let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Invalid {
            what: "self-signed CA key",
            path: ca_key_path.clone(),
            reason: format!("{e}; remove it and ca.pem to make a new CA"),
        })?;
        let der = certificates("self-signed CA", &ca_pem)?.remove(0);
        (key, der)
    } else {
        let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("cannot make a CA key: {e}")))?;
        let cert = ca_params(&key, now)
            .self_signed(&key)
            .map_err(|e| TlsError::Other(format!("cannot make the CA certificate: {e}")))?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(ca = %ca_pem.display(), "made a new self-signed CA: clients must trust it");
        (key, cert.der().clone())
    };
    let ca = SelfSignedCa { path: ca_pem, sha256: fingerprint(&ca_der) };

    let (cert_path, key_path, record_path) = (dir.join("server.pem"), dir.join("server.key"), dir.join("server.json"));
    let record: Option<ServerRecord> =
        std::fs::read(&record_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let fresh = record
        .is_some_and(|r| r.hosts == hosts && r.ca_sha256 == ca.sha256 && r.not_after > unix_secs(now + RENEW_BEFORE))
        && cert_path.exists()
        && key_path.exists();
    if !fresh {
        let key = KeyPair::generate().map_err(|e| TlsError::Other(format!("cannot make a server key: {e}")))?;
        let mut params = CertificateParams::new(hosts.to_vec())
            .map_err(|e| TlsError::Other(format!("cannot name {hosts:?} in a certificate: {e}")))?;
        let start = params_at(now).not_before;
        params.not_before = start - Duration::from_secs(3600);
        params.not_after = start + SERVER_VALIDITY;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "micro");
        dn.push(DnType::CommonName, "micro server");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        let issuer = Issuer::new(ca_params(&ca_key, now), &ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| TlsError::Other(format!("cannot sign the server certificate: {e}")))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        let record = ServerRecord {
            hosts: hosts.to_vec(),
            not_after: unix_secs(now + SERVER_VALIDITY),
            ca_sha256: ca.sha256.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| TlsError::Other(e.to_string()))?;
        write_file(&record_path, &json, 0o644)?;
        tracing::info!(cert = %cert_path.display(), hosts = %hosts.join(","), "made a self-signed server certificate");
    }
    Ok(SelfSigned { ca, cert: cert_path, key: key_path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro::tls::certified_key;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls_pki_types::CertificateDer;

    /// A CA and a certificate it issued for `localhost` (CN `cn`): (CA PEM, cert PEM, key PEM).
    fn issued(cn: &str) -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Whether `ca` (PEM file) verifies `cert` (DER) for `name`.
    fn verifies(ca: &Path, cert: &CertificateDer<'static>, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates("CA", ca).unwrap() {
            roots.add(c).unwrap();
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(cert, &[], &name, &[], rustls_pki_types::UnixTime::now()).map(|_| ())
    }

    #[test]
    fn bad_files_are_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = issued("a");
        let (_, _, other_key) = issued("b");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (cert, key, other_key) = (write("c.pem", &cert), write("k.pem", &key), write("o.pem", &other_key));
        let garbage = write("g.pem", "hello");
        let missing = dir.path().join("missing.pem");
        let load = |cert: &Path, key: &Path| certified_key(cert, key, &provider()).map(|_| ());

        assert!(load(&cert, &key).is_ok());
        let e = load(&missing, &key).unwrap_err().to_string();
        assert!(e.contains("cannot read the TLS certificate") && e.contains("missing.pem"), "{e}");
        let e = load(&garbage, &key).unwrap_err().to_string();
        assert!(e.contains("g.pem") && e.contains("no PEM certificate"), "{e}");
        let e = load(&cert, &garbage).unwrap_err().to_string();
        assert!(e.contains("TLS key") && e.contains("g.pem") && e.contains("no PEM private key"), "{e}");
        let e = load(&cert, &cert).unwrap_err().to_string();
        assert!(e.contains("c.pem") && e.contains("no PEM private key"), "a certificate is not a key: {e}");
        let e = load(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("o.pem") && e.contains("does not belong to the certificate") && e.contains("c.pem"), "{e}");

        let settings = TlsSettings {
            source: CertSource::Files { cert: cert.clone(), key: key.clone() },
            client_ca: Some(garbage.clone()),
        };
        let e = ServerTls::load(&settings, dir.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("client CA") && e.contains("g.pem"), "{e}");
    }

    #[test]
    fn alpn_is_h2_for_the_proxy_and_h2_or_http1_for_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = issued("a");
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        let settings = TlsSettings {
            source: CertSource::Files { cert: dir.path().join("c.pem"), key: dir.path().join("k.pem") },
            client_ca: None,
        };
        let tls = ServerTls::load(&settings, dir.path(), &[]).unwrap();
        assert_eq!(tls.grpc.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(tls.http.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(tls.self_signed.is_none());
    }

    #[test]
    fn changed_files_are_served_and_broken_ones_keep_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (_, first_cert, first_key) = issued("first");
        std::fs::write(&cert, &first_cert).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let every = Duration::from_millis(50);
        let resolver = ReloadingCert::new(cert.clone(), key.clone(), provider()).unwrap().checking_every(every);
        let first = resolver.current().cert[0].clone();
        assert_eq!(first, certificates("c", &cert).unwrap()[0]);

        // A new pair, renamed into place (as a rotation does).
        let (_, second_cert, second_key) = issued("second");
        write_file(&key, second_key.as_bytes(), 0o600).unwrap();
        write_file(&cert, second_cert.as_bytes(), 0o644).unwrap();
        assert_eq!(resolver.current().cert[0], first, "not before the check interval");
        std::thread::sleep(every * 2);
        let second = resolver.current().cert[0].clone();
        assert_ne!(second, first);
        assert_eq!(second, certificates("c", &cert).unwrap()[0]);

        // A broken certificate keeps the second one, and so does a key of another certificate.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        std::thread::sleep(every * 2);
        assert_eq!(resolver.current().cert[0], second);
        std::fs::write(&cert, &first_cert).unwrap();
        std::thread::sleep(every * 2);
        assert_eq!(resolver.current().cert[0], second, "the first cert with the second key is a mismatch");
        // Once the key follows, the pair is served.
        std::fs::write(&key, &first_key).unwrap();
        std::thread::sleep(every * 2);
        assert_eq!(resolver.current().cert[0], first);
    }

    #[test]
    fn self_signed_keeps_its_ca_and_remakes_the_server_certificate_when_the_hosts_change() {
        let data = tempfile::tempdir().unwrap();
        let settings = TlsSettings { source: CertSource::SelfSigned, client_ca: None };
        let listen: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let tls = ServerTls::load(&settings, data.path(), &listen).unwrap();
        let dir = data.path().join("tls");
        let ca = tls.self_signed.clone().expect("a self-signed CA");
        assert_eq!(ca.path, dir.join("ca.pem"));
        let ca_der = certificates("CA", &ca.path).unwrap().remove(0);
        assert_eq!(ca.sha256, fingerprint(&ca_der));
        assert_eq!(ca.sha256.len(), 32 * 3 - 1);
        #[cfg(unix)]
        for (name, mode) in [("ca.key", 0o600), ("server.key", 0o600), ("ca.pem", 0o644)] {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
        }
        let server = certificates("server", &dir.join("server.pem")).unwrap().remove(0);
        for name in ["localhost", "127.0.0.1", "::1"] {
            verifies(&ca.path, &server, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifies(&ca.path, &server, "10.1.2.3").is_err(), "not for other names");

        // A restart with the same addresses keeps both.
        let again = ServerTls::load(&settings, data.path(), &listen).unwrap();
        assert_eq!(again.self_signed, Some(ca.clone()));
        assert_eq!(certificates("server", &dir.join("server.pem")).unwrap()[0], server);

        // Another address: the same CA, a new server certificate that names it.
        let listen: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let moved = ServerTls::load(&settings, data.path(), &listen).unwrap();
        assert_eq!(moved.self_signed, Some(ca.clone()));
        let remade = certificates("server", &dir.join("server.pem")).unwrap().remove(0);
        assert_ne!(remade, server);
        verifies(&ca.path, &remade, "10.1.2.3").unwrap();
        verifies(&ca.path, &remade, "localhost").unwrap();

        // A certificate near its expiry is made again.
        let record_path = dir.join("server.json");
        let mut record: ServerRecord = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
        record.not_after = unix_secs(SystemTime::now() + Duration::from_secs(86_400));
        std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
        ServerTls::load(&settings, data.path(), &listen).unwrap();
        assert_ne!(certificates("server", &dir.join("server.pem")).unwrap()[0], remade);
    }

    #[test]
    fn hosts_name_loopback_and_the_listen_addresses() {
        let hosts = hosts(&["127.0.0.1".parse().unwrap(), "192.168.1.5".parse().unwrap()]);
        assert_eq!(hosts, ["127.0.0.1", "192.168.1.5", "::1", "localhost"]);
    }

    #[test]
    fn upstream_trust_services_and_the_ca_that_the_runtime_passes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = issued("a");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (ca, cert, key, garbage) =
            (write("ca.pem", &ca), write("c.pem", &cert), write("k.pem", &key), write("g", "x"));

        // The proxy's upstream trust: the Mozilla roots alone, or with the CA file, read and checked now.
        assert_eq!(upstream_client(None).unwrap().ca_pem, None);
        let upstream = upstream_client(Some(&ca)).unwrap();
        assert_eq!(upstream.ca_pem.as_deref(), Some(std::fs::read_to_string(&ca).unwrap().as_str()));
        assert!(!upstream.skip_verify && upstream.identity.is_none());
        let e = upstream_client(Some(&garbage)).unwrap_err().to_string();
        assert!(e.contains("upstream CA") && e.contains("g") && e.contains("no PEM certificate"), "{e}");
        let e = upstream_client(Some(&dir.path().join("missing.pem"))).unwrap_err().to_string();
        assert!(e.contains("cannot read the upstream CA") && e.contains("missing.pem"), "{e}");

        // A service's TLS: ALPN h2, and the same checks of its files.
        assert_eq!(service_config(&cert, &key).unwrap().alpn_protocols, [b"h2".to_vec()]);
        assert!(service_config(&cert, &garbage).unwrap_err().to_string().contains("TLS key"));

        // What the runtime's services trust: the served file, or the self-signed CA.
        let files = TlsSettings { source: CertSource::Files { cert: cert.clone(), key }, client_ca: None };
        assert_eq!(ServerTls::load(&files, dir.path(), &[]).unwrap().verifying_ca(), cert);
        let self_signed = TlsSettings { source: CertSource::SelfSigned, client_ca: None };
        let tls = ServerTls::load(&self_signed, dir.path(), &["127.0.0.1".parse().unwrap()]).unwrap();
        assert_eq!(tls.verifying_ca(), dir.path().join("tls").join("ca.pem"));
    }
}
