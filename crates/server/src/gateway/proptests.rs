//! Property tests of the gateway's path and JSON handling ([`resolve`](super::resolve) and
//! [`request`](super::request)): arbitrary paths, query strings and bodies never panic, and every refusal is a 4xx
//! naming the caller's mistake, never a 5xx (but the 501 of a service that registered no schema). `docs/fuzzing.md`
//! describes the suites and their long run.

use super::request::{self, Input};
use super::resolve::{self, Candidate};
use crate::registry::{MemoryRegistry, RegistryBackend};
use micro_core::proto::registry::{Node, Schema as SchemaMsg, Service};
use micro_core::schema::Schema;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, MapKey, MessageDescriptor, ReflectMessage, Value as PValue};
use serde_json::Value;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// The core schema, decoded once.
static CORE: LazyLock<Schema> =
    LazyLock::new(|| Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema"));

/// Every message of the core schema, as request types the gateway could be asked to build.
static MESSAGES: LazyLock<Vec<MessageDescriptor>> = LazyLock::new(|| {
    let mut all: Vec<_> = CORE.pool.all_messages().filter(|m| !m.is_map_entry()).collect();
    all.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    all
});

/// The field names of the core schema, in proto and JSON spelling: the keys a client is most likely to send.
static FIELD_NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut names: Vec<String> = MESSAGES
        .iter()
        .flat_map(|m| m.fields().flat_map(|f| [f.name().to_string(), f.json_name().to_string()]).collect::<Vec<_>>())
        .collect();
    names.sort();
    names.dedup();
    names
});

/// The gRPC services each core service name serves.
const CORE_GRPC: &[(&str, &[&str])] = &[
    ("auth", &["auth.Auth", "auth.Accounts", "auth.Rules"]),
    ("broker", &["broker.Broker"]),
    ("config", &["config.Config"]),
    ("events", &["events.Stream", "events.Store"]),
    ("registry", &["registry.Registry"]),
    ("runtime", &["runtime.Runtime", "runtime.Source"]),
    ("store", &["store.Store"]),
];

/// A registry holding the core services (in `micro`) and two user services in namespace `team`: `v1.greeter`
/// (the registry's endpoints, for versioned paths) and `bare` (no schema).
fn registry() -> Arc<MemoryRegistry> {
    let registry = Arc::new(MemoryRegistry::new());
    let schema = Some(SchemaMsg { hash: CORE.hash.clone(), descriptor_set: CORE.bytes.clone() });
    let record = |name: &str, grpc: &[&str], schema: Option<SchemaMsg>| Service {
        name: name.into(),
        version: "latest".into(),
        endpoints: micro_core::schema::endpoints(&CORE.pool, grpc.iter().copied()),
        nodes: vec![Node { id: format!("{name}-1"), address: "127.0.0.1:1".into(), ..Default::default() }],
        schema,
        ..Default::default()
    };
    let ttl = Duration::from_secs(3600);
    for (name, grpc) in CORE_GRPC {
        registry.register("micro", record(name, grpc, schema.clone()), ttl).expect("register a core service");
    }
    registry.register("team", record("v1.greeter", &["registry.Registry"], schema), ttl).expect("register");
    registry.register("team", record("bare", &["store.Store"], None), ttl).expect("register");
    registry
}

static REGISTRY: LazyLock<Arc<MemoryRegistry>> = LazyLock::new(registry);

/// Path segments: the names the registry holds, endpoint words in every spelling, dot segments, percent escapes
/// (valid, invalid and of non-UTF-8 bytes), and arbitrary text.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "registry", "store", "auth", "events", "runtime", "config", "broker", "bare", "v1", "v2", "greeter",
            "v1.greeter", "list-services", "listServices", "list_services", "LISTSERVICES", "get-service", "read",
            "watch", "call", "token", "inspect", "store", "stream", "publish", "rules", "accounts", "", ".", "..",
            "%2e%2e", "%2E", "%2F", "%FF", "%", "%4", "%zz", "+", "v", "v01", "-", "--a", "_",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z0-9._~-]{0,12}",
        1 => any::<String>(),
        1 => vec(any::<u8>(), 0..6).prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(segment(), 0..7).prop_map(|segs| format!("/{}", segs.join("/"))),
        1 => any::<String>(),
    ]
}

