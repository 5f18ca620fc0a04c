//! Property tests of the registry's request validation: arbitrary services, domains and TTLs registered with
//! [`MemoryRegistry`] never panic, a registration is either applied (every node can be read back) or refused with
//! the registry unchanged, and the TTL and size checks never panic. Only the registry's public API is used.
//! `docs/fuzzing.md` describes the suites and their long run.

use super::{
    MemoryRegistry, RegistryBackend, RegistryError, WILDCARD_DOMAIN, check_sizes, check_ttl, domain_or_default,
};
use micro_core::proto::registry::{Endpoint, Node, Options, Schema as SchemaMsg, Service};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use std::collections::HashMap;
use std::time::Duration;

/// Short text: the values that matter to validation (empty, blank, the wildcard, plain names) and arbitrary text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => select(vec!["", " ", "\t", "*", "micro", "team", "helloworld", "n1", "n2", "latest", "v1", "127.0.0.1:1"])
            .prop_map(str::to_string),
        1 => "[a-z0-9.:-]{1,10}",
        1 => any::<String>(),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    (text(), text(), btree_map(text(), text(), 0..3)).prop_map(|(id, address, metadata)| Node {
        id,
        address,
        metadata: metadata.into_iter().collect::<HashMap<_, _>>(),
        ..Default::default()
    })
}

/// A schema: none, a hash alone (known or not), the core descriptors, or bytes that are not descriptors.
fn schema() -> impl Strategy<Value = Option<SchemaMsg>> {
    let core = micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema");
    let (hash, bytes) = (core.hash.clone(), core.bytes.clone());
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(SchemaMsg { hash: hash.clone(), descriptor_set: bytes })),
        1 => prop_oneof![Just(hash), text()]
            .prop_map(|hash| Some(SchemaMsg { hash, descriptor_set: Default::default() })),
        1 => vec(any::<u8>(), 1..64).prop_map(|b| Some(SchemaMsg { hash: String::new(), descriptor_set: b.into() })),
    ]
}

fn service() -> impl Strategy<Value = Service> {
    let endpoint = (text(), prop_oneof![Just("/registry.Registry/GetService".to_string()), text()])
        .prop_map(|(name, method)| Endpoint { name, method, ..Default::default() });
    (
        text(),
        text(),
        btree_map(text(), text(), 0..3),
        vec(endpoint, 0..3),
        vec(node(), 0..4),
        schema(),
        any::<i64>(),
        text(),
    )
        .prop_map(|(name, version, metadata, endpoints, nodes, schema, ttl, domain)| Service {
            name,
            version,
            metadata: metadata.into_iter().collect(),
            endpoints,
            nodes,
            options: Some(Options { ttl, domain }),
            schema,
        })
}

/// A registration that validation accepts: a plain name, at least one node, each with an id and an address, and
/// no schema or a whole one.
fn valid_service() -> impl Strategy<Value = Service> {
    let core = micro_core::schema::Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema");
    let whole = SchemaMsg { hash: core.hash.clone(), descriptor_set: core.bytes.clone() };
    let node = ("[a-z0-9-]{1,8}", 1u16..).prop_map(|(id, port)| Node {
        id,
        address: format!("127.0.0.1:{port}"),
        ..Default::default()
    });
    (service(), "[a-z][a-z0-9-]{0,8}", vec(node, 1..4), prop_oneof![Just(None), Just(Some(whole))])
        .prop_map(|(service, name, nodes, schema)| Service { name, nodes, schema, ..service })
}

/// TTLs: zero (no expiry), ordinary ones, the edges of what an `Instant` can hold, and the largest.
fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (0u64..100_000).prop_map(Duration::from_secs),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
        (u64::MAX - 10..=u64::MAX).prop_map(Duration::from_secs),
        Just(Duration::MAX),
    ]
}

/// Domains: the default (empty), ordinary ones, the wildcard, and arbitrary text.
fn domain() -> impl Strategy<Value = String> {
    prop_oneof![select(vec!["", "micro", "team", "*"]).prop_map(str::to_string), text()]
}

