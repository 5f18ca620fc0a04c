//! The service library: build a micro service from tonic handlers in a few lines.
//!
//! ```no_run
//! # mod pb { pub const FILE_DESCRIPTOR_SET: &[u8] = &[]; }
//! # async fn demo() -> Result<(), micro::ServiceError> {
//! micro::init_logging();
//! micro::Service::new("helloworld")
//!     .version("latest")
//!     .descriptors(pb::FILE_DESCRIPTOR_SET)
//!     // .add_service(HelloworldServer::new(Handler))
//!     .run()
//!     .await
//! # }
//! ```
//!
//! This crate is all a service links: it depends on `micro-core` (the protos and metadata keys) and `micro-client`
//! (the connection), never on the server or the CLI.
//!
//! A [`Service`] binds `127.0.0.1:0` (or `MICRO_SERVICE_ADDRESS`), serves your handlers plus gRPC health and
//! reflection, and registers itself with its endpoints and schema through the proxy (`MICRO_PROXY`, default
//! `127.0.0.1:8081`). It re-registers on an interval (a heartbeat that carries only the schema's hash) and
//! deregisters when it stops. [`client::Client`] calls other services by name through the same proxy.
//!
//! **TLS.** An `https://` proxy address is reached over TLS, trusting the Mozilla roots and `MICRO_CA_CERT`. Given a
//! certificate and key ([`Service::tls`], or `MICRO_TLS_CERT` and `MICRO_TLS_KEY`), the service serves TLS itself
//! (ALPN `h2`; the files are re-read when they change) and registers its node with the metadata `tls=true`
//! ([`micro_core::metadata::TLS_KEY`]), so the proxy dials it over TLS only, verifying the certificate against
//! `--tls-upstream-ca` for the node's host: the certificate must name the address the service registers (its
//! listen address, `127.0.0.1` when it listens on every interface).

pub mod broker;
pub mod cache;
pub mod chain;
pub mod client;
pub mod config;
pub mod conn;
pub mod credentials;
pub mod debug;
pub mod events;
pub mod logging;
pub mod router;
pub mod serve;
pub mod store;
pub mod tasks;
pub mod tls;

pub use logging::init_logging;
pub use micro_core::{DEFAULT_NAMESPACE, VERSION, proto, schema};

use micro_client::Connection;
use micro_core::env;
use micro_core::proto::registry::{Node, Options, Schema as SchemaMsg, Service as ServiceRecord};
use micro_core::schema::Schema;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::server::NamedService;

/// The largest message a service should take and send: 64 MiB, what `micro call` and the HTTP API gateway send
/// and accept (gRPC's default is 4 MiB; the proxy passes messages through whatever their size). A generated tonic
/// server keeps gRPC's default unless told otherwise, so raise it where the service is added:
/// `.add_service(HelloworldServer::new(Handler).max_decoding_message_size(micro::MAX_MESSAGE_SIZE))`.
pub const MAX_MESSAGE_SIZE: usize = micro_client::dynamic::MAX_MESSAGE_BYTES;

/// The proxy address services use when `MICRO_PROXY` is not set.
pub const DEFAULT_PROXY: &str = "127.0.0.1:8081";

/// What can go wrong running a service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A setting is invalid (an environment variable, an address, the descriptors).
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

type RouterLayer = Box<dyn FnOnce(router::GrpcService) -> router::GrpcService + Send>;

/// A service under construction. See the [crate docs](crate) for an example.
pub struct Service {
    name: String,
    version: String,
    metadata: HashMap<String, String>,
    descriptors: Option<bytes::Bytes>,
    routes: router::Router,
    grpc_services: Vec<String>,
    layers: Vec<RouterLayer>,
    proxy: Option<String>,
    address: Option<String>,
    ttl: Option<Duration>,
    interval: Option<Duration>,
    tls: Option<(PathBuf, PathBuf)>,
    workers: Vec<tasks::Worker>,
    schedulers: Vec<tasks::Scheduler>,
}

