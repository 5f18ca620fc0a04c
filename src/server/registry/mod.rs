//! The registry: service records with TTL-bound nodes, per domain, and their schemas.
//!
//! The embedded backend, [`MemoryRegistry`], keeps everything in memory, as Micro's registry did: registrations
//! are soft state that services renew by heartbeat, so a restart loses nothing a heartbeat will not bring back.
//! Each distinct schema is stored once, keyed by its hash, so that heartbeats carry only the hash. Expired nodes are
//! pruned and, unlike in Micro, their removal emits a watch event.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod service;

use crate::proto::registry::{Node, Options, Schema as SchemaMsg, Service};
use crate::schema::Schema;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// The domain that matches every domain in reads.
pub const WILDCARD_DOMAIN: &str = "*";

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request misses something or has a bad value.
    #[error("{0}")]
    Invalid(String),
    /// A registration named a schema by hash that the registry does not hold; resend it with its descriptors.
    #[error("schema {0} is unknown: register again with the descriptor set")]
    SchemaUnknown(String),
    /// No such service.
    #[error("service not found")]
    NotFound,
}

/// The kind of a registry change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new service (name and version) appeared.
    Create,
    /// Nodes were added or removed, or the record changed.
    Update,
    /// The last node of a service version went away.
    Delete,
}

impl Action {
    /// Micro's name of the action: `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// One change, as delivered to watchers.
#[derive(Clone, Debug)]
pub struct Change {
    /// What happened.
    pub action: Action,
    /// The domain of the service.
    pub domain: String,
    /// The record after the change (before it, for a delete).
    pub service: Service,
    /// Addresses of nodes that were removed by this change.
    pub removed: Vec<String>,
    /// Unix time in seconds.
    pub timestamp: i64,
}

/// Whether the registry is shared with other servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sharing {
    /// This server's registry only.
    #[default]
    Memory,
    /// Shared through etcd, by URL (needs the `etcd` cargo feature).
    Etcd(String),
}

impl Sharing {
    /// Parses `memory` (or empty) or an `etcd://host:port` URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = super::engine_url("registry", text, "memory", &["etcd://"], "an etcd://host:port URL")?;
        Ok(url.map_or(Sharing::Memory, Sharing::Etcd))
    }
}

/// The registry's storage. The embedded [`MemoryRegistry`] is the default; a distributed engine implements the
/// same trait.
pub trait RegistryBackend: Send + Sync + 'static {
    /// Registers (or refreshes) the nodes of a service in `domain`, each living for `ttl` (zero = forever).
    fn register(&self, domain: &str, service: Service, ttl: Duration) -> Result<(), RegistryError>;
    /// Removes the given nodes of a service.
    fn deregister(&self, domain: &str, service: &Service) -> Result<(), RegistryError>;
    /// Every version of a service (`*` = all domains).
    fn get(&self, domain: &str, name: &str) -> Vec<Service>;
    /// Every service of a domain (`*` = all domains), one entry per name and version.
    fn list(&self, domain: &str) -> Vec<Service>;
    /// A schema by hash.
    fn schema(&self, hash: &str) -> Option<Schema>;
    /// The changes from now on.
    fn watch(&self) -> broadcast::Receiver<Change>;
    /// Removes expired nodes, emitting their changes.
    fn prune(&self);
}

#[derive(Debug)]
struct NodeEntry {
    node: Node,
    expires: Option<Instant>,
}

#[derive(Debug)]
struct Record {
    service: Service,
    ttl: Duration,
    nodes: BTreeMap<String, NodeEntry>,
}

impl Record {
    fn to_service(&self, domain: &str) -> Service {
        let mut s = self.service.clone();
        s.nodes = self.nodes.values().map(|e| e.node.clone()).collect();
        s.options = Some(Options { ttl: self.ttl.as_secs() as i64, domain: domain.to_string() });
        s
    }
}

/// Where the proxy can send a call: the nodes of one service, precomputed on every change.
#[derive(Clone, Debug, Default)]
pub struct Route {
    /// Node addresses with their ids, in a stable order.
    pub nodes: Arc<[(String, String)]>,
}

#[derive(Default)]
struct State {
    /// domain → name → version → record
    domains: HashMap<String, BTreeMap<String, BTreeMap<String, Record>>>,
    schemas: HashMap<String, Schema>,
    /// domain → name → nodes, for the proxy's hot path (looked up by `&str`, no allocation).
    routes: HashMap<String, HashMap<String, Route>>,
    /// domain → fully-qualified gRPC service → service name.
    grpc_services: HashMap<String, HashMap<String, String>>,
}

