//! The MCP benchmark: `micro mcp serve`, side by side in one run on this machine, against one micro server in this
//! process with helloworld registered with it, and 100 more services (`svc000`…`svc099`) that carry helloworld's
//! schema and endpoints and point at its node.
//!
//! 1. The latency of one tool call, `helloworld_Helloworld_Call {"name":"x"}` (p50, p99), through three MCP servers
//!    and clients at once, in alternating blocks: `micro mcp serve` over stdio (a child process, spoken to here in
//!    newline-delimited JSON-RPC), `micro mcp serve --address` over streamable HTTP (`POST /mcp` with a bearer
//!    token and the session's `Mcp-Session-Id`, on a kept-alive connection; the answer as JSON or as an SSE
//!    stream), and for reference the same call with a generated gRPC client, directly to helloworld's node and
//!    through the proxy.
//! 2. The process time of a one-shot `micro call helloworld Helloworld.Call '{"name":"x"}'`, which an agent without
//!    MCP would run for each call.
//! 3. The time of `tools/list` with the 101 services registered (each endpoint a tool: at least 303 tools), over
//!    stdio and, for reference, over HTTP.
//!
//! The issue sets no targets: the figures and their ratios are reported; the one check (PASS/MISS) is that every
//! registered endpoint is listed. The MCP client is written here on purpose (no SDK): it adds nothing but JSON
//! parsing to what is measured. `target/release/micro` must exist (`cargo build --release --workspace`).

mod cpu;
#[allow(dead_code)] // the other benchmarks use the rest of this module
mod grpc;
#[allow(dead_code)] // web.rs reads the wire sizes of answers
mod http1;
mod inprocess;
mod stats;