impl Service {
    /// A service named `name` (`MICRO_SERVICE_NAME` overrides it, as the runtime sets it).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: env::var(env::MICRO_SERVICE_NAME).unwrap_or_else(|| name.into()),
            version: env::var(env::MICRO_SERVICE_VERSION).unwrap_or_else(|| "latest".into()),
            metadata: HashMap::new(),
            descriptors: None,
            routes: Default::default(),
            grpc_services: Vec::new(),
            layers: Vec::new(),
            proxy: None,
            address: None,
            ttl: None,
            interval: None,
            tls: None,
            workers: Vec::new(),
            schedulers: Vec::new(),
        }
    }

    /// Sets the version (default `latest`, or `MICRO_SERVICE_VERSION`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        if env::var(env::MICRO_SERVICE_VERSION).is_none() {
            self.version = version.into();
        }
        self
    }

    /// Adds a metadata pair to the registration.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The schema: a serialized `FileDescriptorSet` that describes the added services (keep source info for help
    /// text). It is registered with the service and served by reflection.
    pub fn descriptors(mut self, file_descriptor_set: impl Into<bytes::Bytes>) -> Self {
        self.descriptors = Some(file_descriptor_set.into());
        self
    }

    /// Adds a tonic service (a generated `…Server`). A generated server refuses requests over 4 MiB unless its limit
    /// is raised: `HelloworldServer::new(Handler).max_decoding_message_size(micro::MAX_MESSAGE_SIZE)` takes what the
    /// CLI and the gateway send ([`MAX_MESSAGE_SIZE`]).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc_services.push(S::NAME.to_string());
        self.routes.add_service(svc);
        self
    }

    /// Wraps every handler in a tower layer (auth, logging, metrics…). Layers added later wrap earlier ones.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<router::GrpcService> + Send + 'static,
        L::Service: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |svc| router::GrpcService::new(layer.layer(svc))));
        self
    }

    /// The proxy to register and call through (default `MICRO_PROXY`, else `127.0.0.1:8081`).
    pub fn proxy(mut self, address: impl Into<String>) -> Self {
        self.proxy = Some(address.into());
        self
    }

    /// The address to listen on (default `MICRO_SERVICE_ADDRESS`, else `127.0.0.1:0`).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Serves TLS with this certificate chain and key (PEM files, re-read when they change), and registers the node
    /// with `tls=true` so the proxy dials it over TLS (default `MICRO_TLS_CERT` and `MICRO_TLS_KEY`, when both are
    /// set; else plaintext).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Registration TTL (default `MICRO_REGISTER_TTL`, else 90 s) and heartbeat interval (default
    /// `MICRO_REGISTER_INTERVAL`, else 30 s).
    pub fn register_ttl(mut self, ttl: Duration, interval: Duration) -> Self {
        self.ttl = Some(ttl);
        self.interval = Some(interval);
        self
    }

    /// Runs a [`tasks::Worker`] in the service: it leases and runs its tasks while the service runs, as the
    /// service's account, and finishes its running tasks when the service stops. Its counters are the service's
    /// `requests` (tasks run) and `errors` (tasks failed) in `micro stats`.
    pub fn worker(mut self, worker: tasks::Worker) -> Self {
        self.workers.push(worker);
        self
    }

    /// Runs a [`tasks::Scheduler`] in the service: it queues its tasks at each tick while the service runs, as the
    /// service's account.
    pub fn scheduler(mut self, scheduler: tasks::Scheduler) -> Self {
        self.schedulers.push(scheduler);
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds, serves and registers until SIGINT or SIGTERM, then deregisters and stops gracefully.
    pub async fn run(self) -> Result<(), ServiceError> {
        let address = match &self.address {
            Some(a) => a.clone(),
            None => env::var(env::MICRO_SERVICE_ADDRESS).unwrap_or_else(|| "127.0.0.1:0".into()),
        };
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|e| ServiceError::Config(format!("cannot listen on {address}: {e}")))?;
        self.serve(listener, shutdown_signal()).await
    }

    /// Serves on `listener` until `shutdown` resolves; registers and deregisters around it.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let local = listener.local_addr()?;
        let ttl = match self.ttl {
            Some(t) => t,
            None => env::duration(env::MICRO_REGISTER_TTL, Duration::from_secs(90)).map_err(ServiceError::Config)?,
        };
        let interval = match self.interval {
            Some(t) => t,
            None => {
                env::duration(env::MICRO_REGISTER_INTERVAL, Duration::from_secs(30)).map_err(ServiceError::Config)?
            }
        };
        let proxy = self.proxy.clone().or_else(|| env::var(env::MICRO_PROXY)).unwrap_or_else(|| DEFAULT_PROXY.into());
        let namespace = env::var(env::MICRO_NAMESPACE).unwrap_or_else(|| micro_core::DEFAULT_NAMESPACE.into());
        let conn = Connection::new(&proxy, &namespace).map_err(|e| ServiceError::Config(e.to_string()))?;
        let tls = self.tls_config()?;
        let record = self.record(local, ttl, &namespace, tls.is_some())?;

        // Health and reflection for our own services.
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.grpc_services {
            health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
        let mut routes = std::mem::take(&mut self.routes);
        routes.add_service(health_service);
        let counters: Vec<_> = self.workers.iter().map(|w| w.stats()).collect();
        let debug = if counters.is_empty() {
            debug::DebugService::new()
        } else {
            debug::DebugService::new().counters(std::sync::Arc::new(move || {
                let run = counters.iter().map(|s| s.succeeded() + s.failed()).sum();
                (run, counters.iter().map(|s| s.failed()).sum())
            }))
        };
        routes.add_service(debug.server());
        if let Some(fds) = &self.descriptors {
            let builder = tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(fds);
            let v1 = builder.build_v1().map_err(|e| ServiceError::Config(format!("reflection: {e}")))?;
            let builder = tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(fds);
            let v1alpha = builder.build_v1alpha().map_err(|e| ServiceError::Config(format!("reflection: {e}")))?;
            routes.add_service(v1);
            routes.add_service(v1alpha);
        }
        let mut router = router::GrpcService::new(routes);
        for layer in self.layers.drain(..) {
            router = layer(router);
        }

        let credentials = credentials::Credentials::from_env()
            .map(|(id, secret)| credentials::Credentials::spawn(conn.clone(), id, secret));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let background = self.spawn_tasks(&conn, credentials.as_ref(), &stop_rx);
        let heartbeat =
            tokio::spawn(registration::heartbeat(conn.clone(), credentials, record.clone(), interval, stop_rx));
        tracing::info!(
            service = %self.name, version = %self.version, address = %local, proxy = %proxy, tls = tls.is_some(),
            "service listening"
        );
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let served = crate::serve::serve_grpc(
            router,
            incoming,
            tls,
            async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            },
            async {},
        )
        .await;
        // The heartbeat deregisters when told to stop; workers finish their running tasks.
        let _ = heartbeat.await;
        for task in background {
            let _ = task.await;
        }
        served?;
        tracing::info!(service = %self.name, "service stopped");
        Ok(())
    }

    /// Starts the service's workers and schedulers, calling as the service's account, until `stop` turns true.
    fn spawn_tasks(
        &mut self,
        conn: &Connection,
        credentials: Option<&credentials::Credentials>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let client = client::Client::from_parts(conn.clone(), credentials.cloned());
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let mut spawned = Vec::new();
        for worker in self.workers.drain(..) {
            let worker = worker.default_id(&self.name);
            let (client, stop, mut credentials) = (client.clone(), stop.clone(), credentials.cloned());
            spawned.push(tokio::spawn(async move {
                // Lease as the service account once it has logged in, rather than be refused first.
                if let Some(c) = credentials.as_mut() {
                    c.ready(Duration::from_secs(5)).await;
                }
                worker.run(client, stopped(stop)).await
            }));
        }
        for scheduler in self.schedulers.drain(..) {
            let scheduler = scheduler.default_name(&self.name);
            spawned.push(tokio::spawn(scheduler.run(client.clone(), stopped(stop.clone()))));
        }
        spawned
    }

    /// The TLS the service serves: [`Service::tls`], else `MICRO_TLS_CERT` with `MICRO_TLS_KEY`, else none.
    fn tls_config(&self) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>, ServiceError> {
        let files = match (&self.tls, env::var(env::MICRO_TLS_CERT), env::var(env::MICRO_TLS_KEY)) {
            (Some((cert, key)), _, _) => (cert.clone(), key.clone()),
            (None, Some(cert), Some(key)) => (PathBuf::from(cert), PathBuf::from(key)),
            (None, None, None) => return Ok(None),
            (None, _, _) => {
                return Err(ServiceError::Config(format!(
                    "{} and {} go together: set both (to serve TLS) or neither",
                    env::MICRO_TLS_CERT,
                    env::MICRO_TLS_KEY
                )));
            }
        };
        crate::tls::service_config(&files.0, &files.1).map(Some).map_err(|e| ServiceError::Config(e.to_string()))
    }

    fn record(
        &self,
        local: SocketAddr,
        ttl: Duration,
        namespace: &str,
        tls: bool,
    ) -> Result<ServiceRecord, ServiceError> {
        let schema = match &self.descriptors {
            Some(bytes) => {
                Some(Schema::decode(bytes.clone()).map_err(|e| ServiceError::Config(format!("descriptors: {e}")))?)
            }
            None => None,
        };
        let endpoints = schema
            .as_ref()
            .map(|s| schema::endpoints(&s.pool, self.grpc_services.iter().map(String::as_str)))
            .unwrap_or_default();
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
        // Worker and scheduler services say so: the task names they lease, and that they schedule.
        let mut metadata = self.metadata.clone();
        let names: Vec<String> = self.workers.iter().flat_map(|w| w.names()).collect();
        if !names.is_empty() {
            metadata.insert("worker".into(), names.join(","));
        }
        if !self.schedulers.is_empty() {
            metadata.insert("scheduler".into(), "true".into());
        }
        let mut node_metadata = metadata.clone();
        for (k, v) in [("server", "grpc"), ("transport", "grpc"), ("protocol", "grpc")] {
            node_metadata.insert(k.into(), v.into());
        }
        // The node says whether it serves TLS, whatever the metadata set by hand said.
        let tls_key = micro_core::metadata::TLS_KEY;
        if tls {
            node_metadata.insert(tls_key.into(), "true".into());
        } else {
            node_metadata.remove(tls_key);
        }
        Ok(ServiceRecord {
            name: self.name.clone(),
            version: self.version.clone(),
            metadata,
            endpoints,
            nodes: vec![Node {
                id: format!("{}-{}", self.name, uuid::Uuid::new_v4()),
                address: SocketAddr::new(host.parse().unwrap_or(local.ip()), local.port()).to_string(),
                port: 0,
                metadata: node_metadata,
            }],
            options: Some(Options { ttl: ttl.as_secs().max(1) as i64, domain: namespace.to_string() }),
            schema: schema.map(|s| SchemaMsg { hash: s.hash, descriptor_set: s.bytes }),
        })
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

mod registration {
    //! Registration, heartbeat and deregistration of one node.

    use super::*;
    use tonic::Code;

    /// Registers, then re-registers every `interval` (retrying quickly while the proxy is unreachable), and
    /// deregisters when `stop` turns true.
    pub async fn heartbeat(
        conn: Connection,
        mut credentials: Option<credentials::Credentials>,
        full: ServiceRecord,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut light = full.clone();
        if let Some(s) = light.schema.as_mut() {
            s.descriptor_set = Default::default();
        }
        if let Some(c) = credentials.as_mut()
            && !c.ready(Duration::from_secs(5)).await
        {
            tracing::warn!(service = %full.name, "no service account token yet; registering anonymously");
        }
        let authed = |conn: &Connection| match &credentials {
            Some(c) => conn.clone().with_token(c.current().as_deref()),
            None => conn.clone(),
        };
        // Without a service account, the server's local credential (read again each time: it changes with every
        // start of the server) says that this process runs as the server's OS user.
        let data_dir = env::var(env::MICRO_DATA_DIR).map(std::path::PathBuf::from);
        let with_local = |mut req: tonic::Request<ServiceRecord>| {
            let secret = match &credentials {
                Some(_) => None,
                None => micro_core::local_credential::find(conn.address(), data_dir.as_deref()),
            };
            if let Some(v) = secret.and_then(|s| s.parse().ok()) {
                req.metadata_mut().insert(micro_core::local_credential::HEADER, v);
            }
            req
        };
        if credentials.is_none() && micro_core::local_credential::find(conn.address(), data_dir.as_deref()).is_none() {
            tracing::warn!(
                service = %full.name,
                proxy = %conn.address(),
                "no service account (MICRO_AUTH_ID, MICRO_AUTH_SECRET) and no local credential of a micro server \
                 at this address (is it running as this user on this machine? set MICRO_DATA_DIR to its data dir \
                 if it uses another one): registration will be refused"
            );
        }
        let mut registered = false;
        loop {
            let record = if registered { &light } else { &full };
            let conn = authed(&conn);
            let req = with_local(conn.request(record.clone()));
            match conn.registry().register(req).await {
                Ok(_) => {
                    if !registered {
                        tracing::info!(service = %full.name, "registered");
                    }
                    registered = true;
                }
                Err(status) if status.code() == Code::FailedPrecondition => {
                    // The registry forgot our schema (it restarted): send it again now.
                    registered = false;
                    continue;
                }
                Err(status) => {
                    tracing::warn!(service = %full.name, error = %status.message(), "registration failed; retrying");
                    registered = false;
                }
            }
            let wait = if registered { interval } else { interval.min(Duration::from_secs(1)) };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        let mut gone = light.clone();
        gone.endpoints.clear();
        let conn = authed(&conn);
        let mut registry = conn.registry();
        let req = with_local(conn.request(gone));
        match tokio::time::timeout(Duration::from_secs(3), registry.deregister(req)).await {
            Ok(Ok(_)) => tracing::info!(service = %full.name, "deregistered"),
            Ok(Err(status)) => tracing::warn!(service = %full.name, error = %status.message(), "deregistration failed"),
            Err(_) => tracing::warn!(service = %full.name, "deregistration timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_says_whether_it_serves_tls() {
        let service = Service::new("svc").metadata(micro_core::metadata::TLS_KEY, "true");
        let local: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let tls = service.record(local, Duration::from_secs(90), "micro", true).unwrap();
        assert_eq!(tls.nodes[0].metadata.get("tls").map(String::as_str), Some("true"));
        assert_eq!(tls.nodes[0].address, "127.0.0.1:4000", "the host the certificate must name");
        // Set by hand without TLS, it is not advertised: the proxy would fail to reach the node.
        let plain = service.record(local, Duration::from_secs(90), "micro", false).unwrap();
        assert!(!plain.nodes[0].metadata.contains_key("tls"), "{:?}", plain.nodes[0].metadata);
    }

    #[test]
    fn worker_and_scheduler_services_say_so_in_their_registration() {
        let worker = tasks::Worker::new()
            .handle("collect", |_t: tasks::TaskContext| async { Ok(()) })
            .handle("report", |_t: tasks::TaskContext| async { Ok(()) });
        let scheduler = tasks::Scheduler::every(Duration::from_secs(1), |_| async { Vec::new() });
        let service = Service::new("inventory").worker(worker).scheduler(scheduler);
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let record = service.record(local, Duration::from_secs(90), "micro", false).unwrap();
        assert_eq!(record.metadata.get("worker").map(String::as_str), Some("collect,report"));
        assert_eq!(record.metadata.get("scheduler").map(String::as_str), Some("true"));
        assert_eq!(record.nodes[0].metadata.get("worker").map(String::as_str), Some("collect,report"));
        let plain = Service::new("svc").record(local, Duration::from_secs(90), "micro", false).unwrap();
        assert!(!plain.metadata.contains_key("worker") && !plain.metadata.contains_key("scheduler"));
    }

    #[test]
    fn tls_files_are_checked_when_the_service_starts() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = Service::new("svc").tls(&missing, &missing).tls_config().unwrap_err().to_string();
        assert!(e.contains("cannot read the TLS certificate") && e.contains("missing.pem"), "{e}");
    }
}