/// The embedded, in-memory registry.
pub struct MemoryRegistry {
    state: RwLock<State>,
    events: broadcast::Sender<Change>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

/// The domain to use: `micro` when empty.
pub fn domain_or_default(domain: &str) -> &str {
    if domain.is_empty() { crate::DEFAULT_NAMESPACE } else { domain }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        Self { state: RwLock::new(State::default()), events }
    }

    /// The nodes of a service, for routing.
    pub fn route(&self, domain: &str, name: &str) -> Option<Route> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.routes.get(domain)?.get(name).cloned()
    }

    /// The service that declares a fully-qualified gRPC service (`helloworld.Helloworld`) in a domain.
    pub fn service_for_grpc(&self, domain: &str, grpc_service: &str) -> Option<String> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.grpc_services.get(domain)?.get(grpc_service).cloned()
    }

    /// Every distinct schema in use by a domain's services (`*` = all), for reflection.
    pub fn schemas(&self, domain: &str) -> Vec<Schema> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (d, services) in &state.domains {
            if domain != WILDCARD_DOMAIN && d != domain {
                continue;
            }
            for record in services.values().flat_map(|v| v.values()) {
                if let Some(hash) = record.service.schema.as_ref().map(|s| &s.hash)
                    && seen.insert(hash.clone())
                    && let Some(s) = state.schemas.get(hash)
                {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    fn emit(&self, changes: Vec<Change>) {
        for change in changes {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(change);
        }
    }
}

/// Recomputes the routing tables and drops schemas no record uses.
fn reindex(state: &mut State) {
    let mut routes: HashMap<String, HashMap<String, Route>> = HashMap::new();
    let mut grpc: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut used = HashSet::new();
    for (domain, services) in &state.domains {
        for (name, versions) in services {
            let mut nodes = Vec::new();
            for record in versions.values() {
                nodes.extend(record.nodes.values().map(|e| (e.node.address.clone(), e.node.id.clone())));
                for ep in &record.service.endpoints {
                    if let Some((svc, _)) = ep.method.trim_start_matches('/').split_once('/') {
                        grpc.entry(domain.clone()).or_default().entry(svc.to_string()).or_insert_with(|| name.clone());
                    }
                }
                if let Some(s) = &record.service.schema {
                    used.insert(s.hash.clone());
                }
            }
            routes.entry(domain.clone()).or_default().insert(name.clone(), Route { nodes: nodes.into() });
        }
    }
    state.routes = routes;
    state.grpc_services = grpc;
    state.schemas.retain(|h, _| used.contains(h));
}

fn validate(service: &Service) -> Result<(), RegistryError> {
    if service.name.trim().is_empty() {
        return Err(RegistryError::Invalid("service name is required".into()));
    }
    for node in &service.nodes {
        if node.id.is_empty() {
            return Err(RegistryError::Invalid(format!("a node of {} has no id", service.name)));
        }
        if node.address.is_empty() {
            return Err(RegistryError::Invalid(format!("node {} has no address", node.id)));
        }
    }
    Ok(())
}

fn version_or_latest(v: &str) -> String {
    if v.is_empty() { "latest".to_string() } else { v.to_string() }
}

impl RegistryBackend for MemoryRegistry {
    fn register(&self, domain: &str, mut service: Service, ttl: Duration) -> Result<(), RegistryError> {
        validate(&service)?;
        let domain = domain_or_default(domain).to_string();
        if domain == WILDCARD_DOMAIN {
            return Err(RegistryError::Invalid("cannot register in the wildcard domain".into()));
        }
        service.version = version_or_latest(&service.version);
        service.options = None;
        service.metadata.insert("domain".into(), domain.clone());
        // Decode new schemas outside the lock.
        let schema = match service.schema.take() {
            Some(s) if !s.descriptor_set.is_empty() => {
                let decoded = Schema::decode(s.descriptor_set)
                    .map_err(|e| RegistryError::Invalid(format!("service {}: {e}", service.name)))?;
                Some(decoded)
            }
            Some(s) if !s.hash.is_empty() => {
                service.schema = Some(SchemaMsg { hash: s.hash, descriptor_set: Default::default() });
                None
            }
            _ => None,
        };
        let nodes = std::mem::take(&mut service.nodes);
        let expires = (!ttl.is_zero()).then(|| Instant::now() + ttl);
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if let Some(schema) = schema {
                service.schema = Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: Default::default() });
                state.schemas.entry(schema.hash.clone()).or_insert(schema);
            } else if let Some(h) = service.schema.as_ref().map(|s| s.hash.clone())
                && !state.schemas.contains_key(&h)
            {
                return Err(RegistryError::SchemaUnknown(h));
            }
            let versions = state.domains.entry(domain.clone()).or_default().entry(service.name.clone()).or_default();
            let (action, record) = match versions.get_mut(&service.version) {
                Some(record) => {
                    let changed = record.service != service || record.ttl != ttl;
                    record.service = service;
                    record.ttl = ttl;
                    (changed.then_some(Action::Update), record)
                }
                None => {
                    let record = Record { service: service.clone(), ttl, nodes: BTreeMap::new() };
                    (Some(Action::Create), versions.entry(service.version.clone()).or_insert(record))
                }
            };
            let mut action = action;
            for mut node in nodes {
                node.metadata.insert("domain".into(), domain.clone());
                match record.nodes.get_mut(&node.id) {
                    Some(entry) => {
                        if entry.node != node {
                            entry.node = node;
                            action = action.or(Some(Action::Update));
                        }
                        entry.expires = expires;
                    }
                    None => {
                        record.nodes.insert(node.id.clone(), NodeEntry { node, expires });
                        action = action.or(Some(Action::Update));
                    }
                }
            }
            if let Some(action) = action {
                changes.push(Change {
                    action,
                    domain: domain.clone(),
                    service: record.to_service(&domain),
                    removed: Vec::new(),
                    timestamp: now_unix(),
                });
                reindex(&mut state);
            }
        }
        self.emit(changes);
        Ok(())
    }

    fn deregister(&self, domain: &str, service: &Service) -> Result<(), RegistryError> {
        let domain = domain_or_default(domain).to_string();
        let version = version_or_latest(&service.version);
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let Some(versions) = state.domains.get_mut(&domain).and_then(|s| s.get_mut(&service.name)) else {
                return Err(RegistryError::NotFound);
            };
            let Some(record) = versions.get_mut(&version) else { return Err(RegistryError::NotFound) };
            let mut removed = Vec::new();
            for node in &service.nodes {
                if let Some(e) = record.nodes.remove(&node.id) {
                    removed.push(e.node.address);
                }
            }
            if removed.is_empty() {
                return Ok(());
            }
            let snapshot = record.to_service(&domain);
            let action = if record.nodes.is_empty() {
                versions.remove(&version);
                Action::Delete
            } else {
                Action::Update
            };
            changes.push(Change { action, domain: domain.clone(), service: snapshot, removed, timestamp: now_unix() });
            cleanup(&mut state);
            reindex(&mut state);
        }
        self.emit(changes);
        Ok(())
    }

    fn get(&self, domain: &str, name: &str) -> Vec<Service> {
        let domain = domain_or_default(domain);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (d, services) in &state.domains {
            if domain != WILDCARD_DOMAIN && d != domain {
                continue;
            }
            if let Some(versions) = services.get(name) {
                out.extend(versions.values().map(|r| r.to_service(d)));
            }
        }
        out
    }

    fn list(&self, domain: &str) -> Vec<Service> {
        let domain = domain_or_default(domain);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (d, services) in &state.domains {
            if domain != WILDCARD_DOMAIN && d != domain {
                continue;
            }
            out.extend(services.values().flat_map(|v| v.values()).map(|r| r.to_service(d)));
        }
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    fn schema(&self, hash: &str) -> Option<Schema> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.schemas.get(hash).cloned()
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.events.subscribe()
    }

    fn prune(&self) {
        let now = Instant::now();
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let expired = |r: &Record| r.nodes.values().any(|e| e.expires.is_some_and(|t| t <= now));
            let any = state.domains.values().flat_map(|s| s.values()).flat_map(|v| v.values()).any(expired);
            if !any {
                return;
            }
            for (domain, services) in state.domains.iter_mut() {
                for versions in services.values_mut() {
                    versions.retain(|_, record| {
                        let before = record.to_service(domain);
                        let mut removed = Vec::new();
                        record.nodes.retain(|_, e| {
                            let keep = e.expires.is_none_or(|t| t > now);
                            if !keep {
                                removed.push(e.node.address.clone());
                            }
                            keep
                        });
                        if removed.is_empty() {
                            return true;
                        }
                        let gone = record.nodes.is_empty();
                        changes.push(Change {
                            action: if gone { Action::Delete } else { Action::Update },
                            domain: domain.clone(),
                            service: if gone { before } else { record.to_service(domain) },
                            removed,
                            timestamp: now_unix(),
                        });
                        !gone
                    });
                }
            }
            cleanup(&mut state);
            reindex(&mut state);
        }
        for c in &changes {
            tracing::info!(service = %c.service.name, domain = %c.domain, nodes = ?c.removed, "registration expired");
        }
        self.emit(changes);
    }
}

