//! The on-disk schema cache: service records per env and namespace, and descriptor sets by hash.
//!
//! `--help` and shell completion read it without a network round trip. Calls refresh the record from the registry
//! and fetch a schema only when its hash changed. Files are written atomically (temp file + rename), so a crash or a
//! concurrent CLI never leaves a torn entry; an unreadable entry is treated as a miss.

use crate::Connection;
use micro_core::proto::registry::Service;
use micro_core::schema::Schema;
use prost::Message;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The cache of one env and namespace.
///
/// Clones share an in-memory layer over the files: schemas decoded once by hash, and the service records last
/// written, so that a long-lived process (`micro mcp serve`, `micro cli`) that resolves the same services again and
/// again neither decodes a descriptor set nor rewrites a file whose content has not changed.
#[derive(Clone, Debug)]
pub struct SchemaCache {
    root: PathBuf,
    services: PathBuf,
    memo: Arc<Mutex<Memo>>,
}

/// What a [`SchemaCache`] and its clones remember in memory.
#[derive(Debug, Default)]
struct Memo {
    /// Decoded schemas by hash (a descriptor set never changes under its hash).
    schemas: HashMap<String, Schema>,
    /// The encoded service records this process last wrote, by name.
    written: HashMap<String, Vec<u8>>,
}

/// Resolving a service failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The registry has no such service.
    #[error("service \"{0}\" not found")]
    NotFound(String),
    /// The registry or proxy answered with an error.
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    /// The service registered no schema, so its endpoints cannot be typed.
    #[error("service \"{0}\" registered no schema; call it with `micro call` and a JSON body")]
    NoSchema(String),
}

fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl SchemaCache {
    /// The cache under `root` for `env` and `namespace`.
    pub fn new(root: &Path, env: &str, namespace: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            services: root.join("envs").join(safe(env)).join(safe(namespace)),
            memo: Arc::default(),
        }
    }

    /// A cached service record.
    pub fn service(&self, name: &str) -> Option<Service> {
        let bytes = std::fs::read(self.services.join(format!("{}.pb", safe(name)))).ok()?;
        Service::decode(bytes.as_slice()).ok()
    }

    /// Every cached service record, sorted by name.
    pub fn services(&self) -> Vec<Service> {
        let Ok(dir) = std::fs::read_dir(&self.services) else { return Vec::new() };
        let mut out: Vec<Service> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "pb"))
            .filter_map(|e| Service::decode(std::fs::read(e.path()).ok()?.as_slice()).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stores a service record (without its nodes, which change too often to be worth caching).
    pub fn store_service(&self, service: &Service) {
        let mut record = service.clone();
        record.nodes.clear();
        let bytes = record.encode_to_vec();
        let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        if memo.written.get(&service.name) == Some(&bytes) {
            return;
        }
        let path = self.services.join(format!("{}.pb", safe(&service.name)));
        match write_atomic(&path, &bytes) {
            Ok(()) => {
                memo.written.insert(service.name.clone(), bytes);
            }
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot write the schema cache"),
        }
    }

    /// Forgets a service (it is gone from the registry).
    pub fn remove_service(&self, name: &str) {
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).written.remove(name);
        let _ = std::fs::remove_file(self.services.join(format!("{}.pb", safe(name))));
    }

    /// A cached schema.
    pub fn schema(&self, hash: &str) -> Option<Schema> {
        if let Some(schema) = self.memo.lock().unwrap_or_else(|e| e.into_inner()).schemas.get(hash) {
            return Some(schema.clone());
        }
        let bytes = std::fs::read(self.root.join("schemas").join(format!("{}.pb", safe(hash)))).ok()?;
        let schema = Schema::decode(bytes).ok()?;
        if schema.hash != hash {
            return None;
        }
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).schemas.insert(hash.to_string(), schema.clone());
        Some(schema)
    }

    /// Stores a schema.
    pub fn store_schema(&self, schema: &Schema) {
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).schemas.insert(schema.hash.clone(), schema.clone());
        let path = self.root.join("schemas").join(format!("{}.pb", safe(&schema.hash)));
        if path.exists() {
            return;
        }
        if let Err(e) = write_atomic(&path, &schema.bytes) {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the schema cache");
        }
    }

    /// The record and schema of a service: from the cache when `offline` and cached, else from the registry
    /// (refreshing the cache; the schema is fetched only when its hash is not cached).
    pub async fn resolve(
        &self,
        conn: &Connection,
        name: &str,
        offline: bool,
    ) -> Result<(Service, Option<Schema>), ResolveError> {
        if offline && let Some(service) = self.service(name) {
            let schema = service.schema.as_ref().and_then(|s| self.schema(&s.hash));
            if schema.is_some() || service.schema.is_none() {
                return Ok((service, schema));
            }
        }
        let services = match conn.get_service(name).await {
            Ok(s) => s,
            Err(status) if status.code() == tonic::Code::NotFound => {
                self.remove_service(name);
                return Err(ResolveError::NotFound(name.to_string()));
            }
            Err(status) => return Err(status.into()),
        };
        let Some(service) = services.into_iter().next() else { return Err(ResolveError::NotFound(name.to_string())) };
        self.store_service(&service);
        let schema = match service.schema.as_ref().map(|s| s.hash.clone()).filter(|h| !h.is_empty()) {
            None => None,
            Some(hash) => match self.schema(&hash) {
                Some(s) => Some(s),
                None => {
                    let s = conn.get_schema(&hash).await?;
                    self.store_schema(&s);
                    Some(s)
                }
            },
        };
        Ok((service, schema))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::proto::registry::Schema as SchemaMsg;

    #[test]
    fn round_trips_services_and_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SchemaCache::new(dir.path(), "local", "micro");
        assert!(cache.service("a").is_none());
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let svc = Service {
            name: "a".into(),
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: Default::default() }),
            nodes: vec![Default::default()],
            ..Default::default()
        };
        cache.store_service(&svc);
        cache.store_schema(&schema);
        let got = cache.service("a").unwrap();
        assert!(got.nodes.is_empty(), "nodes are not cached");
        assert_eq!(cache.schema(&schema.hash).unwrap().hash, schema.hash);
        assert_eq!(cache.services().len(), 1);
        // Another env does not see it.
        assert!(SchemaCache::new(dir.path(), "other", "micro").service("a").is_none());
        cache.remove_service("a");
        assert!(cache.service("a").is_none());
    }

    #[test]
    fn a_corrupt_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SchemaCache::new(dir.path(), "local", "micro");
        std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
        std::fs::write(dir.path().join("schemas").join("abc.pb"), b"\xff\xff").unwrap();
        assert!(cache.schema("abc").is_none());
    }
}