/// The allocator of the `micro` binary, so the in-process server allocates as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail, ensure};
use helloworld::pb::CallRequest;
use helloworld::pb::helloworld_client::HelloworldClient;
use http1::{Answer, Conn, REQUEST_TIMEOUT};
use inprocess::{ADMIN_PASSWORD, START_TIMEOUT};
use micro_core::proto::registry::{Node, Options, Schema as SchemaMsg, Service};
use serde_json::{Value, json};
use stats::{Samples, ms, thousands, us};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio as ProcessStdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The MCP protocol version the client asks for.
const PROTOCOL_VERSION: &str = "2025-06-18";
/// The tool of helloworld's `Helloworld.Call`, and its arguments.
const TOOL: &str = "helloworld_Helloworld_Call";
const CALL_WARMUP: usize = 30;
const CALLS: usize = 300;
/// The calls alternate between the four routes in blocks of this many.
const BLOCK: usize = 50;
const ONE_SHOT_RUNS: usize = 30;
/// The extra services registered for `tools/list`, and the endpoints each has (helloworld's).
const EXTRA_SERVICES: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 3;
const LIST_WARMUP: usize = 2;
const LISTS: usize = 20;
/// How long a one-shot `micro` process may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The server under test, as its clients see it.
struct Site {
    proxy: SocketAddr,
    /// helloworld's node.
    service: SocketAddr,
    /// The admin's access token (the CLI's and the HTTP MCP client's bearer token).
    token: String,
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let micro_bin = inprocess::micro_bin()?;
    let data = tempfile::Builder::new().prefix("micro-bench-mcp").tempdir()?;
    let site = start(data.path()).await.context("starting the server")?;
    register_extra(data.path(), &site).await.context("registering the extra services")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "micro-bench mcp: {cpus} CPUs; proxy {}, helloworld {}, {EXTRA_SERVICES} more services registered",
        site.proxy, site.service
    );

    // The MCP servers, each with its own CLI dirs (config, schema cache).
    let stdio_start = Instant::now();
    let mut stdio = StdioMcp::start(&micro_bin, data.path(), &site).await.context("micro mcp serve (stdio)")?;
    let stdio_ready = stdio_start.elapsed();
    let mut http = HttpMcp::start(&micro_bin, data.path(), &site).await.context("micro mcp serve --address")?;
    println!(
        "  MCP over stdio: spawn to `initialize` answered {:.1} ms; over HTTP: http://{}/mcp, session {}",
        ms(stdio_ready),
        http.address,
        http.session.as_deref().unwrap_or("(none)")
    );

    // 1. Kept-alive tool calls against direct and proxied gRPC calls.
    let bearer = grpc::Bearer::new(&site.token)?;
    let direct = grpc_client(site.service, &bearer).await.context("helloworld's node")?;
    let proxied = grpc_client(site.proxy, &bearer).await.context("the proxy")?;
    let mut routes = Routes { stdio: &mut stdio, http: &mut http, direct, proxied };
    println!(
        "\nOne call of Helloworld.Call {{\"name\":\"x\"}}: {CALLS} sequential calls per route after {CALL_WARMUP} \
         warm-up calls, alternating in blocks of {BLOCK}"
    );
    let cpu = cpu::Snapshot::now();
    let calls = latency(&mut routes).await?;
    println!("  {:<46} {:>10} {:>10} {:>10} {:>10}", "", "p50", "p99", "mean", "max");
    for (route, s) in Route::ALL.iter().zip(&calls) {
        println!(
            "  {:<46} {:>7.1} µs {:>7.1} µs {:>7.1} µs {:>7.1} µs",
            route.label(),
            us(s.median()),
            us(s.percentile(99.0)),
            us(s.mean()),
            us(s.max())
        );
    }
    let [stdio_calls, http_calls, direct_calls, proxy_calls] = &calls;
    let ratio = |a: &Samples, b: &Samples| us(a.median()) / us(b.median()).max(f64::MIN_POSITIVE);
    println!(
        "  p50 ratios: stdio / direct {:.1}×, HTTP / direct {:.1}×, stdio / proxy {:.1}×, HTTP / proxy {:.1}×",
        ratio(stdio_calls, direct_calls),
        ratio(http_calls, direct_calls),
        ratio(stdio_calls, proxy_calls),
        ratio(http_calls, proxy_calls)
    );
    cpu::report(cpu);

    // 2. One-shot CLI calls: a process each.
    println!(
        "\nProcess time of `micro call helloworld Helloworld.Call '{{\"name\":\"x\"}}'`: {ONE_SHOT_RUNS} runs after one \
         untimed run (warm schema cache)"
    );
    let cpu = cpu::Snapshot::now();
    let cli = one_shot(&micro_bin, data.path(), &site).await?;
    println!("  {:<46} {:>9} {:>9} {:>9} {:>9}", "", "median", "p90", "mean", "min");
    println!(
        "  {:<46} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms",
        "micro call … (process)",
        ms(cli.median()),
        ms(cli.percentile(90.0)),
        ms(cli.mean()),
        ms(cli.min())
    );
    println!(
        "  a process per call / an MCP tool call (p50): {:.0}× stdio, {:.0}× HTTP",
        ratio(&cli, stdio_calls),
        ratio(&cli, http_calls)
    );
    cpu::report(cpu);

    // 3. tools/list with 101 services.
    println!(
        "\ntools/list with {} services registered: {LISTS} lists after {LIST_WARMUP} warm-up lists (each lists the \
         services and resolves each one's schema)",
        EXTRA_SERVICES + 1
    );
    let cpu = cpu::Snapshot::now();
    let (stdio_lists, stdio_tools, stdio_bytes) = list_tools(&mut stdio).await?;
    let (http_lists, http_tools, http_bytes) = list_tools(&mut http).await?;
    println!("  {:<46} {:>9} {:>9} {:>9} {:>7} {:>10}", "", "median", "p90", "min", "tools", "answer");
    for (name, s, tools, bytes) in [
        ("stdio", &stdio_lists, stdio_tools, stdio_bytes),
        ("streamable HTTP (reference)", &http_lists, http_tools, http_bytes),
    ] {
        println!(
            "  {name:<46} {:>6.2} ms {:>6.2} ms {:>6.2} ms {tools:>7} {:>8} B",
            ms(s.median()),
            ms(s.percentile(90.0)),
            ms(s.min()),
            thousands(bytes as f64)
        );
    }
    cpu::report(cpu);

    stdio.stop().await;
    http.stop().await;

    let expected = (EXTRA_SERVICES + 1) * ENDPOINTS_PER_SERVICE;
    println!("\nSummary (no targets set: figures and ratios, p50 unless said)");
    let p50_p99 = |s: &Samples| format!("{:.1} µs (p99 {:.1} µs)", us(s.median()), us(s.percentile(99.0)));
    let figures = [
        ("MCP tool call over stdio", p50_p99(stdio_calls)),
        ("MCP tool call over streamable HTTP", p50_p99(http_calls)),
        (
            "gRPC call, direct / through the proxy",
            format!("{:.1} µs / {:.1} µs", us(direct_calls.median()), us(proxy_calls.median())),
        ),
        (
            "stdio / direct gRPC",
            format!(
                "{:.1}× ({:.1}× the proxied call)",
                ratio(stdio_calls, direct_calls),
                ratio(stdio_calls, proxy_calls)
            ),
        ),
        (
            "HTTP / direct gRPC",
            format!(
                "{:.1}× ({:.1}× the proxied call)",
                ratio(http_calls, direct_calls),
                ratio(http_calls, proxy_calls)
            ),
        ),
        (
            "one-shot `micro call` process",
            format!(
                "{:.2} ms: {:.0}× a stdio tool call, {:.0}× an HTTP one",
                ms(cli.median()),
                ratio(&cli, stdio_calls),
                ratio(&cli, http_calls)
            ),
        ),
        (
            "tools/list, 101 services, stdio",
            format!(
                "{:.2} ms (p90 {:.2} ms), {stdio_tools} tools, {} B",
                ms(stdio_lists.median()),
                ms(stdio_lists.percentile(90.0)),
                thousands(stdio_bytes as f64)
            ),
        ),
    ];
    for (what, figure) in &figures {
        println!("  {what:<40} {figure}");
    }
    let listed = stdio_tools.min(http_tools);
    println!(
        "  {:<40} {:<40} {}",
        format!("tools/list lists all ≥ {expected} tools"),
        format!("stdio {stdio_tools}, HTTP {http_tools}"),
        if listed >= expected { "PASS" } else { "MISS" }
    );
    println!("\nTotal run time {:.1} s. A benchmark, not a test: exit status 0.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts a micro server (its proxy only) with its data in `dir`, then helloworld on the service library, waits
/// until helloworld is registered, and logs in as the admin over gRPC.
async fn start(dir: &Path) -> anyhow::Result<Site> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let config = micro_server::ServerConfig {
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..micro_server::ServerConfig::new(dir.join("server"))
    };
    let mut server = tokio::spawn(micro_server::serve(listener, config, std::future::pending()));
    let conn = micro_client::Connection::new(&proxy.to_string(), micro_core::DEFAULT_NAMESPACE)?;
    let service = inprocess::serve_helloworld(&conn, proxy, &mut server).await?;
    let token = inprocess::admin_token(&conn, &mut server).await?;
    Ok(Site { proxy, service, token })
}

