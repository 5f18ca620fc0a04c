//! The registry shared through etcd, so that servers on several machines see each other's services.
//!
//! Built with the `etcd` cargo feature and chosen with `micro server --registry etcd://host:2379` (or
//! `MICRO_REGISTRY`). Every server keeps its in-memory registry (the proxy's routing stays a memory lookup) and
//! [`replicate`] keeps it in step with etcd:
//!
//! - **Out:** whenever the local registry changes (and every [`RESYNC`] besides), every node registered with this
//!   server (not the core services, which every server has, and not nodes mirrored from others) that is new or
//!   different from what was last written is written to `micro/registry/<server>/<domain>/<name>/<version>/<node>`
//!   as the protobuf `Service` with that one node and its full schema. The keys hang on one lease of this server,
//!   kept alive while it runs: if the server dies, its nodes leave etcd within [`LEASE_TTL`]. A node that
//!   deregisters or expires here is deleted from etcd at once.
//! - **In:** the other servers' keys are read, then watched; each becomes a node in the local registry (with no
//!   TTL of its own, and its owner in the node's `registry.origin` metadata) until its key is deleted.
//!
//! If etcd cannot be reached, the local registry goes on working, and the replication reconnects every
//! [`RETRY`]; after a reconnect the mirrored nodes are read again in full, so none is left stale.
//!
//! etcd is spoken to through [`client`], a small gRPC client generated from a trimmed copy of etcd's protos (no
//! `protoc` needed to build it).

pub mod client;

use super::{MemoryRegistry, RegistryBackend, WILDCARD_DOMAIN};
use client::{Client, ConnectOptions, Error, Event};
use micro_core::proto::registry::{Node, Schema as SchemaMsg, Service};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The prefix of every registry key in etcd.
const PREFIX: &str = "micro/registry/";
/// The metadata key of a mirrored node that names the server it is registered with.
pub const ORIGIN: &str = "registry.origin";
/// How long this server's keys outlive it in etcd.
pub const LEASE_TTL: i64 = 10;
/// How often this server's nodes are compared with what was written out even when no change was announced (the
/// announcements are a bounded channel, which may lag).
const RESYNC: Duration = Duration::from_secs(10);
/// How long to wait before reconnecting to etcd.
const RETRY: Duration = Duration::from_secs(1);

/// A key part with `/` and `%` escaped, so that every part is one path segment.
fn escape(part: &str) -> String {
    part.replace('%', "%25").replace('/', "%2F")
}

fn unescape(part: &str) -> String {
    part.replace("%2F", "/").replace("%25", "%")
}

/// The key of `node` of `service` (of `domain`) registered with `server`.
fn key(server: &str, domain: &str, service: &Service, node: &Node) -> String {
    let parts = [server, domain, &service.name, &service.version, &node.id];
    format!("{PREFIX}{}", parts.map(escape).join("/"))
}

/// The parts of a key: server, domain, name, version and node id.
fn parse_key(key: &str) -> Option<[String; 5]> {
    let parts: Vec<String> = key.strip_prefix(PREFIX)?.split('/').map(unescape).collect();
    parts.try_into().ok()
}

/// The connection URL of etcd from `etcd://host:port` (or `http://`), as [`Client::connect`] takes it.
pub fn endpoint(url: &str) -> String {
    match url.strip_prefix("etcd://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    }
}

/// Connects once, to say at start whether etcd can be reached at all.
pub async fn check(url: &str) -> Result<(), String> {
    let endpoint = endpoint(url);
    let connect = Client::connect(&endpoint, connect_options());
    let mut client = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("cannot connect to etcd at {url}: {e}")),
        Err(_) => return Err(format!("cannot connect to etcd at {url}: no answer within 5 s")),
    };
    match tokio::time::timeout(Duration::from_secs(5), client.status()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to etcd at {url}: {e}")),
        Err(_) => Err(format!("cannot connect to etcd at {url}: no answer within 5 s")),
    }
}

/// The timeouts of every connection: 5 s to connect, 10 s for each call.
fn connect_options() -> ConnectOptions {
    ConnectOptions { connect_timeout: Duration::from_secs(5), timeout: Duration::from_secs(10) }
}

