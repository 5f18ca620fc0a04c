//! `micro server`: the local server that bundles the building blocks behind one gRPC proxy.
//!
//! [`serve`] takes its listener and a shutdown future, so tests bind `127.0.0.1:0` and stop it at will. It owns the
//! core services (today the registry, health and reflection), serves them in-process through the [`proxy`], and
//! tracks every task it spawns so that shutdown is graceful.

pub mod auth;
pub mod broker;
pub mod config;
pub mod events;
pub mod gateway;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod store;
pub mod tasks;
pub mod tls;
pub mod web;

use micro_core::proto::registry::{Node, Options, Schema as SchemaMsg, Service, registry_server::RegistryServer};
use micro_core::schema::{self, Schema};
use proxy::{
    Proxy,
    reflection::{Catalog, Reflection},
};
use registry::{MemoryRegistry, RegistryBackend, service::RegistryService};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings of a server, resolved by the caller (flags > env > defaults).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the server keeps its data.
    pub data_dir: PathBuf,
    /// How often expired registrations are pruned.
    pub prune_interval: Duration,
    /// The default admin's password when the admin is first created (default `micro`).
    pub admin_password: Option<String>,
    /// Origins the API gateway allows for CORS, with credentials (`*`: any origin, without them); empty (the
    /// default) allows no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Where the store keeps its records.
    pub store: store::StoreBackend,
    /// Where the broker's messages travel.
    pub broker: broker::BrokerBackend,
    /// Whether the registry is shared with other servers.
    pub registry: registry::Sharing,
    /// TLS for the proxy and the gateway (`--tls-cert`/`--tls-key` or `--tls self-signed`, `--tls-client-ca`);
    /// `None` serves plaintext.
    pub tls: Option<tls::TlsSettings>,
    /// A PEM file of CA certificates the proxy trusts, besides the Mozilla roots, when it dials service nodes that
    /// serve TLS (node metadata [`registry::TLS_KEY`]; `--tls-upstream-ca`).
    pub tls_upstream_ca: Option<PathBuf>,
    /// The tasks service's stage runners and retention (`--tasks-concurrency`, `--tasks-retention`).
    pub tasks: tasks::TasksConfig,
}

impl ServerConfig {
    /// A server keeping its data in `data_dir`, with every other setting at its default: prune every second, the
    /// default admin password, no CORS origins, the embedded store, broker and registry, no TLS.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            prune_interval: Duration::from_secs(1),
            admin_password: None,
            cors_origins: Vec::new(),
            store: Default::default(),
            broker: Default::default(),
            registry: Default::default(),
            tls: None,
            tls_upstream_ca: None,
            tasks: Default::default(),
        }
    }
}

/// What can stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be created or used.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS settings cannot be used (a file is missing or bad, the key is not the certificate's).
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// Auth could not start.
    #[error("auth: {0}")]
    Auth(#[from] auth::AuthError),
    /// A core service (store, config, broker, events, runtime, tasks) could not start.
    #[error("{service}: {message}")]
    Start {
        /// The core service.
        service: &'static str,
        /// Why.
        message: String,
    },
}

/// What a core service gets when the server starts it: where to keep data, what to stop on, and the other
/// building blocks it may use.
#[derive(Clone)]
pub struct CoreContext {
    /// The server's data directory (private to the server's user).
    pub data_dir: PathBuf,
    /// The address of the gRPC proxy (what services get as `MICRO_PROXY`).
    pub proxy_address: std::net::SocketAddr,
    /// When the proxy serves TLS: the CA file that verifies it ([`tls::ServerTls::verifying_ca`]). The services the
    /// runtime starts then get `MICRO_PROXY=https://…` and this file as `MICRO_CA_CERT`.
    pub proxy_ca: Option<PathBuf>,
    /// Cancelled when shutdown begins: end long-lived streams and stop background work.
    pub cancel: CancellationToken,
    /// Spawn background tasks here, so shutdown waits for them.
    pub tasks: TaskTracker,
    /// Accounts, tokens and rules.
    pub auth: Arc<auth::Auth>,
    /// The service registry.
    pub registry: Arc<MemoryRegistry>,
}

