//! The web dashboard benchmark, side by side in one run on this machine: one micro server with its gRPC proxy, HTTP
//! API gateway and web dashboard, all in this process, and helloworld registered with it.
//!
//! 1. The first load of the services page, as a first visit makes it: a new connection, `GET /services` with the
//!    session cookie, then the three assets its head links (stylesheet, script, icon) at once, the first on the
//!    page's connection and the others on new ones, as a browser opens them. Bytes transferred (response heads plus
//!    bodies, as served: uncompressed), the time to the services list (the HTML is complete: the list is rendered in
//!    it) and to the fully loaded page, median and p90 (targets: under 100 kB, the list in under 100 ms on
//!    loopback). For reference, a reload with the assets cached (`GET /services` on a kept-alive connection) and
//!    the login (`POST /login`).
//! 2. A submitted call form to its answer: `POST /api/call/helloworld/Helloworld.Call` with the session cookie and
//!    CSRF token, as the service page's script sends it, over a kept-alive connection (p50, p99), beside the same
//!    call through the API gateway (`POST /helloworld/call` with a bearer token) in alternating blocks, so that the
//!    dashboard's own cost (session lookup, CSRF check) shows as the difference. Then one-shot: each on a new
//!    connection, alternating with the process time of a one-shot `micro helloworld call --name=x`.
//!
//! The HTTP client is a minimal HTTP/1.1 client written here over a TCP stream, so that bytes are counted exactly as
//! they cross the wire. helloworld is served by the micro service library, which also answers the gRPC health checks
//! the services page makes, and registers through the proxy with the server's local credential.
//! `target/release/micro` must exist for part 2 (`cargo build --release --workspace`).

mod cpu;
mod http1;
mod inprocess;
mod stats;

/// The allocator of the `micro` binary, so the in-process server allocates as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail, ensure};
use http1::{Answer, Conn};
use inprocess::ADMIN_PASSWORD;
use stats::{Samples, ms, thousands, us};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const PAGE_WARMUP: usize = 5;
const PAGE_RUNS: usize = 50;
const LOGINS: usize = 5;
const CALL_WARMUP: usize = 50;
const CALLS: usize = 500;
/// Kept-alive calls alternate between the dashboard and the gateway in blocks of this many.
const BLOCK: usize = 50;
const ONE_SHOT_RUNS: usize = 30;
/// The request the call form sends.
const CALL_BODY: &str = r#"{"name":"x"}"#;
/// Target: a first load transfers at most this many bytes (HTML and assets).
const PAGE_BUDGET_BYTES: usize = 100_000;
/// Target: the services list is complete within this time (p90).
const LIST_BUDGET_MS: f64 = 100.0;
/// Bounds on every exchange: the time of one request, and the sizes of an answer's head and body.
/// How long a one-shot `micro` process may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The server under test, and what a logged-in browser and the CLI hold.
struct Site {
    proxy: SocketAddr,
    api: SocketAddr,
    web: SocketAddr,
    /// `http://127.0.0.1:PORT` of the dashboard: its pages' origin.
    origin: String,
    /// The admin's access token (the CLI's and the gateway's bearer token).
    token: String,
    /// `micro-session=KEY`.
    cookie: String,
    /// The session's CSRF token, from the page's `<meta name="csrf">`.
    csrf: String,
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let micro_bin = inprocess::micro_bin()?;
    let data = tempfile::Builder::new().prefix("micro-bench-web").tempdir()?;
    let mut site = start(data.path()).await.context("starting the server")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("micro-bench web: {cpus} CPUs; proxy {}, API gateway {}, dashboard {}", site.proxy, site.api, site.origin);

