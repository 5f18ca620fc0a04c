//! TLS on the client side: the CLI and the service library reaching a proxy over `https://`, the CA per env, and
//! every downgrade, verification failure and wrong address with its message and exit code (issue 11, requirements 2
//! to 4). Certificates are made in the test with rcgen; servers are the real `micro server`, or small listeners of
//! the test where a real server cannot be made to misbehave (a certificate for another name, an expired one, an
//! unrelated HTTP server).

use crate::support::{Cli, Dirs, Platform, closed_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA of the test, which signs server and client certificates.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("micro client test CA {name}"));
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA"))
    }

    /// Writes the CA's certificate to `path`.
    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.0.pem()).expect("write the CA");
        path.to_path_buf()
    }

    /// A certificate for `names` (client when `client`), expired a few years ago when `expired`: (cert, key) PEM.
    fn issue(&self, names: &[&str], client: bool, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.0).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A TLS listener on 127.0.0.1 (ALPN h2) that presents `cert` and completes handshakes, nothing more: enough for a
/// client's certificate check to pass or fail. Returns `127.0.0.1:PORT`.
fn tls_listener((cert, key): (String, String)) -> String {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("a certificate");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("an address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else { continue };
            while conn.is_handshaking() {
                if conn.complete_io(&mut stream).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

/// An HTTP/1.1 server that answers everything with a 404. Returns `127.0.0.1:PORT`.
fn http_404_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("an address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ =
                stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
        }
    });
    addr
}

/// The CLI against `addr` with fresh directories and no CA.
fn cli<'a>(addr: &str, dirs: &Dirs, args: impl IntoIterator<Item = &'a str>) -> Cli {
    Cli::new(addr, dirs, args)
}

/// A TLS platform with helloworld registered through the TLS proxy (`MICRO_PROXY=https://…`, `MICRO_CA_CERT`).
fn tls_platform_with_helloworld() -> (Platform, crate::support::Proc) {
    let p = Platform::start_tls(&[]);
    let (url, ca) = (p.tls().url.clone(), p.tls().ca.display().to_string());
    let service = p.spawn_service("helloworld", &[("MICRO_PROXY", &url), ("MICRO_CA_CERT", &ca)]);
    (p, service)
}

#[test]
fn login_services_a_call_and_a_stream_over_https() {
    let (p, _helloworld) = tls_platform_with_helloworld();
    let ca = p.tls().ca.display().to_string();

    // The harness's CLI has MICRO_PROXY=https://… and MICRO_CA_CERT.
    let run = p.cli(["login", "--username", "admin", "--password-stdin"]).stdin("micro\n").run().ok();
    assert_eq!(run.stdout, "Successfully logged in.\n");
    let run = p.micro(["services"]).ok();
    assert!(run.stdout.lines().any(|l| l == "helloworld"), "{}", run.stdout);
    let run = p.micro(["helloworld", "--name=Jane"]).ok();
    assert_eq!(run.json()["msg"], "Hello Jane");
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"John"}"#]).ok();
    assert_eq!(run.json()["msg"], "Hello John");
    let run = p.micro(["helloworld", "stream", "--count", "3", "-o", "raw"]).ok();
    assert_eq!(run.stdout, "{\"count\":\"0\"}\n{\"count\":\"1\"}\n{\"count\":\"2\"}\n");
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);

    // --ca-cert instead of MICRO_CA_CERT.
    let run = p.cli(["--ca-cert", &ca, "helloworld", "--name=Flag"]).env_remove("MICRO_CA_CERT").run().ok();
    assert_eq!(run.json()["msg"], "Hello Flag");

    // No CA: the certificate does not verify, exit 4, and nothing falls back to plaintext.
    let run = p.cli(["services"]).env_remove("MICRO_CA_CERT").run().code(4);
    assert!(run.stderr.contains("does not verify: unknown issuer"), "{}", run.stderr);
    assert!(run.stderr.contains("--ca-cert"), "{}", run.stderr);

    // --insecure-skip-verify (or its variable) works, and warns on every run.
    for cli in [
        p.cli(["--insecure-skip-verify", "helloworld", "--name=Skip"]),
        p.cli(["helloworld", "--name=Skip"]).env("MICRO_INSECURE_SKIP_VERIFY", "true"),
    ] {
        let run = cli.env_remove("MICRO_CA_CERT").run().ok();
        assert_eq!(run.json()["msg"], "Hello Skip");
        assert!(run.stderr.contains("warning: --insecure-skip-verify"), "{}", run.stderr);
        assert_eq!(run.stderr.matches("warning").count(), 1, "once per run: {}", run.stderr);
    }
}