/// The gRPC services the server answers in-process.
pub(crate) const CORE_GRPC: &[&str] = &[
    "registry.Registry",
    "auth.Auth",
    "auth.Accounts",
    "auth.Rules",
    "broker.Broker",
    "config.Config",
    "events.Stream",
    "events.Store",
    "runtime.Runtime",
    "runtime.Source",
    "store.Store",
    "tasks.Tasks",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Core service names, as they appear in the registry (`micro services`). They are registered in `micro` and
/// served to every namespace.
pub const CORE_NAMES: &[&str] = &["auth", "broker", "config", "events", "registry", "runtime", "store", "tasks"];

struct PlatformCatalog {
    registry: Arc<MemoryRegistry>,
    core: Vec<Schema>,
}

impl Catalog for PlatformCatalog {
    fn services(&self, namespace: &str) -> Vec<String> {
        let mut names: BTreeSet<String> = CORE_GRPC.iter().map(|s| s.to_string()).collect();
        for svc in self.registry.list(namespace) {
            for ep in &svc.endpoints {
                if let Some((grpc, _)) = ep.method.trim_start_matches('/').split_once('/') {
                    names.insert(grpc.to_string());
                }
            }
        }
        names.into_iter().collect()
    }

    fn schemas(&self, namespace: &str) -> Vec<Schema> {
        let mut all = self.core.clone();
        all.extend(self.registry.schemas(namespace));
        all
    }
}

fn core_schemas() -> Vec<Schema> {
    [
        micro_core::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|bytes| Schema::decode(bytes).ok())
    .collect()
}

/// Reads an engine setting (`--store`, `--broker`, `--registry`): `None` for the embedded default (empty, or its
/// name `embedded`), the URL when it starts with one of `schemes`; otherwise an error that names `what` was set and
/// offers `choices`.
pub(crate) fn engine_url(
    what: &str,
    text: &str,
    embedded: &str,
    schemes: &[&str],
    choices: &str,
) -> Result<Option<String>, String> {
    let text = text.trim();
    if text.is_empty() || text == embedded {
        return Ok(None);
    }
    if schemes.iter().any(|s| text.starts_with(s)) {
        return Ok(Some(text.to_string()));
    }
    Err(format!("unknown {what} {text:?}: use {embedded} (the default) or {choices}"))
}

/// Runs the server on `listener` (the gRPC proxy address) until `shutdown` resolves, without the HTTP API gateway.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_all(listener, None, config, shutdown).await
}

/// Runs the server: the gRPC proxy on `listener` and, when given, the HTTP API gateway on `api_listener`, until
/// `shutdown` resolves.
pub async fn serve_all(
    listener: TcpListener,
    api_listener: Option<TcpListener>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with(Listeners { proxy: listener, api: api_listener, web: None }, config, shutdown).await
}

/// The listeners of a server: the gRPC proxy's, and optionally the HTTP API gateway's and the web dashboard's.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC proxy (`--proxy-address`).
    pub proxy: TcpListener,
    /// The HTTP API gateway (`--api-address`).
    pub api: Option<TcpListener>,
    /// The web dashboard (`--web-address`).
    pub web: Option<TcpListener>,
}

