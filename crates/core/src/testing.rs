//! Helpers for the property suites of every micro crate (`docs/fuzzing.md`): the case count, and protobuf-shaped
//! bytes. Built for tests only (the `testing` feature).

use proptest::collection::vec;
use proptest::prelude::*;

/// The configuration of a property suite: `default_cases` cases, bounded so that `cargo test` stays quick, or
/// `PROPTEST_CASES` cases when it is set (the long run: `PROPTEST_CASES=100000 cargo test --lib proptests`).
/// Proptest's other environment variables (`PROPTEST_MAX_SHRINK_ITERS`, …) apply as usual.
pub fn config(default_cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let from_env = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse::<u32>().ok());
    ProptestConfig { cases: from_env.unwrap_or(default_cases), ..base }
}

/// One field on the wire: a valid tag for field numbers 1 to 20 (those the core messages use) with any wire
/// type, and a payload that may or may not fit it.
pub fn field(inner: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (1u64..=20, 0u64..=7, any::<u64>(), inner).prop_map(|(number, wire_type, varint, payload)| {
        let mut out = Vec::new();
        prost::encoding::encode_varint(number << 3 | wire_type, &mut out);
        match wire_type {
            0 => prost::encoding::encode_varint(varint, &mut out),
            1 => out.extend_from_slice(&varint.to_le_bytes()),
            2 => {
                prost::encoding::encode_varint(payload.len() as u64, &mut out);
                out.extend_from_slice(&payload);
            }
            5 => out.extend_from_slice(&varint.to_le_bytes()[..4]),
            _ => out.extend_from_slice(&payload), // groups and invalid wire types
        }
        out
    })
}

/// Protobuf-shaped bytes: fields, nested up to three levels deep in length-delimited ones (sub-messages,
/// strings, maps), sometimes cut short, mixed with plain noise.
pub fn protobuf() -> impl Strategy<Value = Vec<u8>> {
    let leaf = vec(any::<u8>(), 0..24);
    let nested = leaf.prop_recursive(3, 64, 6, |inner| vec(field(inner), 0..6).prop_map(|fields| fields.concat()));
    let message = vec(field(nested), 0..10).prop_map(|fields| fields.concat()).boxed();
    prop_oneof![
        3 => message.clone(),
        1 => (message, any::<prop::sample::Index>()).prop_map(|(mut bytes, cut)| {
            let at = cut.index(bytes.len() + 1);
            bytes.truncate(at);
            bytes
        }),
        1 => vec(any::<u8>(), 0..256),
    ]
}

/// The URL of a live backend for the tests that need one (`MICRO_TEST_POSTGRES_URL`, `MICRO_TEST_NATS_URL`,
/// `MICRO_TEST_ETCD_URL`; `.ci/run` starts the servers with `.ci/<name>` and sets them). When the variable is
/// unset, the test is skipped with a note on stderr, unless `CI` is set: in CI a missing backend fails the test.
pub fn backend_url(var: &str, script: &str) -> Option<String> {
    if let Some(url) = std::env::var(var).ok().filter(|u| !u.trim().is_empty()) {
        return Some(url);
    }
    let hint = format!("{var} is not set: start a server with `.ci/{script} start DIR` and set {var} to its URL");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{hint} (CI runs every backend test)");
    }
    eprintln!("skipped: {hint}");
    None
}