/// Drops empty services and domains.
fn cleanup(state: &mut State) {
    for services in state.domains.values_mut() {
        services.retain(|_, versions| !versions.is_empty());
    }
    state.domains.retain(|_, services| !services.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::registry::Node;

    fn svc(name: &str, node: &str) -> Service {
        Service {
            name: name.into(),
            nodes: vec![Node { id: node.into(), address: format!("127.0.0.1:{}", node.len()), ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn register_get_list_deregister_emit_events() {
        let r = MemoryRegistry::new();
        let mut w = r.watch();
        r.register("micro", svc("a", "a-1"), Duration::ZERO).unwrap();
        assert_eq!(w.try_recv().unwrap().action, Action::Create);
        // A heartbeat of a known node emits nothing.
        r.register("micro", svc("a", "a-1"), Duration::ZERO).unwrap();
        assert!(w.try_recv().is_err());
        r.register("micro", svc("a", "a-22"), Duration::ZERO).unwrap();
        assert_eq!(w.try_recv().unwrap().action, Action::Update);
        let got = r.get("micro", "a");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].nodes.len(), 2);
        assert_eq!(got[0].version, "latest");
        assert_eq!(r.route("micro", "a").unwrap().nodes.len(), 2);
        assert!(r.get("other", "a").is_empty());
        assert_eq!(r.get("*", "a").len(), 1);
        r.deregister("micro", &svc("a", "a-1")).unwrap();
        assert_eq!(w.try_recv().unwrap().action, Action::Update);
        r.deregister("micro", &svc("a", "a-22")).unwrap();
        let last = w.try_recv().unwrap();
        assert_eq!(last.action, Action::Delete);
        assert_eq!(last.removed, vec!["127.0.0.1:4".to_string()]);
        assert!(r.list("micro").is_empty());
        assert!(r.route("micro", "a").is_none());
    }

    #[test]
    fn expiry_prunes_and_emits_delete() {
        let r = MemoryRegistry::new();
        r.register("micro", svc("a", "a-1"), Duration::from_millis(1)).unwrap();
        let mut w = r.watch();
        std::thread::sleep(Duration::from_millis(5));
        r.prune();
        let change = w.try_recv().unwrap();
        assert_eq!(change.action, Action::Delete);
        assert_eq!(change.service.name, "a");
        assert!(r.get("micro", "a").is_empty());
    }

    #[test]
    fn schema_by_hash_only_needs_a_known_schema() {
        let r = MemoryRegistry::new();
        let mut s = svc("a", "a-1");
        s.schema = Some(SchemaMsg { hash: "abc".into(), descriptor_set: Default::default() });
        assert!(matches!(r.register("micro", s.clone(), Duration::ZERO), Err(RegistryError::SchemaUnknown(_))));
        let bytes = bytes::Bytes::from_static(crate::proto::FILE_DESCRIPTOR_SET);
        let hash = crate::schema::hash(&bytes);
        s.schema = Some(SchemaMsg { hash: hash.clone(), descriptor_set: bytes });
        r.register("micro", s.clone(), Duration::ZERO).unwrap();
        s.schema = Some(SchemaMsg { hash: hash.clone(), descriptor_set: Default::default() });
        r.register("micro", s, Duration::ZERO).unwrap();
        assert!(r.schema(&hash).is_some());
        assert_eq!(r.get("micro", "a")[0].schema.as_ref().unwrap().hash, hash);
    }

    #[test]
    fn invalid_registrations_are_refused() {
        let r = MemoryRegistry::new();
        assert!(matches!(r.register("micro", svc("", "x"), Duration::ZERO), Err(RegistryError::Invalid(_))));
        let mut s = svc("a", "a-1");
        s.nodes[0].address.clear();
        assert!(matches!(r.register("micro", s, Duration::ZERO), Err(RegistryError::Invalid(_))));
    }
}