    // The login: a form post, answered with the session cookie and a redirect to the services page.
    let mut logins = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        let (cookie, took) = login(&site).await?;
        site.cookie = cookie;
        logins.push(took);
    }
    let logins = Samples::new(logins);
    let mut conn = Conn::open(site.web).await?;
    let page = conn.send("GET", "/services", &site.page_headers(), b"").await?;
    check_page(&page)?;
    site.csrf = meta_csrf(&page.text()).context("the services page has no <meta name=\"csrf\"> token")?;
    let listed = page.text().matches("<tr data-service=\"").count();
    drop(conn);

    // 1. First page loads.
    println!(
        "\nFirst page load: a new connection, GET /services, then its assets at once (the first on the page's \
         connection, the others on new ones); {PAGE_RUNS} runs after {PAGE_WARMUP} warm-up runs. The page lists \
         {listed} services (helloworld and the server's own), each with its nodes' gRPC health checked through the \
         proxy"
    );
    let cpu = cpu::Snapshot::now();
    for _ in 0..PAGE_WARMUP {
        first_load(&site).await?;
    }
    let mut loads = Vec::with_capacity(PAGE_RUNS);
    for _ in 0..PAGE_RUNS {
        loads.push(first_load(&site).await?);
    }
    let to_list = Samples::new(loads.iter().map(|l| l.list).collect());
    let to_full = Samples::new(loads.iter().map(|l| l.full).collect());
    let sizes = &loads.iter().max_by_key(|l| l.total()).expect("PAGE_RUNS > 0").sizes;
    let largest = sizes.iter().map(|s| s.head + s.body).sum::<usize>();
    let html = sizes.iter().find(|s| s.path == "/services").map_or(0, |s| s.head + s.body);
    println!("  bytes transferred, as served (uncompressed: no Accept-Encoding sent), response head + body:");
    for s in sizes {
        println!(
            "    {:<22} {:>8} B  (head {:>4} + body {:>7}, {})",
            s.path.split('?').next().unwrap_or_default(),
            thousands((s.head + s.body) as f64),
            s.head,
            thousands(s.body as f64),
            s.framing
        );
    }
    let split = format!("HTML {}, assets {}", thousands(html as f64), thousands((largest - html) as f64));
    println!("    {:<22} {:>8} B  ({split})", "total", thousands(largest as f64));
    println!("  time (from the connect) {:>32} {:>9} {:>9} {:>9}", "median", "p90", "min", "max");
    for (name, s) in [("to the services list", &to_list), ("to the fully loaded page", &to_full)] {
        println!(
            "    {name:<44} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms",
            ms(s.median()),
            ms(s.percentile(90.0)),
            ms(s.min()),
            ms(s.max())
        );
    }
    let mut conn = Conn::open(site.web).await?;
    let mut reloads = Vec::with_capacity(PAGE_RUNS);
    for _ in 0..PAGE_RUNS {
        let start = Instant::now();
        let page = conn.send("GET", "/services", &site.page_headers(), b"").await?;
        reloads.push(start.elapsed());
        check_page(&page)?;
    }
    drop(conn);
    let reloads = Samples::new(reloads);
    println!(
        "    {:<44} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms",
        "reload, assets cached (kept-alive, no conn.)",
        ms(reloads.median()),
        ms(reloads.percentile(90.0)),
        ms(reloads.min()),
        ms(reloads.max())
    );
    println!(
        "    {:<44} {:>6.2} ms {:>9} {:>6.2} ms {:>6.2} ms  ({LOGINS} logins, new conn. each)",
        "login (POST /login → 303 with the cookie)",
        ms(logins.median()),
        "",
        ms(logins.min()),
        ms(logins.max())
    );
    cpu::report(cpu);

    // 2. The call form, kept-alive: the dashboard and the gateway in alternating blocks.
    println!(
        "\nForm submit to answer, kept-alive connection: {CALLS} calls each after {CALL_WARMUP} warm-up calls, \
         alternating in blocks of {BLOCK}"
    );
    let cpu = cpu::Snapshot::now();
    let kept = kept_alive(&site).await?;
    println!("  {:<44} {:>10} {:>10} {:>10} {:>10}", "", "p50", "p99", "mean", "max");
    for (route, s) in Route::ALL.iter().zip(&kept) {
        println!(
            "  {:<44} {:>7.1} µs {:>7.1} µs {:>7.1} µs {:>7.1} µs",
            route.label(),
            us(s.median()),
            us(s.percentile(99.0)),
            us(s.mean()),
            us(s.max())
        );
    }
    let overhead = us(kept[0].median()) - us(kept[1].median());
    println!("  dashboard − gateway: p50 {overhead:+.1} µs (session lookup, CSRF and Origin checks)");
    cpu::report(cpu);

    // One-shot: a new connection per call, and a new `micro` process.
    println!(
        "\nOne-shot call: {ONE_SHOT_RUNS} runs each, alternating; a new connection per HTTP call, a new process per \
         CLI call (warm schema cache)"
    );
    let cpu = cpu::Snapshot::now();
    let [web_once, api_once, cli] = one_shot(&micro_bin, data.path(), &site).await?;
    println!("  {:<44} {:>9} {:>9} {:>9} {:>9}", "", "median", "p90", "mean", "min");
    let rows = [
        ("dashboard POST /api/call/… (new connection)", &web_once),
        ("gateway POST /helloworld/call (new conn.)", &api_once),
        ("micro helloworld call --name=x (process)", &cli),
    ];
    for (name, s) in rows {
        println!(
            "  {name:<44} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms",
            ms(s.median()),
            ms(s.percentile(90.0)),
            ms(s.mean()),
            ms(s.min())
        );
    }
    cpu::report(cpu);

    println!("\nSummary (targets of the web dashboard)");
    let list_p90 = ms(to_list.percentile(90.0));
    let verdicts = [
        (
            format!("first page load ≤ {} kB transferred", PAGE_BUDGET_BYTES / 1000),
            format!("{} B ({split})", thousands(largest as f64)),
            largest <= PAGE_BUDGET_BYTES,
        ),
        (
            format!("services list ≤ {LIST_BUDGET_MS:.0} ms (p90, loopback)"),
            format!("{list_p90:.2} ms (median {:.2} ms)", ms(to_list.median())),
            list_p90 <= LIST_BUDGET_MS,
        ),
    ];
    for (target, measured, pass) in &verdicts {
        println!("  {target:<44} {measured:<40} {}", if *pass { "PASS" } else { "MISS" });
    }
    println!(
        "  (fully loaded page p90 {:.2} ms; form submit p50 {:.1} µs kept-alive, {overhead:+.1} µs over the gateway; \
         one-shot {:.2} ms against {:.2} ms for the CLI process; informational)",
        ms(to_full.percentile(90.0)),
        us(kept[0].median()),
        ms(web_once.median()),
        ms(cli.median())
    );
    println!("\nTotal run time {:.1} s. A benchmark, not a test: exit status 0.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts a micro server with its data in `dir` (proxy, API gateway and dashboard on loopback ports), then
/// helloworld, waits until helloworld is registered, and logs in as the admin over gRPC (the CLI's token).
async fn start(dir: &Path) -> anyhow::Result<Site> {
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (proxy_listener, api_listener, web_listener) = (bind().await?, bind().await?, bind().await?);
    let (proxy, api, web) = (proxy_listener.local_addr()?, api_listener.local_addr()?, web_listener.local_addr()?);
    let config = micro_server::ServerConfig {
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..micro_server::ServerConfig::new(dir.join("server"))
    };
    let listeners = micro_server::Listeners { proxy: proxy_listener, api: Some(api_listener), web: Some(web_listener) };
    let mut server = tokio::spawn(micro_server::serve_with(listeners, config, std::future::pending()));
    let conn = micro_client::Connection::new(&proxy.to_string(), micro_core::DEFAULT_NAMESPACE)?;
    inprocess::serve_helloworld(&conn, proxy, &mut server).await?;
    let token = inprocess::admin_token(&conn, &mut server).await?;
    Ok(Site { proxy, api, web, origin: format!("http://{web}"), token, cookie: String::new(), csrf: String::new() })
}

impl Site {
    /// What a browser sends for a page: it accepts HTML and holds the cookie.
    fn page_headers(&self) -> [(&str, &str); 2] {
        [("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"), ("Cookie", &self.cookie)]
    }
}

/// Logs in through the dashboard's form on a new connection: the session cookie (`micro-session=KEY`) and the time
/// to the answer.
async fn login(site: &Site) -> anyhow::Result<(String, Duration)> {
    let form = format!("username=admin&password={ADMIN_PASSWORD}&next=%2Fservices");
    let start = Instant::now();
    let mut conn = Conn::open(site.web).await?;
    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Origin", site.origin.as_str())];
    let answer = conn.send("POST", "/login", &headers, form.as_bytes()).await?;
    let took = start.elapsed();
    ensure!(answer.status == 303, "POST /login answered {} instead of 303: {}", answer.status, answer.excerpt());
    ensure!(
        answer.header("location") == Some("/services"),
        "POST /login redirected to {:?} instead of /services",
        answer.header("location")
    );
    let cookie = answer
        .headers
        .iter()
        .filter(|(name, _)| name == "set-cookie")
        .filter_map(|(_, value)| value.split(';').next())
        .find(|pair| pair.starts_with("micro-session=") && pair.len() > "micro-session=".len())
        .context("POST /login set no micro-session cookie")?;
    Ok((cookie.trim().to_string(), took))
}

/// A services page must be complete and list helloworld.
fn check_page(page: &Answer) -> anyhow::Result<()> {
    ensure!(page.status == 200, "GET /services answered {}: {}", page.status, page.excerpt());
    let text = page.text();
    let listed = text.contains("data-service=\"helloworld\"");
    ensure!(listed, "the services page does not list helloworld: {}", page.excerpt());
    ensure!(text.contains("</html>") || text.contains("</body>"), "the services page is cut short");
    Ok(())
}

/// The content of `<meta name="csrf" content="…">`.
fn meta_csrf(html: &str) -> Option<String> {
    let rest = &html[html.find("<meta name=\"csrf\" content=\"")? + "<meta name=\"csrf\" content=\"".len()..];
    let token = &rest[..rest.find('"')?];
    (!token.is_empty()).then(|| token.to_string())
}

/// The paths of the assets a page links from its own host: every `href` and `src` under `/assets/`, in order.
fn asset_paths(html: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for attribute in ["href=\"", "src=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attribute) {
            rest = &rest[at + attribute.len()..];
            let Some(end) = rest.find('"') else { break };
            let value = rest[..end].replace("&amp;", "&");
            if value.starts_with("/assets/") && !paths.contains(&value) {
                paths.push(value);
            }
            rest = &rest[end..];
        }
    }
    paths
}