/// The nodes this server writes out: every node of the local registry but the core services and mirrored ones,
/// by key, encoded.
fn local_nodes(registry: &MemoryRegistry, server: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for service in registry.list(WILDCARD_DOMAIN) {
        let domain = service.metadata.get("domain").cloned().unwrap_or_default();
        if domain == micro_core::DEFAULT_NAMESPACE && crate::CORE_NAMES.contains(&service.name.as_str()) {
            continue;
        }
        // The schema travels whole: the other servers may not have it.
        let schema = service
            .schema
            .as_ref()
            .and_then(|s| registry.schema(&s.hash))
            .map(|s| SchemaMsg { hash: s.hash.clone(), descriptor_set: s.bytes.clone() });
        for node in &service.nodes {
            if node.metadata.contains_key(ORIGIN) {
                continue;
            }
            let one = Service { nodes: vec![node.clone()], schema: schema.clone(), ..service.clone() };
            out.insert(key(server, &domain, &service, node), one.encode_to_vec());
        }
    }
    out
}

/// Whether every node of `service` is mirrored from another server.
fn is_mirrored(service: &Service) -> bool {
    !service.nodes.is_empty() && service.nodes.iter().all(|n| n.metadata.contains_key(ORIGIN))
}

/// Writes this server's nodes that are new or changed since `written`, and deletes the ones that are gone.
async fn write_out(
    client: &mut Client,
    registry: &MemoryRegistry,
    server: &str,
    lease: i64,
    written: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), Error> {
    let local = local_nodes(registry, server);
    for (key, value) in &local {
        if written.get(key) != Some(value) {
            client.put(key.as_str(), value.clone(), Some(lease)).await?;
        }
    }
    for key in written.keys().filter(|k| !local.contains_key(*k)) {
        client.delete(key.as_str()).await?;
    }
    *written = local;
    Ok(())
}

/// Applies another server's key to the local registry: the node joins, marked with its origin.
fn mirror(registry: &MemoryRegistry, key: &str, value: &[u8]) {
    let Some([origin, domain, ..]) = parse_key(key) else { return };
    let mut service = match Service::decode(value) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%key, error = %e, "ignored a registry entry in etcd that does not decode");
            return;
        }
    };
    for node in &mut service.nodes {
        node.metadata.insert(ORIGIN.into(), origin.clone());
    }
    if let Err(e) = registry.register(&domain, service, Duration::ZERO) {
        tracing::warn!(%key, error = %e, "ignored a registry entry in etcd that does not register");
    }
}

/// Removes a mirrored node whose key is gone.
fn unmirror(registry: &MemoryRegistry, key: &str) {
    let Some([_, domain, name, version, node]) = parse_key(key) else { return };
    let service = Service { name, version, nodes: vec![Node { id: node, ..Default::default() }], ..Default::default() };
    let _ = registry.deregister(&domain, &service);
}

