//! A config client for services: get with a default, scan into a struct, read secrets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use micro::{client::Client, config::Config};
//!
//! #[derive(serde::Deserialize)]
//! struct Db { host: String, port: u16 }
//!
//! let config = Config::from_client(&Client::from_env()?);
//! let workers: u32 = config.get_or("app.workers", 4).await?;
//! let db: Option<Db> = config.scan("app.db").await?;
//! let password: Option<String> = config.secret("app.db.password").await?;
//! config.set("app.workers", &8).await?;
//! # Ok(()) }
//! ```
//!
//! Values live in the config of the client's namespace. Reading needs an account of the namespace; setting,
//! deleting and reading secrets need an administrator of it (service accounts are).

use crate::client::{Client, Route};
use micro_core::proto::config::{
    DeleteRequest, GetRequest, Options, SetRequest, Value as ValueMsg, config_client::ConfigClient,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What can go wrong using config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config service answered with an error (or could not be reached).
    #[error("config: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// A value is not the JSON expected.
    #[error("config: the value at {path:?} is not what was expected: {source}")]
    Json {
        /// The path.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// A client of the config service.
#[derive(Clone, Debug)]
pub struct Config {
    client: ConfigClient<InterceptedService<Channel, Route>>,
    namespace: String,
}

impl Config {
    /// A config client through `client`'s proxy connection, as its account, in its namespace.
    pub fn from_client(client: &Client) -> Self {
        Self { client: ConfigClient::new(client.service("config")), namespace: String::new() }
    }

    /// The same client, for another namespace's config (one the account may use).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The value at `path` as JSON (secrets read as `"[secret]"`), or `None`.
    pub async fn get_value(&self, path: &str) -> Result<Option<serde_json::Value>, ConfigError> {
        self.fetch(path, false).await
    }

    async fn fetch(&self, path: &str, secret: bool) -> Result<Option<serde_json::Value>, ConfigError> {
        let req =
            GetRequest { namespace: self.namespace.clone(), path: path.to_string(), options: Some(Options { secret }) };
        let data = match self.client.clone().get(req).await {
            Ok(r) => r.into_inner().value.map(|v| v.data).unwrap_or_default(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        if data.is_empty() {
            return Ok(None);
        }
        let value: serde_json::Value =
            serde_json::from_str(&data).map_err(|source| ConfigError::Json { path: path.to_string(), source })?;
        Ok((!value.is_null()).then_some(value))
    }

    fn decode<T: DeserializeOwned>(path: &str, value: serde_json::Value) -> Result<T, ConfigError> {
        serde_json::from_value(value).map_err(|source| ConfigError::Json { path: path.to_string(), source })
    }

    /// The value at `path` decoded into `T` (a struct, a number, a string…), or `None` when there is none.
    pub async fn scan<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ConfigError> {
        self.get_value(path).await?.map(|v| Self::decode(path, v)).transpose()
    }

    /// The value at `path` decoded into `T`, or `default` when there is none.
    pub async fn get_or<T: DeserializeOwned>(&self, path: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.scan(path).await?.unwrap_or(default))
    }

    /// The value at `path` with its secrets decrypted, decoded into `T`, or `None`.
    pub async fn secret<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ConfigError> {
        self.fetch(path, true).await?.map(|v| Self::decode(path, v)).transpose()
    }

    /// Sets `value` at `path` (an object merges into what is there).
    pub async fn set<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<(), ConfigError> {
        self.put(path, value, false).await
    }

    /// Sets `value` at `path`, encrypted at rest.
    pub async fn set_secret<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<(), ConfigError> {
        self.put(path, value, true).await
    }

    async fn put<T: Serialize + ?Sized>(&self, path: &str, value: &T, secret: bool) -> Result<(), ConfigError> {
        let data =
            serde_json::to_string(value).map_err(|source| ConfigError::Json { path: path.to_string(), source })?;
        let req = SetRequest {
            namespace: self.namespace.clone(),
            path: path.to_string(),
            value: Some(ValueMsg { data, format: "json".into() }),
            options: Some(Options { secret }),
        };
        self.client.clone().set(req).await?;
        Ok(())
    }

    /// Deletes the value at `path`.
    pub async fn delete(&self, path: &str) -> Result<(), ConfigError> {
        let req = DeleteRequest { namespace: self.namespace.clone(), path: path.to_string() };
        self.client.clone().delete(req).await?;
        Ok(())
    }
}