/// The size of one answer of a page load.
#[derive(Clone, Debug)]
struct Size {
    path: String,
    /// Bytes of the status line and headers.
    head: usize,
    /// Bytes of the body as sent.
    body: usize,
    /// How the body was framed: `Content-Length`, `chunked`, `to close` or `no body`.
    framing: &'static str,
}

/// One first page load.
struct Load {
    /// From the connect to the complete HTML.
    list: Duration,
    /// From the connect to the last asset.
    full: Duration,
    /// The page's answer, then the assets' in the order the page links them.
    sizes: Vec<Size>,
}

impl Load {
    fn total(&self) -> usize {
        self.sizes.iter().map(|s| s.head + s.body).sum()
    }
}

/// A first visit's load of the services page: a new connection, the page, then its assets at once (the first on
/// the page's connection, each other one on a new connection).
async fn first_load(site: &Site) -> anyhow::Result<Load> {
    let start = Instant::now();
    let mut conn = Conn::open(site.web).await?;
    let page = conn.send("GET", "/services", &site.page_headers(), b"").await?;
    let list = start.elapsed();
    check_page(&page)?;
    let assets = asset_paths(&page.text());
    ensure!(
        ["/assets/app.css", "/assets/app.js", "/assets/icon.svg"]
            .iter()
            .all(|a| assets.iter().any(|p| p.starts_with(a))),
        "the services page does not link its three assets: {assets:?}"
    );
    let mut fetches = tokio::task::JoinSet::new();
    let mut reuse = Some(conn);
    for (i, path) in assets.iter().cloned().enumerate() {
        let conn = reuse.take();
        let (web, cookie) = (site.web, site.cookie.clone());
        fetches.spawn(async move {
            let mut conn = match conn {
                Some(conn) => conn,
                None => Conn::open(web).await?,
            };
            let answer = conn.send("GET", &path, &[("Accept", "*/*"), ("Cookie", &cookie)], b"").await?;
            ensure!(
                answer.status == 200 && !answer.body.is_empty(),
                "GET {path} answered {} with {} bytes",
                answer.status,
                answer.body.len()
            );
            Ok::<_, anyhow::Error>((
                i,
                Size { path, head: answer.head, body: answer.body_wire, framing: answer.framing },
            ))
        });
    }
    let mut sizes = vec![None; assets.len()];
    while let Some(joined) = fetches.join_next().await {
        let (i, size) = joined.context("an asset fetch panicked")??;
        sizes[i] = Some(size);
    }
    let full = start.elapsed();
    let mut all = vec![Size { path: "/services".into(), head: page.head, body: page.body_wire, framing: page.framing }];
    all.extend(sizes.into_iter().flatten());
    Ok(Load { list, full, sizes: all })
}

