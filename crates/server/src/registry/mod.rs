//! The registry: service records with TTL-bound nodes, per domain, and their schemas.
//!
//! The embedded backend, [`MemoryRegistry`], keeps everything in memory, as Micro's registry did: registrations
//! are soft state that services renew by heartbeat, so a restart loses nothing a heartbeat will not bring back.
//! Each distinct schema is stored once, keyed by its hash, so that heartbeats carry only the hash. Expired nodes are
//! pruned and, unlike in Micro, their removal emits a watch event.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod service;

use micro_core::proto::registry::{Node, Options, Schema as SchemaMsg, Service};
use micro_core::schema::Schema;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// The domain that matches every domain in reads.
pub const WILDCARD_DOMAIN: &str = "*";

/// Node metadata naming the owner of a service: the account that registered it (`id@issuer`), [`LOCAL_OWNER`]
/// for the local credential, or [`SERVER_OWNER`] for the core services.
pub const OWNER_KEY: &str = "micro.owner";
pub use micro_core::metadata::TLS_KEY;
/// The owner of the core services: nobody can add, replace or remove their nodes.
pub const SERVER_OWNER: &str = "server";
/// The owner of services registered with the local credential (processes of the server's OS user).
pub const LOCAL_OWNER: &str = "local";

/// The limits that keep one owner from exhausting the registry; each refusal names the limit.
pub mod limits {
    use std::time::Duration;

    /// The longest registration TTL; services re-register (heartbeat) well before it runs out.
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
    /// The largest service record without its nodes and schema: name, version, metadata and endpoints.
    pub const MAX_RECORD_BYTES: usize = 256 * 1024;
    /// The largest node: id, address and metadata.
    pub const MAX_NODE_BYTES: usize = 2 * 1024;
    /// The largest schema (a serialized FileDescriptorSet).
    pub const MAX_SCHEMA_BYTES: usize = 4 * 1024 * 1024;
    /// Nodes of one version of a service.
    pub const MAX_NODES_PER_VERSION: usize = 64;
    /// Versions of one service.
    pub const MAX_VERSIONS: usize = 8;
    /// Service records (name and version) one owner may hold.
    pub const MAX_SERVICES_PER_OWNER: usize = 256;
    /// Nodes one owner may hold.
    pub const MAX_NODES_PER_OWNER: usize = 1024;
    /// The bytes of distinct schemas one owner's records may hold.
    pub const MAX_SCHEMA_BYTES_PER_OWNER: usize = 32 * 1024 * 1024;
    /// The most a `ListServices` reply carries; the rest follows with `next_page_token`.
    pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
}

/// Who writes to the registry through its gRPC face, as the registry service established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The owner recorded on the nodes: `id@issuer`, [`LOCAL_OWNER`] or [`SERVER_OWNER`].
    pub owner: String,
    /// An administrator of the domain may remove other owners' nodes (never the server's), not add to them.
    pub admin: bool,
}

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
    /// The service (or a node of it) belongs to another owner.
    #[error("{0}")]
    Denied(String),
    /// A limit was reached (see [`limits`]).
    #[error("{0}")]
    Limit(String),
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
    /// Registers like [`register`](Self::register) for `writer`, atomically checking that the service is the
    /// writer's (or nobody's), and the [`limits`].
    fn register_as(&self, domain: &str, service: Service, ttl: Duration, writer: &Writer) -> Result<(), RegistryError>;
    /// Deregisters like [`deregister`](Self::deregister) for `writer`: only the owner, or an administrator for a
    /// service that is not the server's.
    fn deregister_as(&self, domain: &str, service: &Service, writer: &Writer) -> Result<(), RegistryError>;
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
    /// Node addresses with their ids and whether they serve TLS ([`TLS_KEY`]), in a stable order.
    pub nodes: Arc<[(String, String, bool)]>,
    /// The service's owner ([`OWNER_KEY`]; empty when the server registered it without one).
    pub owner: Arc<str>,
}

