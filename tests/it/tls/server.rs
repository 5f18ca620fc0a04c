//! The server side of TLS (issue 11): `micro server --tls-cert/--tls-key`, `--tls self-signed` and
//! `--tls-client-ca`, against real peers: `curl --cacert` on the gateway, Python's grpcio with
//! `ssl_channel_credentials` on the proxy, tonic and a tokio-rustls client. Certificates are made in the tests with
//! rcgen ([`TestCa`]).

use crate::support::{
    Http, Platform, TestCa, block_on, channel, curl, peer_certificate, server_that_stops, tls_client_config,
    tls_connect, write_renamed,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `tests/it/fixtures/tls_client.py`.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/tls_client.py")
}

/// Runs the Python grpcio client against the platform's TLS proxy, trusting `ca`, with `args` (the client
/// certificate flags, then the command); returns its exit code and the JSON lines it printed.
fn grpcio_with(p: &Platform, ca: &Path, args: &[&str]) -> (i32, Vec<Value>) {
    let out = Command::new("python3")
        .arg(script())
        .arg(&p.addr)
        .arg(ca)
        .args(args)
        .output()
        .expect("python3 runs (the TLS tests need python3 with grpcio: pip install grpcio)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the TLS tests need grpcio for python3: pip install grpcio\n{stderr}"
    );
    let docs = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\nstderr:\n{stderr}")))
        .collect();
    (out.status.code().unwrap_or(-1), docs)
}

/// [`grpcio_with`] trusting the platform's CA.
fn grpcio(p: &Platform, args: &[&str]) -> (i32, Vec<Value>) {
    grpcio_with(p, &p.tls().ca, args)
}

/// `curl --cacert <the platform's CA> ARGS`.
fn curl_tls(p: &Platform, args: &[&str]) -> Http {
    let ca = p.tls().ca.display().to_string();
    curl(["--cacert", ca.as_str()].iter().chain(args))
}

/// The admin's access token, from an `auth.Auth/Token` call of grpcio over TLS.
fn grpcio_login(p: &Platform) -> String {
    let (code, docs) = grpcio(p, &["token", "admin", "micro"]);
    assert_eq!(code, 0, "{docs:?}");
    let token = docs[0]["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {docs:?}");
    token
}

/// The DER of the first certificate of a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let first = rustls_pki_types::CertificateDer::pem_file_iter(pem).expect("read a PEM file").next();
    first.expect("a certificate").expect("a valid certificate").to_vec()
}

#[test]
fn curl_reaches_the_gateway_over_https_with_http1_and_h2_and_never_in_clear() {
    let p = Platform::start_tls(&[]);
    let api = p.api_url();
    assert!(api.starts_with("https://"), "{api}");
    let rsp = curl_tls(&p, &[&format!("{api}/")]).status(200);
    assert_eq!(rsp.json()["version"], env!("CARGO_PKG_VERSION"), "{rsp}");

    // ALPN: curl gets HTTP/2 when it asks for it, and HTTP/1.1 when it asks only for that.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let rsp = curl_tls(&p, &[flag, "-o", "/dev/null", "-w", "%{http_version}", &format!("{api}/")]);
        assert_eq!(rsp.body, version, "{rsp}");
    }

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = curl([format!("http://{}/", p.api())]);
    assert_eq!(plain.status, 0, "{plain}");
    // A CA that did not issue the server's certificate: curl refuses it.
    let other = TestCa::new(&p.path("other"), "other");
    let rsp = curl(["--cacert", &other.pem.display().to_string(), &format!("{api}/")]);
    assert_eq!(rsp.status, 0, "{rsp}");
    assert!(rsp.stderr.to_lowercase().contains("certificate"), "{rsp}");
}

#[test]
fn grpcio_calls_the_proxy_over_tls_and_the_gateway_takes_its_token() {
    let p = Platform::start_tls(&[]);

    // Health needs no account.
    let (code, docs) = grpcio(&p, &["health"]);
    assert_eq!((code, &docs[..]), (0, &[serde_json::json!({"status": "SERVING"})][..]));
    // Reflection, a bidi stream, lists the core services.
    let (code, docs) = grpcio(&p, &["reflect"]);
    assert_eq!(code, 0, "{docs:?}");
    let services: Vec<&str> =
        docs[0]["services"].as_array().expect("services").iter().flat_map(|s| s.as_str()).collect();
    for name in ["auth.Auth", "grpc.health.v1.Health", "store.Store", "grpc.reflection.v1.ServerReflection"] {
        assert!(services.contains(&name), "{name} in {services:?}");
    }
    // A login.
    let token = grpcio_login(&p);

    // tonic over TLS too (the harness's channel trusts the platform's CA).
    let status = block_on(async {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&p).await);
        health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|r| r.into_inner().status)
    });
    assert_eq!(
        status.expect("a health check over TLS"),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The gateway over TLS: a JSON POST with the token writes, and a server stream arrives as Server-Sent Events.
    let api = p.api_url();
    let auth = format!("Authorization: Bearer {token}");
    let json = "Content-Type: application/json";
    let write = format!("{api}/store/Store/Write");
    let body = r#"{"record":{"key":"over-tls","value":"aGk="}}"#;
    let rsp = curl_tls(&p, &["-H", &auth, "-H", json, "-d", body, &write]);
    assert_eq!(rsp.status, 200, "{rsp}");
    let denied = curl_tls(&p, &["-H", json, "-d", body, &write]);
    assert_eq!(denied.status, 401, "without the token: {denied}");
    let list = format!("{api}/store/Store/List");
    let rsp = curl_tls(&p, &["-N", "-H", &auth, "-H", "Accept: text/event-stream", &list]).status(200);
    assert!(rsp.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")), "{rsp}");
    let keys: Vec<Value> = rsp
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap_or_else(|e| panic!("bad event data ({e}): {d}\n{rsp}")))
        .collect();
    assert!(keys.iter().any(|k| k["keys"].as_array().is_some_and(|a| a.contains(&"over-tls".into()))), "{rsp}");
}

