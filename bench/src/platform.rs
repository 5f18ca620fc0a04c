//! The system under test: a `micro server` and the helloworld service, started in-process on loopback ports, plus
//! the reference [`forwarder`](crate::forwarder) in front of helloworld.
//!
//! Each side gets its own tokio runtime by default (server, service, client load), as if they were three processes
//! each started with `#[tokio::main]`: the client's load generation then competes with the servers for the two
//! cores only through the OS scheduler, exactly as separate processes would, and never by queueing on the
//! servers' worker threads. `--runtimes shared` puts everything on one runtime instead, for comparison.

use crate::inprocess::outcome;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How the servers and the client load are laid out on tokio runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One runtime per side: server, service, client (like three processes).
    Separate,
    /// One runtime for everything.
    Shared,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Separate => "separate",
            Layout::Shared => "shared",
        })
    }
}

/// The default admin of the benchmark's fresh server: calls to services need an account, as in Micro.
pub const ADMIN: &str = "admin";
/// The admin's password (set when the server creates the admin).
pub const ADMIN_PASSWORD: &str = "micro-bench";

/// A running micro server with helloworld registered, and the runtime to drive client load from.
pub struct Platform {
    /// The proxy's address (`micro server`).
    pub proxy: SocketAddr,
    /// helloworld's own address.
    pub direct: SocketAddr,
    /// The reference forwarder's address (it forwards everything to helloworld).
    pub forwarder: SocketAddr,
    /// An access token of the admin, for `authorization: Bearer …`.
    pub token: String,
    client: Handle,
    runtimes: Vec<Runtime>,
    server: Option<Running<micro_server::ServerError>>,
    service: Option<Running<micro::ServiceError>>,
    forward: Option<Running<tonic::transport::Error>>,
    _data: tempfile::TempDir,
}

/// A server task and the sender that tells it to stop.
struct Running<E> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Display> Running<E> {
    /// Tells the task to stop and waits at most 5 s for it; says what went wrong, if anything.
    fn stop(self, what: &str, client: &Handle) -> Option<String> {
        let _ = self.stop.send(());
        let task = self.task;
        match client.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await }) {
            Ok(Ok(Ok(()))) => None,
            Ok(joined) => Some(format!("{what}: {}", outcome(joined))),
            Err(_) => Some(format!("{what} did not stop within 5 s")),
        }
    }
}

fn runtime(name: &str, workers: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("cannot build the {name} runtime"))
}

impl Platform {
    /// Starts the server, then helloworld, and waits (at most 10 s) until helloworld is registered.
    pub fn start(layout: Layout, workers: usize) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new().prefix("micro-bench-data").tempdir()?;
        let runtimes = match layout {
            Layout::Separate => vec![
                runtime("bench-server", workers)?,
                runtime("bench-service", workers)?,
                runtime("bench-client", workers)?,
            ],
            Layout::Shared => vec![runtime("bench", workers)?],
        };
        let server_rt = runtimes[0].handle().clone();
        let service_rt = runtimes[1.min(runtimes.len() - 1)].handle().clone();
        let client = runtimes[runtimes.len() - 1].handle().clone();

        let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0")).context("cannot bind the proxy")?;
        let proxy = listener.local_addr()?;
        let config = micro_server::ServerConfig {
            admin_password: Some(ADMIN_PASSWORD.into()),
            ..micro_server::ServerConfig::new(data.path().join("server"))
        };
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server_task = server_rt.spawn(micro_server::serve(listener, config, async move {
            let _ = stopped.await;
        }));

        let listener = service_rt.block_on(TcpListener::bind("127.0.0.1:0")).context("cannot bind helloworld")?;
        let direct = listener.local_addr()?;
        let (stop_service, stopped) = oneshot::channel::<()>();
        let service_task =
            service_rt.spawn(helloworld::service().proxy(proxy.to_string()).serve(listener, async move {
                let _ = stopped.await;
            }));

