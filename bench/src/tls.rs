//! The TLS benchmark (issue 11), side by side in one run on this machine: the same helloworld node behind two micro
//! servers, one plaintext and one with `--tls self-signed`, both in this process.
//!
//! 1. Unary latency (p50, p99) through each proxy, alternating in blocks of 100 calls.
//! 2. Requests per second with 64 calls in flight over one connection, in interleaved rounds (target: TLS at
//!    least 0.8 × plaintext).
//! 3. The process time of a one-shot `micro helloworld call --name=x` against each proxy, which pays for a fresh
//!    TCP connection and, with TLS, a fresh handshake (target: at most +5 ms at the median).
//!
//! helloworld is served by plain tonic on its own listener and registered with both servers through their proxies
//! with each server's local credential. `target/release/micro` must exist for part 3 (`cargo build --release
//! --workspace`).

mod cpu;
#[allow(dead_code)] // the other benchmarks use the rest of these modules
mod grpc;
#[allow(dead_code)] // the other benchmarks use the rest of this module
mod inprocess;
mod stats;

use anyhow::{Context, bail};
use helloworld::pb::helloworld_server::HelloworldServer;
use inprocess::ADMIN_PASSWORD;
use micro_client::Connection;
use micro_client::tls::ClientTls;
use micro_core::proto::registry::{Node, Options, Schema as SchemaMsg, Service};
use micro_server::tls::{CertSource, TlsSettings};
use stats::{Samples, ms, thousands, us};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const CALLS: usize = 2000;
const WARMUP: usize = 200;
const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 6;
const WINDOW: Duration = Duration::from_millis(500);
const CLI_RUNS: usize = 30;
/// Target: TLS throughput at least this share of plaintext.
const THROUGHPUT_SHARE: f64 = 0.8;
/// Target: a one-shot CLI call over TLS costs at most this much more (median).
const CLI_BUDGET_MS: f64 = 5.0;

/// One micro server under test.
struct Server {
    /// `127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    url: String,
    /// The CA file clients verify it with (TLS only).
    ca: Option<PathBuf>,
    conn: Connection,
    token: String,
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let micro_bin = inprocess::micro_bin()?;
    let data = tempfile::Builder::new().prefix("micro-bench-tls").tempdir()?;

    // helloworld, served directly.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let service = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let hello = tonic::service::Routes::new(HelloworldServer::new(helloworld::Handler));
    tokio::spawn(micro_server::serve_grpc(hello, incoming, None, std::future::pending(), async {}));

    let plain = start(&data.path().join("plain"), None, service).await.context("the plaintext server")?;
    let tls_settings = TlsSettings { source: CertSource::SelfSigned, client_ca: None };
    let tls = start(&data.path().join("tls"), Some(tls_settings), service).await.context("the TLS server")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("micro-bench tls: {cpus} CPUs; helloworld {service}; proxies {} and {}", plain.url, tls.url);

    // 1 and 2: the same generated client through each proxy.
    let mut targets = Vec::new();
    for server in [&plain, &tls] {
        let bearer = grpc::Bearer::new(&server.token)?;
        let target = micro_client::tls::Target::parse(&server.url).map_err(anyhow::Error::msg)?;
        let endpoint = tonic::transport::Endpoint::from_shared(target.url())?;
        let client_tls = client_tls(server)?;
        let endpoint = micro_client::tls::configure(endpoint, &target, &client_tls).map_err(anyhow::Error::msg)?;
        targets.push(grpc::Target::connect_endpoint(endpoint, 1, &bearer).await?);
    }
    println!("\nUnary latency: {CALLS} sequential calls per proxy after {WARMUP} warm-up calls, in blocks of 100");
    let cpu = cpu::Snapshot::now();
    let samples = tokio::spawn(grpc::latency(targets.clone(), WARMUP, CALLS, 100)).await??;
    println!("  {:<10} {:>10} {:>10} {:>10} {:>10}", "", "p50", "p99", "mean", "max");
    for (name, s) in ["plaintext", "TLS"].iter().zip(&samples) {
        println!(
            "  {name:<10} {:>7.1} µs {:>7.1} µs {:>7.1} µs {:>7.1} µs",
            us(s.median()),
            us(s.percentile(99.0)),
            us(s.mean()),
            us(s.max())
        );
    }
    let added = us(samples[1].median()) - us(samples[0].median());
    println!("  TLS − plaintext: p50 {added:+.1} µs");
    cpu::report(cpu);