#[derive(Default)]
struct State {
    /// domain → name → version → record
    domains: HashMap<String, BTreeMap<String, BTreeMap<String, Record>>>,
    schemas: HashMap<String, Schema>,
    /// domain → name → nodes, for the proxy's hot path (looked up by `&str`, no allocation).
    routes: HashMap<String, HashMap<String, Route>>,
    /// domain → fully-qualified gRPC service → the service name that claimed it first (routing by path).
    grpc_services: HashMap<String, HashMap<String, String>>,
}

/// Whether a node serves TLS ([`TLS_KEY`]): any value but `false`, `0`, `no`, `off` or empty, so that a typo never
/// means plaintext.
pub fn serves_tls(node: &Node) -> bool {
    node.metadata.get(TLS_KEY).is_some_and(|v| micro_client::tls::truthy(v))
}

/// The owner of a node ([`OWNER_KEY`]), empty when none was recorded.
fn owner_of(node: &Node) -> &str {
    node.metadata.get(OWNER_KEY).map(String::as_str).unwrap_or_default()
}

/// The gRPC services (`helloworld.Helloworld`) a record declares.
fn declared_grpc(service: &Service) -> impl Iterator<Item = &str> {
    service.endpoints.iter().filter_map(|ep| ep.method.trim_start_matches('/').split_once('/').map(|(svc, _)| svc))
}

impl State {
    /// The owner of a service name in a domain: the owner of any of its nodes.
    fn owner(&self, domain: &str, name: &str) -> Option<&str> {
        let versions = self.domains.get(domain)?.get(name)?;
        versions.values().flat_map(|r| r.nodes.values()).map(|e| owner_of(&e.node)).next()
    }

    /// Checks that `writer` may add `service` (its nodes and record) to `domain`, within the [`limits`].
    fn check_register(&self, domain: &str, service: &Service, writer: &Writer) -> Result<(), RegistryError> {
        if let Some(owner) = self.owner(domain, &service.name)
            && owner != writer.owner
        {
            let whose = if owner == SERVER_OWNER { "the server (a core service)" } else { "another account" };
            return Err(RegistryError::Denied(format!(
                "service {:?} in namespace {domain} is registered by {whose}: choose another name",
                service.name
            )));
        }
        let versions = self.domains.get(domain).and_then(|s| s.get(&service.name));
        let record = versions.and_then(|v| v.get(&service.version));
        if versions.is_some_and(|v| record.is_none() && v.len() >= limits::MAX_VERSIONS) {
            return Err(RegistryError::Limit(format!(
                "service {:?} already has {} versions, the most one service may have: deregister one first",
                service.name,
                limits::MAX_VERSIONS
            )));
        }
        let new_nodes = service.nodes.iter().filter(|n| record.is_none_or(|r| !r.nodes.contains_key(&n.id))).count();
        if record.map_or(0, |r| r.nodes.len()) + new_nodes > limits::MAX_NODES_PER_VERSION {
            return Err(RegistryError::Limit(format!(
                "service {:?} version {} would have more than {} nodes",
                service.name,
                service.version,
                limits::MAX_NODES_PER_VERSION
            )));
        }
        if new_nodes == 0 && record.is_some() {
            return Ok(()); // a heartbeat adds nothing to count
        }
        let (mut services, mut nodes) = (usize::from(record.is_none()), new_nodes);
        for record in self.domains.values().flat_map(|s| s.values()).flat_map(|v| v.values()) {
            let owned = record.nodes.values().filter(|e| owner_of(&e.node) == writer.owner).count();
            if owned > 0 {
                services += 1;
                nodes += owned;
            }
        }
        if services > limits::MAX_SERVICES_PER_OWNER {
            return Err(RegistryError::Limit(format!(
                "this owner already holds {} service records, the most one owner may hold: deregister some first",
                limits::MAX_SERVICES_PER_OWNER
            )));
        }
        if nodes > limits::MAX_NODES_PER_OWNER {
            return Err(RegistryError::Limit(format!(
                "this owner already holds {} nodes, the most one owner may hold: deregister some first",
                limits::MAX_NODES_PER_OWNER
            )));
        }
        Ok(())
    }

