//! Why a connection to a proxy address failed, in words a user can act on.
//!
//! A failed call tells a lot by itself: the rustls error of a handshake (unknown issuer, wrong name, expired), a
//! refused TCP connection, a timeout. Where it does not (a plaintext HTTP/2 connection that broke, an HTTP answer
//! that is not gRPC), [`probe`] looks at the address: a TLS ClientHello and then an HTTP/2 preface, each on a fresh
//! TCP connection, and the first bytes the server sends back; then, for HTTP servers, a `GET /`, which micro's API
//! gateway answers with its version JSON. Every step is bounded by [`PROBE_TIMEOUT`], and the probe sends no
//! credentials. It runs only after a failure, so working calls pay nothing for it.

use super::tls::{AnyCertificate, Target, provider};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// How long each step of a [`probe`] may take (connect, and then reading the answer).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What was found at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Nothing listens there: the connection was refused.
    Refused,
    /// The TCP connection did not complete in time.
    NoAnswer,
    /// The host name does not resolve.
    UnknownHost,
    /// A TLS server.
    Tls,
    /// A TLS server that requires a client certificate (it refused a handshake without one).
    ClientCertRequired,
    /// A plaintext HTTP/2 server (what a plaintext micro proxy is).
    H2c,
    /// micro's HTTP API gateway (its `GET /` answer), with its version.
    Gateway {
        /// The gateway's micro version.
        version: String,
    },
    /// Some other HTTP server, with the status line it answered.
    Http {
        /// E.g. `HTTP/1.1 404 Not Found`.
        status_line: String,
    },
    /// A server that accepted the connection and answered none of the probes in a way we know.
    Silent,
}

/// Looks at `target` (blocking; at most a few [`PROBE_TIMEOUT`]s).
pub fn probe(target: &Target) -> Finding {
    // Does it speak TLS? A ClientHello is answered with a handshake record or an alert.
    let first = match exchange(target, &client_hello(target)) {
        Ok(bytes) => bytes,
        Err(finding) => return finding,
    };
    if is_tls_record(&first) {
        if let Some(finding) = http_get(target, true) {
            return finding;
        }
        return if refuses_without_client_certificate(target) { Finding::ClientCertRequired } else { Finding::Tls };
    }
    if first.starts_with(b"HTTP/") {
        return http_get(target, false).unwrap_or_else(|| Finding::Http { status_line: status_line(&first) });
    }
    // Plaintext HTTP/2? The server's first frame is its SETTINGS (type 4).
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let first = match exchange(target, &preface) {
        Ok(bytes) => bytes,
        Err(finding) => return finding,
    };
    if first.len() >= 4 && first[3] == 4 {
        // micro's gateway speaks HTTP/2 without TLS as well; the proxy never answers HTTP/1.1.
        return match http_get(target, false) {
            Some(found @ Finding::Gateway { .. }) => found,
            _ => Finding::H2c,
        };
    }
    if first.starts_with(b"HTTP/") {
        return http_get(target, false).unwrap_or_else(|| Finding::Http { status_line: status_line(&first) });
    }
    if is_tls_record(&first) {
        return Finding::Tls;
    }
    Finding::Silent
}

fn connect(target: &Target) -> Result<TcpStream, Finding> {
    let addrs: Vec<_> = match (target.host.as_str(), target.port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(_) => return Err(Finding::UnknownHost),
    };
    let mut last = Finding::UnknownHost;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
                let _ = stream.set_write_timeout(Some(PROBE_TIMEOUT));
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => last = Finding::Refused,
            Err(_) => last = Finding::NoAnswer,
        }
    }
    Err(last)
}

/// Connects, sends `hello`, and returns the first bytes the server sends back (empty if it closes or says nothing
/// in time).
fn exchange(target: &Target, hello: &[u8]) -> Result<Vec<u8>, Finding> {
    let mut stream = connect(target)?;
    if stream.write_all(hello).is_err() {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; 512];
    let mut got = 0;
    while got < 16 {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

fn is_tls_record(bytes: &[u8]) -> bool {
    // A handshake (22) or alert (21) record of TLS 1.x.
    bytes.len() >= 2 && matches!(bytes[0], 21 | 22) && bytes[1] == 3
}

fn status_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next().unwrap_or_default().trim().chars().take(80).collect()
}

fn server_name(target: &Target) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from(target.host.clone())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("localhost").expect("a valid name"))
}

