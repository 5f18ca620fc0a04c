//! The auth and gateway benchmark (issue 3), side by side in one run on this machine:
//!
//! 1. proxy unary latency (p50, p99) without auth and with auth (a verified JWT and cached rule evaluation on every
//!    request), alternating between the two in blocks of 50 calls with the same request (token included), and the
//!    overhead in percent (target: at most 5 %);
//! 2. requests per second at 64 connections through the HTTP API gateway (HTTP/1.1 JSON → gRPC, auth on) against
//!    direct gRPC to the service at 64 in flight (target: at least 0.5 ×). Two references run in the same rounds:
//!    the gateway over the proxy without auth, and the "bare" shape — a minimal axum handler that decodes the
//!    same JSON into the prost-generated request and calls helloworld with a plain tonic client — so the gateway's
//!    own cost shows as gateway ÷ bare, apart from what any HTTP/1.1 → gRPC hop costs on this machine.
//!
//! The load comes from nghttp2's `h2load` when it is installed (Debian's `nghttp2-client`): one external C client,
//! 64 connections with one request in flight on each, HTTP/2 with the gRPC frame for direct gRPC and HTTP/1.1 with
//! the JSON for the HTTP series, so every series pays the same for its client. A fifth series sends direct gRPC as
//! 64 streams of one connection, the cheapest way to load a gRPC server, for comparison. Without `h2load` the load
//! comes from in-process tonic and reqwest clients, whose costs differ and share the two cores with the servers.
//!
//! Everything else runs in-process on loopback: one registry, two proxies (one without auth, one with), a gateway over
//! each, the bare handler, and helloworld served by plain tonic and registered by hand. The throughput series are
//! measured in interleaved rounds (direct, gateway, bare, gateway without auth, then again), so drift on a busy
//! machine hits all of them; each ratio is the median of the per-round ratios.
//!
//! `auth-gateway direct|gateway|bare|gateway-noauth|direct-mux` runs only that load for 15 s (to profile it, for example with
//! `perf record -F 499 --call-graph dwarf`).

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

/// The allocator of the `micro` binary, so the in-process server parts allocate as they do in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use helloworld::pb::{CallRequest, helloworld_client::HelloworldClient, helloworld_server::HelloworldServer};
use micro_core::proto::registry::{Node, Schema as SchemaMsg, Service};
use micro_server::auth::{Auth, AuthConfig};
use micro_server::gateway::{Gateway, GatewayConfig};
use micro_server::proxy::Proxy;
use micro_server::registry::{MemoryRegistry, RegistryBackend};
use stats::Samples;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const SEQUENTIAL: usize = 3_000;
const IN_FLIGHT: usize = 64;
const WINDOW: Duration = Duration::from_secs(3);
/// Interleaved rounds of the throughput series.
const ROUNDS: usize = 3;
/// The window of a single-series run (`auth-gateway gateway`), long enough to profile.
const PROFILE_WINDOW: Duration = Duration::from_secs(15);

async fn listen() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?.to_string();
    Ok((l, a))
}

fn serve_proxy(proxy: Proxy, listener: TcpListener) {
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(proxy));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(micro_server::serve_grpc(routes, incoming, None, std::future::pending(), async {}));
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?)
}

