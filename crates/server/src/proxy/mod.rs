//! The gRPC proxy: one address through which every service, core or user, is reached.
//!
//! Each request is routed by the registry and forwarded as an HTTP/2 pass-through over a cached channel per node,
//! so headers, trailers, deadlines, statuses and all four kinds of RPC pass untouched. The core services (registry,
//! health, reflection) are served in-process by the same listener. A request names its target by (a) the
//! `micro-service` header, (b) the registered service that declares the path's gRPC service, or (c) Micro's
//! convention, the part of the path's service before its last `.` (`/helloworld.Helloworld/Call` → `helloworld`).
//!
//! **TLS to nodes.** A node registered with the metadata [`TLS_KEY`](micro_core::metadata::TLS_KEY) (`tls=true`) is dialed over TLS only
//! (`https`, ALPN `h2`), verified for the node's host against the Mozilla roots and the CA of `--tls-upstream-ca`
//! ([`Proxy::with_upstream_tls`]); it is never dialed in plaintext, and a certificate that does not verify fails the
//! call with the reason. Other nodes are dialed in plaintext. The registry's route says which nodes serve TLS, so a
//! call finds its node's scheme without allocating; channels are cached by address and scheme.

pub mod reflection;

use crate::auth::{Account, Auth, Caller};
use crate::registry::{MemoryRegistry, RegistryBackend, service::NAMESPACE_HEADER};
use axum::body::Body;
use http::{HeaderName, Request, Response};
use micro_client::tls::ClientTls;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

pub use micro_core::metadata::{NODE_HEADER, SERVICE_HEADER};
/// How long a node that could not be reached is avoided while its service has other nodes.
pub const FAILED_NODE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// Routes and forwards requests. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<MemoryRegistry>,
    /// The in-process core services.
    core: axum::Router,
    /// Names of the core services (served by `core`).
    core_names: HashSet<String>,
    /// gRPC services (fully-qualified) served by `core`.
    core_grpc: HashSet<String>,
    channels: RwLock<Channels>,
    /// What a node that serves TLS is verified with (the Mozilla roots, plus `--tls-upstream-ca`).
    upstream: ClientTls,
    next: AtomicUsize,
    /// Nodes whose last forward failed to connect, and when; skipped for [`FAILED_NODE_BACKOFF`] while other nodes
    /// of the service remain.
    failed: RwLock<HashMap<String, std::time::Instant>>,
    /// Enforces auth on every request when set.
    auth: Option<Arc<Auth>>,
    /// The server's local credential ([`micro_core::local_credential`]), when it has one.
    local_secret: Option<String>,
}