/// Registers `svc000`…`svc099` through the proxy with the server's local credential: helloworld's schema and
/// endpoints, a node at helloworld's address.
async fn register_extra(dir: &Path, site: &Site) -> anyhow::Result<()> {
    let file = dir.join("server").join(micro_core::local_credential::FILE);
    let secret = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let secret: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = secret.trim().parse()?;
    let conn = micro_client::Connection::new(&site.proxy.to_string(), micro_core::DEFAULT_NAMESPACE)?;
    let schema = micro_core::schema::Schema::decode(helloworld::pb::FILE_DESCRIPTOR_SET)?;
    let endpoints = micro_core::schema::endpoints(&schema.pool, ["helloworld.Helloworld"]);
    ensure!(
        endpoints.len() == ENDPOINTS_PER_SERVICE,
        "helloworld has {} endpoints, not {ENDPOINTS_PER_SERVICE}",
        endpoints.len()
    );
    for i in 0..EXTRA_SERVICES {
        let name = format!("svc{i:03}");
        let record = Service {
            name: name.clone(),
            version: "latest".into(),
            endpoints: endpoints.clone(),
            nodes: vec![Node { id: format!("{name}-bench"), address: site.service.to_string(), ..Default::default() }],
            options: Some(Options { ttl: 3600, domain: micro_core::DEFAULT_NAMESPACE.into() }),
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
            ..Default::default()
        };
        let mut req = conn.request(record);
        req.metadata_mut().insert(micro_core::local_credential::HEADER, secret.clone());
        conn.registry().register(req).await.with_context(|| format!("registering {name}"))?;
    }
    let listed = conn.list_services().await?;
    let extra = listed.iter().filter(|s| s.name.starts_with("svc")).count();
    ensure!(extra >= EXTRA_SERVICES, "the registry lists {extra} of the {EXTRA_SERVICES} services registered");
    Ok(())
}