fn request(token: Option<&str>) -> tonic::Request<CallRequest> {
    let mut req = tonic::Request::new(CallRequest { name: "bench".into() });
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// Sequential unary calls through the proxy without auth (`plain`) and the one with auth (`authed`), alternating
/// in blocks of [`BLOCK`] calls so that drift on a noisy machine hits both alike. Both get the same request, token
/// included, so that they differ only in the auth check.
async fn latency(plain: &str, authed: &str, token: &str) -> anyhow::Result<(Samples, Samples)> {
    const BLOCK: usize = 50;
    let mut clients = [HelloworldClient::new(channel(plain).await?), HelloworldClient::new(channel(authed).await?)];
    for client in &mut clients {
        for _ in 0..300 {
            client.call(request(Some(token))).await?;
        }
    }
    let mut samples = [Vec::with_capacity(SEQUENTIAL), Vec::with_capacity(SEQUENTIAL)];
    for _ in 0..SEQUENTIAL.div_ceil(BLOCK) {
        for (client, samples) in clients.iter_mut().zip(&mut samples) {
            for _ in 0..BLOCK {
                let t = Instant::now();
                client.call(request(Some(token))).await?;
                samples.push(t.elapsed());
            }
        }
    }
    let [plain, authed] = samples;
    Ok((Samples::new(plain), Samples::new(authed)))
}

/// Keeps `IN_FLIGHT` calls of `op` outstanding for a warm-up and then `WINDOW`; returns completed calls per
/// second in the window and how many calls failed.
async fn load<F, Fut>(op: F, window: Duration) -> (f64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (op, done, failed, stop) = (op.clone(), done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let counter = if op().await { &done } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = done.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let n = done.load(Ordering::Relaxed) - start;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (n as f64 / secs, failed.load(Ordering::Relaxed))
}

async fn grpc_throughput(addr: &str, window: Duration) -> anyhow::Result<(f64, u64)> {
    let client = HelloworldClient::new(channel(addr).await?);
    Ok(load(
        move || {
            let mut c = client.clone();
            async move { c.call(request(None)).await.is_ok() }
        },
        window,
    )
    .await)
}

/// Posts `{"name":"bench"}` to `url` from 64 HTTP/1.1 connections, with a bearer token when given.
async fn http_throughput(url: &str, token: Option<&str>, window: Duration) -> anyhow::Result<(f64, u64)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).tcp_nodelay(true).build()?;
    let (url, auth) = (Arc::new(url.to_string()), Arc::new(token.map(|t| format!("Bearer {t}"))));
    Ok(load(
        move || {
            let (c, url, auth) = (client.clone(), url.clone(), auth.clone());
            async move {
                let mut req = c.post(url.as_str()).header("content-type", "application/json");
                if let Some(auth) = auth.as_deref() {
                    req = req.header("authorization", auth);
                }
                match req.body(r#"{"name":"bench"}"#).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        },
        window,
    )
    .await)
}

/// The external load generator: nghttp2's `h2load`, when it is on the `PATH` (Debian's `nghttp2-client`). One
/// single-threaded C client drives every series with the same connection count, HTTP/2 for gRPC and HTTP/1.1 for
/// JSON, so the series differ only in what the server side does; the in-process generators (tonic for gRPC,
/// reqwest for HTTP/1.1) are not equally cheap, and their cost lands on the same two cores as the servers.
struct H2load {
    /// Request bodies: the gRPC frame of `CallRequest { name: "bench" }` and the same request as JSON.
    dir: tempfile::TempDir,
}

impl H2load {
    /// `Some` when `h2load` runs.
    fn find() -> Option<Self> {
        let ok = std::process::Command::new("h2load")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        use prost::Message;
        let message = CallRequest { name: "bench".into() }.encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        std::fs::write(dir.path().join("grpc"), frame).ok()?;
        std::fs::write(dir.path().join("json"), r#"{"name":"bench"}"#).ok()?;
        Some(Self { dir })
    }

    /// Requests per second and failed requests of a `window` of load at [`IN_FLIGHT`] connections, one request in
    /// flight on each, after a warm-up; `grpc` posts the gRPC frame over HTTP/2, else the JSON over HTTP/1.1.
    ///
    /// With `multiplexed`, the requests in flight are streams of one connection instead.
    async fn run(
        &self,
        url: &str,
        grpc: bool,
        multiplexed: bool,
        token: Option<&str>,
        window: Duration,
    ) -> anyhow::Result<(f64, u64)> {
        let mut cmd = tokio::process::Command::new("h2load");
        let (clients, streams) = if multiplexed { (1, IN_FLIGHT) } else { (IN_FLIGHT, 1) };
        cmd.args(["-t", "1", "-c", &clients.to_string(), "-m", &streams.to_string(), "--warm-up-time=1s"]);
        cmd.arg(format!("--duration={}", window.as_secs().max(1)));
        if grpc {
            cmd.arg("-d").arg(self.dir.path().join("grpc"));
            cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
        } else {
            cmd.arg("--h1").arg("-d").arg(self.dir.path().join("json"));
            cmd.args(["-H", "content-type: application/json"]);
        }
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("authorization: Bearer {t}"));
        }
        let out = cmd.arg(url).output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(out.status.success(), "h2load failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        parse_h2load(&text).ok_or_else(|| anyhow::anyhow!("cannot read h2load's report:\n{text}"))
    }
}

/// Requests per second (`finished in 3.00s, 16384.33 req/s, …`) and the requests that did not end in a 2xx answer
/// (errors and other statuses alike), from an h2load report.
fn parse_h2load(text: &str) -> Option<(f64, u64)> {
    let rate = text.lines().find_map(|l| {
        let rest = l.strip_prefix("finished in ")?;
        rest.split(", ").nth(1)?.strip_suffix(" req/s")?.parse::<f64>().ok()
    })?;
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split(", ").find_map(|part| part.trim().strip_suffix(name)?.trim().parse().ok())
    };
    let requests = text.lines().find(|l| l.starts_with("requests: "))?.trim_start_matches("requests: ");
    let done = field(requests, " done")?;
    let codes = text.lines().find(|l| l.starts_with("status codes: "))?.trim_start_matches("status codes: ");
    let ok = field(codes, " 2xx")?;
    Some((rate, done.saturating_sub(ok)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_an_h2load_report() {
        let report = "finished in 3.00s, 16384.33 req/s, 1.2MB/s\n\
                      requests: 49153 total, 49153 started, 49153 done, 49150 succeeded, 3 failed, 3 errored, 0 timeout\n\
                      status codes: 49150 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        assert_eq!(super::parse_h2load(report), Some((16384.33, 3)));
        let failing = "finished in 95.79ms, 208.80 req/s, 18.86KB/s\n\
                       requests: 20 total, 20 started, 20 done, 0 succeeded, 20 failed, 0 errored, 0 timeout\n\
                       status codes: 0 2xx, 0 3xx, 20 4xx, 0 5xx\n";
        assert_eq!(super::parse_h2load(failing), Some((208.80, 20)));
        assert_eq!(super::parse_h2load("connect failed"), None);
    }
}

/// The "bare" HTTP/JSON → gRPC shape the gateway is compared with: one axum route whose handler decodes the JSON
/// body into the prost-generated `CallRequest`, calls helloworld with a tonic client, and answers the reply as JSON.
///
/// The bench crate has no JSON library, so the decoding and encoding of this one-string message are written out
/// here ([`json_string_field`], [`json_escape`]); they cost well under a microsecond, as serde derive would.
fn bare_router(client: HelloworldClient<Channel>) -> axum::Router {
    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    async fn call(State(client): State<HelloworldClient<Channel>>, body: axum::body::Bytes) -> Response {
        let Some(name) = json_string_field(&body, "name") else {
            return (http::StatusCode::BAD_REQUEST, "the body is not a JSON object with a string \"name\"")
                .into_response();
        };
        match client.clone().call(CallRequest { name }).await {
            Ok(rsp) => {
                let body = format!("{{\"msg\":\"{}\"}}", json_escape(&rsp.into_inner().msg));
                ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(status) => (http::StatusCode::BAD_GATEWAY, status.message().to_string()).into_response(),
        }
    }
    axum::Router::new().route("/helloworld", axum::routing::post(call)).with_state(client)
}

/// The string value of `key` in a flat JSON object whose values are strings (`{"name":"bench"}`); `None` when the
/// text is not such an object. Escapes `\"`, `\\`, `\/`, `\n`, `\r`, `\t` and `\uXXXX` (BMP) are decoded.
fn json_string_field(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let mut rest = text.strip_prefix('{')?.strip_suffix('}')?.trim();
    let mut found = None;
    while !rest.is_empty() {
        let (k, after) = json_string(rest)?;
        let after = after.trim_start().strip_prefix(':')?.trim_start();
        let (v, after) = json_string(after)?;
        if k == key {
            found = Some(v);
        }
        rest = after.trim_start();
        rest = match rest.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if rest.is_empty() => rest,
            None => return None,
        };
    }
    found
}

/// A JSON string at the start of `text`, decoded, and the text after it.
fn json_string(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hex: String = (0..4).map(|_| chars.next().map(|(_, c)| c)).collect::<Option<_>>()?;
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                c @ ('"' | '\\' | '/') => out.push(c),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// `text` as the inside of a JSON string.
fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The throughput series, in the order each round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Series {
    Direct,
    Gateway,
    Bare,
    GatewayNoAuth,
    /// Direct gRPC again, with the 64 calls as streams of one HTTP/2 connection (h2load only).
    DirectMux,
}

impl Series {
    const ALL: [Series; 5] = [Series::Direct, Series::Gateway, Series::Bare, Series::GatewayNoAuth, Series::DirectMux];

    fn name(self) -> &'static str {
        match self {
            Series::Direct => "direct",
            Series::Gateway => "gateway",
            Series::Bare => "bare",
            Series::GatewayNoAuth => "gateway-noauth",
            Series::DirectMux => "direct-mux",
        }
    }
}

/// Where each series sends its load.
struct Targets {
    service: String,
    gateway: String,
    gateway_noauth: String,
    bare: String,
    token: String,
    /// The external load generator, when there is one.
    h2load: Option<H2load>,
}

impl Targets {
    async fn run(&self, series: Series, window: Duration) -> anyhow::Result<(f64, u64)> {
        if let Some(h2load) = &self.h2load {
            return match series {
                Series::Direct | Series::DirectMux => {
                    let url = format!("http://{}/helloworld.Helloworld/Call", self.service);
                    h2load.run(&url, true, series == Series::DirectMux, None, window).await
                }
                Series::Gateway => h2load.run(&self.gateway, false, false, Some(&self.token), window).await,
                Series::Bare => h2load.run(&self.bare, false, false, None, window).await,
                Series::GatewayNoAuth => h2load.run(&self.gateway_noauth, false, false, None, window).await,
            };
        }
        match series {
            Series::Direct | Series::DirectMux => grpc_throughput(&self.service, window).await,
            Series::Gateway => http_throughput(&self.gateway, Some(&self.token), window).await,
            Series::Bare => http_throughput(&self.bare, None, window).await,
            Series::GatewayNoAuth => http_throughput(&self.gateway_noauth, None, window).await,
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;

    // The service, served directly and registered by hand.
    let (svc_listener, svc_addr) = listen().await?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(svc_listener);
    let hello = tonic::service::Routes::new(HelloworldServer::new(helloworld::Handler));
    tokio::spawn(micro_server::serve_grpc(hello, incoming, None, std::future::pending(), async {}));
    let registry = Arc::new(MemoryRegistry::new());
    let schema = micro_core::schema::Schema::decode(helloworld::pb::FILE_DESCRIPTOR_SET)?;
    registry.register(
        "micro",
        Service {
            name: "helloworld".into(),
            endpoints: micro_core::schema::endpoints(&schema.pool, ["helloworld.Helloworld"]),
            nodes: vec![Node { id: "helloworld-bench".into(), address: svc_addr.clone(), ..Default::default() }],
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
            ..Default::default()
        },
        Duration::ZERO,
    )?;

    // Two proxies over the same registry: without and with auth; a gateway over each; the bare handler.
    let auth = Arc::new(Auth::open(AuthConfig::new(data.path().to_path_buf()))?);
    let token = auth.login("micro", "admin", "micro", None)?.access_token;
    let plain = Proxy::new(registry.clone(), axum::Router::new(), Vec::new(), Vec::new());
    let authed = Proxy::new(registry.clone(), axum::Router::new(), Vec::new(), Vec::new()).with_auth(auth);
    let (plain_listener, plain_addr) = listen().await?;
    let (authed_listener, authed_addr) = listen().await?;
    serve_proxy(plain.clone(), plain_listener);
    serve_proxy(authed.clone(), authed_listener);
    let (api_listener, api_addr) = listen().await?;
    let gateway = Gateway::new(authed, registry.clone(), GatewayConfig::default());
    tokio::spawn(micro_server::gateway::serve(api_listener, gateway, std::future::pending()));
    let (noauth_listener, noauth_addr) = listen().await?;
    let gateway_noauth = Gateway::new(plain, registry.clone(), GatewayConfig::default());
    tokio::spawn(micro_server::gateway::serve(noauth_listener, gateway_noauth, std::future::pending()));
    let (bare_listener, bare_addr) = listen().await?;
    let bare = bare_router(HelloworldClient::new(channel(&svc_addr).await?));
    tokio::spawn(async move {
        use axum::serve::ListenerExt;
        let listener = bare_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, bare).await
    });
    let targets = Targets {
        service: svc_addr.clone(),
        gateway: format!("http://{api_addr}/helloworld"),
        gateway_noauth: format!("http://{noauth_addr}/helloworld"),
        bare: format!("http://{bare_addr}/helloworld"),
        token: token.clone(),
        h2load: H2load::find(),
    };
    let generator = match &targets.h2load {
        Some(_) => "h2load (nghttp2), 1 thread, HTTP/2 for gRPC and HTTP/1.1 for JSON, one request per connection",
        None => {
            "in process: tonic (64 streams, one HTTP/2 connection) and reqwest (HTTP/1.1); install nghttp2-client \
                 for the external h2load"
        }
    };

    if let Some(only) = std::env::args().nth(1) {
        let Some(series) = Series::ALL.into_iter().find(|s| s.name() == only) else {
            let names: Vec<_> = Series::ALL.iter().map(|s| s.name()).collect();
            anyhow::bail!("unknown series {only:?}: expected one of {}", names.join(", "));
        };
        let (rate, failed) = targets.run(series, PROFILE_WINDOW).await?;
        println!("{only}: {rate:.0} req/s over {PROFILE_WINDOW:?} ({failed} failed)");
        return Ok(());
    }

    println!(
        "micro auth and gateway benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    // Three runs, each alternating between the two proxies.
    let mut plain_samples = Vec::new();
    let mut authed_samples = Vec::new();
    for _ in 0..3 {
        let (plain, authed) = latency(&plain_addr, &authed_addr, &token).await?;
        plain_samples.push(plain);
        authed_samples.push(authed);
    }
    let best = |s: &[Samples]| s.iter().map(|x| (x.median(), x.percentile(99.0))).min().unwrap_or_default();
    let (p50_plain, p99_plain) = best(&plain_samples);
    let (p50_auth, p99_auth) = best(&authed_samples);
    let overhead = (us(p50_auth) / us(p50_plain) - 1.0) * 100.0;
    println!("proxy latency, {SEQUENTIAL} sequential unary calls, same token to both (best of 3 runs, alternating)");
    println!("  without auth   p50 {:>7.1} µs   p99 {:>7.1} µs", us(p50_plain), us(p99_plain));
    println!("  with auth      p50 {:>7.1} µs   p99 {:>7.1} µs", us(p50_auth), us(p99_auth));
    println!("  auth overhead  {overhead:+.1} % of p50 ({:+.1} µs)", us(p50_auth) - us(p50_plain));
    println!();

    // Interleaved rounds of every series; rates[round][series].
    let mut rates = Vec::with_capacity(ROUNDS);
    let mut failed = 0;
    for _ in 0..ROUNDS {
        let mut round = Vec::with_capacity(Series::ALL.len());
        for series in Series::ALL {
            if series == Series::DirectMux && targets.h2load.is_none() {
                // The in-process gRPC load already multiplexes one connection.
                round.push(round[Series::Direct as usize]);
                continue;
            }
            let (rate, f) = targets.run(series, WINDOW).await?;
            round.push(rate);
            if series == Series::Gateway {
                failed += f;
            }
        }
        rates.push(round);
    }
    let column = |s: Series| -> Vec<f64> { rates.iter().map(|r| r[s as usize]).collect() };
    let ratio_of = |a: Series, b: Series| median(rates.iter().map(|r| r[a as usize] / r[b as usize]).collect());
    let per_round = |s: Series| column(s).iter().map(|r| format!("{r:>7.0}")).collect::<Vec<_>>().join(" ");
    let direct = median(column(Series::Direct));
    let gw = median(column(Series::Gateway));
    let ratio = ratio_of(Series::Gateway, Series::Direct);
    println!(
        "throughput, {IN_FLIGHT} in flight, {WINDOW:?} windows, median of {ROUNDS} interleaved rounds (per round)"
    );
    println!("  load generator: {generator}");
    println!("  direct gRPC                      {direct:>9.0} req/s   ({})", per_round(Series::Direct));
    if targets.h2load.is_some() {
        println!(
            "  direct gRPC, 1 conn x 64 streams {:>9.0} req/s   ({})",
            median(column(Series::DirectMux)),
            per_round(Series::DirectMux)
        );
    }
    println!("  gateway HTTP/JSON, auth on       {gw:>9.0} req/s   ({})   {failed} failed", per_round(Series::Gateway));
    println!(
        "  gateway HTTP/JSON, auth off      {:>9.0} req/s   ({})",
        median(column(Series::GatewayNoAuth)),
        per_round(Series::GatewayNoAuth)
    );
    println!(
        "  bare axum → tonic, no auth       {:>9.0} req/s   ({})",
        median(column(Series::Bare)),
        per_round(Series::Bare)
    );
    println!("  ratio gateway / direct           {ratio:>9.2}");
    if targets.h2load.is_some() {
        println!("  ratio gateway / direct, 1 conn   {:>9.2}", ratio_of(Series::Gateway, Series::DirectMux));
    }
    println!("  ratio bare / direct              {:>9.2}", ratio_of(Series::Bare, Series::Direct));
    println!("  ratio gateway / bare             {:>9.2}", ratio_of(Series::Gateway, Series::Bare));
    println!("  ratio gateway auth off / bare    {:>9.2}", ratio_of(Series::GatewayNoAuth, Series::Bare));
    println!();
    println!("targets");
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("  auth adds at most 5 % to proxy p50         {:>+7.1} %   {}", overhead, verdict(overhead <= 5.0));
    println!("  gateway at least 0.5 x direct gRPC          {ratio:>7.2} x   {}", verdict(ratio >= 0.5));
    Ok(())
}