/// Keeps `registry` in step with etcd at `url` as server `server`, until `cancel`; reconnects after failures.
pub async fn replicate(registry: Arc<MemoryRegistry>, url: String, server: String, cancel: CancellationToken) {
    // The mirrored keys, so that a reconnect can drop the ones deleted meanwhile.
    let mut mirrored: HashMap<String, ()> = HashMap::new();
    loop {
        let session = session(&registry, &url, &server, &cancel, &mut mirrored);
        match session.await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, url = %url, "registry replication through etcd failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One connection's worth of replication; `Ok` when cancelled.
async fn session(
    registry: &MemoryRegistry,
    url: &str,
    server: &str,
    cancel: &CancellationToken,
    mirrored: &mut HashMap<String, ()>,
) -> Result<(), Error> {
    let mut client = Client::connect(&endpoint(url), connect_options()).await?;
    let lease = client.lease_grant(LEASE_TTL).await?;
    let (keeper, mut keepalives) = client.lease_keep_alive(lease).await?;
    let own = format!("{PREFIX}{}/", escape(server));

    // Everything the others have now, then every change after it.
    let (all, revision) = client.get_prefix(PREFIX).await?;
    let mut now: HashMap<String, ()> = HashMap::new();
    for kv in &all {
        let Ok(key) = std::str::from_utf8(&kv.key) else { continue };
        if key.starts_with(&own) {
            continue;
        }
        mirror(registry, key, &kv.value);
        now.insert(key.to_string(), ());
    }
    for gone in mirrored.keys().filter(|k| !now.contains_key(*k)) {
        unmirror(registry, gone);
    }
    *mirrored = now;
    let mut events = client.watch_prefix(PREFIX, revision + 1).await?;

    let mut changes = registry.watch();
    let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keepalive = tokio::time::interval(Duration::from_secs((LEASE_TTL / 3).max(1) as u64));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Leave at once rather than after the lease's TTL.
                let _ = client.lease_revoke(lease).await;
                return Ok(());
            }
            _ = tick.tick() => write_out(&mut client, registry, server, lease, &mut written).await?,
            change = changes.recv() => {
                // A burst of changes is one comparison; a mirrored node's change is not this server's to write.
                let mut own_change = match change {
                    Ok(c) => !is_mirrored(&c.service),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                };
                while let Ok(c) = changes.try_recv() {
                    own_change |= !is_mirrored(&c.service);
                }
                if own_change {
                    write_out(&mut client, registry, server, lease, &mut written).await?;
                }
            }
            _ = keepalive.tick() => keeper.keep_alive().await?,
            answer = keepalives.message() => match answer? {
                None => return Err(Error::StreamEnded("lease keep-alive")),
                Some(ttl) if ttl <= 0 => return Err(Error::LeaseExpired(lease)),
                Some(_) => {}
            },
            batch = events.message() => {
                let Some(batch) = batch? else { return Err(Error::StreamEnded("watch")) };
                for event in batch {
                    let (Event::Put(kv) | Event::Delete(kv)) = &event;
                    let Ok(key) = std::str::from_utf8(&kv.key) else { continue };
                    if key.starts_with(&own) {
                        continue;
                    }
                    match event {
                        Event::Put(_) => {
                            mirror(registry, key, &kv.value);
                            mirrored.insert(key.to_string(), ());
                        }
                        Event::Delete(_) => {
                            unmirror(registry, key);
                            mirrored.remove(key);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The replication runs against a real etcd: `MICRO_TEST_ETCD_URL` must name one (`.ci/run` starts one).
    //! With the `etcd` feature on and the variable unset, it fails.

    use super::*;
    use micro_core::proto::registry::Endpoint;
    use std::time::Instant;

    #[test]
    fn keys_round_trip_with_slashes() {
        let service = Service { name: "a/b".into(), version: "v%1".into(), ..Default::default() };
        let node = Node { id: "n/1".into(), ..Default::default() };
        let k = key("s1", "team", &service, &node);
        assert_eq!(k, "micro/registry/s1/team/a%2Fb/v%251/n%2F1");
        assert_eq!(parse_key(&k).unwrap(), ["s1", "team", "a/b", "v%1", "n/1"].map(String::from));
        assert_eq!(parse_key("micro/registry/x/y"), None);
        assert_eq!(endpoint("etcd://127.0.0.1:2379"), "http://127.0.0.1:2379");
    }

    fn service(name: &str, node: &str, address: &str) -> Service {
        Service {
            name: name.into(),
            version: "latest".into(),
            endpoints: vec![Endpoint { name: "X.Y".into(), ..Default::default() }],
            nodes: vec![Node { id: node.into(), address: address.into(), ..Default::default() }],
            ..Default::default()
        }
    }

    async fn wait(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addresses(registry: &MemoryRegistry, name: &str) -> Vec<String> {
        let mut out: Vec<String> =
            registry.get("micro", name).into_iter().flat_map(|s| s.nodes).map(|n| n.address).collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn two_registries_share_nodes_and_lose_them_when_one_leaves() {
        let Some(url) = micro_core::testing::backend_url("MICRO_TEST_ETCD_URL", "etcd") else { return };
        check(&url).await.unwrap();
        let run = format!("svc-{}-{}", std::process::id(), crate::store::backend::now_ms());
        let (a, b) = (Arc::new(MemoryRegistry::new()), Arc::new(MemoryRegistry::new()));
        let (cancel_a, cancel_b) = (CancellationToken::new(), CancellationToken::new());
        let ta = tokio::spawn(replicate(a.clone(), url.clone(), format!("{run}-a"), cancel_a.clone()));
        let tb = tokio::spawn(replicate(b.clone(), url.clone(), format!("{run}-b"), cancel_b.clone()));

        a.register("micro", service(&run, "n1", "10.0.0.1:1"), Duration::from_secs(60)).unwrap();
        b.register("micro", service(&run, "n2", "10.0.0.2:2"), Duration::from_secs(60)).unwrap();
        let both = ["10.0.0.1:1", "10.0.0.2:2"].map(String::from).to_vec();
        wait("each registry has both nodes", || addresses(&a, &run) == both && addresses(&b, &run) == both).await;
        // A mirrored node names its origin and is not written back out.
        let mirrored = b.get("micro", &run).into_iter().flat_map(|s| s.nodes).find(|n| n.id == "n1").unwrap();
        assert_eq!(mirrored.metadata.get(ORIGIN), Some(&format!("{run}-a")));
        // A deregistration travels too.
        a.deregister("micro", &service(&run, "n1", "")).unwrap();
        wait("the node left b", || addresses(&b, &run) == ["10.0.0.2:2"]).await;
        // When b stops, its node leaves a at once (its lease is revoked).
        cancel_b.cancel();
        wait("b's node left a", || addresses(&a, &run).is_empty()).await;
        cancel_a.cancel();
        let _ = tokio::join!(ta, tb);
    }
}