/// JSON built from the schema's field names, with values of every JSON type, and text that looks like the values
/// protobuf's JSON mapping reads from strings (numbers, enum names, base64, timestamps and durations).
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![3 => select(FIELD_NAMES.clone()), 1 => any::<String>()];
    let text = prop_oneof![
        any::<String>(),
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][-+]?[0-9]{1,4})?",
        "[A-Z_]{1,12}",
        "[A-Za-z0-9+/=_-]{0,16}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "-?[0-9]{1,12}(\\.[0-9]{1,9})?s",
        select(vec!["NaN", "Infinity", "-Infinity", "true", "null", "", "0x10", "1e400", "18446744073709551616"])
            .prop_map(str::to_string),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request bodies: JSON objects of the schema's fields mostly, other JSON, JSON text cut short, NDJSON and noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = json().prop_map(|v| match v {
        Value::Object(_) => v,
        other => serde_json::json!({ "service": other }),
    });
    prop_oneof![
        4 => object.prop_map(|v| v.to_string().into_bytes()),
        1 => json().prop_map(|v| v.to_string().into_bytes()),
        1 => (json(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let mut text = v.to_string().into_bytes();
            text.truncate(cut.index(text.len() + 1));
            text
        }),
        1 => vec(json(), 0..4)
            .prop_map(|vs| vs.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes()),
        1 => vec(any::<u8>(), 0..64),
    ]
}

/// Query strings (and form bodies): keys naming fields, nested as `a.b`, `a[b]` and `a[]`, with escapes.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        3 => select(FIELD_NAMES.clone()),
        1 => (select(FIELD_NAMES.clone()), select(FIELD_NAMES.clone()), select(vec![".", "[", "[]"])).prop_map(
            |(a, b, sep)| match sep {
                "[" => format!("{a}[{b}]"),
                "[]" => format!("{a}[]"),
                _ => format!("{a}.{b}"),
            }
        ),
        1 => "[a-z\\[\\]._%0-9]{0,12}",
    ];
    let value = prop_oneof!["[a-zA-Z0-9%+=._:-]{0,12}", any::<String>(), json().prop_map(|v| v.to_string())];
    let pair = (key, value).prop_map(|(k, v)| format!("{k}={}", v.replace('&', "%26")));
    prop_oneof![4 => vec(pair, 0..5).prop_map(|pairs| pairs.join("&")), 1 => any::<String>()]
}

fn message_type() -> impl Strategy<Value = MessageDescriptor> {
    (0..MESSAGES.len()).prop_map(|i| MESSAGES[i].clone())
}

/// The JSON of a message as the gateway answers it.
fn json_of(message: &DynamicMessage) -> Value {
    serde_json::from_slice(&super::json_bytes(message)).expect("the gateway writes JSON")
}