fn client_config(alpn: &[u8]) -> Option<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Some(Arc::new(config))
}

/// The bytes of a TLS ClientHello for `target`.
fn client_hello(target: &Target) -> Vec<u8> {
    let Some(config) = client_config(b"h2") else { return Vec::new() };
    let Ok(mut conn) = rustls::ClientConnection::new(config, server_name(target)) else { return Vec::new() };
    let mut hello = Vec::new();
    let _ = conn.write_tls(&mut hello);
    hello
}

/// Whether the TLS server at `target` ends a handshake (ALPN h2) without a client certificate with an alert that
/// asks for one. Under TLS 1.3 the alert comes after the client's side of the handshake, so this writes the HTTP/2
/// preface and reads.
fn refuses_without_client_certificate(target: &Target) -> bool {
    let Ok(stream) = connect(target) else { return false };
    let Some(config) = client_config(b"h2") else { return false };
    let Ok(conn) = rustls::ClientConnection::new(config, server_name(target)) else { return false };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = [0u8; 64];
    let result =
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").and_then(|()| tls.flush()).and_then(|()| tls.read(&mut buf));
    match result {
        Err(e) => matches!(
            e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::AlertReceived(alert)) if client_certificate_alert(*alert)
        ),
        Ok(_) => false,
    }
}

/// `GET /` over HTTP/1.1 (in TLS when `tls`, verifying nothing: only the answer's shape matters). `None` when no
/// HTTP answer came.
fn http_get(target: &Target, tls: bool) -> Option<Finding> {
    let stream = connect(target).ok()?;
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nConnection: close\r\n\r\n", target.authority);
    let mut answer = Vec::new();
    let limit = 16 * 1024;
    if tls {
        let conn = rustls::ClientConnection::new(client_config(b"http/1.1")?, server_name(target)).ok()?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        let written = tls.write_all(request.as_bytes()).and_then(|()| tls.flush());
        let read = written.and_then(|()| (&mut tls).take(limit).read_to_end(&mut answer));
        if let Err(e) = read
            && answer.is_empty()
            && let Some(rustls::Error::AlertReceived(alert)) = e.get_ref().and_then(|e| e.downcast_ref())
            && client_certificate_alert(*alert)
        {
            return Some(Finding::ClientCertRequired);
        }
    } else {
        let mut stream = stream;
        stream.write_all(request.as_bytes()).ok()?;
        let _ = (&mut stream).take(limit).read_to_end(&mut answer);
    }
    if !answer.starts_with(b"HTTP/") {
        return None;
    }
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body.trim())
        && json.get("openapi").is_some()
        && let Some(version) = json.get("version").and_then(|v| v.as_str())
    {
        return Some(Finding::Gateway { version: version.to_string() });
    }
    Some(Finding::Http { status_line: status_line(&answer) })
}

/// Every error in `status`'s source chain, looking inside `io::Error`s too (whose `source()` skips the error they
/// wrap).
fn chain(status: &tonic::Status) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        out.push(e);
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            out.push(inner as &(dyn std::error::Error + 'static));
            next = inner.source();
            continue;
        }
        next = e.source();
    }
    out
}

/// The reason a certificate did not verify, in words.
fn certificate_reason(e: &rustls::CertificateError, target: &Target) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "unknown issuer: it is not signed by a CA micro trusts".into(),
        C::NotValidForName => format!("wrong name: it is not valid for {}", target.host),
        C::NotValidForNameContext { presented, .. } => {
            let names: Vec<String> = presented.iter().map(|n| presented_name(n)).collect();
            format!("wrong name: it is for {}, not {}", names.join(", "), target.host)
        }
        C::Expired | C::ExpiredContext { .. } => "expired: it is no longer valid".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
        C::Revoked => "revoked".into(),
        C::BadSignature => "bad signature".into(),
        other => format!("{other}"),
    }
}