/// Everything the registry holds, in every domain.
fn snapshot(registry: &MemoryRegistry) -> Vec<Service> {
    registry.list(WILDCARD_DOMAIN)
}

proptest! {
    #![proptest_config(micro_core::testing::config(256))]

    /// Any sequence of registrations: each one either holds (every node it carried is there to read, in its
    /// domain and version) or is refused, with the reason, and leaves the registry as it was. What validation
    /// requires (a name, node ids and addresses, a real domain) is refused when missing.
    #[test]
    fn registrations_apply_or_leave_the_registry_unchanged(
        ops in vec((domain(), service(), ttl()), 1..5),
    ) {
        let registry = MemoryRegistry::new();
        for (domain, service, ttl) in ops {
            let before = snapshot(&registry);
            let result = registry.register(&domain, service.clone(), ttl);
            let domain = domain_or_default(&domain);
            let invalid = service.name.trim().is_empty()
                || service.nodes.iter().any(|n| n.id.is_empty() || n.address.is_empty())
                || domain == WILDCARD_DOMAIN;
            match result {
                Ok(()) => {
                    prop_assert!(!invalid, "{service:?} in {domain:?} was accepted");
                    let version = if service.version.is_empty() { "latest" } else { service.version.as_str() };
                    let held = registry.get(domain, &service.name);
                    let record = held.iter().find(|s| s.version == version);
                    prop_assert!(record.is_some(), "{:?} {version:?} is not in {domain:?}", service.name);
                    let record = record.expect("checked");
                    for node in &service.nodes {
                        prop_assert!(record.nodes.iter().any(|n| n.id == node.id), "node {:?} is missing", node.id);
                    }
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    if invalid {
                        prop_assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");
                    }
                    prop_assert_eq!(snapshot(&registry), before, "a refused registration changed the registry: {}", e);
                }
            }
        }
    }

    /// A valid registration (a name, node ids and addresses, no schema or a whole one) is accepted, and
    /// deregistering the same nodes then leaves none of them behind.
    #[test]
    fn valid_registrations_hold_until_deregistered(service in valid_service(), ttl in ttl()) {
        let registry = MemoryRegistry::new();
        let registered = registry.register("team", service.clone(), ttl);
        prop_assert!(registered.is_ok(), "{:?} was refused: {:?}", service, registered);
        registry.deregister("team", &service).map_err(|e| TestCaseError::fail(format!("deregister: {e}")))?;
        let left: Vec<String> =
            registry.get("team", &service.name).into_iter().flat_map(|s| s.nodes).map(|n| n.id).collect();
        for node in &service.nodes {
            prop_assert!(!left.contains(&node.id), "node {:?} is still registered", node.id);
        }
    }

    /// The TTL of a request (in seconds, any `i64`) is accepted only within 1 s and the cap, as itself.
    #[test]
    fn requested_ttls_are_checked(
        seconds in prop_oneof![any::<i64>(), -2i64..200_000, Just(i64::MAX), Just(i64::MIN)],
    ) {
        match check_ttl(seconds) {
            Ok(ttl) => {
                prop_assert!(seconds >= 1, "{seconds}");
                prop_assert_eq!(ttl, Duration::from_secs(seconds as u64));
                prop_assert!(ttl <= super::limits::MAX_TTL);
            }
            Err(e) => {
                prop_assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");
                prop_assert!(seconds < 1 || Duration::from_secs(seconds as u64) > super::limits::MAX_TTL, "{seconds}");
            }
        }
    }

    /// The size checks take any record without a panic, and refuse with a limit error.
    #[test]
    fn size_checks_never_panic(service in service(), pad in 0usize..4096) {
        let mut service = service;
        if let Some(node) = service.nodes.first_mut() {
            node.address.push_str(&"x".repeat(pad));
        }
        if let Err(e) = check_sizes(&service) {
            prop_assert!(matches!(e, RegistryError::Limit(_)), "{e:?}");
        }
    }
}