proptest! {
    #![proptest_config(micro_core::testing::config(256))]

    /// Path parsing: the clean segments of any path are clean (no empty or dot segments), parsing them again
    /// (escaped) gives them back, and the readings follow Micro's rules.
    #[test]
    fn any_path_has_clean_segments_and_readings(path in path()) {
        let candidates = resolve::candidates(&path);
        let Some(segments) = resolve::segments(&path) else {
            prop_assert!(candidates.is_empty(), "a path that does not decode has no readings");
            return Ok(());
        };
        prop_assert!(segments.iter().all(|s| !s.is_empty() && s != "." && s != ".."), "{segments:?}");
        let escaped: Vec<String> = segments.iter().map(|s| s.replace('%', "%25").replace('/', "%2F")).collect();
        prop_assert_eq!(resolve::segments(&format!("/{}", escaped.join("/"))), Some(segments.clone()));
        prop_assert_eq!(candidates.is_empty(), segments.is_empty());
        for Candidate { service, .. } in &candidates {
            prop_assert!(!service.is_empty());
        }
        if let Some(Candidate { service, handler, method, implied_handler }) = candidates.last() {
            let n = segments.len();
            let want_method = if n == 1 { "Call".to_string() } else { resolve::camel(&segments[n - 1]) };
            prop_assert_eq!(method, &want_method);
            prop_assert_eq!(*implied_handler, n <= 2);
            let handler_at = n.saturating_sub(2);
            prop_assert_eq!(handler, &resolve::camel(&segments[handler_at]));
            let service_end = if n <= 2 { 1 } else { n - 2 };
            prop_assert_eq!(service, &segments[..service_end].join("."));
        }
    }

    /// Resolution: any path in any namespace resolves to a method of the schema, or is refused with a 4xx (or a 501
    /// for the service that registered no schema).
    #[test]
    fn any_path_resolves_or_is_a_4xx(
        path in path(),
        namespace in prop_oneof![select(vec!["micro", "team", "other"]).prop_map(str::to_string), any::<String>()],
    ) {
        match resolve::resolve_uncached(&REGISTRY, &namespace, &path) {
            Ok(target) => {
                prop_assert!(!target.service.is_empty());
                let found = micro_core::schema::find_method(&CORE.pool, &micro_core::schema::method_path(&target.method));
                prop_assert!(found.is_some(), "{} is not a core method", target.method.full_name());
                prop_assert!(target.path.is_some(), "no gRPC path for {}", target.endpoint);
            }
            // 501 for a service that registered no schema: the gateway cannot translate JSON for it.
            Err(e) if e.code == 501 => prop_assert!(e.detail.contains("registered no schema"), "{e}"),
            Err(e) => {
                prop_assert!((400..500).contains(&e.code), "{path:?} in {namespace:?}: {e}");
                prop_assert!(!e.detail.is_empty());
            }
        }
    }

    /// JSON to message: any body for any request type becomes a message or a 400.
    #[test]
    fn any_body_becomes_a_message_or_a_400(message in message_type(), body in body(), query in query()) {
        let input = Input { query: &query, body: &body, form: false };
        match request::message(&message, input, "svc") {
            Ok(m) => prop_assert_eq!(m.descriptor(), message.clone()),
            Err(e) => prop_assert!(e.code == 400 && e.id == "svc" && !e.detail.is_empty(), "{e}"),
        }
        match request::messages(&message, input, "svc") {
            Ok(ms) => prop_assert!(ms.iter().all(|m| m.descriptor() == message)),
            Err(e) => prop_assert!(e.code == 400 && !e.detail.is_empty(), "{e}"),
        }
    }

    /// Forms: any form body and query become a message or a 400.
    #[test]
    fn any_form_becomes_a_message_or_a_400(message in message_type(), form in query(), query in query()) {
        let input = Input { query: &query, body: form.as_bytes(), form: true };
        if let Err(e) = request::message(&message, input, "svc") {
            prop_assert!(e.code == 400 && e.detail.starts_with("in the query or form"), "{e}");
        }
    }

    /// The gateway reads back what it writes: the JSON of any message, with fields of every kind set to any
    /// value (unknown enum numbers included), converts back to the same message.
    #[test]
    fn the_json_the_gateway_writes_reads_back(message in message_type(), seed in any::<u64>()) {
        let written = filled(&message, &mut SplitMix(seed), 3);
        let text = super::json_bytes(&written);
        let read = request::from_json_bytes(&message, &text, "svc");
        prop_assert!(read.is_ok(), "{} does not read back: {:?}", String::from_utf8_lossy(&text), read.err());
        let read = read.expect("checked");
        prop_assert_eq!(json_of(&read), json_of(&written));
        // The same fields with the same values (map entries encode in no fixed order, so compare lengths).
        prop_assert_eq!(read.encoded_len(), written.encoded_len());
    }

    /// Protobuf-shaped bytes that decode as a message are written as JSON that reads back, unknown fields aside.
    #[test]
    fn decoded_messages_read_back(message in message_type(), bytes in micro_core::testing::protobuf()) {
        let Ok(decoded) = DynamicMessage::decode(message.clone(), bytes.as_slice()) else { return Ok(()) };
        let read = request::from_json_bytes(&message, &super::json_bytes(&decoded), "svc");
        prop_assert!(read.is_ok(), "{:?}", read.err());
        prop_assert_eq!(json_of(&read.expect("checked")), json_of(&decoded));
    }
}

