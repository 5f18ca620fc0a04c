//! The auth and gateway benchmark (issue 3), side by side in one run on this machine:
//!
//! 1. proxy unary latency (p50, p99) without auth and with auth (a verified JWT and cached rule evaluation on every
//!    request), and the overhead in percent (target: at most 5 %);
//! 2. requests per second at 64 connections through the HTTP API gateway (HTTP/1.1 JSON → gRPC, auth on) against
//!    direct gRPC to the service at 64 in flight (target: at least 0.5 ×).
//!
//! Everything runs in-process on loopback: one registry, two proxies (one without auth, one with), the gateway over
//! the authenticated proxy, and helloworld served by plain tonic and registered by hand.

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

/// The allocator of the `micro` binary, so the in-process server parts allocate as they do in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use helloworld::pb::{CallRequest, helloworld_client::HelloworldClient, helloworld_server::HelloworldServer};
use micro::proto::registry::{Node, Schema as SchemaMsg, Service};
use micro::server::auth::{Auth, AuthConfig};
use micro::server::gateway::{Gateway, GatewayConfig};
use micro::server::proxy::Proxy;
use micro::server::registry::{MemoryRegistry, RegistryBackend};
use stats::Samples;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const SEQUENTIAL: usize = 3_000;
const IN_FLIGHT: usize = 64;
const WINDOW: Duration = Duration::from_secs(3);

async fn listen() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?.to_string();
    Ok((l, a))
}

fn serve_proxy(proxy: Proxy, listener: TcpListener) {
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(proxy));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(micro::server::serve_grpc(routes, incoming, std::future::pending(), async {}));
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

async fn latency(addr: &str, token: Option<&str>) -> anyhow::Result<Samples> {
    let mut client = HelloworldClient::new(channel(addr).await?);
    for _ in 0..300 {
        client.call(request(token)).await?;
    }
    let mut samples = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        client.call(request(token)).await?;
        samples.push(t.elapsed());
    }
    Ok(Samples::new(samples))
}

/// Keeps `IN_FLIGHT` calls of `op` outstanding for a warm-up and then `WINDOW`; returns completed calls per
/// second in the window and how many calls failed.
async fn load<F, Fut>(op: F) -> (f64, u64)
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
    tokio::time::sleep(WINDOW).await;
    let n = done.load(Ordering::Relaxed) - start;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (n as f64 / secs, failed.load(Ordering::Relaxed))
}

async fn grpc_throughput(addr: &str) -> anyhow::Result<f64> {
    let client = HelloworldClient::new(channel(addr).await?);
    let (rate, _) = load(move || {
        let mut c = client.clone();
        async move { c.call(request(None)).await.is_ok() }
    })
    .await;
    Ok(rate)
}

async fn gateway_throughput(url: &str, token: &str) -> anyhow::Result<(f64, u64)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).tcp_nodelay(true).build()?;
    let (url, auth) = (Arc::new(url.to_string()), Arc::new(format!("Bearer {token}")));
    Ok(load(move || {
        let (c, url, auth) = (client.clone(), url.clone(), auth.clone());
        async move {
            let rsp = c
                .post(url.as_str())
                .header("authorization", auth.as_str())
                .header("content-type", "application/json")
                .body(r#"{"name":"bench"}"#)
                .send()
                .await;
            match rsp {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await)
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
    tokio::spawn(micro::server::serve_grpc(hello, incoming, std::future::pending(), async {}));
    let registry = Arc::new(MemoryRegistry::new());
    let schema = micro::schema::Schema::decode(helloworld::pb::FILE_DESCRIPTOR_SET)?;
    registry.register(
        "micro",
        Service {
            name: "helloworld".into(),
            endpoints: micro::schema::endpoints(&schema.pool, ["helloworld.Helloworld"]),
            nodes: vec![Node { id: "helloworld-bench".into(), address: svc_addr.clone(), ..Default::default() }],
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
            ..Default::default()
        },
        Duration::ZERO,
    )?;

    // Two proxies over the same registry: without and with auth; the gateway over the one with auth.
    let auth = Arc::new(Auth::open(AuthConfig::new(data.path().to_path_buf()))?);
    let token = auth.login("micro", "admin", "micro", None)?.access_token;
    let plain = Proxy::new(registry.clone(), axum::Router::new(), Vec::new(), Vec::new());
    let authed = Proxy::new(registry.clone(), axum::Router::new(), Vec::new(), Vec::new()).with_auth(auth);
    let (plain_listener, plain_addr) = listen().await?;
    let (authed_listener, authed_addr) = listen().await?;
    serve_proxy(plain, plain_listener);
    serve_proxy(authed.clone(), authed_listener);
    let (api_listener, api_addr) = listen().await?;
    let gateway = Gateway::new(authed, registry.clone(), GatewayConfig::default());
    tokio::spawn(micro::server::gateway::serve(api_listener, gateway, std::future::pending()));

    println!(
        "micro auth and gateway benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    // Interleave the two latency runs so drift on a noisy machine hits both.
    let mut plain_samples = Vec::new();
    let mut authed_samples = Vec::new();
    for _ in 0..3 {
        plain_samples.push(latency(&plain_addr, None).await?);
        authed_samples.push(latency(&authed_addr, Some(&token)).await?);
    }
    let best = |s: &[Samples]| s.iter().map(|x| (x.median(), x.percentile(99.0))).min().unwrap_or_default();
    let (p50_plain, p99_plain) = best(&plain_samples);
    let (p50_auth, p99_auth) = best(&authed_samples);
    let overhead = (us(p50_auth) / us(p50_plain) - 1.0) * 100.0;
    println!("proxy latency, {SEQUENTIAL} sequential unary calls (best of 3 interleaved runs)");
    println!("  without auth   p50 {:>7.1} µs   p99 {:>7.1} µs", us(p50_plain), us(p99_plain));
    println!("  with auth      p50 {:>7.1} µs   p99 {:>7.1} µs", us(p50_auth), us(p99_auth));
    println!("  auth overhead  {overhead:+.1} % of p50 ({:+.1} µs)", us(p50_auth) - us(p50_plain));
    println!();

    let direct = grpc_throughput(&svc_addr).await?;
    let (gw, failed) = gateway_throughput(&format!("http://{api_addr}/helloworld"), &token).await?;
    let ratio = gw / direct;
    println!("throughput, {IN_FLIGHT} in flight, {WINDOW:?} windows");
    println!("  direct gRPC                      {direct:>9.0} req/s");
    println!("  gateway HTTP/JSON, auth on       {gw:>9.0} req/s   ({failed} failed)");
    println!("  ratio gateway / direct           {ratio:>9.2}");
    println!();
    println!("targets");
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("  auth adds at most 5 % to proxy p50         {:>+7.1} %   {}", overhead, verdict(overhead <= 5.0));
    println!("  gateway at least 0.5 x direct gRPC          {ratio:>7.2} x   {}", verdict(ratio >= 0.5));
    Ok(())
}
