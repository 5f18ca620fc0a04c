//! From a URL path to a service and one of its endpoints, by Micro's default (`micro`) resolver (reference §5.2).
//!
//! The path gives a service name and an endpoint `Handler.Method`:
//! `/foo` → `foo` / `Foo.Call`, `/foo/bar` → `foo` / `Foo.Bar`, `/foo/bar/baz` → `foo` / `Bar.Baz`,
//! `/v1/foo/bar` → `v1.foo` / `Foo.Bar` and `/a/b/c/d` → `a.b` / `C.D`. The endpoint words are then matched against
//! the service's registered endpoints ignoring case, `-` and `_`, so `/registry/list-services`,
//! `/registry/listServices` and `/registry/list_services` all reach `Registry.ListServices`. Where the handler is
//! implied by the service name (one or two segments) and the service has no such handler, a method name that only
//! one handler declares is used, so `/greeter` reaches `Helloworld.Call` on a service named `greeter`.
//!
//! Resolutions are cached per namespace and path; any registry change clears the cache.

use super::error::{ApiError, GATEWAY_ID};
use crate::registry::{MemoryRegistry, RegistryBackend};
use micro_core::proto::registry::Service;
use prost_reflect::MethodDescriptor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::broadcast;

/// One reading of a path: the service name and the endpoint's handler and method words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The registered service name, e.g. `helloworld` or `v1.foo`.
    pub service: String,
    /// The handler (gRPC service short name), in Micro's camel case, e.g. `Helloworld`.
    pub handler: String,
    /// The method, in Micro's camel case, e.g. `Call`.
    pub method: String,
    /// Whether the handler was implied by the service name rather than written in the path.
    pub implied_handler: bool,
}

impl Candidate {
    /// The endpoint name, `Handler.Method`.
    pub fn endpoint(&self) -> String {
        format!("{}.{}", self.handler, self.method)
    }
}