/// A small deterministic generator (SplitMix64) that turns one proptest seed into a whole message.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn text(&mut self) -> String {
        const CHARS: &[char] =
            &['a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\u{0}', '\u{7f}', 'é', '€', '😀', '\u{fffd}'];
        (0..self.below(8)).map(|_| CHARS[self.below(CHARS.len() as u64) as usize]).collect()
    }
}

/// A message of type `message` with about two thirds of its fields set (lists and maps with up to three
/// entries), nested to `depth` levels.
fn filled(message: &MessageDescriptor, rng: &mut SplitMix, depth: u32) -> DynamicMessage {
    let mut out = DynamicMessage::new(message.clone());
    for field in message.fields() {
        if rng.below(3) == 0 {
            continue;
        }
        let kind = field.kind();
        let value = if field.is_map() {
            let Kind::Message(entry) = &kind else { continue };
            let (key_kind, value_kind) = (entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind());
            let entries = (0..rng.below(4)).filter_map(|_| {
                let key = match scalar(&key_kind, rng, depth) {
                    PValue::Bool(b) => MapKey::Bool(b),
                    PValue::I32(n) => MapKey::I32(n),
                    PValue::I64(n) => MapKey::I64(n),
                    PValue::U32(n) => MapKey::U32(n),
                    PValue::U64(n) => MapKey::U64(n),
                    PValue::String(s) => MapKey::String(s),
                    _ => return None,
                };
                Some((key, scalar(&value_kind, rng, depth)))
            });
            PValue::Map(entries.collect())
        } else if field.is_list() {
            PValue::List((0..rng.below(4)).map(|_| scalar(&kind, rng, depth)).collect())
        } else {
            scalar(&kind, rng, depth)
        };
        // Setting a field of a oneof clears the others, as a decoder would.
        out.set_field(&field, value);
    }
    out
}

/// One value of `kind`: any bits for numbers, defined and undefined enum numbers, text with quotes, escapes and
/// non-ASCII characters, and nested messages while `depth` lasts.
fn scalar(kind: &Kind, rng: &mut SplitMix, depth: u32) -> PValue {
    match kind {
        Kind::Double => PValue::F64(f64::from_bits(rng.next())),
        Kind::Float => PValue::F32(f32::from_bits(rng.next() as u32)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => PValue::I32(rng.next() as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(rng.next() as i64),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(rng.next() as u32),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(rng.next()),
        Kind::Bool => PValue::Bool(rng.below(2) == 1),
        Kind::String => PValue::String(rng.text()),
        Kind::Bytes => PValue::Bytes((0..rng.below(8)).map(|_| rng.next() as u8).collect::<Vec<u8>>().into()),
        Kind::Enum(e) => {
            let defined: Vec<i32> = e.values().map(|v| v.number()).collect();
            match rng.below(3) {
                0 => PValue::EnumNumber(rng.next() as i32),
                _ => PValue::EnumNumber(defined[rng.below(defined.len() as u64) as usize]),
            }
        }
        Kind::Message(m) if depth > 0 => PValue::Message(filled(m, rng, depth - 1)),
        Kind::Message(m) => PValue::Message(DynamicMessage::new(m.clone())),
    }
}

#[test]
fn the_registry_of_the_properties_resolves_and_refuses() {
    let ok = resolve::resolve_uncached(&REGISTRY, "micro", "/registry/list-services").expect("a core endpoint");
    assert_eq!(ok.endpoint, "Registry.ListServices");
    let versioned = resolve::resolve_uncached(&REGISTRY, "team", "/v1/greeter/watch").expect("a versioned path");
    assert_eq!(versioned.service, "v1.greeter");
    // A service without a schema is 501, the one answer other than a 4xx that the property allows.
    let bare = resolve::resolve_uncached(&REGISTRY, "team", "/bare/read").expect_err("no schema");
    assert_eq!(bare.code, 501);
}