/// A `micro` command with the CLI's environment for this benchmark: the proxy, the admin's token, and config and
/// cache dirs of its own under `dir/name`.
fn micro_command(micro: &Path, dir: &Path, name: &str, site: &Site) -> Command {
    let mut cmd = Command::new(micro);
    cmd.env("MICRO_PROXY", site.proxy.to_string())
        .env("MICRO_AUTH_TOKEN", &site.token)
        .env("MICRO_CONFIG_DIR", dir.join(name).join("config"))
        .env("MICRO_CACHE_DIR", dir.join(name).join("cache"))
        .env_remove("MICRO_ENV")
        .env_remove("MICRO_NAMESPACE")
        .env_remove("MICRO_CA_CERT")
        .kill_on_drop(true);
    cmd
}

/// Spawns `cmd` with its stderr (the MCP server's audit log) in `log`, so that it never fills a pipe.
fn spawn_logged(cmd: &mut Command, log: &Path, stdin: ProcessStdio, stdout: ProcessStdio) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(stdin).stdout(stdout).stderr(file).spawn().context("spawning micro")
}

/// The last lines of a log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    if tail.is_empty() { String::new() } else { format!("\n--- its stderr ({}) ---\n{tail}", log.display()) }
}

/// The `initialize` request's parameters.
fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": { "name": "micro-bench", "version": "0" }
    })
}

/// A JSON-RPC request.
fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// The result of the answer to request `id` among `messages`, if there is one; a JSON-RPC error is an error.
/// Notifications and requests from the server (they have a `method`) are skipped.
fn answer_to(id: u64, method: &str, messages: Vec<Value>) -> anyhow::Result<Option<Value>> {
    for message in messages {
        let Value::Object(mut message) = message else { bail!("{method}: a JSON-RPC message that is not an object") };
        if message.contains_key("method") || message.get("id").and_then(Value::as_u64) != Some(id) {
            continue;
        }
        if let Some(error) = message.get("error") {
            bail!("{method} answered a JSON-RPC error: {error}");
        }
        return message.remove("result").map(Some).with_context(|| format!("{method}: an answer without a result"));
    }
    Ok(None)
}

/// Checks a `tools/call` result of helloworld's Call.
fn check_call(result: &Value) -> anyhow::Result<()> {
    let msg = result.pointer("/structuredContent/msg").and_then(Value::as_str);
    if result.get("isError").and_then(Value::as_bool) == Some(true) || msg != Some("Hello x") {
        let text: String = result.to_string().chars().take(400).collect();
        bail!("{TOOL} did not answer {{\"msg\":\"Hello x\"}}: {text}");
    }
    Ok(())
}

/// The parameters of the measured tool call.
fn call_params() -> Value {
    json!({ "name": TOOL, "arguments": { "name": "x" } })
}

/// An MCP client of either transport.
trait McpClient {
    /// Sends request `method` and returns its result (and remembers the answer's size in bytes).
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value>;
    /// The size in bytes of the last answer as it came over the transport.
    fn last_bytes(&self) -> usize;
}

/// `micro mcp serve` over stdio: a child process with newline-delimited JSON-RPC on its stdin and stdout.
struct StdioMcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    line: String,
    last_bytes: usize,
    log: PathBuf,
}

