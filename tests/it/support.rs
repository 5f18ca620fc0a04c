//! The harness: a real `micro server`, real services and the real `micro` binary, each in its own process.
//!
//! Every test starts its own [`Platform`] (a server on a port the OS picks, with a temporary data dir, HOME, config
//! and cache dir), so tests run in parallel without sharing state. Every child process is owned by a [`Proc`] that
//! kills it on drop, so a failing test leaves no orphans. Every wait is bounded by a deadline.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest any single step (a CLI run, a start-up, an RPC) may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Env vars a service gets to register with a short TTL (1 s) and heartbeat (300 ms).
pub const SHORT_TTL: &[(&str, &str)] = &[("MICRO_REGISTER_TTL", "1s"), ("MICRO_REGISTER_INTERVAL", "300ms")];

/// The `micro` binary under test.
pub fn micro_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_micro"))
}

/// Where `micro new` lays out its service library in every test: one directory beside the `micro` binary under
/// test, so that the library compiles once per test run for every generated service.
pub fn library_dir() -> PathBuf {
    micro_bin().parent().expect("the micro binary has a dir").join("micro-test-library")
}

/// An example service binary (`helloworld`, `echo`, `notes`, `inventory`), built once per test run next to the `micro` binary.
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_examples).as_ref().unwrap_or_else(|e| panic!("{e}"));
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `cargo build -p helloworld -p echo -p notes -p inventory --bins` into the target dir and profile of the `micro` binary under test.
fn build_examples() -> Result<PathBuf, String> {
    let micro = micro_bin();
    let bin_dir = micro.parent().ok_or("the micro binary has no parent dir")?.to_path_buf();
    let target_dir = bin_dir.parent().ok_or("the micro binary's dir has no parent dir")?;
    let profile = bin_dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_string();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--bins", "-p", "helloworld", "-p", "echo", "-p", "notes", "-p", "inventory", "--target-dir"])
        .arg(target_dir)
        .stdin(Stdio::null());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo to build the example services: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the example services failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for name in ["helloworld", "echo", "notes", "inventory"] {
        let bin = bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if !bin.is_file() {
            return Err(format!("cargo built the examples but {} is missing", bin.display()));
        }
    }
    Ok(bin_dir)
}

