//! The gRPC proxy: one address through which every service, core or user, is reached.
//!
//! Each request is routed by the registry and forwarded as an HTTP/2 pass-through over a cached channel per node,
//! so headers, trailers, deadlines, statuses and all four kinds of RPC pass untouched. The core services (registry,
//! health, reflection) are served in-process by the same listener. A request names its target by (a) the
//! `micro-service` header, (b) the registered service that declares the path's gRPC service, or (c) Micro's
//! convention, the part of the path's service before its last `.` (`/helloworld.Helloworld/Call` → `helloworld`).

pub mod reflection;

use crate::server::registry::{MemoryRegistry, RegistryBackend, service::NAMESPACE_HEADER};
use axum::body::Body;
use http::{Request, Response};
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
            }),
        }
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
                        for addr in &change.removed {
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
                        Status::unavailable(format!("service \"{name}\" at {address} is unavailable: {e}")).into_http()
                    }
                }
            }
            Err(status) => status.into_http(),
        }
    }

    fn route(&self, req: Request<Body>) -> Result<Target, Status> {
        let path = req.uri().path();
        let grpc_service = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
            Some((svc, method)) if !svc.is_empty() && !method.is_empty() && !method.contains('/') => svc.to_string(),
            _ => return Err(Status::invalid_argument(format!("malformed method name: {path:?}"))),
        };
        let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let namespace = header(NAMESPACE_HEADER).unwrap_or(crate::DEFAULT_NAMESPACE).to_string();
        let explicit = header(SERVICE_HEADER).map(str::to_string);
        let node_id = header(NODE_HEADER).map(str::to_string);
        let inner = &self.inner;
        let name = match explicit {
            Some(name) if inner.core_names.contains(&name) => return Ok(Target::Core(req)),
            Some(name) => name,
            None if inner.core_grpc.contains(&grpc_service) => return Ok(Target::Core(req)),
            None => match inner.registry.service_for_grpc(&namespace, &grpc_service) {
                Some(name) => name,
                None => match grpc_service.rsplit_once('.') {
                    Some((name, _)) => name.to_string(),
                    None => grpc_service.clone(),
                },
            },
        };
        if inner.core_names.contains(&name) {
            return Ok(Target::Core(req));
        }
        let route = inner.registry.route(&namespace, &name).filter(|r| !r.nodes.is_empty());
        let Some(route) = route else { return Err(Status::not_found(format!("service \"{name}\" not found"))) };
        let address = match node_id {
            Some(id) => match route.nodes.iter().find(|(_, node)| *node == id) {
                Some((addr, _)) => addr.clone(),
                None => return Err(Status::not_found(format!("node \"{id}\" of service \"{name}\" not found"))),
            },
            None => {
                let i = inner.next.fetch_add(1, Ordering::Relaxed) % route.nodes.len();
                route.nodes[i].0.clone()
            }
        };
        Ok(Target::Node { name, address, req })
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