impl StdioMcp {
    /// Spawns the server and makes the handshake: `initialize`, then `notifications/initialized`.
    async fn start(micro: &Path, dir: &Path, site: &Site) -> anyhow::Result<Self> {
        let log = dir.join("mcp-stdio.log");
        let mut cmd = micro_command(micro, dir, "mcp-stdio", site);
        cmd.args(["mcp", "serve"]);
        let mut child = spawn_logged(&mut cmd, &log, ProcessStdio::piped(), ProcessStdio::piped())?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut mcp = Self { child, stdin, stdout, next_id: 0, line: String::new(), last_bytes: 0, log };
        let init = mcp.request("initialize", initialize_params()).await?;
        ensure!(init.get("protocolVersion").is_some(), "`initialize` answered without a protocolVersion: {init}");
        mcp.send(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
        Ok(mcp)
    }

    async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(message)?;
        line.push('\n');
        let written = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        written.await.with_context(|| format!("writing to micro mcp serve{}", log_tail(&self.log)))
    }

    /// Closes its stdin (the end of the session) and waits a little for it to exit, then kills it.
    async fn stop(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl McpClient for StdioMcp {
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&rpc(id, method, params)).await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            self.line.clear();
            let read = tokio::time::timeout_at(deadline, self.stdout.read_line(&mut self.line))
                .await
                .with_context(|| format!("{method}: no answer within {REQUEST_TIMEOUT:?}{}", log_tail(&self.log)))?
                .with_context(|| format!("{method}: reading micro mcp serve's stdout"))?;
            ensure!(read > 0, "{method}: micro mcp serve closed its stdout{}", log_tail(&self.log));
            let message: Value = serde_json::from_str(self.line.trim())
                .with_context(|| format!("{method}: a line that is not JSON: {:.300}", self.line))?;
            if let Some(result) = answer_to(id, method, vec![message])? {
                self.last_bytes = read;
                return Ok(result);
            }
        }
    }

    fn last_bytes(&self) -> usize {
        self.last_bytes
    }
}

/// `micro mcp serve --address`: streamable HTTP at `/mcp`, on one kept-alive connection.
struct HttpMcp {
    child: Child,
    address: SocketAddr,
    conn: Conn,
    /// `Bearer TOKEN`.
    bearer: String,
    /// The `Mcp-Session-Id` the server gave at `initialize`.
    session: Option<String>,
    /// The protocol version negotiated at `initialize`, sent as `MCP-Protocol-Version` after it.
    protocol: String,
    next_id: u64,
    last_bytes: usize,
    log: PathBuf,
}

