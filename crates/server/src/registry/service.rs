//! The registry's gRPC face: validates and translates requests for the [`RegistryBackend`].

use super::{LOCAL_OWNER, RegistryBackend, RegistryError, WILDCARD_DOMAIN, Writer, limits};
use crate::auth::Caller;
use micro_core::proto::registry::{
    EmptyResponse, GetRequest, GetResponse, GetSchemaRequest, ListRequest, ListResponse, Options,
    Result as WatchResult, Schema as SchemaMsg, Service, WatchRequest, registry_server::Registry,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::{Request, Response, Status};

pub use super::OWNER_KEY;
pub use micro_core::metadata::NAMESPACE_HEADER;

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
    /// need an account of that namespace, and registration needs the local credential (a process of the server's
    /// OS user on this machine), an administrator or service account of the domain, or a service account scoped
    /// to that one service (`service:<name>`). A service name belongs to whoever registered it first (see
    /// [`RegistryBackend::register_as`]).
    pub fn with_auth(mut self) -> Self {
        self.enforce = true;
        self
    }

    fn check_read<T>(&self, req: &Request<T>, domain: &str) -> Result<(), Status> {
        if domain != WILDCARD_DOMAIN {
            micro_core::namespace::validate(domain)?;
        }
        if !self.enforce || domain == micro_core::DEFAULT_NAMESPACE {
            return Ok(());
        }
        let caller = Caller::of(req);
        if domain == WILDCARD_DOMAIN {
            caller.require_admin(micro_core::DEFAULT_NAMESPACE)?;
        } else {
            caller.require_member(domain)?;
        }
        Ok(())
    }

    /// Checks that the caller may register or deregister `service`'s nodes in `domain`, and returns who writes.
    fn writer(&self, req: &Request<Service>, domain: &str) -> Result<Writer, Status> {
        micro_core::namespace::validate(domain)?;
        let name = &req.get_ref().name;
        if !self.enforce {
            return Ok(Writer { owner: LOCAL_OWNER.into(), admin: true });
        }
        let caller = Caller::of(req);
        if crate::CORE_NAMES.contains(&name.as_str()) {
            return Err(Status::permission_denied(format!(
                "{name:?} is the name of a core service of micro server: choose another name"
            )));
        }
        for endpoint in &req.get_ref().endpoints {
            if let Some((grpc, _)) = endpoint.method.trim_start_matches('/').split_once('/')
                && crate::CORE_GRPC.contains(&grpc)
            {
                return Err(Status::permission_denied(format!(
                    "gRPC service {grpc} is served by micro server itself: a service cannot declare it"
                )));
            }
        }
        if let Some(account) = &caller.account {
            let admin = account.administers(domain);
            let own_service = account.kind == "service"
                && account.issuer == domain
                && account.scopes.iter().any(|s| s.strip_prefix("service:") == Some(name.as_str()));
            if !admin && !own_service {
                return Err(Status::permission_denied(format!(
                    "{} may not register services in namespace {domain}: use a service account of the namespace",
                    account.id
                )));
            }
            return Ok(Writer { owner: format!("{}@{}", account.id, account.issuer), admin });
        }
        if caller.local {
            return Ok(Writer { owner: LOCAL_OWNER.into(), admin: false });
        }
        Err(Status::unauthenticated(
            "registering a service needs credentials: run it as the same OS user as micro server on this machine \
             (the service library then finds the server's local credential by itself), or give it a service \
             account (MICRO_AUTH_ID and MICRO_AUTH_SECRET)",
        ))
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
        .unwrap_or(micro_core::DEFAULT_NAMESPACE)
        .to_string()
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => Status::invalid_argument(m),
            RegistryError::SchemaUnknown(_) => Status::failed_precondition(e.to_string()),
            RegistryError::NotFound => Status::not_found(e.to_string()),
            RegistryError::Denied(m) => Status::permission_denied(m),
            RegistryError::Limit(m) => Status::resource_exhausted(m),
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
        let writer = self.writer(&req, &domain)?;
        let ttl = super::check_ttl(req.get_ref().options.as_ref().map(|o| o.ttl).unwrap_or(0))?;
        let backend = self.backend.clone();
        let service = req.into_inner();
        // Registration decodes descriptor sets: keep that off the async workers.
        tokio::task::spawn_blocking(move || backend.register_as(&domain, service, ttl, &writer))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(EmptyResponse {}))
    }

    async fn deregister(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let domain = domain(&req, req.get_ref().options.as_ref());
        let writer = self.writer(&req, &domain)?;
        match self.backend.deregister_as(&domain, req.get_ref(), &writer) {
            Ok(()) | Err(RegistryError::NotFound) => Ok(Response::new(EmptyResponse {})),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_services(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        use prost::Message;
        let domain = domain(&req, req.get_ref().options.as_ref());
        self.check_read(&req, &domain)?;
        // Pages of at most `MAX_PAGE_BYTES`, continuing after the (name, version) the token names.
        let after = req.get_ref().page_token.split_once('\n').map(|(n, v)| (n.to_string(), v.to_string()));
        let mut services = Vec::new();
        let mut bytes = 0;
        let mut next_page_token = String::new();
        for service in self.backend.list(&domain) {
            if after.as_ref().is_some_and(|(n, v)| (&service.name, &service.version) <= (n, v)) {
                continue;
            }
            let len = service.encoded_len() + 8;
            if bytes + len > limits::MAX_PAGE_BYTES && !services.is_empty() {
                let last: &Service = services.last().expect("not empty");
                next_page_token = format!("{}\n{}", last.name, last.version);
                break;
            }
            bytes += len;
            services.push(service);
        }
        Ok(Response::new(ListResponse { services, next_page_token }))
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