    /// The bytes of the distinct schemas `owner`'s records use, with `extra` (a new schema's hash) counted too.
    fn schema_bytes_of(&self, owner: &str, extra: Option<(&str, usize)>) -> usize {
        let mut seen = HashSet::new();
        let mut total = 0;
        if let Some((hash, len)) = extra {
            seen.insert(hash.to_string());
            total += len;
        }
        for record in self.domains.values().flat_map(|s| s.values()).flat_map(|v| v.values()) {
            if !record.nodes.values().any(|e| owner_of(&e.node) == owner) {
                continue;
            }
            if let Some(hash) = record.service.schema.as_ref().map(|s| &s.hash)
                && seen.insert(hash.clone())
            {
                total += self.schemas.get(hash).map_or(0, |s| s.bytes.len());
            }
        }
        total
    }
}

/// Checks the sizes of a registration against the [`limits`] and its TTL; returns the TTL to use.
pub fn check_sizes(service: &Service) -> Result<(), RegistryError> {
    use prost::Message;
    for node in &service.nodes {
        if node.encoded_len() > limits::MAX_NODE_BYTES {
            return Err(RegistryError::Limit(format!(
                "node {:?} is {} bytes, more than the {} a node may have (id, address and metadata)",
                node.id.chars().take(80).collect::<String>(),
                node.encoded_len(),
                limits::MAX_NODE_BYTES
            )));
        }
    }
    let schema_len = service.schema.as_ref().map_or(0, |s| s.descriptor_set.len());
    if schema_len > limits::MAX_SCHEMA_BYTES {
        return Err(RegistryError::Limit(format!(
            "the schema is {schema_len} bytes, more than the {} a schema may have",
            limits::MAX_SCHEMA_BYTES
        )));
    }
    let nodes: usize =
        service.nodes.iter().map(|n| prost::length_delimiter_len(n.encoded_len()) + 1 + n.encoded_len()).sum();
    let schema =
        service.schema.as_ref().map_or(0, |s| s.encoded_len() + 2 + prost::length_delimiter_len(s.encoded_len()));
    let record = service.encoded_len().saturating_sub(nodes + schema);
    if record > limits::MAX_RECORD_BYTES {
        return Err(RegistryError::Limit(format!(
            "the record of {:?} is {record} bytes, more than the {} a record may have (name, version, metadata and endpoints)",
            service.name.chars().take(80).collect::<String>(),
            limits::MAX_RECORD_BYTES
        )));
    }
    Ok(())
}