impl HttpMcp {
    /// Spawns the server on a free port, waits until it listens, and makes the handshake.
    async fn start(micro: &Path, dir: &Path, site: &Site) -> anyhow::Result<Self> {
        let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = dir.join("mcp-http.log");
        let mut cmd = micro_command(micro, dir, "mcp-http", site);
        cmd.args(["mcp", "serve", "--address", &address.to_string()]);
        let mut child = spawn_logged(&mut cmd, &log, ProcessStdio::null(), ProcessStdio::null())?;
        let deadline = Instant::now() + START_TIMEOUT;
        let conn = loop {
            if let Some(status) = child.try_wait()? {
                bail!("micro mcp serve --address {address} exited ({status}){}", log_tail(&log));
            }
            if let Ok(conn) = Conn::open(address).await {
                break conn;
            }
            if Instant::now() > deadline {
                bail!("micro mcp serve did not listen on {address} within {START_TIMEOUT:?}{}", log_tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let bearer = format!("Bearer {}", site.token);
        let mut mcp = Self {
            child,
            address,
            conn,
            bearer,
            session: None,
            protocol: PROTOCOL_VERSION.into(),
            next_id: 0,
            last_bytes: 0,
            log,
        };
        let init = mcp.request("initialize", initialize_params()).await?;
        ensure!(init.get("protocolVersion").is_some(), "`initialize` answered without a protocolVersion: {init}");
        ensure!(mcp.session.is_some(), "`initialize` answered without an Mcp-Session-Id header");
        if let Some(version) = init.get("protocolVersion").and_then(Value::as_str) {
            mcp.protocol = version.to_string();
        }
        let answer = mcp.post(&json!({ "jsonrpc": "2.0", "method": "notifications/initialized" })).await?;
        ensure!(
            (200..300).contains(&answer.status),
            "notifications/initialized answered {}: {}{}",
            answer.status,
            answer.excerpt(),
            log_tail(&mcp.log)
        );
        Ok(mcp)
    }

    /// Posts one JSON-RPC message to `/mcp` with the session's headers, on the kept-alive connection (a new one
    /// if the server closed it).
    async fn post(&mut self, message: &Value) -> anyhow::Result<Answer> {
        if self.conn.closed {
            self.conn = Conn::open(self.address).await?;
        }
        let body = serde_json::to_vec(message)?;
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", self.bearer.as_str()),
        ];
        if let Some(session) = &self.session {
            headers.push(("Mcp-Session-Id", session.as_str()));
            headers.push(("MCP-Protocol-Version", self.protocol.as_str()));
        }
        self.conn.send("POST", "/mcp", &headers, &body).await
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl McpClient for HttpMcp {
    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let answer = self.post(&rpc(id, method, params)).await?;
        if answer.status != 200 {
            bail!("POST /mcp {method} answered {}: {}{}", answer.status, answer.excerpt(), log_tail(&self.log));
        }
        if self.session.is_none() {
            self.session = answer.header("mcp-session-id").map(str::to_string);
        }
        let content_type = answer.header("content-type").unwrap_or_default().to_ascii_lowercase();
        let messages = if content_type.starts_with("text/event-stream") {
            sse_messages(&answer.text()).with_context(|| format!("{method}: the SSE answer"))?
        } else {
            vec![serde_json::from_slice(&answer.body).with_context(|| format!("{method}: the JSON answer"))?]
        };
        self.last_bytes = answer.body.len();
        answer_to(id, method, messages)?
            .with_context(|| format!("{method}: the answer holds no response to request {id}: {}", answer.excerpt()))
    }

    fn last_bytes(&self) -> usize {
        self.last_bytes
    }
}

/// The JSON messages of an SSE stream: the `data:` of each event (an event without data, such as a priming event,
/// is skipped).
fn sse_messages(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut messages = Vec::new();
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            if !data.trim().is_empty() {
                messages.push(serde_json::from_str(&data).with_context(|| format!("an event's data: {data:.300}"))?);
            }
            data.clear();
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
        // `id:`, `event:`, `retry:` and comments say nothing the benchmark needs.
    }
    Ok(messages)
}

type GrpcClient = HelloworldClient<InterceptedService<Channel, grpc::Bearer>>;

/// A generated helloworld client on one connection to `address`, with the admin's bearer token.
async fn grpc_client(address: SocketAddr, bearer: &grpc::Bearer) -> anyhow::Result<GrpcClient> {
    let channel = Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = HelloworldClient::with_interceptor(channel, bearer.clone());
    grpc_call(&mut client).await?;
    Ok(client)
}

async fn grpc_call(client: &mut GrpcClient) -> anyhow::Result<()> {
    let reply = client.call(CallRequest { name: "x".into() }).await?;
    ensure!(reply.get_ref().msg == "Hello x", "unexpected reply: {:?}", reply.get_ref().msg);
    Ok(())
}

/// The four ways to make the call.
#[derive(Clone, Copy, Debug)]
enum Route {
    Stdio,
    Http,
    Direct,
    Proxied,
}

impl Route {
    const ALL: [Route; 4] = [Route::Stdio, Route::Http, Route::Direct, Route::Proxied];

    fn label(self) -> &'static str {
        match self {
            Route::Stdio => "MCP tools/call over stdio",
            Route::Http => "MCP tools/call over streamable HTTP",
            Route::Direct => "gRPC, direct to helloworld (reference)",
            Route::Proxied => "gRPC through the proxy (reference)",
        }
    }
}

/// The clients of the four routes.
struct Routes<'a> {
    stdio: &'a mut StdioMcp,
    http: &'a mut HttpMcp,
    direct: GrpcClient,
    proxied: GrpcClient,
}