/// A name of a certificate as rustls presents it (`DnsName("x")`), as the user wrote it (`x`).
fn presented_name(name: &str) -> String {
    if let Some(inner) = name.strip_prefix("DnsName(\"").and_then(|n| n.strip_suffix("\")")) {
        return inner.to_string();
    }
    if name.starts_with("IpAddress(") {
        let digits: Vec<&str> = name.split(|c: char| !c.is_ascii_hexdigit()).filter(|d| !d.is_empty()).collect();
        if name.contains("V4") && digits.len() >= 5 {
            return digits[digits.len() - 4..].join(".");
        }
    }
    name.to_string()
}

/// What to do about a certificate that did not verify.
fn certificate_advice(e: &rustls::CertificateError) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => {
            "If the server's certificate is your own (e.g. `micro server --tls self-signed`), pass its CA with \
             --ca-cert FILE, MICRO_CA_CERT, or `micro env add NAME https://… --ca-cert FILE`"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "Use an address with a name the certificate is valid for, or give the server a certificate for this one"
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "The server needs a current certificate (check the clocks, too)"
        }
        _ => "Check the server's certificate, or pass its CA with --ca-cert FILE",
    }
}

/// Whether a TLS alert from the server is how it refuses a missing or unknown client certificate.
fn client_certificate_alert(alert: rustls::AlertDescription) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        alert,
        A::CertificateRequired
            | A::HandshakeFailure
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::AccessDenied
    )
}

const CLIENT_CERT_HINT: &str = "it requires a client certificate signed by its client CA (mTLS): pass --client-cert \
     FILE --client-key FILE (MICRO_CLIENT_CERT, MICRO_CLIENT_KEY), or store them with the env (`micro env add NAME \
     https://… --client-cert FILE --client-key FILE`)";

/// A failed call's status, explained: what was found at `address` and what to do. `None` when the failure is not
/// about the address (a service's own error, a refusal by the proxy, a deadline). May [`probe`] the address.
pub fn explain(status: &tonic::Status, address: &str) -> Option<String> {
    use tonic::Code;
    let target = Target::parse(address).ok()?;
    let failed = format!("Failed to connect to micro server at {address}");
    let message = status.message();
    let http_answer = message.contains("mapped from HTTP status code")
        || message.contains("invalid compression flag")
        || message.contains("while receiving response with status");
    // tonic keeps the transport error as the source of the statuses it makes itself; a connection that broke before
    // the request went out is CANCELLED "operation was canceled" (a deadline is CANCELLED "Timeout expired").
    let transport = std::error::Error::source(status).is_some()
        && match status.code() {
            Code::Unavailable | Code::Unknown | Code::Internal => true,
            Code::Cancelled => !message.contains("Timeout expired"),
            _ => false,
        };
    if !http_answer && !transport {
        return None;
    }
    let errors = chain(status);
    for e in &errors {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            match tls {
                rustls::Error::InvalidCertificate(cert) => {
                    return Some(format!(
                        "{failed}: the server's TLS certificate does not verify: {}. {}",
                        certificate_reason(cert, &target),
                        certificate_advice(cert)
                    ));
                }
                rustls::Error::AlertReceived(alert) if client_certificate_alert(*alert) => {
                    return Some(format!(
                        "{failed}: the server refused the TLS handshake ({alert:?}): {CLIENT_CERT_HINT}"
                    ));
                }
                rustls::Error::AlertReceived(alert) => {
                    return Some(format!("{failed}: the server refused the TLS handshake ({alert:?})"));
                }
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    return Some(not_tls(&failed, &target));
                }
                _ => return Some(format!("{failed}: TLS failed: {tls}")),
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused => return Some(refused(&failed, &target)),
                K::TimedOut => return Some(no_answer(&failed, &target)),
                _ => {}
            }
        }
        let text = e.to_string();
        if text.contains("HTTP/2 was not negotiated") {
            return Some(format!(
                "{failed}: the server at {} speaks TLS but not HTTP/2 (no ALPN h2), so it is not a micro proxy: \
                 check the port (the proxy listens on 8081 by default)",
                target.authority
            ));
        }
        if text.contains("failed to lookup address") || text.contains("Name or service not known") {
            return Some(format!("{failed}: the host {} is not known (DNS): check the address", target.host));
        }
        if text.contains("timed out") {
            return Some(no_answer(&failed, &target));
        }
    }
    let finding = probe(&target);
    Some(match finding {
        Finding::Refused => refused(&failed, &target),
        Finding::NoAnswer => no_answer(&failed, &target),
        Finding::UnknownHost => format!("{failed}: the host {} is not known (DNS): check the address", target.host),
        Finding::Tls if !target.tls => {
            format!("{failed}: the server at {} speaks TLS: use https://{}", target.authority, target.authority)
        }
        Finding::H2c if target.tls => not_tls(&failed, &target),
        Finding::ClientCertRequired => {
            format!("{failed}: the server at {} refused the connection: {CLIENT_CERT_HINT}", target.authority)
        }
        Finding::Gateway { version } => format!(
            "{failed}: that is micro's HTTP API gateway (micro {version}), not its gRPC proxy; the proxy is on \
             another port ({}:8081 by default, `micro server --proxy-address`): use that",
            bracket(&target.host)
        ),
        Finding::Http { status_line } => format!(
            "{failed}: an HTTP server that is not micro answered there ({status_line}). Is `micro server` running \
             at {}? Check the port: the proxy listens on 8081 by default",
            target.authority
        ),
        _ => format!(
            "{failed}: the server there did not answer as a micro proxy ({}). Is `micro server` running at {}?",
            message.chars().take(160).collect::<String>(),
            target.authority
        ),
    })
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_string() }
}

