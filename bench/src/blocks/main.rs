//! The building-blocks benchmark (issue 5), side by side in one run on this machine:
//!
//! 1. store writes per second at 1 and 64 concurrent clients through the proxy, against raw single-commit redb
//!    writes (target: at 64 clients, at least 1 × the raw rate, thanks to group commit); store reads per second;
//! 2. broker messages per second through a streaming publish to one subscriber (target: at least 100 k msg/s;
//!    NATS does about 1.4 M msg/s on this machine);
//! 3. events publish-to-consume latency, p50.
//!
//! One in-process `micro server` (auth on, admin logged in) on loopback with a temporary data dir.
//! Run: `cargo run --release -p micro-bench --bin blocks`. The distributed backends are measured the same way:
//! `cargo run --release -p micro-bench --features postgres,nats --bin blocks -- --store postgres://… --broker
//! nats://…` (as `micro server` takes them).

#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

mod broker;
mod events;
mod store;

use anyhow::Context;
use std::time::Duration;
use tokio::net::TcpListener;

/// The admin password of the benchmark's server.
const ADMIN_PASSWORD: &str = "micro-bench";

/// What every section gets: the server's address, an admin token and a scratch directory.
pub struct Bench {
    /// The gRPC proxy address.
    pub proxy: String,
    /// An access token of the `micro` admin.
    pub token: String,
    /// A scratch directory for raw baselines.
    pub scratch: std::path::PathBuf,
}

impl Bench {
    /// A connection to the proxy, authenticated as the admin.
    pub fn connection(&self) -> anyhow::Result<micro_client::Connection> {
        Ok(micro_client::Connection::new(&self.proxy, micro_core::DEFAULT_NAMESPACE)?.with_token(Some(&self.token)))
    }
}

/// The server's backends from `--store URL` and `--broker URL`, as `micro server` parses them.
fn backends() -> anyhow::Result<(micro_server::store::StoreBackend, micro_server::broker::BrokerBackend)> {
    let (mut store, mut broker) = (Default::default(), Default::default());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--store" => store = micro_server::store::StoreBackend::parse(&value).map_err(anyhow::Error::msg)?,
            "--broker" => broker = micro_server::broker::BrokerBackend::parse(&value).map_err(anyhow::Error::msg)?,
            other => anyhow::bail!("unknown flag {other}: the flags are --store URL and --broker URL"),
        }
    }
    Ok((store, broker))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (store, broker) = backends()?;
    let store_kind = if store == Default::default() { "redb" } else { "PostgreSQL" };
    let broker_kind = if broker == Default::default() { "in memory" } else { "NATS" };
    let data = tempfile::Builder::new().prefix("micro-bench-blocks").tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?.to_string();
    let config = micro_server::ServerConfig {
        admin_password: Some(ADMIN_PASSWORD.into()),
        store,
        broker,
        ..micro_server::ServerConfig::new(data.path().join("server"))
    };
    let shared = config.store != micro_server::store::StoreBackend::default();
    let server_dir = config.data_dir.clone();
    if shared {
        keys(&server_dir, KeysTo::Server)?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(micro_server::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    let token = login(&proxy).await.context(if shared {
        "cannot log in as the admin (a database that other servers set up keeps their admin password: give the \
         benchmark a database of its own)"
    } else {
        "cannot log in as the admin"
    })?;
    if shared {
        keys(&server_dir, KeysTo::Kept)?;
    }
    let scratch = data.path().join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let bench = Bench { proxy, token, scratch };

    println!(
        "micro building-blocks benchmark ({} cores; store: {store_kind}, broker: {broker_kind})",
        std::thread::available_parallelism()?.get()
    );
    store::run(&bench).await.context("store benchmark")?;
    broker::run(&bench).await.context("broker benchmark")?;
    events::run(&bench).await.context("events benchmark")?;

    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// Which way [`keys`] copies.
enum KeysTo {
    Server,
    Kept,
}

/// Servers that share a database must hold the same key files (the database remembers the first server's), so
/// runs against one database keep the first run's keys in the temp dir (`micro-bench-keys`) and give them to the
/// next runs' servers.
fn keys(server_dir: &std::path::Path, to: KeysTo) -> anyhow::Result<()> {
    let kept = std::env::temp_dir().join("micro-bench-keys");
    std::fs::create_dir_all(&kept)?;
    std::fs::create_dir_all(server_dir)?;
    for file in ["auth.key", "config.key"] {
        let (from, into) = match to {
            KeysTo::Server => (kept.join(file), server_dir.join(file)),
            KeysTo::Kept => (server_dir.join(file), kept.join(file)),
        };
        if from.exists() && !into.exists() {
            std::fs::copy(&from, &into).with_context(|| format!("cannot copy {}", from.display()))?;
        }
    }
    Ok(())
}

async fn login(proxy: &str) -> anyhow::Result<String> {
    use micro_core::proto::auth::{Options, TokenRequest};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let conn = micro_client::Connection::new(proxy, micro_core::DEFAULT_NAMESPACE)?;
        let req = conn.request(TokenRequest {
            id: "admin".into(),
            secret: ADMIN_PASSWORD.into(),
            options: Some(Options { namespace: micro_core::DEFAULT_NAMESPACE.into() }),
            ..Default::default()
        });
        match conn.auth().token(req).await {
            Ok(r) => {
                return r.into_inner().token.map(|t| t.access_token).context("the server answered with no token");
            }
            Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
