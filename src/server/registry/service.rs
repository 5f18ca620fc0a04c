//! The registry's gRPC face: validates and translates requests for the [`RegistryBackend`].

use super::{RegistryBackend, RegistryError, WILDCARD_DOMAIN};
use crate::proto::registry::{
    EmptyResponse, GetRequest, GetResponse, GetSchemaRequest, ListRequest, ListResponse, Options,
    Result as WatchResult, Schema as SchemaMsg, Service, WatchRequest, registry_server::Registry,
};
use crate::server::auth::Caller;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

/// The metadata key that carries the caller's namespace.
pub const NAMESPACE_HEADER: &str = "micro-namespace";
/// Node metadata naming the account that registered the node (empty for the anonymous local loop).
pub const OWNER_KEY: &str = "micro.owner";

/// The gRPC registry service over a backend.
#[derive(Clone)]
pub struct RegistryService<B> {
    backend: Arc<B>,
    enforce: bool,
    closing: tokio_util::sync::CancellationToken,
}

impl<B: RegistryBackend> RegistryService<B> {
    /// Serves `backend` without access checks (for embedding and tests).
    pub fn new(backend: Arc<B>) -> Self {
        Self { backend, enforce: false, closing: Default::default() }
    }

    /// Ends watch streams when `closing` is cancelled (at shutdown), so connections can drain.
    pub fn closing(mut self, closing: tokio_util::sync::CancellationToken) -> Self {
        self.closing = closing;
        self
    }

    /// Checks every request against the caller the proxy verified: reads of `micro` are public, other domains
    /// need an account of that namespace, and registration needs an administrator or service account of the
    /// domain, or an anonymous caller on the loopback interface (the local development loop).
    pub fn with_auth(mut self) -> Self {
        self.enforce = true;
        self
    }

    fn check_read<T>(&self, req: &Request<T>, domain: &str) -> Result<(), Status> {
        if !self.enforce || domain == crate::DEFAULT_NAMESPACE {
            return Ok(());
        }
        let caller = Caller::of(req);
        if domain == WILDCARD_DOMAIN {
            caller.require_admin(crate::DEFAULT_NAMESPACE)?;
        } else {
            caller.require_member(domain)?;
        }
        Ok(())
    }

    /// Checks that the caller may register or deregister `service`'s nodes in `domain`, and returns the owner to
    /// record on its nodes. A node belongs to whoever registered it: nobody else but an administrator may replace
    /// or remove it.
    fn check_write(&self, req: &Request<Service>, domain: &str) -> Result<Option<String>, Status> {
        if !self.enforce {
            return Ok(None);
        }
        let caller = Caller::of(req);
        let owner = match &caller.account {
            None if caller.loopback => String::new(),
            None => {
                return Err(Status::unauthenticated(
                    "registering a service needs a service account (MICRO_AUTH_ID / MICRO_AUTH_SECRET) from a remote host",
                ));
            }
            Some(a) => {
                caller.require_admin(domain)?;
                format!("{}@{}", a.id, a.issuer)
            }
        };
        let admin = caller.account.as_ref().is_some_and(|a| a.administers(domain));
        let wanted: Vec<&str> = req.get_ref().nodes.iter().map(|n| n.id.as_str()).collect();
        for existing in self.backend.get(domain, &req.get_ref().name) {
            for node in existing.nodes.iter().filter(|n| wanted.contains(&n.id.as_str())) {
                let current = node.metadata.get(OWNER_KEY).map(String::as_str).unwrap_or_default();
                if current != owner && !admin {
                    return Err(Status::permission_denied(format!("node {} belongs to another account", node.id)));
                }
            }
        }
        Ok(Some(owner))
    }
}

/// The domain of a request: its options, else the `micro-namespace` header, else `micro`.
fn domain<T>(req: &Request<T>, options: Option<&Options>) -> String {
    if let Some(d) = options.map(|o| o.domain.as_str()).filter(|d| !d.is_empty()) {
        return d.to_string();
    }
    req.metadata()
        .get(NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(crate::DEFAULT_NAMESPACE)
        .to_string()
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => Status::invalid_argument(m),
            RegistryError::SchemaUnknown(_) => Status::failed_precondition(e.to_string()),
            RegistryError::NotFound => Status::not_found(e.to_string()),
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResult, Status>> + Send>>;

#[tonic::async_trait]
impl<B: RegistryBackend> Registry for RegistryService<B> {
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        self.check_read(&req, &domain)?;
        let services = self.backend.get(&domain, &req.get_ref().service);
        if services.is_empty() {
            return Err(Status::not_found(format!("service \"{}\" not found", req.get_ref().service)));
        }
        Ok(Response::new(GetResponse { services }))
    }

    async fn register(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        let owner = self.check_write(&req, &domain)?;
        let ttl = req.get_ref().options.as_ref().map(|o| o.ttl).unwrap_or(0);
        if ttl < 0 {
            return Err(Status::invalid_argument(format!("ttl must not be negative, got {ttl}")));
        }
        let backend = self.backend.clone();
        let mut service = req.into_inner();
        if let Some(owner) = owner {
            for node in &mut service.nodes {
                node.metadata.insert(OWNER_KEY.to_string(), owner.clone());
            }
        }
        // Registration decodes descriptor sets: keep that off the async workers.
        tokio::task::spawn_blocking(move || backend.register(&domain, service, Duration::from_secs(ttl as u64)))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(EmptyResponse {}))
    }

    async fn deregister(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        self.check_write(&req, &domain)?;
        match self.backend.deregister(&domain, req.get_ref()) {
            Ok(()) | Err(RegistryError::NotFound) => Ok(Response::new(EmptyResponse {})),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_services(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        self.check_read(&req, &domain)?;
        Ok(Response::new(ListResponse { services: self.backend.list(&domain) }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        self.check_read(&req, &domain)?;
        let only = req.get_ref().service.clone();
        let events = BroadcastStream::new(self.backend.watch()).filter_map(move |change| {
            let change = change.ok()?;
            if domain != WILDCARD_DOMAIN && change.domain != domain {
                return None;
            }
            if !only.is_empty() && change.service.name != only {
                return None;
            }
            Some(Ok(WatchResult {
                action: change.action.as_str().to_string(),
                service: Some(change.service),
                timestamp: change.timestamp,
            }))
        });
        let events = futures::StreamExt::take_until(events, self.closing.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_schema(&self, req: Request<GetSchemaRequest>) -> Result<Response<SchemaMsg>, Status> {
        let hash = &req.get_ref().hash;
        match self.backend.schema(hash) {
            Some(s) => Ok(Response::new(SchemaMsg { hash: s.hash, descriptor_set: s.bytes })),
            None => Err(Status::not_found(format!("schema {hash} not found"))),
        }
    }
}