/// The two ways to make the call.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// The dashboard's `POST /api/call/helloworld/Helloworld.Call`, with the session cookie and CSRF token.
    Dashboard,
    /// The API gateway's `POST /helloworld/call`, with the bearer token.
    Gateway,
}

impl Route {
    const ALL: [Route; 2] = [Route::Dashboard, Route::Gateway];

    fn label(self) -> &'static str {
        match self {
            Route::Dashboard => "dashboard POST /api/call/…/Helloworld.Call",
            Route::Gateway => "gateway POST /helloworld/call (reference)",
        }
    }

    fn address(self, site: &Site) -> SocketAddr {
        match self {
            Route::Dashboard => site.web,
            Route::Gateway => site.api,
        }
    }

    /// Sends the call on `conn` and checks its answer.
    async fn call(self, site: &Site, conn: &mut Conn) -> anyhow::Result<()> {
        let json = ("Content-Type", "application/json");
        let answer = match self {
            Route::Dashboard => {
                let headers = [
                    json,
                    ("Accept", "application/json"),
                    ("X-CSRF-Token", site.csrf.as_str()),
                    ("Cookie", site.cookie.as_str()),
                    ("Origin", site.origin.as_str()),
                ];
                conn.send("POST", "/api/call/helloworld/Helloworld.Call", &headers, CALL_BODY.as_bytes()).await?
            }
            Route::Gateway => {
                let bearer = format!("Bearer {}", site.token);
                let headers = [json, ("Accept", "application/json"), ("Authorization", bearer.as_str())];
                conn.send("POST", "/helloworld/call", &headers, CALL_BODY.as_bytes()).await?
            }
        };
        if answer.status != 200 || !answer.text().contains("Hello x") {
            bail!("{} answered {}: {}", self.label(), answer.status, answer.excerpt());
        }
        Ok(())
    }
}