#[test]
fn an_env_added_with_its_ca_keeps_working_when_the_file_moves() {
    let (p, _helloworld) = tls_platform_with_helloworld();
    let url = p.tls().url.clone();
    let dirs = Dirs::new();
    let ca = dirs.path().join("ca.pem");
    std::fs::copy(&p.tls().ca, &ca).expect("copy the CA");
    let ca_arg = ca.display().to_string();
    let env_cli = |args: &[&str]| p.cli_in(&dirs, args.to_vec()).env_remove("MICRO_PROXY").env_remove("MICRO_CA_CERT");

    env_cli(&["env", "add", "remote", &url, "--ca-cert", &ca_arg, "--description", "over TLS"]).run().ok();
    let run = env_cli(&["env"]).run().ok();
    let row = run.stdout.lines().find(|l| l.contains("remote")).unwrap_or_default().to_string();
    assert!(row.contains(&url) && row.contains("TLS (own CA)"), "{}", run.stdout);
    std::fs::remove_file(&ca).expect("remove the CA file");

    let run = env_cli(&["-e", "remote", "login", "--username", "admin", "--password-stdin"]).stdin("micro").run().ok();
    assert_eq!(run.stdout, "Successfully logged in.\n");
    let run = env_cli(&["-e", "remote", "helloworld", "--name=Env"]).run().ok();
    assert_eq!(run.json()["msg"], "Hello Env");
    env_cli(&["env", "set", "remote"]).run().ok();
    let run = env_cli(&["helloworld", "stream", "--count", "1", "-o", "raw"]).run().ok();
    assert_eq!(run.stdout, "{\"count\":\"0\"}\n");

    // The env's CA is a CA for TLS addresses only.
    let run = env_cli(&["env", "add", "plain", "127.0.0.1:1", "--ca-cert", &p.tls().ca.display().to_string()]).run();
    let run = run.code(128);
    assert!(run.stderr.contains("are for TLS addresses"), "{}", run.stderr);
}

#[test]
fn tls_and_plaintext_never_mix() {
    // A plaintext address of a TLS server.
    let p = Platform::start_tls(&[]);
    let dirs = Dirs::new();
    let run = cli(&p.addr, &dirs, ["services"]).run().code(4);
    assert!(
        run.stderr.contains(&format!("the server at {} speaks TLS: use https://{}", p.addr, p.addr)),
        "{}",
        run.stderr
    );
    let run = cli(&p.addr, &dirs, ["login", "--username", "admin", "--password-stdin"]).stdin("micro").run().code(4);
    assert!(run.stderr.contains("use https://"), "{}", run.stderr);

    // An https address of a plaintext server.
    let plain = Platform::start();
    let https = format!("https://{}", plain.addr);
    let run = cli(&https, &dirs, ["services"]).env("MICRO_CA_CERT", &p.tls().ca.display().to_string()).run().code(4);
    assert!(
        run.stderr.contains(&format!("the server at {} does not speak TLS: use http://{}", plain.addr, plain.addr)),
        "{}",
        run.stderr
    );
    let run = cli(&https, &dirs, ["login", "--username", "admin", "--password-stdin"]).stdin("micro").run().code(4);
    assert!(run.stderr.contains("does not speak TLS"), "{}", run.stderr);
}

#[test]
fn certificates_that_do_not_verify_exit_4_with_the_reason() {
    let dirs = Dirs::new();
    let ca = Ca::new("verify");
    let ca_file = ca.write(&dirs.path().join("ca.pem"));
    let ca_arg = ca_file.display().to_string();
    let cases = [
        ("a trusted certificate", ca.issue(&["127.0.0.1", "localhost"], false, false), None),
        ("an unknown issuer", Ca::new("other").issue(&["127.0.0.1"], false, false), Some("unknown issuer")),
        ("another name", ca.issue(&["other.example"], false, false), Some("wrong name: it is for other.example")),
        ("an expired certificate", ca.issue(&["127.0.0.1"], false, true), Some("expired")),
    ];
    for (what, identity, failure) in cases {
        let addr = format!("https://{}", tls_listener(identity));
        let run = cli(&addr, &dirs, ["services"]).env("MICRO_CA_CERT", &ca_arg).run();
        match failure {
            // The handshake passes; the listener then says nothing, which is not a certificate failure.
            None => assert!(!run.stderr.contains("does not verify"), "{what}: {}", run.stderr),
            Some(reason) => {
                let run = run.code(4);
                assert!(
                    run.stderr.contains(&format!("Failed to connect to micro server at {addr}")),
                    "{what}: {}",
                    run.stderr
                );
                assert!(run.stderr.contains(&format!("does not verify: {reason}")), "{what}: {}", run.stderr);
            }
        }
    }
}