/// Checks a requested TTL in seconds: 1 s to [`limits::MAX_TTL`].
pub fn check_ttl(ttl_secs: i64) -> Result<Duration, RegistryError> {
    let max = limits::MAX_TTL.as_secs() as i64;
    if !(1..=max).contains(&ttl_secs) {
        return Err(RegistryError::Invalid(format!(
            "ttl must be between 1 and {max} seconds, got {ttl_secs}: register with a TTL and re-register (heartbeat) before it runs out"
        )));
    }
    Ok(Duration::from_secs(ttl_secs as u64))
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
    if domain.is_empty() { micro_core::DEFAULT_NAMESPACE } else { domain }
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

/// Recomputes the routing tables and drops schemas no record uses. A gRPC service stays claimed by the service
/// name that claimed it while that service still declares it; `claimant` (the service just registered) claims the
/// gRPC services it declares that nobody holds. Claims are first come, first served: never by name order.
fn reindex(state: &mut State, claimant: Option<(&str, &str)>) {
    let mut routes: HashMap<String, HashMap<String, Route>> = HashMap::new();
    let mut declared: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut used = HashSet::new();
    for (domain, services) in &state.domains {
        for (name, versions) in services {
            let mut nodes = Vec::new();
            let mut owner = "";
            for record in versions.values() {
                nodes.extend(
                    record.nodes.values().map(|e| (e.node.address.clone(), e.node.id.clone(), serves_tls(&e.node))),
                );
                if let Some(e) = record.nodes.values().next() {
                    owner = owner_of(&e.node);
                }
                for svc in declared_grpc(&record.service) {
                    declared.insert((domain.as_str(), svc, name.as_str()));
                }
                if let Some(s) = &record.service.schema {
                    used.insert(s.hash.clone());
                }
            }
            routes
                .entry(domain.clone())
                .or_default()
                .insert(name.clone(), Route { nodes: nodes.into(), owner: owner.into() });
        }
    }
    let mut grpc = std::mem::take(&mut state.grpc_services);
    for (domain, claims) in grpc.iter_mut() {
        claims.retain(|svc, name| declared.contains(&(domain.as_str(), svc.as_str(), name.as_str())));
    }
    grpc.retain(|_, claims| !claims.is_empty());
    if let Some((domain, name)) = claimant {
        for (d, svc, n) in &declared {
            if *d == domain && *n == name {
                grpc.entry(domain.to_string()).or_default().entry(svc.to_string()).or_insert_with(|| name.to_string());
            }
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

impl MemoryRegistry {
    /// Registers `service`; with a `writer`, checks ownership and limits under the same lock as the change and
    /// records the writer as the owner of the nodes (whatever owner the request claimed).
    fn register_checked(
        &self,
        domain: &str,
        mut service: Service,
        ttl: Duration,
        writer: Option<&Writer>,
    ) -> Result<(), RegistryError> {
        validate(&service)?;
        if writer.is_some() {
            check_sizes(&service)?;
        }
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
        if let Some(w) = writer {
            for node in &mut service.nodes {
                node.metadata.insert(OWNER_KEY.to_string(), w.owner.clone());
            }
        }
        let nodes = std::mem::take(&mut service.nodes);
        let expires = if ttl.is_zero() {
            None
        } else {
            let at = Instant::now().checked_add(ttl.min(limits::MAX_TTL));
            Some(at.ok_or_else(|| RegistryError::Invalid(format!("ttl {ttl:?} is too long")))?)
        };
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = writer {
                let mut probe = service.clone();
                probe.nodes = nodes.clone();
                state.check_register(&domain, &probe, w)?;
                if let Some(schema) = &schema
                    && !state.schemas.contains_key(&schema.hash)
                    && state.schema_bytes_of(&w.owner, Some((&schema.hash, schema.bytes.len())))
                        > limits::MAX_SCHEMA_BYTES_PER_OWNER
                {
                    return Err(RegistryError::Limit(format!(
                        "this owner's schemas would take more than {} bytes: deregister services it no longer runs",
                        limits::MAX_SCHEMA_BYTES_PER_OWNER
                    )));
                }
            }
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
            let name = record.service.name.clone();
            if let Some(action) = action {
                changes.push(Change {
                    action,
                    domain: domain.clone(),
                    service: record.to_service(&domain),
                    removed: Vec::new(),
                    timestamp: now_unix(),
                });
                reindex(&mut state, Some((&domain, &name)));
            } else {
                // A heartbeat: claim the gRPC services that nobody holds any more (their claimant left).
                let unclaimed = {
                    let claims = state.grpc_services.get(&domain);
                    let versions = state.domains.get(&domain).and_then(|s| s.get(&name));
                    versions
                        .into_iter()
                        .flat_map(|v| v.values())
                        .any(|r| declared_grpc(&r.service).any(|svc| claims.is_none_or(|c| !c.contains_key(svc))))
                };
                if unclaimed {
                    reindex(&mut state, Some((&domain, &name)));
                }
            }
        }
        self.emit(changes);
        Ok(())
    }

    /// Deregisters nodes; with a `writer`, only the owner's, or any but the server's for an administrator.
    fn deregister_checked(
        &self,
        domain: &str,
        service: &Service,
        writer: Option<&Writer>,
    ) -> Result<(), RegistryError> {
        let domain = domain_or_default(domain).to_string();
        let version = version_or_latest(&service.version);
        let mut changes = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let Some(versions) = state.domains.get_mut(&domain).and_then(|s| s.get_mut(&service.name)) else {
                return Err(RegistryError::NotFound);
            };
            let Some(record) = versions.get_mut(&version) else { return Err(RegistryError::NotFound) };
            if let Some(w) = writer
                && let Some(owner) = record.nodes.values().map(|e| owner_of(&e.node)).next()
                && owner != w.owner
                && (!w.admin || owner == SERVER_OWNER || owner.is_empty())
            {
                return Err(RegistryError::Denied(format!(
                    "service {:?} in namespace {domain} is not yours to deregister",
                    service.name
                )));
            }
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
            reindex(&mut state, None);
        }
        self.emit(changes);
        Ok(())
    }
}

impl RegistryBackend for MemoryRegistry {
    fn register(&self, domain: &str, service: Service, ttl: Duration) -> Result<(), RegistryError> {
        self.register_checked(domain, service, ttl, None)
    }

    fn register_as(&self, domain: &str, service: Service, ttl: Duration, writer: &Writer) -> Result<(), RegistryError> {
        self.register_checked(domain, service, ttl, Some(writer))
    }

    fn deregister(&self, domain: &str, service: &Service) -> Result<(), RegistryError> {
        self.deregister_checked(domain, service, None)
    }

    fn deregister_as(&self, domain: &str, service: &Service, writer: &Writer) -> Result<(), RegistryError> {
        self.deregister_checked(domain, service, Some(writer))
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
            reindex(&mut state, None);
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
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::proto::registry::Node;

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
        let bytes = bytes::Bytes::from_static(micro_core::proto::FILE_DESCRIPTOR_SET);
        let hash = micro_core::schema::hash(&bytes);
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

#[cfg(test)]
mod ownership_tests {
    use super::*;
    use micro_core::proto::registry::{Endpoint, Node};

    fn writer(owner: &str) -> Writer {
        Writer { owner: owner.into(), admin: false }
    }

    fn svc(name: &str, node: &str, address: &str, grpc: &str) -> Service {
        Service {
            name: name.into(),
            endpoints: vec![Endpoint { name: "X.Call".into(), method: format!("/{grpc}/Call"), ..Default::default() }],
            nodes: vec![Node { id: node.into(), address: address.into(), ..Default::default() }],
            ..Default::default()
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn a_service_name_belongs_to_its_first_owner() {
        let r = MemoryRegistry::new();
        r.register_as("micro", svc("hello", "h-1", "127.0.0.1:1", "hello.Hello"), TTL, &writer("svc@micro")).unwrap();
        // Another owner can neither add a node, nor replace the node under its id, nor remove it.
        for attempt in [svc("hello", "evil-1", "127.0.0.1:2", "x.X"), svc("hello", "h-1", "127.0.0.1:2", "x.X")] {
            let err = r.register_as("micro", attempt, TTL, &writer(LOCAL_OWNER)).unwrap_err();
            assert!(matches!(err, RegistryError::Denied(_)), "{err}");
        }
        let err = r.deregister_as("micro", &svc("hello", "h-1", "", ""), &writer(LOCAL_OWNER)).unwrap_err();
        assert!(matches!(err, RegistryError::Denied(_)), "{err}");
        assert_eq!(r.route("micro", "hello").unwrap().nodes.len(), 1);
        assert_eq!(r.route("micro", "hello").unwrap().nodes[0].0, "127.0.0.1:1");
        // The owner recorded is the writer, whatever the request claimed.
        let mut forged = svc("other", "o-1", "127.0.0.1:3", "o.O");
        forged.nodes[0].metadata.insert(OWNER_KEY.into(), "svc@micro".into());
        r.register_as("micro", forged, TTL, &writer(LOCAL_OWNER)).unwrap();
        assert_eq!(&*r.route("micro", "other").unwrap().owner, LOCAL_OWNER);
        // An administrator may remove another owner's nodes, but not the server's.
        let admin = Writer { owner: "admin@micro".into(), admin: true };
        r.deregister_as("micro", &svc("other", "o-1", "", ""), &admin).unwrap();
        let mut core = svc("store", "s-1", "127.0.0.1:4", "store.Store");
        core.nodes[0].metadata.insert(OWNER_KEY.into(), SERVER_OWNER.into());
        r.register("micro", core, Duration::ZERO).unwrap();
        assert!(r.deregister_as("micro", &svc("store", "s-1", "", ""), &admin).is_err());
        assert!(r.register_as("micro", svc("store", "s-2", "127.0.0.1:5", "x.Y"), TTL, &admin).is_err());
    }

    #[test]
    fn a_grpc_service_is_routed_to_the_service_that_claimed_it_first() {
        let r = MemoryRegistry::new();
        r.register_as("micro", svc("zed", "z-1", "127.0.0.1:1", "hello.Hello"), TTL, &writer("a@micro")).unwrap();
        // A later service declaring the same gRPC service, even with a name that sorts first, does not take it.
        r.register_as("micro", svc("aaa", "a-1", "127.0.0.1:2", "hello.Hello"), TTL, &writer("b@micro")).unwrap();
        assert_eq!(r.service_for_grpc("micro", "hello.Hello").as_deref(), Some("zed"));
        r.register_as("micro", svc("aaa", "a-1", "127.0.0.1:2", "hello.Hello"), TTL, &writer("b@micro")).unwrap();
        assert_eq!(r.service_for_grpc("micro", "hello.Hello").as_deref(), Some("zed"));
        // When the claimant leaves, the next registration of a declarer claims it.
        r.deregister_as("micro", &svc("zed", "z-1", "", ""), &writer("a@micro")).unwrap();
        assert_eq!(r.service_for_grpc("micro", "hello.Hello"), None);
        r.register_as("micro", svc("aaa", "a-1", "127.0.0.1:2", "hello.Hello"), TTL, &writer("b@micro")).unwrap();
        assert_eq!(r.service_for_grpc("micro", "hello.Hello").as_deref(), Some("aaa"));
    }

    #[test]
    fn limits_are_enforced_with_a_clear_error() {
        let r = MemoryRegistry::new();
        let mut big = svc("big", "b-1", "127.0.0.1:1", "b.B");
        big.nodes[0].metadata.insert("pad".into(), "x".repeat(limits::MAX_NODE_BYTES));
        let err = r.register_as("micro", big, TTL, &writer("a@micro")).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
        let mut big = svc("big", "b-1", "127.0.0.1:1", "b.B");
        big.metadata.insert("pad".into(), "x".repeat(limits::MAX_RECORD_BYTES + 1));
        assert!(matches!(r.register_as("micro", big, TTL, &writer("a@micro")), Err(RegistryError::Limit(_))));
        for i in 0..limits::MAX_SERVICES_PER_OWNER {
            r.register_as(
                "micro",
                svc(&format!("s{i}"), &format!("n{i}"), "127.0.0.1:1", "s.S"),
                TTL,
                &writer("a@micro"),
            )
            .unwrap();
        }
        let err =
            r.register_as("micro", svc("one-more", "n", "127.0.0.1:1", "s.S"), TTL, &writer("a@micro")).unwrap_err();
        assert!(matches!(err, RegistryError::Limit(_)), "{err}");
        // Another owner is not held back by the first one's records.
        r.register_as("micro", svc("one-more", "n", "127.0.0.1:1", "s.S"), TTL, &writer("b@micro")).unwrap();
    }

    #[test]
    fn ttls_are_checked_and_never_overflow() {
        assert!(check_ttl(0).is_err());
        assert!(check_ttl(-1).is_err());
        assert!(check_ttl(i64::MAX).is_err());
        assert_eq!(check_ttl(90).unwrap(), Duration::from_secs(90));
        // The backend caps what trusted callers pass instead of overflowing `Instant`.
        let r = MemoryRegistry::new();
        r.register("micro", svc("a", "a-1", "127.0.0.1:1", "a.A"), Duration::from_secs(u64::MAX)).unwrap();
    }
}
