//! A connection to a micro proxy: one HTTP/2 channel, reused for every call, plus the metadata every call carries.

use super::tls::{ClientTls, Target};
use micro_core::proto::registry::{
    GetRequest, GetSchemaRequest, ListRequest, Options, Service, registry_client::RegistryClient,
};
use micro_core::schema::Schema;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a valid `host:port` or URL.
    #[error("invalid proxy address {address:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The TLS settings of a TLS address cannot be used (an unreadable or invalid CA or client certificate).
    #[error("cannot use TLS for {address}: {reason}")]
    Tls {
        /// The address given.
        address: String,
        /// What is wrong.
        reason: String,
    },
}

/// A lazily connected channel to a micro proxy, and the namespace calls are made in.
#[derive(Clone, Debug)]
pub struct Connection {
    channel: Channel,
    address: String,
    namespace: String,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

pub use micro_core::metadata::AUTHORIZATION;

/// How long a node-pinned request ([`Connection::node_request`]) may take.
pub const NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a failed node-pinned request is that node's own failure (reported per node), rather than the proxy
/// being unreachable or the caller not being allowed, which end the whole command.
pub fn node_failure(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => false,
        // The proxy answers UNAVAILABLE for a node it cannot reach, naming the service.
        tonic::Code::Unavailable => status.message().starts_with("service \""),
        _ => true,
    }
}

impl Connection {
    /// A connection to `address` (`host:port`, or an `http://`/`https://` URL). Nothing is dialled until the first
    /// call. An `https://` URL or a bare `host:443` uses TLS, with the TLS settings of the environment
    /// ([`ClientTls::from_env`]: `MICRO_CA_CERT`, `MICRO_CLIENT_CERT`/`MICRO_CLIENT_KEY`,
    /// `MICRO_INSECURE_SKIP_VERIFY`): what the service library uses. The CLI resolves its own
    /// ([`Connection::with_tls`]).
    pub fn new(address: &str, namespace: &str) -> Result<Self, ConnectError> {
        let target = Self::target(address)?;
        let tls = if target.tls {
            ClientTls::from_env().map_err(|reason| ConnectError::Tls { address: address.to_string(), reason })?
        } else {
            ClientTls::default()
        };
        Self::with_tls(address, namespace, &tls)
    }

    fn target(address: &str) -> Result<Target, ConnectError> {
        Target::parse(address).map_err(|reason| ConnectError::InvalidAddress { address: address.to_string(), reason })
    }

    /// A connection to `address` with the given TLS settings (used only when the address is TLS: a plaintext address
    /// never speaks TLS, and a TLS address never falls back to plaintext). Nothing is dialled until the first call.
    pub fn with_tls(address: &str, namespace: &str, tls: &ClientTls) -> Result<Self, ConnectError> {
        let target = Self::target(address)?;
        let endpoint = Endpoint::from_shared(target.url())
            .map_err(|e| ConnectError::InvalidAddress { address: address.to_string(), reason: e.to_string() })?;
        let endpoint = endpoint.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
        let endpoint = super::tls::configure(endpoint, &target, tls)
            .map_err(|reason| ConnectError::Tls { address: address.to_string(), reason })?;
        Ok(Self {
            channel: endpoint.connect_lazy(),
            address: address.to_string(),
            namespace: namespace.to_string(),
            token: None,
        })
    }

    /// The same connection, sending `token` as `authorization: Bearer <token>` with every request.
    /// A token that is not valid metadata (it never is, for a JWT) is dropped.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.and_then(|t| format!("Bearer {t}").parse().ok());
        self
    }

    /// Whether a token is attached.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The channel, for generated clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Whether calls travel over TLS (the address is `https://…` or `host:443`).
    pub fn is_tls(&self) -> bool {
        Target::parse(&self.address).is_ok_and(|t| t.tls)
    }

    /// The proxy address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The namespace calls are made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A registry client over this connection.
    pub fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel.clone())
    }

    /// A request carrying the namespace header and, if set, the bearer token. Every call made through a
    /// `Connection` is built here.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(v) = self.namespace.parse() {
            req.metadata_mut().insert(micro_core::metadata::NAMESPACE_HEADER, v);
        }
        if let Some(token) = &self.token {
            req.metadata_mut().insert(AUTHORIZATION, token.clone());
        }
        req
    }

    /// A request pinned to one node of a service (the proxy's `micro-service` and `micro-node` headers), with a
    /// deadline of [`NODE_TIMEOUT`]: what `micro health` and `micro stats` send to each node in turn.
    pub fn node_request<T>(&self, message: T, service: &str, node: &str) -> tonic::Request<T> {
        let mut req = self.request(message);
        req.set_timeout(NODE_TIMEOUT);
        for (k, v) in [(micro_core::metadata::SERVICE_HEADER, service), (micro_core::metadata::NODE_HEADER, node)] {
            if let Ok(v) = v.parse() {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    /// An auth client over this connection.
    pub fn auth(&self) -> micro_core::proto::auth::auth_client::AuthClient<Channel> {
        micro_core::proto::auth::auth_client::AuthClient::new(self.channel.clone())
    }

    /// An accounts client over this connection.
    pub fn accounts(&self) -> micro_core::proto::auth::accounts_client::AccountsClient<Channel> {
        micro_core::proto::auth::accounts_client::AccountsClient::new(self.channel.clone())
    }

    /// A rules client over this connection.
    pub fn rules(&self) -> micro_core::proto::auth::rules_client::RulesClient<Channel> {
        micro_core::proto::auth::rules_client::RulesClient::new(self.channel.clone())
    }

    fn options(&self) -> Option<Options> {
        Some(Options { ttl: 0, domain: self.namespace.clone() })
    }

    /// Every service in the namespace.
    pub async fn list_services(&self) -> Result<Vec<Service>, tonic::Status> {
        // The registry answers in pages of at most 2 MiB; follow them to the end.
        let mut services = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = self.request(ListRequest { options: self.options(), page_token });
            let page = self.registry().list_services(req).await?.into_inner();
            services.extend(page.services);
            if page.next_page_token.is_empty() {
                return Ok(services);
            }
            page_token = page.next_page_token;
        }
    }

    /// Every version of one service; NOT_FOUND when there is none.
    pub async fn get_service(&self, name: &str) -> Result<Vec<Service>, tonic::Status> {
        let req = self.request(GetRequest { service: name.to_string(), options: self.options() });
        Ok(self.registry().get_service(req).await?.into_inner().services)
    }

    /// A schema by hash.
    pub async fn get_schema(&self, hash: &str) -> Result<Schema, tonic::Status> {
        let req = self.request(GetSchemaRequest { hash: hash.to_string() });
        let schema = self.registry().get_schema(req).await?.into_inner();
        Schema::decode(schema.descriptor_set).map_err(|e| tonic::Status::data_loss(e.to_string()))
    }
}
