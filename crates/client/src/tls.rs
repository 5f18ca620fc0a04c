//! TLS for connections to a micro proxy: which addresses use it and what they trust.
//!
//! - `https://host:port`, and a bare `host:443`, are TLS; `http://host:port` and a bare `host:port` are plaintext.
//!   The scheme decides, and nothing ever falls back from one to the other: a TLS address that meets a plaintext
//!   server fails, and so does the reverse (`client::diagnose` says which it was).
//! - TLS trusts the Mozilla roots compiled into micro (webpki-roots), plus an extra CA when one is given
//!   ([`ClientTls::ca_pem`]: `--ca-cert`, `MICRO_CA_CERT`, or the env's own CA). The server's certificate must be
//!   valid for the host of the address (a DNS name or an IP address).
//! - A client certificate ([`ClientTls::identity`]) is presented to servers that ask for one (mTLS).
//! - [`ClientTls::skip_verify`] accepts any server certificate (`--insecure-skip-verify`): the channel is still
//!   encrypted, but anyone on the path can pose as the server.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The TLS settings of a client: what it trusts besides the system's roots, and what it presents.
#[derive(Clone, Default, PartialEq)]
pub struct ClientTls {
    /// CA certificates (PEM) trusted besides the compiled-in roots.
    pub ca_pem: Option<String>,
    /// A client certificate chain and its private key (both PEM), presented to servers that ask for one.
    pub identity: Option<(String, String)>,
    /// Accept any server certificate (`--insecure-skip-verify`).
    pub skip_verify: bool,
}

impl std::fmt::Debug for ClientTls {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("skip_verify", &self.skip_verify)
            .finish()
    }
}

impl ClientTls {
    /// The service library's TLS settings: `MICRO_CA_CERT`, `MICRO_CLIENT_CERT` with `MICRO_CLIENT_KEY`, and
    /// `MICRO_INSECURE_SKIP_VERIFY`. Files are read now; an unreadable or invalid one is an error that names it.
    pub fn from_env() -> Result<Self, String> {
        use micro_core::env;
        let ca_pem =
            env::var(env::MICRO_CA_CERT).map(|p| read_certificates(Path::new(&p), env::MICRO_CA_CERT)).transpose()?;
        let identity = match (env::var(env::MICRO_CLIENT_CERT), env::var(env::MICRO_CLIENT_KEY)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_certificates(Path::new(&cert), env::MICRO_CLIENT_CERT)?,
                read_private_key(Path::new(&key), env::MICRO_CLIENT_KEY)?,
            )),
            _ => {
                return Err(format!(
                    "{} and {} go together: set both or neither",
                    env::MICRO_CLIENT_CERT,
                    env::MICRO_CLIENT_KEY
                ));
            }
        };
        let skip_verify = env::var(env::MICRO_INSECURE_SKIP_VERIFY).is_some_and(|v| truthy(&v));
        Ok(Self { ca_pem, identity, skip_verify })
    }
}

/// Whether an environment value means yes (anything but `0`, `false`, `no`, `off`).
pub fn truthy(value: &str) -> bool {
    !matches!(value.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no" | "off")
}

/// Reads a PEM file of one or more certificates; `what` names the flag or variable in errors.
pub fn read_certificates(path: &Path, what: &str) -> Result<String, String> {
    let text = read_text(path, what)?;
    check_certificates(&text).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    Ok(text)
}

/// Reads a PEM file holding a private key; `what` names the flag or variable in errors.
pub fn read_private_key(path: &Path, what: &str) -> Result<String, String> {
    let text = read_text(path, what)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|e| format!("{what} {}: not a PEM private key ({e})", path.display()))?;
    Ok(text)
}

fn read_text(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Checks that `pem` holds at least one certificate and nothing unparsable.
pub fn check_certificates(pem: &str) -> Result<(), String> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| format!("not a PEM certificate ({e})"))?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
}

/// A proxy address, parsed: whether it is TLS, and where it points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Whether the address is TLS (`https://`, or a bare `host:443`).
    pub tls: bool,
    /// The host, without the brackets of an IPv6 address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// `host:port` as it goes into a URL (IPv6 in brackets).
    pub authority: String,
}

impl Target {
    /// Parses `https://host[:port]`, `http://host:port` or `host:port`. An `https` address without a port is port
    /// 443; the others need one.
    pub fn parse(address: &str) -> Result<Self, String> {
        let address = address.trim();
        let (scheme, rest) = match address.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, address),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err("a proxy address has no path: use host:port, http://host:port or https://host:port".into());
        }
        let uri: http::Uri =
            format!("http://{rest}").parse().map_err(|e| format!("{e}: use host:port or https://host:port"))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host in it")?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = match scheme.as_deref() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("unknown scheme {other}://: use https:// (TLS) or http:// (plaintext)")),
            None => uri.port_u16() == Some(443),
        };
        let port = match (uri.port_u16(), tls) {
            (Some(port), _) => port,
            (None, true) => 443,
            (None, false) => return Err("no port in it: use host:port (the proxy listens on 8081 by default)".into()),
        };
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { tls, host, port, authority })
    }

    /// The URL the channel dials: `https://host:port` or `http://host:port`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }

    /// Whether the host is this machine's loopback interface (`localhost`, `127.0.0.0/8`, `::1`). Other names are
    /// not resolved: they count as remote.
    pub fn is_loopback(&self) -> bool {
        if self.host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            Err(_) => false,
        }
    }

    /// Whether a password or token may travel to this address without the env's `--plaintext` consent: it is TLS,
    /// or it stays on this machine.
    pub fn keeps_secrets(&self) -> bool {
        self.tls || self.is_loopback()
    }
}

