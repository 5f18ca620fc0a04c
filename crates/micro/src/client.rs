//! Calling other services by name through the proxy, with generated tonic clients.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = micro::client::Client::from_env()?;
//! let channel = client.service("helloworld");
//! // let mut hello = HelloworldClient::new(channel);
//! # let _ = channel; Ok(()) }
//! ```

use micro_client::{ConnectError, Connection};
use micro_core::env;
use micro_core::metadata::NAMESPACE_HEADER;
use micro_core::metadata::SERVICE_HEADER;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of the platform: one connection to the proxy, shared by every service channel.
#[derive(Clone, Debug)]
pub struct Client {
    conn: Connection,
    credentials: Option<super::credentials::Credentials>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// Adds the `micro-service` and `micro-namespace` headers, so the proxy routes to the named service.
#[derive(Clone, Debug)]
pub struct Route {
    service: Option<MetadataValue<tonic::metadata::Ascii>>,
    namespace: Option<MetadataValue<tonic::metadata::Ascii>>,
    credentials: Option<super::credentials::Credentials>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Route {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(s) = &self.service {
            req.metadata_mut().insert(SERVICE_HEADER, s.clone());
        }
        if let Some(n) = &self.namespace {
            req.metadata_mut().insert(NAMESPACE_HEADER, n.clone());
        }
        if let Some(token) = &self.token {
            req.metadata_mut().insert(micro_core::metadata::AUTHORIZATION, token.clone());
        } else if let Some(token) = self.credentials.as_ref().and_then(|c| c.current())
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert(micro_core::metadata::AUTHORIZATION, v);
        }
        Ok(req)
    }
}

impl Client {
    /// A client of the proxy at `MICRO_PROXY` (default `127.0.0.1:8081`) in namespace `MICRO_NAMESPACE`, calling
    /// as the service account in `MICRO_AUTH_ID` / `MICRO_AUTH_SECRET` when they are set (inside a tokio runtime).
    pub fn from_env() -> Result<Self, ConnectError> {
        let proxy = env::var(env::MICRO_PROXY).unwrap_or_else(|| super::DEFAULT_PROXY.into());
        let namespace = env::var(env::MICRO_NAMESPACE).unwrap_or_else(|| micro_core::DEFAULT_NAMESPACE.into());
        let conn = Connection::new(&proxy, &namespace)?;
        let credentials = match (super::credentials::Credentials::from_env(), tokio::runtime::Handle::try_current()) {
            (Some((id, secret)), Ok(_)) => Some(super::credentials::Credentials::spawn(conn.clone(), id, secret)),
            _ => None,
        };
        Ok(Self { conn, credentials, token: None })
    }

    /// A client of the proxy at `address`, without credentials.
    pub fn new(address: &str, namespace: &str) -> Result<Self, ConnectError> {
        Ok(Self { conn: Connection::new(address, namespace)?, credentials: None, token: None })
    }

    /// A client over a service's connection and account (what a [`crate::Service`] gives its workers).
    pub(crate) fn from_parts(conn: Connection, credentials: Option<super::credentials::Credentials>) -> Self {
        Self { conn, credentials, token: None }
    }

    /// The same client, calling with a fixed access token.
    pub fn with_token(mut self, token: &str) -> Self {
        self.conn = self.conn.with_token(Some(token));
        self.token = format!("Bearer {token}").parse().ok();
        self
    }

    /// A channel to the service `name`, for a generated client: `HelloworldClient::new(client.service("helloworld"))`.
    pub fn service(&self, name: &str) -> InterceptedService<Channel, Route> {
        let route = Route {
            service: MetadataValue::try_from(name).ok(),
            namespace: MetadataValue::try_from(self.conn.namespace()).ok(),
            credentials: self.credentials.clone(),
            token: self.token.clone(),
        };
        InterceptedService::new(self.conn.channel(), route)
    }

    /// The underlying connection (registry access, dynamic calls).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
