//! The config's gRPC face and its storage: one document per namespace in a [`Table`] (`config.redb` in the data
//! dir, or PostgreSQL shared with other servers), changed in one atomic read-modify-write per `Set` or `Delete`,
//! off the async workers.
//!
//! Access (micro's choice; Micro required an administrator for everything): the namespace defaults to the
//! caller's; members of the namespace may read it, administrators of it (or of `micro`) may change it and read
//! secrets in clear text.

use super::document::{DocumentError, Node, parse_path};
use super::secrets::{Cipher, SecretError};
use crate::auth::Caller;
use crate::state::{StateError, Table};
use micro_core::proto::config::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, SetRequest, SetResponse, Value as ValueMsg, config_server,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The largest value one `Set` may carry, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The largest document of a namespace, in bytes (as stored).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// What can go wrong in the config service.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No value at the path (or no document).
    #[error("not found")]
    NotFound,
    /// A bad path or value.
    #[error(transparent)]
    Invalid(#[from] DocumentError),
    /// A request too large.
    #[error("{0}")]
    TooLarge(String),
    /// The database failed.
    #[error("config storage error: {0}")]
    Storage(String),
}

impl From<StateError> for ConfigError {
    fn from(e: StateError) -> Self {
        ConfigError::Storage(e.0)
    }
}

impl From<ConfigError> for Status {
    fn from(e: ConfigError) -> Self {
        match &e {
            ConfigError::NotFound => Status::not_found(e.to_string()),
            ConfigError::Invalid(DocumentError::Secret(SecretError::Open)) => Status::internal(e.to_string()),
            ConfigError::Invalid(DocumentError::Secret(_)) => Status::internal(e.to_string()),
            ConfigError::Invalid(_) => Status::invalid_argument(e.to_string()),
            ConfigError::TooLarge(_) => Status::invalid_argument(e.to_string()),
            ConfigError::Storage(_) => Status::internal(e.to_string()),
        }
    }
}

/// The config documents: namespace → JSON of the tagged [`Node`] tree.
pub struct ConfigStore {
    table: Table,
    cipher: Cipher,
}

impl ConfigStore {
    /// The documents in `table`, with secrets under `cipher`.
    pub fn new(table: Table, cipher: Cipher) -> Self {
        Self { table, cipher }
    }

    fn load(bytes: &[u8], namespace: &str) -> Result<Node, ConfigError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ConfigError::Storage(format!("the config of {namespace} cannot be read: {e}")))
    }

    /// The value at `path` of `namespace`'s document as JSON text (secrets decrypted with `reveal`).
    pub fn get(&self, namespace: &str, path: &str, reveal: bool) -> Result<String, ConfigError> {
        let segments = parse_path(path)?;
        let doc = match self.table.get(namespace)? {
            Some(bytes) => Self::load(&bytes, namespace)?,
            None => return Err(ConfigError::NotFound),
        };
        let node = doc.get(&segments).ok_or(ConfigError::NotFound)?;
        let value = node.render(namespace, &segments, reveal.then_some(&self.cipher))?;
        Ok(value.to_string())
    }

    /// Sets `data` (JSON text) at `path`, sealing its leaves when `secret`.
    pub fn set(&self, namespace: &str, path: &str, data: &str, secret: bool) -> Result<(), ConfigError> {
        let segments = parse_path(path)?;
        if data.len() > MAX_VALUE_BYTES {
            return Err(ConfigError::TooLarge(format!(
                "the value is {} bytes; the limit is {MAX_VALUE_BYTES} bytes (1 MiB)",
                data.len()
            )));
        }
        let value: serde_json::Value = serde_json::from_str(data)
            .map_err(|e| DocumentError::Value(format!("the value is not JSON ({e}); quote strings as JSON")))?;
        let node = Node::from_json(value, namespace, &segments, secret.then_some(&self.cipher))?;
        self.change(namespace, |doc| doc.set(&segments, node).map(|_| true))
    }

    /// Deletes the value at `path` (a missing path is not an error).
    pub fn delete(&self, namespace: &str, path: &str) -> Result<(), ConfigError> {
        let segments = parse_path(path)?;
        if segments.is_empty() {
            return Err(DocumentError::Path("key cannot be blank".into()).into());
        }
        self.change(namespace, |doc| Ok(doc.delete(&segments)))
    }

    /// Reads, changes and writes `namespace`'s document atomically; `f` says whether it changed.
    fn change(
        &self,
        namespace: &str,
        f: impl FnOnce(&mut Node) -> Result<bool, DocumentError>,
    ) -> Result<(), ConfigError> {
        self.table.update(namespace, |old| {
            let mut doc = match old {
                Some(bytes) => Self::load(bytes, namespace)?,
                None => Node::empty(),
            };
            if !f(&mut doc)? {
                return Ok(None);
            }
            let bytes = serde_json::to_vec(&doc).map_err(|e| ConfigError::Storage(e.to_string()))?;
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(ConfigError::TooLarge(format!(
                    "the config of {namespace} would exceed {} MiB",
                    MAX_DOCUMENT_BYTES / (1024 * 1024)
                )));
            }
            Ok(Some(bytes))
        })
    }
}