    println!(
        "\nThroughput: {IN_FLIGHT} calls in flight over 1 connection; 0.5 s of warm-up each, then {ROUNDS} rounds of \
         {:.2} s each in turn",
        WINDOW.as_secs_f64()
    );
    let cpu = cpu::Snapshot::now();
    let (sums, rounds) = grpc::throughput(&targets, IN_FLIGHT, ROUNDS, Duration::from_millis(500), WINDOW).await?;
    for (name, t) in ["plaintext", "TLS"].iter().zip(&sums) {
        println!("  {name:<10} {:>8} req/s  ({} calls, {} failed)", thousands(t.rate()), t.completed, t.failed);
    }
    let share = if sums[0].rate() > 0.0 { sums[1].rate() / sums[0].rate() } else { 0.0 };
    let per_round: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.get(1).copied().unwrap_or(0.0))).collect();
    println!("  TLS / plaintext: {share:.3} (rounds: {})", per_round.join(" "));
    cpu::report(cpu);

    // 3. One-shot CLI calls: a new process, a new connection and (with TLS) a new handshake each.
    println!(
        "\nProcess time of `micro helloworld call --name=x`: {CLI_RUNS} runs each, alternating, warm schema cache"
    );
    let cpu = cpu::Snapshot::now();
    let (cli_plain, cli_tls) = time_cli(&micro_bin, data.path(), &plain, &tls)?;
    println!("  {:<10} {:>9} {:>9} {:>9}", "", "median", "mean", "min");
    for (name, s) in [("plaintext", &cli_plain), ("TLS", &cli_tls)] {
        println!("  {name:<10} {:>6.2} ms {:>6.2} ms {:>6.2} ms", ms(s.median()), ms(s.mean()), ms(s.min()));
    }
    let cli_added = ms(cli_tls.median()) - ms(cli_plain.median());
    println!("  TLS − plaintext: median {cli_added:+.2} ms");
    cpu::report(cpu);

    println!("\nSummary (targets of issue 11)");
    let verdicts = [
        (
            format!("TLS throughput ≥ {THROUGHPUT_SHARE} × plaintext"),
            format!("{share:.3} × ({} → {} req/s)", thousands(sums[0].rate()), thousands(sums[1].rate())),
            share >= THROUGHPUT_SHARE,
        ),
        (
            format!("one-shot CLI call with TLS ≤ plaintext + {CLI_BUDGET_MS} ms"),
            format!("{cli_added:+.2} ms ({:.2} → {:.2} ms)", ms(cli_plain.median()), ms(cli_tls.median())),
            cli_added <= CLI_BUDGET_MS,
        ),
    ];
    for (target, measured, pass) in &verdicts {
        println!("  {target:<48} {measured:<36} {}", if *pass { "PASS" } else { "MISS" });
    }
    println!("  (unary p50: TLS {added:+.1} µs over plaintext; informational)");
    println!("\nTotal run time {:.1} s. A benchmark, not a test: exit status 0.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts a micro server with its data in `dir` (TLS when `tls`), registers `service` as helloworld with it through
/// its proxy (the local credential), and logs in as the admin.
async fn start(dir: &Path, tls: Option<TlsSettings>, service: SocketAddr) -> anyhow::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let secure = tls.is_some();
    let config = micro_server::ServerConfig {
        admin_password: Some(ADMIN_PASSWORD.into()),
        tls,
        ..micro_server::ServerConfig::new(dir.to_path_buf())
    };
    tokio::spawn(micro_server::serve(listener, config, std::future::pending()));
    let url = if secure { format!("https://{address}") } else { address.to_string() };
    let ca = secure.then(|| dir.join("tls").join("ca.pem"));
    let mut server = Server { url, ca, conn: Connection::new(&address.to_string(), "micro")?, token: String::new() };
    // The server writes its files while it starts: wait for them, then for its proxy.
    let deadline = Instant::now() + Duration::from_secs(20);
    let secret = loop {
        let ready = server.ca.as_ref().is_none_or(|ca| ca.is_file());
        if ready && let Ok(secret) = std::fs::read_to_string(dir.join(micro_core::local_credential::FILE)) {
            break secret.trim().to_string();
        }
        if Instant::now() > deadline {
            bail!("the server did not write its files in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.conn = Connection::with_tls(&server.url, "micro", &client_tls(&server)?)?;
    let schema = micro_core::schema::Schema::decode(helloworld::pb::FILE_DESCRIPTOR_SET)?;
    let record = Service {
        name: "helloworld".into(),
        version: "latest".into(),
        endpoints: micro_core::schema::endpoints(&schema.pool, ["helloworld.Helloworld"]),
        nodes: vec![Node { id: "helloworld-bench".into(), address: service.to_string(), ..Default::default() }],
        options: Some(Options { ttl: 3600, domain: "micro".into() }),
        schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
        ..Default::default()
    };
    loop {
        let mut req = server.conn.request(record.clone());
        req.metadata_mut().insert(micro_core::local_credential::HEADER, secret.parse()?);
        match server.conn.registry().register(req).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => bail!("cannot register helloworld with {}: {e}", server.url),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let req = server.conn.request(micro_core::proto::auth::TokenRequest {
        id: "admin".into(),
        secret: ADMIN_PASSWORD.into(),
        ..Default::default()
    });
    let token = server.conn.auth().token(req).await?.into_inner().token.context("no token")?;
    server.token = token.access_token;
    Ok(server)
}

/// How clients verify `server`: its CA, when it serves TLS.
fn client_tls(server: &Server) -> anyhow::Result<ClientTls> {
    let ca_pem = match &server.ca {
        Some(ca) => Some(std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?),
        None => None,
    };
    Ok(ClientTls { ca_pem, ..Default::default() })
}

/// Wall times of [`CLI_RUNS`] runs of `micro helloworld call --name=x` against each server, alternating, after one
/// untimed run each (it fills the schema cache).
fn time_cli(micro: &Path, dir: &Path, plain: &Server, tls: &Server) -> anyhow::Result<(Samples, Samples)> {
    let command = |server: &Server, name: &str| {
        let mut cmd = Command::new(micro);
        cmd.args(["helloworld", "call", "--name=x", "-o", "raw"])
            .env("MICRO_PROXY", &server.url)
            .env("MICRO_AUTH_TOKEN", &server.token)
            .env("MICRO_CONFIG_DIR", dir.join(name).join("config"))
            .env("MICRO_CACHE_DIR", dir.join(name).join("cache"))
            .env_remove("MICRO_ENV")
            .env_remove("MICRO_NAMESPACE");
        match &server.ca {
            Some(ca) => cmd.env("MICRO_CA_CERT", ca),
            None => cmd.env_remove("MICRO_CA_CERT"),
        };
        cmd
    };
    let mut jobs = [command(plain, "cli-plain"), command(tls, "cli-tls")];
    let run = |cmd: &mut Command| -> anyhow::Result<Duration> {
        let start = Instant::now();
        let out = cmd.output()?;
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("Hello x") {
            bail!("micro failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(elapsed)
    };
    for job in &mut jobs {
        run(job)?;
    }
    let mut samples = [Vec::with_capacity(CLI_RUNS), Vec::with_capacity(CLI_RUNS)];
    for _ in 0..CLI_RUNS {
        for (job, out) in jobs.iter_mut().zip(samples.iter_mut()) {
            out.push(run(job)?);
        }
    }
    let [p, t] = samples;
    Ok((Samples::new(p), Samples::new(t)))
}