impl Routes<'_> {
    /// One call by `route`, checked.
    async fn call(&mut self, route: Route) -> anyhow::Result<()> {
        match route {
            Route::Stdio => check_call(&self.stdio.request("tools/call", call_params()).await?),
            Route::Http => check_call(&self.http.request("tools/call", call_params()).await?),
            Route::Direct => grpc_call(&mut self.direct).await,
            Route::Proxied => grpc_call(&mut self.proxied).await,
        }
        .with_context(|| route.label())
    }
}

/// [`CALLS`] calls by each route after [`CALL_WARMUP`] each, alternating in blocks of [`BLOCK`]; the samples in
/// the order of [`Route::ALL`].
async fn latency(routes: &mut Routes<'_>) -> anyhow::Result<[Samples; 4]> {
    for _ in 0..CALL_WARMUP {
        for route in Route::ALL {
            routes.call(route).await?;
        }
    }
    let mut samples: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(CALLS));
    for _ in 0..CALLS.div_ceil(BLOCK) {
        for (route, out) in Route::ALL.into_iter().zip(samples.iter_mut()) {
            for _ in 0..BLOCK.min(CALLS - out.len()) {
                let start = Instant::now();
                routes.call(route).await?;
                out.push(start.elapsed());
            }
        }
    }
    Ok(samples.map(Samples::new))
}

/// [`ONE_SHOT_RUNS`] runs of `micro call helloworld Helloworld.Call '{"name":"x"}'`, after one untimed run (it
/// fills the schema cache).
async fn one_shot(micro: &Path, dir: &Path, site: &Site) -> anyhow::Result<Samples> {
    let mut cli = micro_command(micro, dir, "cli-call", site);
    cli.args(["call", "helloworld", "Helloworld.Call", r#"{"name":"x"}"#, "-o", "raw"]).stdin(ProcessStdio::null());
    time_cli(&mut cli).await?;
    let mut samples = Vec::with_capacity(ONE_SHOT_RUNS);
    for _ in 0..ONE_SHOT_RUNS {
        samples.push(time_cli(&mut cli).await?);
    }
    Ok(Samples::new(samples))
}

/// The wall time of one run of `cli`, which must print `Hello x`.
async fn time_cli(cli: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = tokio::time::timeout(CLI_TIMEOUT, cli.output())
        .await
        .with_context(|| format!("micro call did not finish within {CLI_TIMEOUT:?}"))??;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("Hello x") {
        bail!("micro call failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(elapsed)
}

/// Times `tools/list` ([`LISTS`] lists after [`LIST_WARMUP`]), following `nextCursor` if the server pages; returns
/// the samples, the number of tools and the size of the (last page's) answer.
async fn list_tools(client: &mut impl McpClient) -> anyhow::Result<(Samples, usize, usize)> {
    let mut samples = Vec::with_capacity(LISTS);
    let mut tools = 0;
    for i in 0..LIST_WARMUP + LISTS {
        let start = Instant::now();
        let (mut count, mut found) = (0, false);
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let result = client.request("tools/list", params).await?;
            let page = result.get("tools").and_then(Value::as_array).context("tools/list answered no `tools`")?;
            count += page.len();
            found |= page.iter().any(|t| t["name"] == TOOL);
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        if i >= LIST_WARMUP {
            samples.push(start.elapsed());
        }
        ensure!(found, "tools/list does not list {TOOL} ({count} tools listed)");
        tools = count;
    }
    Ok((Samples::new(samples), tools, client.last_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_and_answers() {
        let stream = "id: 0\nretry: 3000\ndata:\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}\n\n";
        let messages = sse_messages(stream).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(answer_to(7, "m", messages.clone()).unwrap(), Some(json!({ "ok": true })));
        assert_eq!(answer_to(8, "m", messages).unwrap(), None);
        let error = vec![json!({ "jsonrpc": "2.0", "id": 1, "error": { "code": -32602, "message": "bad" } })];
        assert!(answer_to(1, "m", error).is_err());
    }
}