fn refused(failed: &str, target: &Target) -> String {
    format!(
        "{failed}: nothing is listening at {} (connection refused). Is `micro server` running at {}?",
        target.authority, target.authority
    )
}

fn no_answer(failed: &str, target: &Target) -> String {
    format!(
        "{failed}: no answer from {} in time. Is `micro server` running at {}, and may you reach it (firewall)?",
        target.authority, target.authority
    )
}

fn not_tls(failed: &str, target: &Target) -> String {
    format!(
        "{failed}: the server at {} does not speak TLS: use http://{} (or check the port)",
        target.authority, target.authority
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on a thread that answers every connection with `answer` after reading a little.
    fn answering(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(answer);
            }
        });
        addr
    }

    #[test]
    fn probes_tell_servers_apart() {
        let t = |addr: &str| Target::parse(addr).unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        assert_eq!(probe(&t(&closed)), Finding::Refused);

        let http = answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(probe(&t(&http)), Finding::Http { status_line: "HTTP/1.1 404 Not Found".into() });

        let gateway = answering(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{\"version\":\"9.9.9\",\"openapi\":\"/openapi.json\"}",
        );
        assert_eq!(probe(&t(&gateway)), Finding::Gateway { version: "9.9.9".into() });

        // A TLS alert record in answer to anything: a TLS server (protocol_version), or one that requires a client
        // certificate (certificate_required).
        let tls = answering(&[21, 3, 3, 0, 2, 2, 70]);
        assert_eq!(probe(&t(&tls)), Finding::Tls);
        let mtls = answering(&[21, 3, 3, 0, 2, 2, 116]);
        assert_eq!(probe(&t(&mtls)), Finding::ClientCertRequired);

        // A SETTINGS frame in answer to anything: plaintext HTTP/2.
        let h2c = answering(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(probe(&t(&h2c)), Finding::H2c);
    }

    #[test]
    fn statuses_from_servers_are_not_about_the_address() {
        // No source, no HTTP mapping: a proxy's or service's own answer.
        for status in [
            tonic::Status::unavailable("service \"x\" has no node"),
            tonic::Status::internal("boom"),
            tonic::Status::unimplemented(""),
        ] {
            assert_eq!(explain(&status, "127.0.0.1:1"), None, "{status:?}");
        }
    }

    #[test]
    fn http_answers_are_explained_by_a_probe() {
        let http = answering(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let status = tonic::Status::unimplemented("grpc-status header missing, mapped from HTTP status code 404");
        let message = explain(&status, &http).unwrap();
        assert!(
            message.contains("an HTTP server that is not micro answered there (HTTP/1.1 404 Not Found)"),
            "{message}"
        );
        assert!(message.starts_with(&format!("Failed to connect to micro server at {http}")), "{message}");
    }
}