        // The reference forwarder shares the server's runtime: it stands for another proxy process.
        let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0")).context("cannot bind the forwarder")?;
        let forwarder = listener.local_addr()?;
        let (stop_forward, stopped) = oneshot::channel::<()>();
        let forward_task = server_rt.spawn(crate::forwarder::serve(listener, direct, async move {
            let _ = stopped.await;
        }));

        let mut platform = Self {
            proxy,
            direct,
            forwarder,
            token: String::new(),
            client,
            runtimes,
            server: Some(Running { stop: stop_server, task: server_task }),
            service: Some(Running { stop: stop_service, task: service_task }),
            forward: Some(Running { stop: stop_forward, task: forward_task }),
            _data: data,
        };
        platform.wait_registered().context("helloworld did not register with the micro server")?;
        platform.token = platform.login().context("cannot log in as the admin")?;
        Ok(platform)
    }

    fn wait_registered(&mut self) -> anyhow::Result<()> {
        let proxy = self.proxy.to_string();
        // Inside the runtime: the lazy channel spawns its connection task.
        let conn =
            self.client.block_on(async { micro_client::Connection::new(&proxy, micro_core::DEFAULT_NAMESPACE) })?;
        let want = self.direct.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::from("not polled yet");
        while Instant::now() < deadline {
            self.check_running()?;
            match self.client.block_on(conn.get_service("helloworld")) {
                Ok(services) if services.iter().flat_map(|s| &s.nodes).any(|n| n.address == want) => return Ok(()),
                Ok(_) => last = "registered without our node".into(),
                Err(status) => last = status.message().to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("timed out after 10 s (last answer: {last})")
    }

    /// An access token for the admin (`Auth.Token`, as `micro login` does).
    fn login(&self) -> anyhow::Result<String> {
        use micro_core::proto::auth::{Options, TokenRequest};
        let proxy = self.proxy.to_string();
        self.client.block_on(async {
            let conn = micro_client::Connection::new(&proxy, micro_core::DEFAULT_NAMESPACE)?;
            let req = conn.request(TokenRequest {
                id: ADMIN.into(),
                secret: ADMIN_PASSWORD.into(),
                options: Some(Options { namespace: micro_core::DEFAULT_NAMESPACE.into() }),
                ..Default::default()
            });
            let token = conn.auth().token(req).await?.into_inner().token;
            token.map(|t| t.access_token).filter(|t| !t.is_empty()).context("the server answered with no token")
        })
    }

    /// Fails with the server's or the service's own error if either has stopped.
    fn check_running(&mut self) -> anyhow::Result<()> {
        if self.server.as_ref().is_some_and(|r| r.task.is_finished()) {
            let task = self.server.take().expect("checked").task;
            bail!("the micro server stopped: {}", outcome(self.client.block_on(task)));
        }
        if self.service.as_ref().is_some_and(|r| r.task.is_finished()) {
            let task = self.service.take().expect("checked").task;
            bail!("helloworld stopped: {}", outcome(self.client.block_on(task)));
        }
        if self.forward.as_ref().is_some_and(|r| r.task.is_finished()) {
            let task = self.forward.take().expect("checked").task;
            bail!("the forwarder stopped: {}", outcome(self.client.block_on(task)));
        }
        Ok(())
    }

    /// Runs `future` on the client runtime and waits for it.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.client.block_on(future)
    }

    /// Stops helloworld (it deregisters), then the server; waits at most a few seconds for each.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        problems.extend(self.forward.take().and_then(|r| r.stop("forwarder", &self.client)));
        // helloworld first: it deregisters through the proxy.
        problems.extend(self.service.take().and_then(|r| r.stop("helloworld", &self.client)));
        problems.extend(self.server.take().and_then(|r| r.stop("micro server", &self.client)));
        for rt in self.runtimes.drain(..) {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if problems.is_empty() { Ok(()) } else { bail!("{}", problems.join("; ")) }
    }
}