impl Proxy {
    /// A proxy over `registry` that serves `core` in-process for the given service names and gRPC services.
    pub fn new(
        registry: Arc<MemoryRegistry>,
        core: axum::Router,
        core_names: impl IntoIterator<Item = String>,
        core_grpc: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                core,
                core_names: core_names.into_iter().collect(),
                core_grpc: core_grpc.into_iter().collect(),
                channels: RwLock::new(Channels::default()),
                upstream: ClientTls::default(),
                next: AtomicUsize::new(0),
                failed: RwLock::new(HashMap::new()),
                auth: None,
                local_secret: None,
            }),
        }
    }

    /// The same proxy, enforcing `auth` on every request: tokens are verified locally and rules evaluated (with
    /// a cache) before a request is served or forwarded. Call it before the proxy is cloned.
    pub fn with_auth(self, auth: Arc<Auth>) -> Self {
        self.configure(|inner| inner.auth = Some(auth))
    }

    /// The same proxy, taking `secret` as the local credential: a request that carries it in
    /// [`micro_core::local_credential::HEADER`] comes from the server's OS user on this machine, and may register
    /// services. Call it before the proxy is cloned.
    pub fn with_local_secret(self, secret: String) -> Self {
        self.configure(|inner| inner.local_secret = Some(secret))
    }

    /// The same proxy, verifying the nodes that serve TLS with `upstream` (see the module docs; build it with
    /// [`crate::tls::upstream_client`]). Without it, they are verified with the Mozilla roots only. Call it
    /// before the proxy is cloned.
    pub fn with_upstream_tls(self, upstream: ClientTls) -> Self {
        self.configure(|inner| inner.upstream = upstream)
    }

    fn configure(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                registry: shared.registry.clone(),
                core: shared.core.clone(),
                core_names: shared.core_names.clone(),
                core_grpc: shared.core_grpc.clone(),
                channels: RwLock::new(Channels::default()),
                upstream: shared.upstream.clone(),
                next: AtomicUsize::new(0),
                failed: RwLock::new(HashMap::new()),
                auth: shared.auth.clone(),
                local_secret: shared.local_secret.clone(),
            },
        };
        change(&mut inner);
        Self { inner: Arc::new(inner) }
    }

    /// The auth the proxy enforces, if any.
    pub fn auth(&self) -> Option<&Arc<Auth>> {
        self.inner.auth.as_ref()
    }

    /// Drops cached channels of nodes that deregister or expire, until `shutdown` resolves.
    pub async fn evict_removed_nodes(self, shutdown: impl std::future::Future<Output = ()>) {
        let mut changes = self.inner.registry.watch();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.removed.is_empty() {
                            continue;
                        }
                        let mut channels = self.inner.channels.write().unwrap_or_else(|e| e.into_inner());
                        let mut failed = self.inner.failed.write().unwrap_or_else(|e| e.into_inner());
                        for addr in &change.removed {
                            failed.remove(addr);
                            if channels.remove(addr) {
                                tracing::debug!(%addr, "dropped channel of removed node");
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some changes: keep only channels of nodes that still exist.
                        let live: HashSet<String> = self
                            .inner
                            .registry
                            .list(crate::registry::WILDCARD_DOMAIN)
                            .into_iter()
                            .flat_map(|s| s.nodes.into_iter().map(|n| n.address))
                            .collect();
                        self.inner.channels.write().unwrap_or_else(|e| e.into_inner()).retain(|a| live.contains(a));
                    }
                    Err(_) => return,
                },
            }
        }
    }

    /// How many node channels are cached (for tests and stats).
    pub fn cached_channels(&self) -> usize {
        self.inner.channels.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The channel to the node at `address`: over TLS when `tls` (verified with the upstream settings, for the
    /// address's host), else plaintext. Cached by address and scheme.
    fn channel(&self, address: &str, tls: bool) -> Result<Channel, Status> {
        if let Some(c) = self.inner.channels.read().unwrap_or_else(|e| e.into_inner()).get(address, tls) {
            return Ok(c.clone());
        }
        let url = format!("{}://{address}", if tls { "https" } else { "http" });
        let invalid = |e: String| Status::internal(format!("node address {address:?} is invalid: {e}"));
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(e.to_string()))?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        let endpoint = if tls {
            let target = micro_client::tls::Target::parse(&url).map_err(invalid)?;
            micro_client::tls::configure(endpoint, &target, &self.inner.upstream)
                .map_err(|e| Status::internal(format!("cannot set up TLS to {address}: {e}")))?
        } else {
            endpoint
        };
        let mut channels = self.inner.channels.write().unwrap_or_else(|e| e.into_inner());
        Ok(channels.insert(address, tls, endpoint).clone())
    }

    async fn handle(self, req: Request<Body>) -> Response<Body> {
        match self.route(req) {
            Ok(Target::Core(req)) => match self.inner.core.clone().oneshot(req).await {
                Ok(rsp) => rsp,
                Err(never) => match never {},
            },
            Ok(Target::Node { name, address, tls, req }) => {
                let channel = match self.channel(&address, tls) {
                    Ok(c) => c,
                    Err(status) => return status.into_http(),
                };
                let (parts, body) = req.into_parts();
                let req = Request::from_parts(parts, tonic::body::Body::new(body));
                match channel.oneshot(req).await {
                    Ok(rsp) => rsp.map(Body::new),
                    Err(e) => {
                        let e = forward_error(&e, tls);
                        tracing::debug!(service = %name, %address, error = %e, "forwarding failed");
                        self.inner
                            .failed
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(address.clone(), std::time::Instant::now());
                        Status::unavailable(format!("service \"{name}\" at {address} is unavailable: {e}")).into_http()
                    }
                }
            }
            Err(status) => status.into_http(),
        }
    }

    fn route(&self, mut req: Request<Body>) -> Result<Target, Status> {
        // Everything is read from `req` by reference first and only what must outlive it is copied, once, before
        // `req` is changed at the end: this runs on every call through the proxy.
        let path = req.uri().path();
        let (grpc_service, method) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((svc, method)) if !svc.is_empty() && !method.is_empty() && !method.contains('/') => (svc, method),
            _ => return Err(Status::invalid_argument(format!("malformed method name: {path:?}"))),
        };
        let headers = req.headers();
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let explicit = header(SERVICE_HEADER);
        let node_id = header(NODE_HEADER);
        let requested_namespace = header(NAMESPACE_HEADER);
        let inner = &self.inner;

        // Who is calling.
        let (account, token_error) = match (&inner.auth, header(micro_core::metadata::AUTHORIZATION)) {
            (Some(auth), Some(value)) => match value.strip_prefix("Bearer ") {
                Some(token) => match auth.verify(token.trim()) {
                    Ok(account) => (Some(account), None),
                    Err(e) => (None, Some(e)),
                },
                None => (None, Some(Status::unauthenticated("invalid authorization header. expected Bearer schema"))),
            },
            _ => (None, None),
        };
        let namespace: &str = requested_namespace
            .or_else(|| account.as_ref().map(|a| a.issuer.as_str()))
            .unwrap_or(micro_core::DEFAULT_NAMESPACE);
        if requested_namespace.is_some() {
            micro_core::namespace::validate(namespace)?;
        }

        // Which service: explicit header, core, the registered owner of the gRPC service, or Micro's convention.
        let (name, core): (Cow<'_, str>, bool) = match explicit {
            Some(name) => (Cow::Borrowed(name), inner.core_names.contains(name)),
            None if inner.core_grpc.contains(grpc_service) => (Cow::Borrowed(convention_name(grpc_service)), true),
            None => match inner.registry.service_for_grpc(namespace, grpc_service) {
                Some(name) => (Cow::Owned(name), false),
                None => (Cow::Borrowed(convention_name(grpc_service)), false),
            },
        };
        let core = core || inner.core_names.contains(name.as_ref());

        let caller = match &inner.auth {
            Some(auth) => {
                let handler = grpc_service.rsplit('.').next().unwrap_or(grpc_service);
                let endpoint = format!("{handler}.{method}");
                if let Err(denied) = auth.authorize(account.as_ref(), namespace, &name, &endpoint) {
                    // A bad token matters only where access needs an account: say what was wrong with it.
                    return Err(match token_error {
                        Some(e) if denied.code() == tonic::Code::Unauthenticated => e,
                        _ => denied,
                    });
                }
                let remote = req
                    .extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|i| i.remote_addr())
                    .or_else(|| req.extensions().get::<crate::auth::Peer>().map(|p| p.0))
                    .map(|a| a.ip());
                let local = match (&inner.local_secret, header(micro_core::local_credential::HEADER)) {
                    (Some(secret), Some(presented)) => micro_core::local_credential::matches(presented, secret),
                    _ => false,
                };
                Some((remote, local))
            }
            None => None,
        };
        let node = if core {
            None
        } else {
            let route = inner.registry.route(namespace, &name).filter(|r| !r.nodes.is_empty());
            let Some(route) = route else { return Err(Status::not_found(format!("service \"{name}\" not found"))) };
            let (address, tls) = match node_id {
                Some(id) => match route.nodes.iter().find(|(_, node, _)| *node == id) {
                    Some((addr, _, tls)) => (addr.clone(), *tls),
                    None => return Err(Status::not_found(format!("node \"{id}\" of service \"{name}\" not found"))),
                },
                None => self.pick(&route.nodes),
            };
            Some((name.into_owned(), address, tls, route.owner))
        };
        // Decided before `req` changes (the namespace borrows its headers).
        let (core_caller, strip_token) = match (&caller, &node) {
            // Only core services, served in this process, read the caller; extensions do not cross the network.
            (Some((remote, local)), None) => {
                let loopback = remote.is_some_and(|ip| ip.is_loopback());
                let (local, remote) = (*local, *remote);
                (Some(Caller { account: account.clone(), namespace: namespace.into(), loopback, local, remote }), false)
            }
            // The caller's token goes only to a service trusted to act for the caller.
            (Some(_), Some((name, _, _, owner))) => {
                (None, !inner.auth.as_ref().is_some_and(|auth| auth.trusts(owner, namespace, name)))
            }
            (None, _) => (None, false),
        };
        // Credentials meant for micro server never travel on to a service.
        const LOCAL_CREDENTIAL: HeaderName = HeaderName::from_static(micro_core::local_credential::HEADER);
        req.headers_mut().remove(LOCAL_CREDENTIAL);
        if caller.is_some() {
            set_account_headers(&mut req, account.as_ref());
        }
        if strip_token {
            req.headers_mut().remove(http::header::AUTHORIZATION);
        }
        if let Some(caller) = core_caller {
            req.extensions_mut().insert(caller);
        }
        Ok(match node {
            None => Target::Core(req),
            Some((name, address, tls, _)) => Target::Node { name, address, tls, req },
        })
    }
}