/// The crypto provider of every client: ring, as the rest of micro.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Configures `endpoint` (dialling `target`) for TLS when `target` is TLS; a plaintext target is left as it is.
pub fn configure(endpoint: Endpoint, target: &Target, tls: &ClientTls) -> Result<Endpoint, String> {
    if !target.tls {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new().domain_name(target.host.clone());
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(cert, key));
    }
    let endpoint = if tls.skip_verify {
        endpoint.tls_config_with_verifier(config, Arc::new(AnyCertificate(provider())))
    } else {
        config = config.with_webpki_roots();
        if let Some(ca) = &tls.ca_pem {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        endpoint.tls_config(config)
    };
    endpoint.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    })
}

/// A verifier that accepts any certificate (`--insecure-skip-verify`) but still checks the handshake's signatures,
/// so the channel is encrypted with whoever holds the presented certificate's key.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Certificates and servers for unit tests of the micro crates (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[allow(missing_docs, clippy::new_without_default)]
pub mod testing {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A CA made for one test.
    pub struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        /// A fresh CA.
        pub fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, "micro test CA");
            Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        /// The CA's certificate (PEM).
        pub fn pem(&self) -> String {
            self.0.pem()
        }

        /// A server certificate and key (PEM) for `names`, signed by this CA; `expired` makes one that ended a year
        /// ago.
        pub fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
            let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.0).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    /// Serves gRPC health (and nothing else) on 127.0.0.1, with TLS when `identity` is given, on a thread of its
    /// own (so that blocking probes in the test cannot stall it). Returns `127.0.0.1:PORT`.
    pub fn health_server(identity: Option<(String, String)>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let (_, health) = tonic_health::server::health_reporter();
                let mut server = tonic::transport::Server::builder();
                if let Some((cert, key)) = identity {
                    let identity = tonic::transport::Identity::from_pem(cert, key);
                    server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).unwrap();
                }
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = server.add_service(health).serve_with_incoming(incoming).await;
            });
        });
        address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_scheme() {
        let t = Target::parse("https://example.com").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.url()),
            (true, "example.com", 443, "https://example.com:443".into())
        );
        let t = Target::parse("https://10.0.0.1:8443/").unwrap();
        assert_eq!((t.tls, t.authority.as_str()), (true, "10.0.0.1:8443"));
        let t = Target::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!((t.tls, t.url()), (false, "http://127.0.0.1:8081".into()));
        let t = Target::parse("127.0.0.1:8081").unwrap();
        assert!(!t.tls && t.is_loopback());
        // A bare port 443 is TLS, as Micro's remote envs were.
        assert!(Target::parse("proxy.example.com:443").unwrap().tls);
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!((t.host.as_str(), t.authority.as_str()), ("::1", "[::1]:8443"));
        assert!(t.is_loopback());
        assert!(Target::parse("ftp://x:1").unwrap_err().contains("https://"));
        assert!(Target::parse("127.0.0.1").unwrap_err().contains("port"));
        assert!(Target::parse("http://x:1/path").unwrap_err().contains("path"));
    }

    #[test]
    fn only_tls_or_loopback_keeps_secrets() {
        let keeps = |a: &str| Target::parse(a).unwrap().keeps_secrets();
        for local in ["127.0.0.1:8081", "127.0.0.2:1", "localhost:8081", "http://[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(keeps(local), "{local}");
        }
        for remote in ["10.0.0.5:8081", "http://192.168.1.2:8081", "micro.example.com:8081", "[2001:db8::1]:1"] {
            assert!(!keeps(remote), "{remote}");
        }
        assert!(keeps("https://micro.example.com:8081") && keeps("micro.example.com:443"));
    }

    #[test]
    fn pem_files_are_checked_when_read() {
        let tmp = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let (cert_file, key_file, junk) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"), tmp.path().join("j"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::write(&junk, "hello").unwrap();
        assert_eq!(read_certificates(&cert_file, "--ca-cert").unwrap(), cert.pem());
        assert!(read_private_key(&key_file, "--client-key").is_ok());
        let e = read_certificates(&junk, "--ca-cert").unwrap_err();
        assert!(e.contains("--ca-cert") && e.contains("no PEM certificate"), "{e}");
        assert!(read_private_key(&cert_file, "--client-key").unwrap_err().contains("private key"));
        let e = read_certificates(&tmp.path().join("missing"), "MICRO_CA_CERT").unwrap_err();
        assert!(e.contains("cannot read MICRO_CA_CERT"), "{e}");
        // The private key never shows in debug output.
        let tls = ClientTls { identity: Some((cert.pem(), key.serialize_pem())), ..Default::default() };
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn truthy_values() {
        assert!(truthy("1") && truthy("true") && truthy("yes"));
        assert!(!truthy("0") && !truthy("false") && !truthy("Off") && !truthy(""));
    }
}
