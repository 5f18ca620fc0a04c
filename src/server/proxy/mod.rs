//! The gRPC proxy: one address through which every service, core or user, is reached.
//!
//! Each request is routed by the registry and forwarded as an HTTP/2 pass-through over a cached channel per node,
//! so headers, trailers, deadlines, statuses and all four kinds of RPC pass untouched. The core services (registry,
//! health, reflection) are served in-process by the same listener. A request names its target by (a) the
//! `micro-service` header, (b) the registered service that declares the path's gRPC service, or (c) Micro's
//! convention, the part of the path's service before its last `.` (`/helloworld.Helloworld/Call` → `helloworld`).

pub mod reflection;

use crate::server::auth::{Account, Auth, Caller};
use crate::server::registry::{MemoryRegistry, RegistryBackend, service::NAMESPACE_HEADER};
use axum::body::Body;
use http::{HeaderName, Request, Response};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

/// The metadata key that names the target service explicitly.
pub const SERVICE_HEADER: &str = "micro-service";
/// The metadata key that pins a call to one node id of the target service.
pub const NODE_HEADER: &str = "micro-node";
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
    channels: RwLock<HashMap<String, Channel>>,
    next: AtomicUsize,
    /// Nodes whose last forward failed to connect, and when; skipped for [`FAILED_NODE_BACKOFF`] while other nodes
    /// of the service remain.
    failed: RwLock<HashMap<String, std::time::Instant>>,
    /// Enforces auth on every request when set.
    auth: Option<Arc<Auth>>,
    /// The server's local credential ([`crate::local_credential`]), when it has one.
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
                channels: RwLock::new(HashMap::new()),
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
    /// [`crate::local_credential::HEADER`] comes from the server's OS user on this machine, and may register
    /// services. Call it before the proxy is cloned.
    pub fn with_local_secret(self, secret: String) -> Self {
        self.configure(|inner| inner.local_secret = Some(secret))
    }

    fn configure(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                registry: shared.registry.clone(),
                core: shared.core.clone(),
                core_names: shared.core_names.clone(),
                core_grpc: shared.core_grpc.clone(),
                channels: RwLock::new(HashMap::new()),
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
                    Ok(change) if !change.removed.is_empty() => {
                        let mut channels = self.inner.channels.write().unwrap_or_else(|e| e.into_inner());
                        let mut failed = self.inner.failed.write().unwrap_or_else(|e| e.into_inner());
                        for addr in &change.removed {
                            failed.remove(addr);
                            if channels.remove(addr).is_some() {
                                tracing::debug!(%addr, "dropped channel of removed node");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some changes: keep only channels of nodes that still exist.
                        let live: HashSet<String> = self
                            .inner
                            .registry
                            .list(crate::server::registry::WILDCARD_DOMAIN)
                            .into_iter()
                            .flat_map(|s| s.nodes.into_iter().map(|n| n.address))
                            .collect();
                        self.inner.channels.write().unwrap_or_else(|e| e.into_inner()).retain(|a, _| live.contains(a));
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

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        if let Some(c) = self.inner.channels.read().unwrap_or_else(|e| e.into_inner()).get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Status::internal(format!("node address {address:?} is invalid: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        let mut channels = self.inner.channels.write().unwrap_or_else(|e| e.into_inner());
        Ok(channels.entry(address.to_string()).or_insert_with(|| endpoint.connect_lazy()).clone())
    }

    async fn handle(self, req: Request<Body>) -> Response<Body> {
        match self.route(req) {
            Ok(Target::Core(req)) => match self.inner.core.clone().oneshot(req).await {
                Ok(rsp) => rsp,
                Err(never) => match never {},
            },
            Ok(Target::Node { name, address, req }) => {
                let channel = match self.channel(&address) {
                    Ok(c) => c,
                    Err(status) => return status.into_http(),
                };
                let (parts, body) = req.into_parts();
                let req = Request::from_parts(parts, tonic::body::Body::new(body));
                match channel.oneshot(req).await {
                    Ok(rsp) => rsp.map(Body::new),
                    Err(e) => {
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
        let (account, token_error) = match (&inner.auth, header(crate::client::connection::AUTHORIZATION)) {
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
            .unwrap_or(crate::DEFAULT_NAMESPACE);
        if requested_namespace.is_some() {
            crate::namespace::validate(namespace)?;
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
                    .or_else(|| req.extensions().get::<crate::server::auth::Peer>().map(|p| p.0))
                    .map(|a| a.ip());
                let local = match (&inner.local_secret, header(crate::local_credential::HEADER)) {
                    (Some(secret), Some(presented)) => crate::local_credential::matches(presented, secret),
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
            let address = match node_id {
                Some(id) => match route.nodes.iter().find(|(_, node)| *node == id) {
                    Some((addr, _)) => addr.clone(),
                    None => return Err(Status::not_found(format!("node \"{id}\" of service \"{name}\" not found"))),
                },
                None => self.pick(&route.nodes),
            };
            Some((name.into_owned(), address, route.owner))
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
            (Some(_), Some((name, _, owner))) => {
                (None, !inner.auth.as_ref().is_some_and(|auth| auth.trusts(owner, namespace, name)))
            }
            (None, _) => (None, false),
        };
        // Credentials meant for micro server never travel on to a service.
        const LOCAL_CREDENTIAL: HeaderName = HeaderName::from_static(crate::local_credential::HEADER);
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
            Some((name, address, _)) => Target::Node { name, address, req },
        })
    }
}

impl Proxy {
    /// Round robin over the nodes, skipping nodes that recently failed while another node is left.
    fn pick(&self, nodes: &[(String, String)]) -> String {
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let failed = self.inner.failed.read().unwrap_or_else(|e| e.into_inner());
        if failed.is_empty() || nodes.len() == 1 {
            return nodes[start % nodes.len()].0.clone();
        }
        let now = std::time::Instant::now();
        (0..nodes.len())
            .map(|k| &nodes[(start + k) % nodes.len()].0)
            .find(|addr| failed.get(*addr).is_none_or(|at| now.duration_since(*at) > FAILED_NODE_BACKOFF))
            .unwrap_or(&nodes[start % nodes.len()].0)
            .clone()
    }
}

/// Micro's convention: the service name is the gRPC service's name before its last `.`.
fn convention_name(grpc_service: &str) -> &str {
    match grpc_service.rsplit_once('.') {
        Some((name, _)) => name,
        None => grpc_service,
    }
}

/// The metadata keys that tell a service who called it; set by the proxy only, never taken from the caller.
pub const ACCOUNT_ID_HEADER: &str = "micro-account-id";
/// See [`ACCOUNT_ID_HEADER`].
pub const ACCOUNT_ISSUER_HEADER: &str = "micro-account-issuer";

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
    Node { name: String, address: String, req: Request<Body> },
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