impl Proxy {
    /// Round robin over the nodes, skipping nodes that recently failed while another node is left: the chosen
    /// node's address and whether it serves TLS.
    fn pick(&self, nodes: &[(String, String, bool)]) -> (String, bool) {
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let failed = self.inner.failed.read().unwrap_or_else(|e| e.into_inner());
        let first = &nodes[start % nodes.len()];
        if failed.is_empty() || nodes.len() == 1 {
            return (first.0.clone(), first.2);
        }
        let now = std::time::Instant::now();
        let node = (0..nodes.len())
            .map(|k| &nodes[(start + k) % nodes.len()])
            .find(|(addr, _, _)| failed.get(addr).is_none_or(|at| now.duration_since(*at) > FAILED_NODE_BACKOFF))
            .unwrap_or(first);
        (node.0.clone(), node.2)
    }
}

/// Micro's convention: the service name is the gRPC service's name before its last `.`.
fn convention_name(grpc_service: &str) -> &str {
    match grpc_service.rsplit_once('.') {
        Some((name, _)) => name,
        None => grpc_service,
    }
}

pub use micro_core::metadata::{ACCOUNT_ID_HEADER, ACCOUNT_ISSUER_HEADER};

fn set_account_headers(req: &mut Request<Body>, account: Option<&Account>) {
    // Names built at compile time: inserting by `&str` would copy a custom name on every call.
    const ACCOUNT_ID: HeaderName = HeaderName::from_static(ACCOUNT_ID_HEADER);
    const ACCOUNT_ISSUER: HeaderName = HeaderName::from_static(ACCOUNT_ISSUER_HEADER);
    let headers = req.headers_mut();
    headers.remove(ACCOUNT_ID);
    headers.remove(ACCOUNT_ISSUER);
    if let Some(a) = account
        && let (Ok(id), Ok(issuer)) = (a.id.parse(), a.issuer.parse())
    {
        headers.insert(ACCOUNT_ID, id);
        headers.insert(ACCOUNT_ISSUER, issuer);
    }
}