/// Micro's camel case: split on `-`, upper-case the first letter of each part, concatenate
/// (`baz-xyz` → `BazXyz`, `fooBar` → `FooBar`).
pub fn camel(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for part in segment.split('-') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

/// The words of a name for matching: lower case, without `-` and `_`.
fn normalize(s: &str) -> String {
    s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect()
}

/// The clean segments of a path: percent-decoded, empty and `.` segments dropped and `..` applied, as Go's
/// `path.Clean`. `None` when a segment is not UTF-8 after decoding.
pub fn segments(path: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = super::request::percent_decode(raw.as_bytes(), false);
        let seg = String::from_utf8(seg).ok()?;
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    Some(out)
}

fn is_version(seg: &str) -> bool {
    seg.len() > 1 && seg.starts_with('v') && seg[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The readings of a path, most likely first (Micro's rules; a versioned reading is followed by the plain one).
pub fn candidates(path: &str) -> Vec<Candidate> {
    let Some(segs) = segments(path) else { return Vec::new() };
    let mut out = Vec::new();
    match segs.len() {
        0 => {}
        1 => out.push(Candidate {
            service: segs[0].clone(),
            handler: camel(&segs[0]),
            method: "Call".into(),
            implied_handler: true,
        }),
        2 => out.push(Candidate {
            service: segs[0].clone(),
            handler: camel(&segs[0]),
            method: camel(&segs[1]),
            implied_handler: true,
        }),
        n => {
            if n == 3 && is_version(&segs[0]) {
                out.push(Candidate {
                    service: format!("{}.{}", segs[0], segs[1]),
                    handler: camel(&segs[1]),
                    method: camel(&segs[2]),
                    implied_handler: true,
                });
            }
            out.push(Candidate {
                service: segs[..n - 2].join("."),
                handler: camel(&segs[n - 2]),
                method: camel(&segs[n - 1]),
                implied_handler: false,
            });
        }
    }
    out
}

/// A resolved target: the service to call and the method to call on it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The registered service name.
    pub service: String,
    /// The registry endpoint name, e.g. `Helloworld.Call`.
    pub endpoint: String,
    /// The method, from the service's schema.
    pub method: MethodDescriptor,
    /// The method's gRPC path (`/helloworld.Helloworld/Call`), built once; `None` if it is not a valid path.
    pub path: Option<http::uri::PathAndQuery>,
}

/// Finds the endpoint of `candidate` among the endpoints of a service's versions: its registry name and gRPC path.
fn match_endpoint<'a>(versions: &'a [Service], candidate: &Candidate) -> Option<(&'a Service, &'a str, &'a str)> {
    let handler = normalize(&candidate.handler);
    let method = normalize(&candidate.method);
    let all = || versions.iter().flat_map(|v| v.endpoints.iter().map(move |e| (v, e)));
    let split = |name: &str| name.split_once('.').map(|(h, m)| (normalize(h), normalize(m)));
    if let Some((v, e)) = all().find(|(_, e)| split(&e.name).is_some_and(|(h, m)| h == handler && m == method)) {
        return Some((v, e.name.as_str(), e.method.as_str()));
    }
    if candidate.implied_handler {
        let mut found = all().filter(|(_, e)| split(&e.name).is_some_and(|(_, m)| m == method));
        if let Some((v, e)) = found.next() {
            // Only when the method name is unambiguous across the service's handlers.
            let same = |other: &micro_core::proto::registry::Endpoint| other.name == e.name;
            if found.all(|(_, other)| same(other)) {
                return Some((v, e.name.as_str(), e.method.as_str()));
            }
        }
    }
    None
}

/// Resolves `path` in `namespace` against the registry, without the cache.
pub fn resolve_uncached(registry: &MemoryRegistry, namespace: &str, path: &str) -> Result<Target, ApiError> {
    let candidates = candidates(path);
    let Some(first) = candidates.first() else {
        return Err(ApiError::not_found(GATEWAY_ID, format!("no service in path {path:?}")));
    };
    let mut known = None;
    for candidate in &candidates {
        let mut versions = registry.get(namespace, &candidate.service);
        if versions.is_empty() && crate::CORE_NAMES.contains(&candidate.service.as_str()) {
            // Core services are registered in `micro` and serve every namespace; the proxy still authorizes
            // the call in the caller's namespace.
            versions = registry.get(micro_core::DEFAULT_NAMESPACE, &candidate.service);
        }
        if versions.is_empty() {
            continue;
        }
        known.get_or_insert_with(|| candidate.clone());
        let Some((version, endpoint, grpc_path)) = match_endpoint(&versions, candidate) else { continue };
        let id = &candidate.service;
        let hash = version.schema.as_ref().map(|s| s.hash.as_str()).unwrap_or_default();
        if hash.is_empty() {
            return Err(ApiError::new(
                id,
                http::StatusCode::NOT_IMPLEMENTED,
                format!("service \"{id}\" registered no schema: the gateway needs one to translate JSON"),
            ));
        }
        let Some(schema) = registry.schema(hash) else {
            return Err(ApiError::internal(id, format!("the schema of service \"{id}\" is missing")));
        };
        let Some(method) = micro_core::schema::find_method(&schema.pool, grpc_path) else {
            return Err(ApiError::internal(
                id,
                format!("endpoint {endpoint} of service \"{id}\" ({grpc_path}) is not in its schema"),
            ));
        };
        let path = http::uri::PathAndQuery::try_from(micro_core::schema::method_path(&method)).ok();
        return Ok(Target { service: id.clone(), endpoint: endpoint.to_string(), method, path });
    }
    match known {
        Some(c) => Err(ApiError::not_found(
            &c.service,
            format!("endpoint {} not found in service \"{}\"", c.endpoint(), c.service),
        )),
        None => Err(ApiError::not_found(&first.service, format!("service \"{}\" not found", first.service))),
    }
}

/// Resolves `endpoint` (`Handler.Method`) of the service named `service` in `namespace`, by name rather than by a
/// path (the web dashboard names both). Core services are found in `micro` as [`resolve_uncached`] finds them.
pub fn resolve_named(
    registry: &MemoryRegistry,
    namespace: &str,
    service: &str,
    endpoint: &str,
) -> Result<Target, ApiError> {
    let Some((handler, method)) = endpoint.split_once('.') else {
        return Err(ApiError::bad_request(GATEWAY_ID, format!("endpoint {endpoint:?} is not Handler.Method")));
    };
    let candidate = Candidate {
        service: service.to_string(),
        handler: handler.to_string(),
        method: method.to_string(),
        implied_handler: false,
    };
    let mut versions = registry.get(namespace, service);
    if versions.is_empty() && crate::CORE_NAMES.contains(&service) {
        versions = registry.get(micro_core::DEFAULT_NAMESPACE, service);
    }
    if versions.is_empty() {
        return Err(ApiError::not_found(service, format!("service \"{service}\" not found")));
    }
    let Some((version, endpoint, grpc_path)) = match_endpoint(&versions, &candidate) else {
        return Err(ApiError::not_found(service, format!("endpoint {endpoint} not found in service \"{service}\"")));
    };
    let hash = version.schema.as_ref().map(|s| s.hash.as_str()).unwrap_or_default();
    let schema = registry.schema(hash).ok_or_else(|| {
        ApiError::new(
            service,
            http::StatusCode::NOT_IMPLEMENTED,
            format!("service \"{service}\" registered no schema: the dashboard needs one to translate JSON"),
        )
    })?;
    let method = micro_core::schema::find_method(&schema.pool, grpc_path).ok_or_else(|| {
        ApiError::internal(service, format!("endpoint {endpoint} of service \"{service}\" is not in its schema"))
    })?;
    let path = http::uri::PathAndQuery::try_from(micro_core::schema::method_path(&method)).ok();
    Ok(Target { service: service.to_string(), endpoint: endpoint.to_string(), method, path })
}

/// The most entries the cache holds; it starts again from empty when full.
const CACHE_LIMIT: usize = 4096;

/// Resolves paths with a cache that any registry change clears.
pub struct Resolver {
    registry: Arc<MemoryRegistry>,
    cache: Arc<Cache>,
    /// The registry's changes, until the task that watches them starts (on the first request).
    changes: Mutex<Option<broadcast::Receiver<crate::registry::Change>>>,
    /// Whether that task was started.
    watching: AtomicBool,
}

#[derive(Default)]
struct Cache {
    /// namespace → path → target, looked up by `&str` without allocating.
    entries: RwLock<HashMap<String, HashMap<String, Arc<Target>>>>,
    /// How many targets `entries` holds.
    len: AtomicU64,
    /// Bumped on every registry change, so a resolution that raced with a change is not cached.
    generation: AtomicU64,
    /// Set when changes can no longer be watched: the cache is then bypassed.
    disabled: AtomicBool,
}

impl Cache {
    fn invalidate(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
        self.len.store(0, Ordering::SeqCst);
    }
}

impl Resolver {
    /// A resolver over `registry`.
    pub fn new(registry: Arc<MemoryRegistry>) -> Self {
        let changes = registry.watch();
        Self { registry, cache: Arc::default(), changes: Mutex::new(Some(changes)), watching: AtomicBool::new(false) }
    }

    /// Starts the task that clears the cache on registry changes, once. Outside a Tokio runtime the cache is
    /// bypassed instead.
    fn watch(&self) {
        if self.watching.load(Ordering::Acquire) {
            return;
        }
        let Some(mut changes) = self.changes.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        self.watching.store(true, Ordering::Release);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.cache.disabled.store(true, Ordering::SeqCst);
            return;
        };
        let cache: Weak<Cache> = Arc::downgrade(&self.cache);
        runtime.spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(cache) = cache.upgrade() else { return };
                match change {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => cache.invalidate(),
                    Err(broadcast::error::RecvError::Closed) => {
                        cache.disabled.store(true, Ordering::SeqCst);
                        cache.invalidate();
                        return;
                    }
                }
            }
        });
    }

    /// Resolves `path` in `namespace`.
    pub fn resolve(&self, namespace: &str, path: &str) -> Result<Arc<Target>, ApiError> {
        self.watch();
        let cache = &self.cache;
        if cache.disabled.load(Ordering::SeqCst) {
            return resolve_uncached(&self.registry, namespace, path).map(Arc::new);
        }
        {
            let entries = cache.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = entries.get(namespace).and_then(|paths| paths.get(path)) {
                return Ok(t.clone());
            }
        }
        let generation = cache.generation.load(Ordering::SeqCst);
        let target = Arc::new(resolve_uncached(&self.registry, namespace, path)?);
        let mut entries = cache.entries.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation.load(Ordering::SeqCst) == generation {
            if cache.len.load(Ordering::SeqCst) >= CACHE_LIMIT as u64 {
                entries.clear();
                cache.len.store(0, Ordering::SeqCst);
            }
            let previous = entries.entry(namespace.to_string()).or_default().insert(path.to_string(), target.clone());
            if previous.is_none() {
                cache.len.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(target)
    }

    /// How many resolutions are cached (for tests).
    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.cache.entries.read().unwrap_or_else(|e| e.into_inner()).values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::proto::registry::{Node, Schema as SchemaMsg};
    use micro_core::schema::Schema;
    use std::time::Duration;

    fn c(service: &str, endpoint: &str) -> (String, String) {
        (service.to_string(), endpoint.to_string())
    }

    fn first(path: &str) -> (String, String) {
        let all = candidates(path);
        let f = all.first().unwrap_or_else(|| panic!("no candidate for {path}"));
        (f.service.clone(), f.endpoint())
    }

    #[test]
    fn micro_path_rules() {
        let table = [
            ("/helloworld", c("helloworld", "Helloworld.Call")),
            ("/helloworld/call", c("helloworld", "Helloworld.Call")),
            ("/foo/bar", c("foo", "Foo.Bar")),
            ("/registry/listServices", c("registry", "Registry.ListServices")),
            ("/v1/foo/bar", c("v1.foo", "Foo.Bar")),
            ("/foo/bar/baz", c("foo", "Bar.Baz")),
            ("/foo/foo/bar", c("foo", "Foo.Bar")),
            ("/foo/bar/baz/cat", c("foo.bar", "Baz.Cat")),
            ("/a/b/c/d", c("a.b", "C.D")),
            ("/v1/foo/bar/baz", c("v1.foo", "Bar.Baz")),
            ("/foo/baz-xyz", c("foo", "Foo.BazXyz")),
            ("/ping-pong", c("ping-pong", "PingPong.Call")),
            ("//foo/./bar/", c("foo", "Foo.Bar")),
            ("/foo/x/../bar", c("foo", "Foo.Bar")),
            ("/foo%2Dx/bar", c("foo-x", "FooX.Bar")),
        ];
        for (path, want) in table {
            assert_eq!(first(path), want, "{path}");
        }
        assert!(candidates("/").is_empty());
        assert!(candidates("/..").is_empty());
        assert!(candidates("/%FF").is_empty());
        // A versioned 3-segment path is also read the plain way.
        let all = candidates("/v1/foo/bar");
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].service.as_str(), all[1].endpoint()), ("v1", "Foo.Bar".to_string()));
    }

    #[test]
    fn camel_case() {
        assert_eq!(camel("baz-xyz"), "BazXyz");
        assert_eq!(camel("fooBar"), "FooBar");
        assert_eq!(camel("list_services"), "List_services");
        assert_eq!(camel("--a"), "A");
        assert_eq!(camel("élan"), "Élan");
        assert_eq!(normalize("List_Services-x"), "listservicesx");
    }

    fn registry_with(name: &str) -> Arc<MemoryRegistry> {
        let registry = Arc::new(MemoryRegistry::new());
        register(&registry, name, "n1");
        registry
    }

    fn register(registry: &MemoryRegistry, name: &str, node: &str) {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = Service {
            name: name.into(),
            endpoints: micro_core::schema::endpoints(&schema.pool, ["registry.Registry"]),
            nodes: vec![Node { id: node.into(), address: "127.0.0.1:1".into(), ..Default::default() }],
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
            ..Default::default()
        };
        registry.register("micro", service, Duration::ZERO).unwrap();
    }

    #[test]
    fn endpoints_match_ignoring_case_and_separators() {
        let registry = registry_with("registry");
        for path in [
            "/registry/listServices",
            "/registry/list-services",
            "/registry/list_services",
            "/registry/LISTSERVICES",
            "/registry/registry/list-services",
        ] {
            let t = resolve_uncached(&registry, "micro", path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!((t.service.as_str(), t.endpoint.as_str()), ("registry", "Registry.ListServices"), "{path}");
            assert_eq!(t.method.full_name(), "registry.Registry.ListServices");
        }
    }

    #[test]
    fn implied_handler_falls_back_to_a_unique_method() {
        let registry = registry_with("reg");
        let t = resolve_uncached(&registry, "micro", "/reg/watch").unwrap();
        assert_eq!(t.endpoint, "Registry.Watch");
        // An explicit handler must match.
        let e = resolve_uncached(&registry, "micro", "/reg/other/watch").unwrap_err();
        assert_eq!(e.code, 404);
    }

    #[test]
    fn unknown_service_endpoint_and_namespace_are_404() {
        let registry = registry_with("registry");
        let e = resolve_uncached(&registry, "micro", "/nope").unwrap_err();
        assert_eq!((e.code, e.id.as_str()), (404, "nope"));
        assert!(e.detail.contains("service \"nope\" not found"), "{}", e.detail);
        let e = resolve_uncached(&registry, "micro", "/registry/nope").unwrap_err();
        assert_eq!((e.code, e.id.as_str()), (404, "registry"));
        assert!(e.detail.contains("Registry.Nope"), "{}", e.detail);
        // Core services (registered in micro) serve every namespace; other services do not.
        assert!(resolve_uncached(&registry, "other", "/registry/list-services").is_ok());
        let users = registry_with("users");
        let e = resolve_uncached(&users, "other", "/users/list-services").unwrap_err();
        assert_eq!(e.code, 404);
        let e = resolve_uncached(&registry, "micro", "/").unwrap_err();
        assert_eq!(e.code, 404);
    }

    #[test]
    fn versioned_path_falls_back_to_plain_reading() {
        let registry = registry_with("v1");
        // `/v1/registry/watch` reads first as service `v1.registry`, which does not exist, then as `v1`.
        let t = resolve_uncached(&registry, "micro", "/v1/registry/watch").unwrap();
        assert_eq!((t.service.as_str(), t.endpoint.as_str()), ("v1", "Registry.Watch"));
    }

    #[test]
    fn service_without_schema_is_reported() {
        let registry = MemoryRegistry::new();
        let service = Service {
            name: "bare".into(),
            endpoints: vec![micro_core::proto::registry::Endpoint {
                name: "Bare.Call".into(),
                method: "/bare.Bare/Call".into(),
                ..Default::default()
            }],
            nodes: vec![Node { id: "b1".into(), address: "127.0.0.1:1".into(), ..Default::default() }],
            ..Default::default()
        };
        registry.register("micro", service, Duration::ZERO).unwrap();
        let e = resolve_uncached(&registry, "micro", "/bare").unwrap_err();
        assert_eq!(e.code, 501);
        assert!(e.detail.contains("no schema"), "{}", e.detail);
    }

    #[tokio::test]
    async fn cache_is_cleared_by_registry_changes() {
        let registry = registry_with("registry");
        let resolver = Resolver::new(registry.clone());
        resolver.resolve("micro", "/registry/watch").unwrap();
        resolver.resolve("micro", "/registry/watch").unwrap();
        assert_eq!(resolver.cached(), 1);
        assert!(resolver.resolve("micro", "/missing").is_err());
        assert_eq!(resolver.cached(), 1, "failures are not cached");
        register(&registry, "registry", "n2");
        for _ in 0..100 {
            if resolver.cached() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(resolver.cached(), 0);
    }

    #[test]
    fn without_a_runtime_the_cache_is_bypassed() {
        let resolver = Resolver::new(registry_with("registry"));
        resolver.resolve("micro", "/registry/watch").unwrap();
        resolver.resolve("micro", "/registry/watch").unwrap();
        assert_eq!(resolver.cached(), 0);
    }
}