/// [`CALLS`] calls each through the dashboard and the gateway, each over its own kept-alive connection, after
/// [`CALL_WARMUP`] each, alternating in blocks of [`BLOCK`].
async fn kept_alive(site: &Site) -> anyhow::Result<[Samples; 2]> {
    let mut conns = [Conn::open(site.web).await?, Conn::open(site.api).await?];
    for _ in 0..CALL_WARMUP {
        for (route, conn) in Route::ALL.iter().zip(conns.iter_mut()) {
            route.call(site, conn).await?;
        }
    }
    let mut samples = [Vec::with_capacity(CALLS), Vec::with_capacity(CALLS)];
    for _ in 0..CALLS.div_ceil(BLOCK) {
        for ((route, conn), out) in Route::ALL.iter().zip(conns.iter_mut()).zip(samples.iter_mut()) {
            for _ in 0..BLOCK.min(CALLS - out.len()) {
                let start = Instant::now();
                route.call(site, conn).await?;
                out.push(start.elapsed());
            }
        }
    }
    let [web, api] = samples;
    Ok([Samples::new(web), Samples::new(api)])
}

/// [`ONE_SHOT_RUNS`] runs each, alternating: the dashboard's call on a new connection, the gateway's on a new
/// connection, and `micro helloworld call --name=x` as a new process (after one untimed run, which fills its schema
/// cache).
async fn one_shot(micro: &Path, dir: &Path, site: &Site) -> anyhow::Result<[Samples; 3]> {
    let mut cli = tokio::process::Command::new(micro);
    cli.args(["helloworld", "call", "--name=x", "-o", "raw"])
        .env("MICRO_PROXY", site.proxy.to_string())
        .env("MICRO_AUTH_TOKEN", &site.token)
        .env("MICRO_CONFIG_DIR", dir.join("cli").join("config"))
        .env("MICRO_CACHE_DIR", dir.join("cli").join("cache"))
        .env_remove("MICRO_ENV")
        .env_remove("MICRO_NAMESPACE")
        .env_remove("MICRO_CA_CERT")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    time_cli(&mut cli).await?;
    let mut samples = [Vec::with_capacity(ONE_SHOT_RUNS), Vec::with_capacity(ONE_SHOT_RUNS), Vec::new()];
    for _ in 0..ONE_SHOT_RUNS {
        for (route, out) in Route::ALL.iter().zip(samples.iter_mut()) {
            let start = Instant::now();
            let mut conn = Conn::open(route.address(site)).await?;
            route.call(site, &mut conn).await?;
            out.push(start.elapsed());
        }
        samples[2].push(time_cli(&mut cli).await?);
    }
    let [web, api, cli] = samples;
    Ok([Samples::new(web), Samples::new(api), Samples::new(cli)])
}

/// The wall time of one run of `cli`, which must print `Hello x`.
async fn time_cli(cli: &mut tokio::process::Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = tokio::time::timeout(CLI_TIMEOUT, cli.output())
        .await
        .with_context(|| format!("micro helloworld call did not finish within {CLI_TIMEOUT:?}"))??;
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("Hello x") {
        bail!("micro failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(elapsed)
}