enum Target {
    Core(Request<Body>),
    Node { name: String, address: String, tls: bool, req: Request<Body> },
}

/// The reason a forward failed, with the causes that tonic's error hides (the TLS verification error), and what to
/// do about a certificate the proxy does not trust.
fn forward_error(e: &(dyn std::error::Error + 'static), tls: bool) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    if tls && text.contains("invalid peer certificate") {
        text.push_str(
            " (the node serves TLS and its certificate does not verify: give micro server --tls-upstream-ca the CA \
             that issued it, and make it name the node's host)",
        );
    } else if tls && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        text.push_str(" (the node advertises tls=true but does not seem to serve TLS)");
    }
    text
}

/// The cached channels to nodes, by address and scheme.
#[derive(Default)]
struct Channels {
    plain: HashMap<String, Channel>,
    tls: HashMap<String, Channel>,
}

impl Channels {
    fn get(&self, address: &str, tls: bool) -> Option<&Channel> {
        if tls { self.tls.get(address) } else { self.plain.get(address) }
    }

    /// The cached channel, or a new lazy one to `endpoint`.
    fn insert(&mut self, address: &str, tls: bool, endpoint: Endpoint) -> &Channel {
        let map = if tls { &mut self.tls } else { &mut self.plain };
        map.entry(address.to_string()).or_insert_with(|| endpoint.connect_lazy())
    }

    /// Drops both channels of `address`; whether there was one.
    fn remove(&mut self, address: &str) -> bool {
        let plain = self.plain.remove(address).is_some();
        self.tls.remove(address).is_some() || plain
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.plain.retain(|a, _| keep(a));
        self.tls.retain(|a, _| keep(a));
    }