/// A child process that is killed (SIGKILL) and reaped when dropped. Its stderr is kept for diagnostics.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with stderr captured; each stderr line is also sent to `lines` if given.
    fn spawn(name: &str, mut cmd: Command, lines: Option<mpsc::Sender<String>>) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = &lines {
                    let _ = tx.send(line.clone());
                }
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Proc { name: name.to_string(), child, log }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Kills the process with SIGKILL (no deregistration) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most [`DEADLINE`]) for the process to exit; SIGKILL after that.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + DEADLINE;
        while self.exited().is_none() {
            if Instant::now() > deadline {
                self.kill();
                panic!("{} did not exit within {DEADLINE:?} of SIGTERM:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.child.id())
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A running `micro server` with its own temporary directories, plus the services started on it.
pub struct Platform {
    /// The proxy address, `127.0.0.1:PORT`.
    pub addr: String,
    // Field order is drop order: services stop before the server, the temp dir goes last.
    services: Vec<Proc>,
    server: Proc,
    dirs: Dirs,
    token: OnceLock<String>,
    env: Vec<(String, String)>,
    tls: Option<Tls>,
}

/// The TLS of a platform started with [`Platform::start_tls`].
pub struct Tls {
    /// The proxy's URL, `https://127.0.0.1:PORT` (the CLI's `MICRO_PROXY`, gRPC clients' target).
    pub url: String,
    /// The CA that verifies the server's certificate (`--ca-cert`/`MICRO_CA_CERT`, `curl --cacert`).
    pub ca: PathBuf,
    /// The certificate file the server serves (rewrite it, and [`Tls::key`], to rotate).
    pub cert: PathBuf,
    /// The key file of [`Tls::cert`].
    pub key: PathBuf,
    /// The test CA that issued the server's certificate (`None` for `--tls self-signed`).
    pub issuer: Option<TestCa>,
}

/// A CA made for a test with rcgen: it issues server and client certificates into files.
pub struct TestCa {
    /// The CA certificate (PEM file).
    pub pem: PathBuf,
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).expect("create the PKI dir");
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("micro test CA {name}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("a CA certificate");
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).expect("write the CA");
        TestCa { pem, dir: dir.to_path_buf(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate with common name `cn`, for `hosts` (server) or none (client): (certificate PEM, key PEM).
    pub fn issue(&self, cn: &str, hosts: &[&str], client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(hosts).expect("certificate params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).expect("sign a certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate for 127.0.0.1 and localhost with common name `cn` to `cert` and `key`, each
    /// renamed into place (as a rotation does).
    pub fn write_server(&self, cn: &str, cert: &Path, key: &Path) {
        let (cert_pem, key_pem) = self.issue(cn, &["127.0.0.1", "localhost"], false);
        write_renamed(key, &key_pem);
        write_renamed(cert, &cert_pem);
    }

    /// A client certificate with common name `cn`: its certificate and key files, in the CA's dir.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert_pem, key_pem) = self.issue(cn, &[], true);
        let (cert, key) = (self.dir.join(format!("{cn}.pem")), self.dir.join(format!("{cn}.key")));
        std::fs::write(&cert, cert_pem).expect("write a client certificate");
        std::fs::write(&key, key_pem).expect("write a client key");
        (cert, key)
    }
}

/// Writes `text` to `path` through a temporary file renamed into place.
pub fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write a temporary file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A rustls client configuration that trusts the CA of `ca` (a PEM file), presents `client` (certificate and key
/// files) when given, and offers `alpn`.
pub fn tls_client_config(ca: &Path, client: Option<(&Path, &Path)>, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(cert.expect("a CA certificate")).expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .expect("read the client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("a client certificate");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("read the client key");
            builder.with_client_auth_cert(chain, key).expect("a client certificate and key")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` (`127.0.0.1:PORT`), verified as `127.0.0.1` with `config`, whose handshake is over.
pub async fn tls_connect(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_matches(['[', ']']).to_string();
    let name = rustls_pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate that the TLS server at `addr` presents, verified with the CA of `ca` (a PEM file).
pub fn peer_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>, String> {
    let config = tls_client_config(ca, None, &["h2"]);
    block_on(async move {
        let tls = tls_connect(addr, config).await.map_err(|e| e.to_string())?;
        let certs = tls.get_ref().1.peer_certificates().ok_or("no peer certificate")?;
        Ok(certs[0].to_vec())
    })
}

/// The default admin account of a fresh server: name and password.
pub const ADMIN: (&str, &str) = ("admin", "micro");

/// Adds `authorization: Bearer TOKEN` to every request (a standard header, not a micro routing header).
#[derive(Clone, Debug)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

impl Platform {
    /// Starts a server and waits until its proxy answers.
    pub fn start() -> Platform {
        Platform::start_env(&[])
    }

    /// Starts a server with extra environment variables (`MICRO_*` settings of the server) and waits until its
    /// proxy answers; the admin is logged in.
    /// A server whose store is in PostgreSQL (`MICRO_STORE`) gets the test keys that every such test server
    /// shares (see [`give_shared_keys`]).
    pub fn start_env(env: &[(&str, &str)]) -> Platform {
        let dirs = Dirs::new();
        if env.iter().any(|(k, _)| *k == "MICRO_STORE") {
            give_shared_keys(&dirs.root.path().join("data"));
        }
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (server, addr) = spawn_server(&dirs, "127.0.0.1:0", &env);
        let platform = Platform { addr, services: Vec::new(), server, dirs, token: OnceLock::new(), env, tls: None };
        platform.wait_until("the proxy answers", |p| p.micro(["services"]).code == 0);
        // Calls to services need an account: the CLI logs in as the default admin (registry reads and reflection
        // are public, so those work either way).
        platform.login_admin();
        platform.token();
        platform
    }

    /// Starts a server whose proxy and gateway serve TLS, and waits until the proxy completes a TLS handshake (with
    /// a client of this harness, not the CLI). The admin is not logged in until [`Platform::token`] is first asked.
    ///
    /// Unless `env` sets `MICRO_TLS` (`self-signed`: the server makes its CA in the data dir), a test CA
    /// ([`Tls::issuer`]) issues a certificate for 127.0.0.1 and localhost, passed in `MICRO_TLS_CERT` and
    /// `MICRO_TLS_KEY`. The CLI ([`Platform::cli`]) gets `MICRO_PROXY=https://127.0.0.1:PORT` and
    /// `MICRO_CA_CERT`.
    pub fn start_tls(env: &[(&str, &str)]) -> Platform {
        let dirs = Dirs::new();
        let mut env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let data = dirs.root.path().join("data");
        let mut tls = if env.iter().any(|(k, _)| k == "MICRO_TLS") {
            let dir = data.join("tls");
            Tls {
                url: String::new(),
                ca: dir.join("ca.pem"),
                cert: dir.join("server.pem"),
                key: dir.join("server.key"),
                issuer: None,
            }
        } else {
            let pki = dirs.root.path().join("pki");
            let issuer = TestCa::new(&pki, "server");
            let (cert, key) = (pki.join("server.pem"), pki.join("server.key"));
            issuer.write_server("micro test server", &cert, &key);
            env.push(("MICRO_TLS_CERT".into(), cert.display().to_string()));
            env.push(("MICRO_TLS_KEY".into(), key.display().to_string()));
            Tls { url: String::new(), ca: issuer.pem.clone(), cert, key, issuer: Some(issuer) }
        };
        let (server, addr) = spawn_server(&dirs, "127.0.0.1:0", &env);
        tls.url = format!("https://{addr}");
        let platform =
            Platform { addr, services: Vec::new(), server, dirs, token: OnceLock::new(), env, tls: Some(tls) };
        platform.wait_until("the proxy completes a TLS handshake", Platform::tls_answers);
        platform
    }

    /// The TLS of a platform started with [`Platform::start_tls`].
    #[track_caller]
    pub fn tls(&self) -> &Tls {
        self.tls.as_ref().expect("a platform started with Platform::start_tls")
    }

    /// Whether the proxy completes a TLS handshake (ALPN h2) verified with the platform's CA. Under mTLS, a
    /// TLS 1.3 client finishes its handshake before the server checks its certificate, so this holds too.
    fn tls_answers(&self) -> bool {
        let Some(tls) = &self.tls else { return false };
        if !tls.ca.is_file() {
            return false;
        }
        let (addr, config) = (self.addr.clone(), tls_client_config(&tls.ca, None, &["h2"]));
        block_on(async move {
            tokio::time::timeout(Duration::from_secs(5), tls_connect(&addr, config)).await.is_ok_and(|r| r.is_ok())
        })
    }

    /// Logs the admin's CLI in again (`micro login`).
    pub fn login_admin(&self) {
        let login = self.cli(["login", "--username", ADMIN.0, "--password-stdin"]).stdin(ADMIN.1).run().ok();
        assert_eq!(login.stdout, "Successfully logged in.\n", "{}", login.snapshot());
    }

    /// Stops the server (SIGKILL when `kill`, else SIGTERM and a wait for it to exit) and starts it again on the
    /// same address and data dir, with the same environment; waits until the proxy answers and logs the admin in.
    pub fn restart_server(&mut self, kill: bool) {
        if kill {
            self.server.kill();
        } else {
            self.server.terminate();
        }
        let (server, addr) = spawn_server(&self.dirs, &self.addr, &self.env);
        assert_eq!(addr, self.addr, "the server came back on another address");
        self.server = server;
        if self.tls.is_some() {
            self.wait_until("the proxy completes a TLS handshake again", Platform::tls_answers);
            return;
        }
        self.wait_until("the proxy answers again", |p| p.micro(["services"]).code == 0);
        self.login_admin();
    }

    /// The access token of the logged-in admin (`micro user token`).
    pub fn token(&self) -> &str {
        self.token.get_or_init(|| {
            if self.tls.is_some() {
                // A TLS platform logs the admin in on first use (see `start_tls`).
                self.login_admin();
            }
            let run = self.micro(["user", "token"]).ok();
            let token = run.stdout.trim().to_string();
            assert!(!token.is_empty(), "{}", run.snapshot());
            token
        })
    }

    /// An interceptor that sends the admin's token, for generated clients:
    /// `HelloworldClient::with_interceptor(channel, p.bearer())`.
    pub fn bearer(&self) -> Bearer {
        Bearer(format!("Bearer {}", self.token()).parse().expect("a token is ASCII"))
    }

    /// Starts a server and the given example services, waiting until each is registered.
    pub fn with(services: &[&str]) -> Platform {
        let mut platform = Platform::start();
        for name in services {
            platform.start_service(name);
        }
        platform
    }

    /// Starts an example service owned by the platform and waits until it is registered.
    pub fn start_service(&mut self, name: &str) {
        let service = self.spawn_service(name, &[]);
        self.services.push(service);
    }

    /// Starts an example service owned by the caller (extra env vars such as [`SHORT_TTL`]) and waits until it is
    /// registered.
    pub fn spawn_service(&self, name: &str, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(example_bin(name));
        clean_env(&mut cmd);
        cmd.env("HOME", self.dirs.home()).env("MICRO_PROXY", &self.addr).env("MICRO_LOG_LEVEL", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut service = Proc::spawn(name, cmd, None);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.service_names().iter().any(|s| s == name) {
                return service;
            }
            if let Some(status) = service.exited() {
                panic!("{name} exited ({status}) before registering:\n{}", service.log());
            }
            assert!(Instant::now() < deadline, "{name} did not register in time:\n{}", service.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's stderr so far.
    pub fn server_log(&self) -> String {
        self.server.log()
    }

    /// Kills the server (SIGKILL).
    pub fn kill_server(&mut self) {
        self.server.kill();
    }

    /// `micro services`, as a list of names (empty when it fails).
    pub fn service_names(&self) -> Vec<String> {
        let run = self.micro(["services"]);
        if run.code != 0 {
            return Vec::new();
        }
        run.stdout.lines().map(str::to_string).collect()
    }

    /// Polls `ready` every 50 ms until it holds, failing the test after [`DEADLINE`].
    pub fn wait_until(&self, what: &str, mut ready: impl FnMut(&Platform) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !ready(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}; server log:\n{}", self.server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `micro` CLI, configured for this platform.
    pub fn cli<I, S>(&self, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tls_cli(Cli::new(self.cli_proxy(), &self.dirs, args))
    }

    /// The proxy address the CLI gets: `127.0.0.1:PORT`, or the `https://` URL of a TLS platform.
    fn cli_proxy(&self) -> &str {
        self.tls.as_ref().map_or(&self.addr, |t| &t.url)
    }

    /// `cli` with the platform's CA (`MICRO_CA_CERT`) when it serves TLS.
    fn tls_cli(&self, cli: Cli) -> Cli {
        match &self.tls {
            Some(tls) => cli.env("MICRO_CA_CERT", &tls.ca.display().to_string()),
            None => cli,
        }
    }

    /// Runs the `micro` CLI with `args` and no stdin.
    pub fn micro<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.cli(args).run()
    }

    /// A path inside the platform's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dirs.root.path().join(name)
    }

    /// The gRPC URL of the proxy, `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => tls.url.clone(),
            None => format!("http://{}", self.addr),
        }
    }

    /// The address of the HTTP API gateway, `127.0.0.1:PORT`, from the server's log line
    /// `HTTP API gateway listening api=127.0.0.1:PORT` (logged before the proxy's, so it is there once started).
    pub fn api(&self) -> String {
        let log = self.server.log();
        log.lines()
            .filter(|line| line.contains("HTTP API gateway listening"))
            .find_map(|line| line.split_whitespace().find_map(|kv| kv.strip_prefix("api=")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("the server did not log its API gateway address:\n{log}"))
    }

    /// The base URL of the HTTP API gateway, `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub fn api_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.api())
    }

    /// The base URL of the web dashboard, `http://127.0.0.1:PORT` (`https://` when the server serves TLS), from the
    /// server's log line `web dashboard listening web=127.0.0.1:PORT`.
    pub fn web_url(&self) -> String {
        let log = self.server.log();
        let addr = log
            .lines()
            .filter(|line| line.contains("web dashboard listening"))
            .find_map(|line| line.split_whitespace().find_map(|kv| kv.strip_prefix("web=")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("the server did not log its web dashboard address:\n{log}"));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// The `micro` CLI of another user of this platform: HOME, config (with its token store) and cache in `dirs`
    /// (from [`Dirs::new`]), so it is logged in (or not) independently of the admin that [`Platform::cli`] uses.
    pub fn cli_in<I, S>(&self, dirs: &Dirs, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tls_cli(Cli::new(self.cli_proxy(), dirs, args))
    }

    /// The token store (`tokens.json`) of the admin's CLI ([`Platform::cli`]).
    pub fn tokens_file(&self) -> PathBuf {
        self.path("config").join("tokens.json")
    }
}

impl Drop for Platform {
    /// Stops the server gracefully first (SIGTERM, at most 10 s), so the runtime stops the services it started;
    /// the server's [`Proc`] then SIGKILLs whatever is left.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.server.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The temporary directories of one platform (or one CLI run without a server).
pub struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    /// Fresh, empty directories.
    pub fn new() -> Dirs {
        let root = tempfile::Builder::new().prefix("micro-it-").tempdir().expect("create a temp dir");
        for sub in ["home", "config", "cache"] {
            std::fs::create_dir_all(root.path().join(sub)).expect("create a temp subdir");
        }
        Dirs { root }
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// The root of the directories.
    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The CLI's token store (`tokens.json`) in these directories' config dir.
    pub fn tokens_file(&self) -> PathBuf {
        self.root.path().join("config").join("tokens.json")
    }
}

/// Puts the keys of `tests/it/fixtures/shared-keys` into the data dir `data`: servers that share their state in
/// one database must hold the same keys, and the database remembers the first server's.
pub fn give_shared_keys(data: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/shared-keys");
    std::fs::create_dir_all(data).expect("create the data dir");
    for key in ["auth.key", "config.key"] {
        let to = data.join(key);
        std::fs::copy(fixtures.join(key), &to).expect("copy a shared test key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod a key");
        }
    }
}

/// Starts `micro server` on `proxy_address` with its data in `dirs`, and waits until it logs its address.
fn spawn_server(dirs: &Dirs, proxy_address: &str, env: &[(String, String)]) -> (Proc, String) {
    let mut cmd = Command::new(micro_bin());
    cmd.args([
        "server",
        "--proxy-address",
        proxy_address,
        "--api-address",
        "127.0.0.1:0",
        "--web-address",
        "127.0.0.1:0",
    ])
    .args(["--prune-interval", "100ms", "--data-dir"])
    .arg(dirs.root.path().join("data"));
    clean_env(&mut cmd);
    cmd.env("HOME", dirs.home()).env("MICRO_LOG_LEVEL", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (tx, rx) = mpsc::channel();
    let mut server = Proc::spawn("micro server", cmd, Some(tx));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some(addr) = listening_address(&line) {
                    return (server, addr);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("micro server exited before listening: {:?}\n{}", server.exited(), server.log())
            }
        }
        assert!(Instant::now() < deadline, "micro server did not log its address in time:\n{}", server.log());
    }
}

/// Removes every inherited variable that would change what micro does.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("MICRO_")
            || matches!(key, "RUST_LOG" | "CLICOLOR_FORCE" | "CLICOLOR" | "NO_COLOR" | "COMPLETE" | "COLUMNS")
        {
            cmd.env_remove(key);
        }
    }
}

/// Parses `micro server listening proxy=127.0.0.1:PORT` from a server log line.
fn listening_address(line: &str) -> Option<String> {
    let rest = line.split("micro server listening").nth(1)?;
    let value = rest.split_whitespace().find_map(|kv| kv.strip_prefix("proxy="))?;
    Some(value.to_string())
}

/// One invocation of the `micro` CLI, with its environment isolated from the user's.
pub struct Cli {
    cmd: Command,
    line: String,
    stdin: Option<Vec<u8>>,
    hold_stdin: bool,
}

impl Cli {
    /// `micro ARGS` against the proxy at `addr`, with HOME, config and cache in `dirs`.
    pub fn new<I, S>(addr: &str, dirs: &Dirs, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let mut cmd = Command::new(micro_bin());
        cmd.args(&args);
        clean_env(&mut cmd);
        cmd.env("HOME", dirs.home())
            .env("MICRO_CONFIG_DIR", dirs.path().join("config"))
            .env("MICRO_CACHE_DIR", dirs.path().join("cache"))
            .env("MICRO_LIBRARY_DIR", library_dir())
            .env("MICRO_PROXY", addr)
            .env("COLUMNS", "100");
        let line = std::iter::once("micro".to_string()).chain(args.iter().map(|a| shell_word(a))).collect::<Vec<_>>();
        Cli { cmd, line: line.join(" "), stdin: None, hold_stdin: false }
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Cli {
        self.cmd.env(key, value);
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: &str) -> Cli {
        self.cmd.env_remove(key);
        self
    }

    /// Feeds `input` on stdin (else stdin is empty).
    pub fn stdin(mut self, input: &str) -> Cli {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }

    /// Keeps stdin open (after the input) until the command exits, as a terminal would.
    pub fn hold_stdin(mut self) -> Cli {
        self.hold_stdin = true;
        self
    }

    /// Runs the command to completion (killed after [`DEADLINE`]).
    pub fn run(mut self) -> Run {
        self.cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{}`: {e}", self.line));
        let mut child = Proc { name: self.line.clone(), child, log: Default::default() };
        let mut stdin = child.child.stdin.take().expect("stdin is piped");
        let input = self.stdin.take().unwrap_or_default();
        let (release, released) = mpsc::channel::<()>();
        let hold = self.hold_stdin;
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
            let _ = stdin.flush();
            if hold {
                // Returns when `release` is dropped, after the command exits.
                let _ = released.recv();
            }
            // Dropping stdin closes it: the end of the input.
        });
        let stdout = read_all(child.child.stdout.take().expect("stdout is piped"));
        let stderr = read_all(child.child.stderr.take().expect("stderr is piped"));
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.exited() {
                break status;
            }
            if Instant::now() >= deadline {
                child.kill();
                drop(release);
                let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
                panic!(
                    "`{}` did not finish within {DEADLINE:?}\n--- stdout ---\n{out}--- stderr ---\n{err}",
                    self.line
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        drop(release);
        let _ = writer.join();
        Run {
            line: self.line,
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }
}

fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn shell_word(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,:/@+".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The outcome of a CLI run.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub line: String,
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "`{}` failed:\n{}", self.line, self.snapshot());
        self
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "`{}` exited with an unexpected code:\n{}", self.line, self.snapshot());
        self
    }

    /// Stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON document ({e}):\n{}", self.line, self.snapshot()))
    }

    /// Stdout as a sequence of JSON documents.
    #[track_caller]
    pub fn json_docs(&self) -> Vec<Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("`{}` printed bad JSON ({e}):\n{}", self.line, self.snapshot()))
    }

    /// The whole outcome as one text: the command, the exit code, stdout and stderr.
    pub fn snapshot(&self) -> String {
        format!("$ {}\nexit: {}\n--- stdout ---\n{}--- stderr ---\n{}", self.line, self.code, self.stdout, self.stderr)
    }
}

/// An HTTP answer, as `curl` got it.
#[derive(Debug)]
pub struct Http {
    /// The request, for messages (`curl ARGS`).
    pub line: String,
    /// The status code of the last response (0 when curl got none).
    pub status: u16,
    /// The headers of the last response, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// curl's own stderr (its errors).
    pub stderr: String,
}

impl Http {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("`{}` answered no JSON ({e}):\n{self}", self.line))
    }

    /// Asserts the status code and returns self.
    #[track_caller]
    pub fn status(self, status: u16) -> Http {
        assert_eq!(self.status, status, "`{}` answered an unexpected status:\n{self}", self.line);
        self
    }
}

impl std::fmt::Display for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "$ {}\nstatus: {}", self.line, self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {value}")?;
        }
        write!(f, "--- body ---\n{}\n--- curl stderr ---\n{}", self.body, self.stderr)
    }
}

/// Runs `curl -sS ARGS` (bounded by `--max-time`) and returns the last response's status, headers and body.
#[track_caller]
pub fn curl<I, S>(args: I) -> Http
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    let headers_file = tempfile::Builder::new().prefix("micro-it-curl-").tempfile().expect("a temp file");
    let max_time = DEADLINE.as_secs().to_string();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", &max_time, "--noproxy", "*", "-D"])
        .arg(headers_file.path())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (is it installed?): {e}"));
    let line = std::iter::once("curl".to_string()).chain(args.iter().map(|a| shell_word(a))).collect::<Vec<_>>();
    let raw = std::fs::read_to_string(headers_file.path()).unwrap_or_default();
    // With redirects or `100 Continue` there are several header blocks: the last one is the answer's.
    let block = raw.trim_end().rsplit("\r\n\r\n").next().unwrap_or_default();
    let mut lines = block.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Http {
        line: line.join(" "),
        status,
        headers,
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Insta settings for CLI snapshots: ports, node ids, temp paths and timestamps are replaced by placeholders.
/// Bind them for the scope of a test: `let _s = snapshot_settings().bind_to_scope();`.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(true);
    settings.set_omit_expression(true);
    settings.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    settings.add_filter(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "[UUID]");
    settings.add_filter(r"[^\s'\x22]*micro-it-[0-9A-Za-z]+", "[TMP]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z", "[TIMESTAMP]");
    settings
}

/// Runs `future` on a fresh multi-threaded runtime, failing after [`DEADLINE`].
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime = runtime();
    runtime.block_on(async move { tokio::time::timeout(DEADLINE, future).await.expect("the test timed out") })
}

/// A multi-threaded tokio runtime for gRPC clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
}

/// A tonic channel to the proxy (over TLS, trusting the platform's CA, when it serves TLS).
pub async fn channel(platform: &Platform) -> tonic::transport::Channel {
    let mut endpoint = tonic::transport::Endpoint::from_shared(platform.url()).expect("a valid URL");
    if let Some(tls) = &platform.tls {
        let ca = std::fs::read(&tls.ca).expect("read the CA");
        let config =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(config).expect("a TLS configuration");
    }
    endpoint.connect().await.unwrap_or_else(|e| panic!("cannot connect to the proxy at {}: {e}", platform.addr))
}

/// Runs `micro server` with `args` on ports of its own and a fresh data dir, expecting it to stop by itself (a
/// setting it cannot use); returns its exit code and stderr.
pub fn server_that_stops(args: &[&str]) -> (Option<i32>, String) {
    let dirs = Dirs::new();
    let mut cmd = Command::new(micro_bin());
    clean_env(&mut cmd);
    cmd.args(["server", "--proxy-address", "127.0.0.1:0", "--api-address", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(dirs.path().join("data"))
        .env("HOME", dirs.path());
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run micro server");
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "micro server {args:?} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("micro server's output");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_server_log_line() {
        let line = "2024-01-01T00:00:00.000000Z  INFO micro::server: micro server listening proxy=127.0.0.1:4321 \
                    data_dir=/tmp/x";
        assert_eq!(listening_address(line).as_deref(), Some("127.0.0.1:4321"));
        assert_eq!(listening_address("INFO something else proxy=1.2.3.4:5"), None);
    }

    #[test]
    fn quotes_shell_words() {
        assert_eq!(shell_word("--name=Jane"), "--name=Jane");
        assert_eq!(shell_word(r#"{"name":"John"}"#), r#"'{"name":"John"}'"#);
    }
}