/// Runs the server on `listeners` until `shutdown` resolves. The API gateway and the dashboard serve TLS with the
/// same settings as the proxy.
pub async fn serve_with(
    listeners: Listeners,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Listeners { proxy: listener, api: api_listener, web: web_listener } = listeners;
    create_private_dir(&config.data_dir)
        .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
    let address = listener.local_addr()?;
    let tls = match &config.tls {
        None => None,
        Some(settings) => {
            let mut listen = vec![address.ip()];
            for extra in api_listener.iter().chain(web_listener.iter()) {
                listen.push(extra.local_addr()?.ip());
            }
            let (settings, data_dir) = (settings.clone(), config.data_dir.clone());
            let tls = tokio::task::spawn_blocking(move || tls::ServerTls::load(&settings, &data_dir, &listen))
                .await
                .map_err(|e| ServerError::Io(std::io::Error::other(e)))??;
            match &tls.self_signed {
                Some(ca) => tracing::info!(
                    ca = %ca.path.display(),
                    sha256 = %ca.sha256,
                    "TLS with a self-signed certificate: clients must trust this CA (micro --ca-cert, curl --cacert)"
                ),
                None => tracing::info!(cert = %tls.cert.display(), key = %tls.key.display(), "TLS"),
            }
            if let Some(ca) = config.tls.as_ref().and_then(|t| t.client_ca.as_ref()) {
                tracing::info!(client_ca = %ca.display(), "mTLS: clients must present a certificate of this CA");
            }
            Some(tls)
        }
    };
    let upstream = tls::upstream_client(config.tls_upstream_ca.as_deref())?;
    if let Some(ca) = &config.tls_upstream_ca {
        tracing::info!(upstream_ca = %ca.display(), "service nodes that serve TLS are verified with this CA too");
    }
    let local_secret = micro_core::local_credential::create(&config.data_dir, address)
        .map_err(|source| ServerError::DataDir { path: config.data_dir.clone(), source })?;
    let registry = Arc::new(MemoryRegistry::new());
    let core = core_schemas();

    // The core services register like any other, with the proxy as their node and no expiry.
    let core_schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema is valid");
    for name in CORE_NAMES {
        let service = Service {
            name: name.to_string(),
            version: micro_core::VERSION.to_string(),
            endpoints: schema::endpoints(
                &core_schema.pool,
                CORE_GRPC.iter().copied().filter(|s| s.split('.').next() == Some(name)),
            ),
            nodes: vec![Node {
                id: format!("{name}-{}", uuid::Uuid::new_v4()),
                address: address.to_string(),
                metadata: [(registry::OWNER_KEY.to_string(), registry::SERVER_OWNER.to_string())].into(),
                ..Default::default()
            }],
            options: Some(Options { ttl: 0, domain: micro_core::DEFAULT_NAMESPACE.into() }),
            schema: Some(SchemaMsg { hash: core_schema.hash.clone(), descriptor_set: core_schema.bytes.clone() }),
            ..Default::default()
        };
        registry.register(micro_core::DEFAULT_NAMESPACE, service, Duration::ZERO).expect("core registration is valid");
    }

    let cancel = CancellationToken::new();
    // Auth's and config's state lives beside the store's records: servers that share a database share it.
    let state_location = state::Location::of(&config.store);
    let mut auth_config = auth::AuthConfig::new(config.data_dir.clone());
    auth_config.admin_password = config.admin_password.clone();
    auth_config.state = state_location.clone();
    let auth = Arc::new(
        tokio::task::spawn_blocking(move || auth::Auth::open(auth_config))
            .await
            .map_err(|e| ServerError::Io(std::io::Error::other(e)))??,
    );
    let (auth_server, accounts_server, rules_server) = auth::service::AuthService::new(auth.clone()).servers();

    let tasks = TaskTracker::new();
    if state_location.is_shared() {
        // Accounts and rules that other servers change.
        let auth = auth.clone();
        let reload: Arc<dyn Fn() + Send + Sync> = Arc::new(move || auth.reload());
        tasks.spawn(state::listen(state_location.clone(), "auth", reload, cancel.clone()));
    }
    let ctx = CoreContext {
        data_dir: config.data_dir.clone(),
        proxy_address: address,
        proxy_ca: tls.as_ref().map(|t| t.verifying_ca().to_path_buf()),
        cancel: cancel.clone(),
        tasks: tasks.clone(),
        auth: auth.clone(),
        registry: registry.clone(),
    };
    let mut routes = tonic::service::RoutesBuilder::default();
    store::start(&ctx, &config.store, &mut routes).await?;
    config::start(&ctx, &state_location, &mut routes).await?;
    broker::start(&ctx, &config.broker, &mut routes).await?;
    events::start(&ctx, &state_location, &mut routes).await?;
    runtime::start(&ctx, &mut routes).await?;
    let tasks_core = tasks::start(&ctx, &state_location, &config.tasks, &mut routes).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RegistryServer<RegistryService<MemoryRegistry>>>().await;
    let reflection = Reflection::new(Arc::new(PlatformCatalog { registry: registry.clone(), core }));
    routes
        .add_service(RegistryServer::new(RegistryService::new(registry.clone()).with_auth().closing(cancel.clone())))
        .add_service(auth_server)
        .add_service(accounts_server)
        .add_service(rules_server)
        .add_service(health_service)
        .add_service(micro::debug::DebugService::new().server())
        .add_service(reflection.v1())
        .add_service(reflection.v1alpha());
    let core_router = routes.routes().prepare().into_axum_router();
    let proxy = Proxy::new(
        registry.clone(),
        core_router,
        CORE_NAMES.iter().map(|s| s.to_string()),
        CORE_GRPC.iter().map(|s| s.to_string()),
    )
    .with_auth(auth)
    .with_local_secret(local_secret)
    .with_upstream_tls(upstream);
    tasks_core.set_proxy(proxy.clone());
    drop(tasks_core);

    {
        let registry = registry.clone();
        let cancel = cancel.clone();
        let every = config.prune_interval;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => registry.prune(),
                }
            }
        });
    }
    tasks.spawn(proxy.clone().evict_removed_nodes(cancel.clone().cancelled_owned()));
    match &config.registry {
        registry::Sharing::Memory => {}
        #[cfg(feature = "etcd")]
        registry::Sharing::Etcd(url) => {
            registry::etcd::check(url).await.map_err(|message| ServerError::Start { service: "registry", message })?;
            let server = uuid::Uuid::new_v4().to_string();
            tracing::info!(%url, %server, "the registry is shared through etcd");
            tasks.spawn(registry::etcd::replicate(registry.clone(), url.clone(), server, cancel.clone()));
        }
        #[cfg(not(feature = "etcd"))]
        registry::Sharing::Etcd(_) => {
            return Err(ServerError::Start {
                service: "registry",
                message: "this micro was built without etcd support; rebuild it with \
                          `cargo build --release --features etcd` (the default), or keep the registry in memory \
                          (--registry memory)"
                    .into(),
            });
        }
    }

    // One shutdown signal for every listener.
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }
    let mut http_tasks = Vec::new();
    let gw = gateway::Gateway::new(
        proxy.clone(),
        registry.clone(),
        gateway::GatewayConfig { cors_origins: config.cors_origins.clone() },
    );
    let http_tls = tls.as_ref().map(|t| t.http.clone());
    let api_address = api_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    if let Some(api) = api_listener {
        tracing::info!(api = %api.local_addr()?, tls = http_tls.is_some(), "HTTP API gateway listening");
        let task = gateway::serve_tls(api, gw.clone(), http_tls.clone(), stop.clone().cancelled_owned());
        http_tasks.push(("the API gateway", tokio::spawn(task)));
    }
    if let Some(web_listener) = web_listener {
        let web_address = web_listener.local_addr()?;
        let dashboard =
            web::Web::new(gw.clone(), web::WebConfig { proxy_address: address, api_address, tls: http_tls.is_some() });
        tracing::info!(web = %web_address, tls = http_tls.is_some(), "web dashboard listening");
        let task = web::serve(web_listener, dashboard, http_tls.clone(), stop.clone().cancelled_owned());
        http_tasks.push(("the web dashboard", tokio::spawn(task)));
    }
    // The gateway holds the proxy, and so the building blocks: only the tasks may keep it, or the store would wait
    // for it to be dropped when the server stops.
    drop(gw);
    tracing::info!(
        proxy = %address,
        tls = tls.is_some(),
        data_dir = %config.data_dir.display(),
        "micro server listening"
    );
    let app = tonic::service::Routes::from(axum::Router::new().fallback_service(proxy));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let closing = cancel.clone();
    let grpc_tls = tls.as_ref().map(|t| t.grpc.clone());
    let served = serve_grpc(app, incoming, grpc_tls, stop.clone().cancelled_owned(), async move {
        // Long-lived streams (watches) hold connections open: end them so connections can drain.
        closing.cancel();
    })
    .await;
    cancel.cancel();
    stop.cancel();
    for (what, task) in http_tasks {
        match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "{what} failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("{what} did not stop within {DRAIN_TIMEOUT:?}"),
        }
    }
    tasks.close();
    tasks.wait().await;
    tracing::info!("micro server stopped");
    served?;
    Ok(())
}

pub use micro::serve::{DRAIN_TIMEOUT, conn, serve_grpc};
pub use micro_core::fs::create_private_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_read_the_default_a_url_or_refuse() {
        let read = |text| engine_url("store", text, "redb", &["postgres://", "postgresql://"], "a postgres:// URL");
        assert_eq!(read(""), Ok(None));
        assert_eq!(read(" redb "), Ok(None));
        assert_eq!(read("postgresql://h/db"), Ok(Some("postgresql://h/db".into())));
        assert_eq!(
            read("mysql://h"),
            Err("unknown store \"mysql://h\": use redb (the default) or a postgres:// URL".into())
        );
    }
}