    fn len(&self) -> usize {
        self.plain.len() + self.tls.len()
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_client::tls::testing::{Ca, health_server};
    use micro_core::metadata::TLS_KEY;
    use micro_core::proto::registry::{Node, Options, Service as ServiceRecord};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    #[test]
    fn the_tls_metadata_is_read_leniently_towards_tls() {
        let node =
            |v: &str| Node { metadata: HashMap::from([(TLS_KEY.to_string(), v.to_string())]), ..Default::default() };
        let serves_tls = crate::registry::serves_tls;
        assert!(serves_tls(&node("true")) && serves_tls(&node("1")) && serves_tls(&node("yes")));
        assert!(serves_tls(&node("TRUE")), "any value but a no is TLS: never plaintext by mistake");
        for no in ["false", "0", "no", "off", ""] {
            assert!(!serves_tls(&node(no)), "{no:?}");
        }
        assert!(!serves_tls(&Node::default()));
    }

    /// Registers `name` with one node at `address`, with `tls=true` when `tls`.
    fn register(registry: &MemoryRegistry, name: &str, address: &str, tls: bool) {
        let mut metadata = HashMap::new();
        if tls {
            metadata.insert(TLS_KEY.to_string(), "true".to_string());
        }
        let service = ServiceRecord {
            name: name.into(),
            version: "latest".into(),
            nodes: vec![Node { id: format!("{name}-1"), address: address.into(), port: 0, metadata }],
            options: Some(Options { ttl: 0, domain: "micro".into() }),
            ..Default::default()
        };
        registry.register("micro", service, std::time::Duration::ZERO).unwrap();
    }

    /// Serves `proxy` on 127.0.0.1 (plaintext) until the test ends; returns its URL.
    async fn serve(proxy: Proxy) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(proxy.clone().evict_removed_nodes(std::future::pending()));
        let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(proxy));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(crate::serve_grpc(routes, incoming, None, std::future::pending(), async {}));
        url
    }

    /// A health check of service `name` through the proxy at `url`.
    async fn check(url: &str, name: &str) -> Result<i32, Status> {
        let channel = Endpoint::from_shared(url.to_string()).unwrap().connect_lazy();
        let mut req = tonic::Request::new(HealthCheckRequest { service: String::new() });
        req.metadata_mut().insert(SERVICE_HEADER, name.parse().unwrap());
        Ok(HealthClient::new(channel).check(req).await?.into_inner().status)
    }

    #[tokio::test]
    async fn nodes_that_advertise_tls_are_dialed_over_tls_only_and_verified() {
        let ca = Ca::new();
        let tls_node = health_server(Some(ca.leaf(&["127.0.0.1"], false)));
        let plain_node = health_server(None);
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), ca.pem()).unwrap();
        let upstream = crate::tls::upstream_client(Some(ca_file.path())).unwrap();

        let registry = Arc::new(MemoryRegistry::new());
        register(&registry, "secure", &tls_node, true);
        register(&registry, "plain", &plain_node, false);
        // A node that says TLS but serves plaintext: never reached in plaintext.
        register(&registry, "liar", &plain_node, true);
        let trusting = Proxy::new(registry.clone(), axum::Router::new(), [], []).with_upstream_tls(upstream);
        let url = serve(trusting.clone()).await;
        const SERVING: i32 = 1;
        assert_eq!(check(&url, "secure").await.unwrap(), SERVING);
        assert_eq!(check(&url, "plain").await.unwrap(), SERVING);
        let e = check(&url, "liar").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert_eq!(trusting.cached_channels(), 3, "plain and TLS channels of one address are two");

        // Without the upstream CA, the node's certificate does not verify: the call fails with the reason.
        let untrusting = Proxy::new(registry.clone(), axum::Router::new(), [], []);
        let url = serve(untrusting).await;
        let e = check(&url, "secure").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("UnknownIssuer") && e.message().contains("--tls-upstream-ca"), "{e:?}");
        assert_eq!(check(&url, "plain").await.unwrap(), SERVING);

        // The plain service moves to TLS at the same address, and back: each call uses the scheme registered then.
        let url = serve(trusting.clone()).await;
        register(&registry, "plain", &plain_node, true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while check(&url, "plain").await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the proxy still dials plaintext");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        register(&registry, "plain", &plain_node, false);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while check(&url, "plain").await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the proxy still dials TLS");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