#[test]
fn the_proxy_still_sees_the_peer_address_over_tls() {
    // Failed logins are counted per source, and a correct secret from loopback is always accepted: that holds
    // only if the proxy knows the TLS client comes from 127.0.0.1 (an unknown source would be held back after
    // five failures).
    let p = Platform::start_tls(&[]);
    let mut args = vec!["token"];
    for _ in 0..7 {
        args.extend(["admin", "wrong"]);
    }
    args.extend(["admin", "micro"]);
    let (_, docs) = grpcio(&p, &args);
    assert_eq!(docs.len(), 8, "{docs:?}");
    assert!(
        docs[..7].iter().all(|d| d["error"] == "UNAUTHENTICATED" || d["error"] == "RESOURCE_EXHAUSTED"),
        "{docs:?}"
    );
    assert!(docs[7]["access_token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{docs:?}");
}

#[test]
fn a_plaintext_h2_client_is_not_served_by_the_tls_proxy() {
    let p = Platform::start_tls(&[]);
    let plaintext = block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
            .expect("a URL")
            .timeout(Duration::from_secs(10))
            .connect()
            .await;
        match channel {
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status),
        }
    });
    assert!(plaintext.is_err(), "a plaintext client got an answer: {plaintext:?}");
    // …while the same call over TLS works.
    assert_eq!(grpcio(&p, &["health"]).0, 0);
}

#[test]
fn mtls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let dir = tempfile::Builder::new().prefix("micro-it-").tempdir().expect("a temp dir");
    let clients = TestCa::new(dir.path(), "clients");
    let (cert, key) = clients.client("alice");
    let strangers = TestCa::new(&dir.path().join("strangers"), "strangers");
    let (stranger_cert, stranger_key) = strangers.client("mallory");
    let p = Platform::start_tls(&[("MICRO_TLS_CLIENT_CA", &clients.pem.display().to_string())]);
    assert!(p.server_log().contains("mTLS"), "{}", p.server_log());
    let root = format!("{}/", p.api_url());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());

    // The gateway: refused at the handshake without a certificate, or with one of another CA.
    let rsp = curl_tls(&p, &[&root]);
    assert_eq!(rsp.status, 0, "no certificate: {rsp}");
    let (sc, sk) = (stranger_cert.display().to_string(), stranger_key.display().to_string());
    let rsp = curl_tls(&p, &["--cert", &sc, "--key", &sk, &root]);
    assert_eq!(rsp.status, 0, "a stranger's certificate: {rsp}");
    let rsp = curl_tls(&p, &["--cert", &cert_s, "--key", &key_s, &root]).status(200);
    assert_eq!(rsp.json()["version"], env!("CARGO_PKG_VERSION"), "{rsp}");

    // The proxy, with grpcio.
    let (code, docs) = grpcio(&p, &["health"]);
    assert_eq!(code, 1, "no certificate: {docs:?}");
    assert_eq!(docs[0]["error"], "UNAVAILABLE", "{docs:?}");
    let (code, docs) = grpcio(&p, &["--cert", &cert_s, "--key", &key_s, "health"]);
    assert_eq!((code, &docs[0]["status"]), (0, &Value::from("SERVING")), "{docs:?}");

    // A rustls client: the server's refusal arrives as an alert once the TLS 1.3 handshake is done.
    let (addr, ca) = (p.addr.clone(), p.tls().ca.clone());
    let refused = block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = tls_connect(&addr, tls_client_config(&ca, None, &["h2"])).await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    });
    let e = refused.expect_err("the server refuses a client without a certificate");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[test]
fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let p = Platform::start_tls(&[]);
    let tls = p.tls();
    let issuer = tls.issuer.as_ref().expect("a test CA");
    let first = peer_certificate(&p.addr, &tls.ca).expect("a TLS handshake");
    assert_eq!(first, der(&tls.cert));

    // A new certificate (another CN and key) renamed into place, as certbot or cert-manager do.
    issuer.write_server("micro rotated server", &tls.cert, &tls.key);
    let rotated = der(&tls.cert);
    assert_ne!(rotated, first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = peer_certificate(&p.addr, &tls.ca).expect("a TLS handshake during the rotation");
        if served == rotated {
            break;
        }
        assert_eq!(served, first, "the old or the new certificate, nothing else");
        assert!(Instant::now() < deadline, "the proxy still serves the old certificate after 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The gateway shares the certificate.
    let rsp = curl_tls(&p, &["-v", &format!("{}/", p.api_url())]).status(200);
    assert!(rsp.stderr.contains("micro rotated server"), "{rsp}");

    // A broken file keeps the current certificate, with a warning that names it.
    write_renamed(&tls.cert, "-----BEGIN CERTIFICATE-----\nbroken\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.server_log().contains("still serving the previous TLS certificate") {
        let _ = peer_certificate(&p.addr, &tls.ca);
        assert!(Instant::now() < deadline, "no warning about the broken file:\n{}", p.server_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.server_log().contains(&tls.cert.display().to_string()), "{}", p.server_log());
    assert_eq!(peer_certificate(&p.addr, &tls.ca).expect("still served"), rotated);
}

#[test]
fn self_signed_makes_a_ca_in_the_data_dir_that_clients_trust_across_restarts() {
    let mut p = Platform::start_tls(&[("MICRO_TLS", "self-signed")]);
    let ca = p.tls().ca.clone();
    assert!(ca.ends_with("data/tls/ca.pem"), "{}", ca.display());
    let ca_pem = std::fs::read(&ca).expect("the CA file exists");
    #[cfg(unix)]
    for key in ["ca.key", "server.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca.with_file_name(key)).expect("a key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The log names the CA and its fingerprint (as `openssl x509 -fingerprint -sha256` prints it).
    use sha2::Digest;
    let fingerprint = sha2::Sha256::digest(der(&ca)).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let log = p.server_log();
    let line = log.lines().find(|l| l.contains("sha256=")).unwrap_or_else(|| panic!("no fingerprint:\n{log}"));
    assert!(line.contains(&ca.display().to_string()) && line.contains(&fingerprint), "{line}");

    let rsp = curl_tls(&p, &[&format!("{}/", p.api_url())]).status(200);
    assert_eq!(rsp.json()["version"], env!("CARGO_PKG_VERSION"), "{rsp}");
    assert_eq!(grpcio(&p, &["health"]).0, 0);

    // A restart keeps the CA, so what clients trust still works.
    p.restart_server(false);
    assert_eq!(std::fs::read(&ca).expect("the CA file"), ca_pem, "the CA was kept");
    curl_tls(&p, &[&format!("{}/", p.api_url())]).status(200);
}

#[test]
fn bad_tls_files_stop_the_server_with_a_message_naming_the_file() {
    let dir = tempfile::Builder::new().prefix("micro-it-").tempdir().expect("a temp dir");
    let ca = TestCa::new(dir.path(), "test");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    ca.write_server("micro test server", &cert, &key);
    let (_, other_key) = ca.issue("other", &["localhost"], false);
    let other = dir.path().join("other.key");
    std::fs::write(&other, other_key).expect("write a key");
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.display().to_string();

    let (code, stderr) = server_that_stops(&["--tls-cert", &s(&missing), "--tls-key", &s(&key)]);
    assert_eq!(code, Some(128), "{stderr}");
    assert!(stderr.contains("cannot read the TLS certificate") && stderr.contains(&s(&missing)), "{stderr}");

    let (code, stderr) = server_that_stops(&["--tls-cert", &s(&key), "--tls-key", &s(&key)]);
    assert_eq!(code, Some(128), "{stderr}");
    assert!(stderr.contains(&s(&key)) && stderr.contains("no PEM certificate"), "{stderr}");

    let (code, stderr) = server_that_stops(&["--tls-cert", &s(&cert), "--tls-key", &s(&other)]);
    assert_eq!(code, Some(128), "{stderr}");
    assert!(stderr.contains("does not belong to the certificate") && stderr.contains(&s(&other)), "{stderr}");

    let (code, stderr) =
        server_that_stops(&["--tls-cert", &s(&cert), "--tls-key", &s(&key), "--tls-client-ca", &s(&missing)]);
    assert_eq!(code, Some(128), "{stderr}");
    assert!(stderr.contains("client CA") && stderr.contains(&s(&missing)), "{stderr}");

    // A certificate without its key is a usage error: bad input, as in every command.
    let (code, stderr) = server_that_stops(&["--tls-cert", &s(&cert)]);
    assert_eq!(code, Some(128), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}