/// The gRPC config service.
#[derive(Clone)]
pub struct ConfigService {
    store: Arc<ConfigStore>,
}

impl ConfigService {
    /// Serves `store`.
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Self { store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ConfigStore) -> Result<T, ConfigError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("a config task failed: {e}")))?
            .map_err(Status::from)
    }
}

/// The namespace a request names, else the caller's, else `micro`.
fn namespace(requested: &str, caller: &Caller) -> Result<String, Status> {
    let ns = [requested, caller.namespace.as_str()]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or(micro_core::DEFAULT_NAMESPACE)
        .to_string();
    micro_core::namespace::validate(&ns)?;
    Ok(ns)
}

#[tonic::async_trait]
impl config_server::Config for ConfigService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(&r.namespace, &caller)?;
        let reveal = r.options.is_some_and(|o| o.secret);
        if reveal {
            caller.require_admin(&ns)?;
        } else {
            caller.require_member(&ns)?;
        }
        let data = self.blocking(move |s| s.get(&ns, &r.path, reveal)).await?;
        Ok(Response::new(GetResponse { value: Some(ValueMsg { data, format: "json".into() }) }))
    }

    async fn set(&self, req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(&r.namespace, &caller)?;
        caller.require_admin(&ns)?;
        let data = r.value.map(|v| v.data).unwrap_or_default();
        if data.is_empty() {
            return Err(Status::invalid_argument("a value is required"));
        }
        let secret = r.options.is_some_and(|o| o.secret);
        self.blocking(move |s| s.set(&ns, &r.path, &data, secret)).await?;
        Ok(Response::new(SetResponse {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(&r.namespace, &caller)?;
        caller.require_admin(&ns)?;
        self.blocking(move |s| s.delete(&ns, &r.path)).await?;
        Ok(Response::new(DeleteResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::Location;
    use std::path::Path;

    fn open(dir: &Path) -> ConfigStore {
        let cipher = Cipher::load_or_create(&dir.join(super::super::secrets::KEY_FILE)).unwrap();
        ConfigStore::new(Table::open(&Location::DataDir, dir, super::super::FILE, "config").unwrap(), cipher)
    }

    #[test]
    fn set_get_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert!(matches!(store.get("micro", "a", false), Err(ConfigError::NotFound)));
        store.set("micro", "a.b", r#"{"x":1}"#, false).unwrap();
        store.set("micro", "a.b", r#"{"y":2}"#, false).unwrap();
        store.set("micro", "pw", r#""hunter2""#, true).unwrap();
        assert_eq!(store.get("micro", "a", false).unwrap(), r#"{"b":{"x":1,"y":2}}"#);
        assert_eq!(store.get("micro", "pw", false).unwrap(), r#""[secret]""#);
        assert_eq!(store.get("micro", "pw", true).unwrap(), r#""hunter2""#);
        assert!(matches!(store.get("micro", "a.c", false), Err(ConfigError::NotFound)));
        assert!(matches!(store.get("other", "a", false), Err(ConfigError::NotFound)));
        assert!(matches!(store.set("micro", "a", "not json", false), Err(ConfigError::Invalid(_))));
        assert!(matches!(store.delete("micro", ""), Err(ConfigError::Invalid(_))));
        store.delete("micro", "a.b.x").unwrap();
        store.delete("micro", "missing.path").unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get("micro", "a", false).unwrap(), r#"{"b":{"y":2}}"#);
        assert_eq!(store.get("micro", "pw", true).unwrap(), r#""hunter2""#);
        let raw = std::fs::read(dir.path().join("config.redb")).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"hunter2"), "the secret is not in the file in clear text");
    }
}
