//! Calling other services by name through the proxy, with generated tonic clients.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = micro::service::client::Client::from_env()?;
//! let channel = client.service("helloworld");
//! // let mut hello = HelloworldClient::new(channel);
//! # let _ = channel; Ok(()) }
//! ```

use crate::client::{ConnectError, Connection};
use crate::env;
use crate::server::proxy::SERVICE_HEADER;
use crate::server::registry::service::NAMESPACE_HEADER;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of the platform: one connection to the proxy, shared by every service channel.
#[derive(Clone, Debug)]
pub struct Client {
    conn: Connection,
}

/// Adds the `micro-service` and `micro-namespace` headers, so the proxy routes to the named service.
#[derive(Clone, Debug)]
pub struct Route {
    service: Option<MetadataValue<tonic::metadata::Ascii>>,
    namespace: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Route {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(s) = &self.service {
            req.metadata_mut().insert(SERVICE_HEADER, s.clone());
        }
        if let Some(n) = &self.namespace {
            req.metadata_mut().insert(NAMESPACE_HEADER, n.clone());
        }
        Ok(req)
    }
}

impl Client {
    /// A client of the proxy at `MICRO_PROXY` (default `127.0.0.1:8081`) in namespace `MICRO_NAMESPACE`.
    pub fn from_env() -> Result<Self, ConnectError> {
        let proxy = env::var(env::MICRO_PROXY).unwrap_or_else(|| super::DEFAULT_PROXY.into());
        let namespace = env::var(env::MICRO_NAMESPACE).unwrap_or_else(|| crate::DEFAULT_NAMESPACE.into());
        Ok(Self { conn: Connection::new(&proxy, &namespace)? })
    }

    /// A client of the proxy at `address`.
    pub fn new(address: &str, namespace: &str) -> Result<Self, ConnectError> {
        Ok(Self { conn: Connection::new(address, namespace)? })
    }

    /// A channel to the service `name`, for a generated client: `HelloworldClient::new(client.service("helloworld"))`.
    pub fn service(&self, name: &str) -> InterceptedService<Channel, Route> {
        let route = Route {
            service: MetadataValue::try_from(name).ok(),
            namespace: MetadataValue::try_from(self.conn.namespace()).ok(),
        };
        InterceptedService::new(self.conn.channel(), route)
    }

    /// The underlying connection (registry access, dynamic calls).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