#[test]
fn wrong_addresses_say_what_is_there() {
    let p = Platform::start();
    let dirs = Dirs::new();

    // The API gateway's port.
    let api = p.api();
    let run = cli(&api, &dirs, ["services"]).run().code(4);
    assert!(run.stderr.contains("that is micro's HTTP API gateway"), "{}", run.stderr);
    assert!(run.stderr.contains("the proxy is on another port (127.0.0.1:8081 by default"), "{}", run.stderr);
    assert!(!run.stderr.contains("compression flag"), "{}", run.stderr);

    // An HTTP server that is not micro.
    let http = http_404_server();
    let run = cli(&http, &dirs, ["services"]).run().code(4);
    assert!(
        run.stderr.contains("an HTTP server that is not micro answered there (HTTP/1.1 404 Not Found)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("Is `micro server` running at {http}?")), "{}", run.stderr);
    assert!(!run.stderr.contains("Registry.ListServices"), "{}", run.stderr);

    // Nothing listening.
    let closed = format!("127.0.0.1:{}", closed_port());
    let run = cli(&closed, &dirs, ["helloworld", "--name=Jane"]).run().code(4);
    assert!(run.stderr.contains(&format!("nothing is listening at {closed} (connection refused)")), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("Is `micro server` running at {closed}?")), "{}", run.stderr);
}

#[test]
fn the_tls_gateway_port_is_recognised_too() {
    let p = Platform::start_tls(&[]);
    let dirs = Dirs::new();
    let api = format!("https://{}", p.api());
    let run = cli(&api, &dirs, ["services"]).env("MICRO_CA_CERT", &p.tls().ca.display().to_string()).run().code(4);
    assert!(run.stderr.contains("that is micro's HTTP API gateway"), "{}", run.stderr);
}

/// A non-loopback address of this machine, if it has one.
fn machine_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?; // no packet is sent
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn passwords_and_tokens_never_go_in_plaintext_to_a_remote_address() {
    let dirs = Dirs::new();
    // 192.0.2.1 is a documentation address: the refusal comes before any connection.
    let remote = "192.0.2.1:8081";
    let run = cli(remote, &dirs, ["login", "--username", "admin", "--password-stdin"]).stdin("micro").run().code(1);
    assert!(
        run.stderr.contains(&format!("Refusing to send a password or token in plaintext to {remote}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("https://192.0.2.1:8081") && run.stderr.contains("--plaintext"), "{}", run.stderr);
    let run = cli(remote, &dirs, ["services"]).env("MICRO_AUTH_TOKEN", "a-token").run().code(1);
    assert!(run.stderr.contains("Refusing to send"), "{}", run.stderr);

    // An env added with --plaintext says so loudly, once, and lets the password go.
    let Some(ip) = machine_address() else { return };
    let far = format!("{ip}:{}", closed_port());
    let add = cli(&far, &dirs, ["env", "add", "lan", &far, "--plaintext"]).env_remove("MICRO_PROXY").run().ok();
    assert!(add.stderr.contains(&format!("sends passwords and tokens IN PLAINTEXT to {far}")), "{}", add.stderr);
    let run = cli(&far, &dirs, ["env"]).env_remove("MICRO_PROXY").run().ok();
    assert!(run.stdout.contains("plaintext (allowed)"), "{}", run.stdout);
    assert!(!run.stderr.contains("PLAINTEXT"), "only when the env is added: {}", run.stderr);
    let login = cli(&far, &dirs, ["-e", "lan", "login", "--username", "admin", "--password-stdin"])
        .env_remove("MICRO_PROXY")
        .stdin("micro")
        .run();
    // Nothing listens there, so the login fails to connect: it was not refused.
    assert!(!login.stderr.contains("Refusing"), "{}", login.stderr);
    assert_eq!(login.code, 4, "{}", login.stderr);
}

#[test]
fn a_client_certificate_stored_with_the_env_passes_mtls() {
    let dirs = Dirs::new();
    let clients = Ca::new("clients");
    let clients_ca = clients.write(&dirs.path().join("clients-ca.pem"));
    let (cert, key) = clients.issue(&["cli"], true, false);
    let (cert_file, key_file) = (dirs.path().join("cli.pem"), dirs.path().join("cli.key"));
    std::fs::write(&cert_file, cert).expect("write the client certificate");
    std::fs::write(&key_file, key).expect("write the client key");
    let p = Platform::start_tls(&[("MICRO_TLS_CLIENT_CA", &clients_ca.display().to_string())]);
    let (url, ca) = (p.tls().url.clone(), p.tls().ca.display().to_string());

    // Without a client certificate: refused at the handshake, exit 4, and the message says what is missing.
    let run = cli(&url, &dirs, ["services"]).env("MICRO_CA_CERT", &ca).run().code(4);
    assert!(run.stderr.contains("client certificate"), "{}", run.stderr);

    let (c, k) = (cert_file.display().to_string(), key_file.display().to_string());
    cli(&url, &dirs, ["env", "add", "mtls", &url, "--ca-cert", &ca, "--client-cert", &c, "--client-key", &k])
        .env_remove("MICRO_PROXY")
        .run()
        .ok();
    let run = cli(&url, &dirs, ["env"]).env_remove("MICRO_PROXY").run().ok();
    assert!(run.stdout.contains("TLS (own CA, client cert)"), "{}", run.stdout);
    let run = cli(&url, &dirs, ["-e", "mtls", "services"]).env_remove("MICRO_PROXY").run().ok();
    assert!(run.stdout.lines().any(|l| l == "registry"), "{}", run.stdout);
}
