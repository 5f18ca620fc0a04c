//! TLS on the proxy → service hop (issue 11, requirement 3): a service given `MICRO_TLS_CERT`/`MICRO_TLS_KEY` serves
//! TLS and registers `tls=true`; the proxy dials it over TLS only, verified against `--tls-upstream-ca`; and the
//! runtime gives the services it starts the proxy's `https://` address and CA.

use crate::support::{self, Platform, Proc, TestCa};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A CA for services (not the server's), and a certificate for 127.0.0.1 that it issued: (CA, cert file, key file).
fn service_pki(dir: &Path) -> (TestCa, PathBuf, PathBuf) {
    let ca = TestCa::new(dir, "services");
    let (cert, key) = (dir.join("helloworld.pem"), dir.join("helloworld.key"));
    ca.write_server("helloworld", &cert, &key);
    (ca, cert, key)
}

/// helloworld on a TLS platform, reaching the proxy over `https://` (`MICRO_CA_CERT`) and serving TLS itself with
/// `cert` and `key`.
fn tls_helloworld(p: &Platform, cert: &Path, key: &Path) -> Proc {
    let (url, ca) = (p.tls().url.clone(), p.tls().ca.display().to_string());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    p.spawn_service(
        "helloworld",
        &[("MICRO_PROXY", &url), ("MICRO_CA_CERT", &ca), ("MICRO_TLS_CERT", &cert), ("MICRO_TLS_KEY", &key)],
    )
}

/// The nodes of a service (`micro get service NAME -o json`).
fn nodes(p: &Platform, name: &str) -> Vec<Value> {
    let run = p.micro(["get", "service", name, "-o", "json"]).ok();
    let json = run.json();
    let services = match json {
        Value::Array(list) => list,
        one => vec![one],
    };
    services.iter().flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default()).collect()
}

#[test]
fn the_proxy_dials_a_service_that_serves_tls_over_tls() {
    let pki = tempfile::tempdir().expect("a temp dir");
    let (services_ca, cert, key) = service_pki(pki.path());
    let upstream = services_ca.pem.display().to_string();
    let p = Platform::start_tls(&[("MICRO_TLS_UPSTREAM_CA", &upstream)]);
    p.token(); // logs the admin in
    let _helloworld = tls_helloworld(&p, &cert, &key);

    // It registered through the TLS proxy, advertising TLS.
    let nodes = nodes(&p, "helloworld");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["metadata"]["tls"], "true", "{nodes:?}");
    // The node serves TLS with its certificate (verified with the services' CA for 127.0.0.1).
    let address = nodes[0]["address"].as_str().expect("a node address").to_string();
    let served = support::peer_certificate(&address, &services_ca.pem).expect("the node serves TLS");
    assert_eq!(served, pem_der(&cert));

    // The proxy reaches it over TLS (a plaintext dial of a TLS listener fails the preface).
    let run = p.micro(["helloworld", "call", "--name=x"]).ok();
    assert_eq!(run.json()["msg"], "Hello x");
    let run = p.micro(["helloworld", "stream", "--count", "2", "-o", "raw"]).ok();
    assert_eq!(run.stdout, "{\"count\":\"0\"}\n{\"count\":\"1\"}\n");
}

#[test]
fn a_service_whose_certificate_the_proxy_does_not_trust_is_never_called_in_plaintext() {
    let pki = tempfile::tempdir().expect("a temp dir");
    let (_services_ca, cert, key) = service_pki(pki.path());
    // No --tls-upstream-ca: the services' CA is unknown to the proxy.
    let p = Platform::start_tls(&[]);
    p.token(); // logs the admin in
    let _helloworld = tls_helloworld(&p, &cert, &key);
    assert_eq!(nodes(&p, "helloworld")[0]["metadata"]["tls"], "true");

    let run = p.micro(["helloworld", "call", "--name=x"]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(!run.stdout.contains("Hello x"), "{}", run.snapshot());
    assert!(
        run.stderr.contains("UnknownIssuer") && run.stderr.contains("--tls-upstream-ca"),
        "the reason and what to do: {}",
        run.snapshot()
    );
}

#[test]
fn the_runtime_gives_its_services_the_https_proxy_and_its_ca() {
    let p = Platform::start_tls(&[("MICRO_TLS", "self-signed"), ("MICRO_RUNTIME_KILL_GRACE", "3s")]);
    p.token(); // logs the admin in
    let dir = p.path("hw");
    std::fs::create_dir_all(&dir).expect("a service dir");
    let hello = support::example_bin("helloworld");
    p.micro(["run", "--name", "hw", "--command", &hello.to_string_lossy(), &dir.to_string_lossy()]).ok();
    // The proxy serves TLS only: the service registered, so it reached it over https:// and trusted its CA.
    p.wait_until("hw answers", |p| p.micro(["hw", "helloworld", "call", "--name=Ann"]).code == 0);
    assert_eq!(p.micro(["hw", "helloworld", "call", "--name=Ann"]).ok().json()["msg"], "Hello Ann");
    let logs = p.micro(["logs", "-n", "200", "hw"]).ok().stdout;
    let proxy = format!("proxy={}", p.tls().url);
    assert!(logs.contains(&proxy), "the service's log names {proxy}:\n{logs}");
    p.micro(["kill", "hw"]).ok();
}

#[test]
fn a_service_reaches_the_building_blocks_through_the_tls_proxy() {
    // notes uses `Client::from_env()` (store, config, broker, events) with MICRO_PROXY=https://… and MICRO_CA_CERT.
    let p = Platform::start_tls(&[]);
    p.token(); // logs the admin in
    let account = ["auth", "create", "account", "notes-svc", "--secret", "notes-pw", "--scopes", "service"];
    p.micro(account.iter().copied().chain(["--type", "service"])).ok();
    let (url, ca) = (p.tls().url.clone(), p.tls().ca.display().to_string());
    let _notes = p.spawn_service(
        "notes",
        &[
            ("MICRO_PROXY", &url),
            ("MICRO_CA_CERT", &ca),
            ("MICRO_AUTH_ID", "notes-svc"),
            ("MICRO_AUTH_SECRET", "notes-pw"),
        ],
    );
    let created = p.micro(["notes", "create", "--title=first", "--text=hello"]).ok().json();
    let id = created["note"]["id"].as_str().expect("a note id").to_string();
    let got = p.micro(["notes", "get", &format!("--id={id}")]).ok().json();
    assert_eq!(got["note"]["text"], "hello", "{got}");
}

/// The DER of the first certificate of a PEM file.
fn pem_der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .expect("read the certificate")
        .next()
        .expect("a certificate")
        .expect("a PEM certificate")
        .to_vec()
}
