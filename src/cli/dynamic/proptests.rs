//! Property tests of the CLI's flag-to-message conversion: arbitrary flag values for the endpoint commands of a
//! message with a field of every kind (and of the core services' methods) never panic, and either build the
//! request or give an input error that names the flag. `docs/fuzzing.md` describes the suites and their long run.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use prost_reflect::{DescriptorPool, ReflectMessage};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    MessageOptions, MethodDescriptorProto, ServiceDescriptorProto,
};
use serde_json::json;
use std::sync::LazyLock;

/// A field of the `fuzz` test message.
fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>, label: Label) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(label as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(Into::into),
        ..Default::default()
    }
}

/// A map entry message `<Name>Entry { key = 1; value = 2; }`.
fn map_entry(name: &str, key: Type, value: Type, value_type: Option<&str>) -> DescriptorProto {
    DescriptorProto {
        name: Some(name.into()),
        field: vec![field("key", 1, key, None, Label::Optional), field("value", 2, value, value_type, Label::Optional)],
        options: Some(MessageOptions { map_entry: Some(true), ..Default::default() }),
        ..Default::default()
    }
}

/// `package fuzz`: `message Everything` with a field of every kind the CLI turns flags into (every scalar, an
/// enum, repeated and map fields with scalar, enum and message values, a recursive message deeper than the flags
/// go, and the well-known types), `message Inner { string name; int32 level; Inner child; }` and
/// `service Fuzz { rpc Call(Everything) returns (Everything); }`.
fn fuzz_file() -> FileDescriptorProto {
    use Label::{Optional as One, Repeated as Many};
    const WKT: &[(&str, &str)] = &[
        ("when", "Timestamp"),
        ("wait", "Duration"),
        ("mask", "FieldMask"),
        ("maybe_count", "Int32Value"),
        ("maybe_big", "Int64Value"),
        ("maybe_huge", "UInt64Value"),
        ("maybe_ratio", "DoubleValue"),
        ("maybe_score", "FloatValue"),
        ("maybe_text", "StringValue"),
        ("maybe", "BoolValue"),
        ("maybe_data", "BytesValue"),
        ("json", "Value"),
        ("object", "Struct"),
        ("list", "ListValue"),
        ("nothing", "Empty"),
        ("packed", "Any"),
    ];
    let scalars = [
        ("i32", Type::Int32),
        ("i64", Type::Int64),
        ("u32", Type::Uint32),
        ("u64", Type::Uint64),
        ("s32", Type::Sint32),
        ("s64", Type::Sint64),
        ("f32", Type::Fixed32),
        ("f64", Type::Fixed64),
        ("sf32", Type::Sfixed32),
        ("sf64", Type::Sfixed64),
        ("score", Type::Float),
        ("ratio", Type::Double),
        ("enabled", Type::Bool),
        ("text", Type::String),
        ("data", Type::Bytes),
        ("user_email", Type::String),
    ];
    let mut fields: Vec<FieldDescriptorProto> = Vec::new();
    let mut add = |name: &str, ty: Type, type_name: Option<&str>, label: Label| {
        let number = fields.len() as i32 + 1;
        fields.push(field(name, number, ty, type_name, label));
    };
    for (name, ty) in scalars {
        add(name, ty, None, One);
    }
    add("color", Type::Enum, Some(".fuzz.Color"), One);
    add("inner", Type::Message, Some(".fuzz.Inner"), One);
    add("tags", Type::String, None, Many);
    add("numbers", Type::Int64, None, Many);
    add("ratios", Type::Float, None, Many);
    add("switches", Type::Bool, None, Many);
    add("colors", Type::Enum, Some(".fuzz.Color"), Many);
    add("items", Type::Message, Some(".fuzz.Inner"), Many);
    add("labels", Type::Message, Some(".fuzz.Everything.LabelsEntry"), Many);
    add("counts", Type::Message, Some(".fuzz.Everything.CountsEntry"), Many);
    add("flags", Type::Message, Some(".fuzz.Everything.FlagsEntry"), Many);
    add("palette", Type::Message, Some(".fuzz.Everything.PaletteEntry"), Many);
    for (name, ty) in WKT {
        add(name, Type::Message, Some(&format!(".google.protobuf.{ty}")), One);
    }
    add("times", Type::Message, Some(".google.protobuf.Timestamp"), Many);
    add("waits", Type::Message, Some(".google.protobuf.Duration"), Many);
    let everything = DescriptorProto {
        name: Some("Everything".into()),
        field: fields,
        nested_type: vec![
            map_entry("LabelsEntry", Type::String, Type::String, None),
            map_entry("CountsEntry", Type::Int32, Type::Int64, None),
            map_entry("FlagsEntry", Type::Bool, Type::Message, Some(".fuzz.Inner")),
            map_entry("PaletteEntry", Type::Uint64, Type::Enum, Some(".fuzz.Color")),
        ],
        ..Default::default()
    };
    let inner = DescriptorProto {
        name: Some("Inner".into()),
        field: vec![
            field("name", 1, Type::String, None, One),
            field("level", 2, Type::Int32, None, One),
            field("child", 3, Type::Message, Some(".fuzz.Inner"), One),
        ],
        ..Default::default()
    };
    let color = EnumDescriptorProto {
        name: Some("Color".into()),
        value: ["COLOR_UNSPECIFIED", "RED", "GREEN"]
            .iter()
            .enumerate()
            .map(|(i, n)| EnumValueDescriptorProto { name: Some(n.to_string()), number: Some(i as i32), options: None })
            .collect(),
        ..Default::default()
    };
    let wkt_files = ["timestamp", "duration", "field_mask", "wrappers", "struct", "empty", "any"];
    FileDescriptorProto {
        name: Some("fuzz.proto".into()),
        package: Some("fuzz".into()),
        syntax: Some("proto3".into()),
        dependency: wkt_files.iter().map(|f| format!("google/protobuf/{f}.proto")).collect(),
        message_type: vec![everything, inner],
        enum_type: vec![color],
        service: vec![ServiceDescriptorProto {
            name: Some("Fuzz".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Call".into()),
                input_type: Some(".fuzz.Everything".into()),
                output_type: Some(".fuzz.Everything".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The methods whose commands are fuzzed: `fuzz.Fuzz.Call` first, then every method of the core services.
static METHODS: LazyLock<Vec<MethodDescriptor>> = LazyLock::new(|| {
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(fuzz_file()).expect("the fuzz schema is valid");
    let mut methods: Vec<_> = pool.services().flat_map(|s| s.methods().collect::<Vec<_>>()).collect();
    let core = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema");
    methods.extend(core.pool.services().flat_map(|s| s.methods().collect::<Vec<_>>()));
    methods
});

/// An endpoint command and its request-field flags, as `(id, long name)`.
struct Endpoint {
    method: MethodDescriptor,
    command: Command,
    flags: Vec<(String, String)>,
}

static ENDPOINTS: LazyLock<Vec<Endpoint>> = LazyLock::new(|| {
    METHODS
        .iter()
        .map(|method| {
            let command = endpoint_command("call", method, false);
            let flags = command
                .get_arguments()
                .filter(|a| !a.get_id().as_str().starts_with("micro::"))
                .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
                .collect();
            Endpoint { method: method.clone(), command, flags }
        })
        .collect()
});

/// Flag values: what each kind of field reads (numbers in every notation, bools, enum names, durations,
/// timestamps, JSON, lists and `KEY=VALUE` pairs), near misses of those, and arbitrary text. Values never start
/// with `@`, which names a file to read for a bytes field.
fn value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i32>().prop_map(|n| format!("{n:#x}")),
        any::<i128>().prop_map(|n| n.to_string()),
        "-?0[xX][-+]?[0-9a-fA-F]{0,34}",
        " ?-?[0-9]{1,30}(\\.[0-9]{0,6})?([eE][-+]?[0-9]{1,3})? ?",
    ];
    let word = select(vec![
        "",
        "true",
        "false",
        "T",
        "yes",
        "off",
        "2",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e39",
        "-1e39",
        "1e400",
        "RED",
        "red",
        "1",
        "7",
        "COLOR_UNSPECIFIED",
        "null",
        "{}",
        "[]",
        "{\"name\":\"x\"}",
        "{\"name\":5}",
        "{\"nope\":1}",
        "[1,\"a\"]",
        "k=v",
        "=",
        "a=b=c",
        "1=2",
        "0x10=1",
        "true=RED",
        "yes=1",
        "a,b,,c",
        "5s",
        "1m30s",
        "250ms",
        "1e300s",
        "-5s",
        "NaNs",
        "1.5s",
        "99999999999h",
        "soon",
        "2024-01-02T15:04:05Z",
        "2024-01-02T17:04:05+02:00",
        "2024-13-99T99:99:99Z",
        "fooBar,baz_qux",
        "a.b",
        "AQI=",
        "@",
    ])
    .prop_map(str::to_string);
    let duration = "-?[0-9]{1,13}(\\.[0-9]{1,10})?(s|ms|m|h|d|ns|us|y)";
    let json = "\\{(\"(name|level|child|x)\": ?(\"[a-z]{0,3}\"|[0-9]{1,3}|null|\\{\\}|\\[\\]),?){0,3}\\}";
    let list = vec(
        prop_oneof!["[a-zA-Z0-9=._-]{0,6}", select(vec!["RED", "1", "0x7", "true", "k=v"]).prop_map(str::to_string)],
        0..4,
    )
    .prop_map(|parts| parts.join(","));
    prop_oneof![
        2 => number,
        2 => word,
        1 => duration,
        1 => json,
        1 => list,
        1 => any::<String>(),
    ]
    .prop_map(|v| if v.starts_with('@') { format!("x{v}") } else { v })
}

/// An endpoint that has flags (some core requests have no field), by index: the `fuzz` one half of the time.
fn endpoint_with_flags() -> impl Strategy<Value = usize> {
    let with_flags: Vec<usize> = (0..ENDPOINTS.len()).filter(|&i| !ENDPOINTS[i].flags.is_empty()).collect();
    prop_oneof![Just(0), select(with_flags)]
}

/// What the conversion made of some flag values for one endpoint.
struct Conversion {
    method: MethodDescriptor,
    argv: Vec<String>,
    /// `(id, long, value)` of each flag given.
    given: Vec<(String, String, String)>,
    result: Result<Option<DynamicMessage>, CliError>,
}

impl Conversion {
    /// Parses `--long=value` for each flag with the endpoint's command, then converts the matches.
    fn run(endpoint: &Endpoint, flags: &[(&str, &str)]) -> Result<Conversion, TestCaseError> {
        let Endpoint { method, command, flags: known } = endpoint;
        let given: Vec<(String, String, String)> = flags
            .iter()
            .map(|(long, value)| {
                let id = known.iter().find(|(_, l)| l == long).map(|(id, _)| id.clone()).unwrap_or_default();
                (id, long.to_string(), value.to_string())
            })
            .collect();
        let argv: Vec<String> = std::iter::once("call".to_string())
            .chain(given.iter().map(|(_, long, value)| format!("--{long}={value}")))
            .collect();
        let matches = command.clone().try_get_matches_from(&argv);
        let error = matches.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert!(matches.is_ok(), "clap refused {:?}: {}", argv, error);
        let matches = matches.expect("checked");
        // The schema check refuses exactly what the conversion refuses.
        if let Ok(Some((object, _))) = flags_json(method, &matches) {
            let value = Value::Object(object);
            let checked = micro_client::json::check(&value, &method.input());
            let converted = DynamicMessage::deserialize(method.input(), value.clone());
            prop_assert_eq!(
                checked.is_ok(),
                converted.is_ok(),
                "{} for {}: the check says {:?}, the conversion {:?}",
                value,
                method.full_name(),
                checked.err().map(|e| e.to_string()),
                converted.err().map(|e| e.to_string())
            );
        }
        let result = request_from_matches(method, &matches);
        Ok(Conversion { method: method.clone(), argv, given, result })
    }

    /// Checks what holds of every conversion: a request of the method's input type in which each plain string
    /// field holds its flag's value exactly, or an input error.
    fn check(&self) -> Result<(), TestCaseError> {
        match &self.result {
            Ok(request) => {
                let request = request.as_ref().expect("a flag was given");
                prop_assert_eq!(request.descriptor(), self.method.input());
                for (id, _, value) in &self.given {
                    if let Some(f) = self.method.input().get_field_by_name(id)
                        && f.kind() == Kind::String
                        && !f.is_list()
                    {
                        let got = request.get_field(&f);
                        prop_assert_eq!(got.as_str(), Some(value.as_str()), "--{}", id);
                    }
                }
            }
            Err(e) => prop_assert_eq!(e.status, ExitStatus::InvalidInput, "{}", e.message),
        }
        Ok(())
    }

    /// Whether the error (if any) names one of the flags given.
    fn names_a_flag(&self) -> bool {
        match &self.result {
            Ok(_) => true,
            Err(e) => self.given.iter().any(|(_, long, _)| e.message.contains(&format!("--{long}"))),
        }
    }
}

/// The flags of an endpoint chosen by `picks`, each once (a repeated single-valued flag is clap's error, not the
/// conversion's), with their values.
fn pick(endpoint: &Endpoint, picks: Vec<(Index, String)>) -> Vec<(String, String)> {
    let mut chosen: Vec<(String, String)> = Vec::new();
    for (index, value) in picks {
        let (_, long) = &endpoint.flags[index.index(endpoint.flags.len())];
        if !chosen.iter().any(|(l, _)| l == long) {
            chosen.push((long.clone(), value));
        }
    }
    chosen
}

/// Runs the flags `picks` chooses on endpoint number `endpoint`, and checks what holds for every conversion.
fn convert(endpoint: usize, picks: Vec<(Index, String)>) -> Result<Conversion, TestCaseError> {
    let endpoint = &ENDPOINTS[endpoint];
    let flags = pick(endpoint, picks);
    let flags: Vec<(&str, &str)> = flags.iter().map(|(l, v)| (l.as_str(), v.as_str())).collect();
    let conversion = Conversion::run(endpoint, &flags)?;
    conversion.check()?;
    Ok(conversion)
}

proptest! {
    #![proptest_config(micro_core::testing::config(256))]

    /// Any values for any flags of any endpoint (the `fuzz` one half of the time) build the request, or fail with
    /// an input error that names one of the flags given, the final conversion's errors too (finding 2, fixed by the
    /// check of `micro_client::json` and `flag_error`).
    #[test]
    fn flag_values_build_a_request_or_are_refused(
        endpoint in endpoint_with_flags(),
        picks in vec((any::<Index>(), value()), 1..4),
    ) {
        let conversion = convert(endpoint, picks)?;
        prop_assert!(
            conversion.names_a_flag(),
            "{:?} for {}: the error names no flag: {}",
            conversion.argv,
            conversion.method.full_name(),
            conversion.result.as_ref().err().map(|e| e.message.as_str()).unwrap_or_default()
        );
    }

    /// Integers in decimal and hex read back as themselves, and anything else is refused without a panic.
    #[test]
    fn integers_read_back(n in any::<i64>(), raw in "[-+ ]{0,2}0?[xX]?[0-9a-fA-F]{0,40}") {
        prop_assert_eq!(parse_int::<i64>(&n.to_string()), Some(n));
        let hex = if n < 0 { format!("-{:#x}", i128::from(n).unsigned_abs()) } else { format!("{n:#x}") };
        prop_assert_eq!(parse_int::<i64>(&hex), Some(n), "{}", hex);
        prop_assert_eq!(parse_int::<i32>(&n.to_string()), i32::try_from(n).ok());
        let _ = (parse_int::<i32>(&raw), parse_int::<u64>(&raw));
    }
}

/// The endpoint of a method by full name.
fn endpoint(method: &str) -> &'static Endpoint {
    ENDPOINTS.iter().find(|e| e.method.full_name() == method).unwrap_or_else(|| panic!("no method {method}"))
}

/// Finding 2 of `docs/fuzzing.md`, one input each: every one of these must be refused with an error that names its
/// flag (or be accepted as what it says), and none may panic.
#[test]
fn found_flag_conversion_bugs() {
    let mut failures = Vec::new();
    // Finding 1 (a sign after `0x`, an overflowing negation) is fixed: `dynamic::tests::hex_integers_take_one_sign_and_never_overflow`.
    // Finding 2: values that pass their flag's own check and fail the final conversion, which names no flag.
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("fuzz.Fuzz.Call", &[("items", "0")]),
        ("fuzz.Fuzz.Call", &[("items", r#"{"nope":1}"#)]),
        ("fuzz.Fuzz.Call", &[("inner-child-child-child-child-child", r#"{"name":5}"#)]),
        ("fuzz.Fuzz.Call", &[("object", "[]")]),
        ("fuzz.Fuzz.Call", &[("packed", "{}")]),
        ("fuzz.Fuzz.Call", &[("nothing", "1")]),
        ("fuzz.Fuzz.Call", &[("list", "x")]),
        ("fuzz.Fuzz.Call", &[("wait", "1e300s")]),
        ("fuzz.Fuzz.Call", &[("score", "1e39")]),
        ("fuzz.Fuzz.Call", &[("palette", "0x10=RED")]),
        ("fuzz.Fuzz.Call", &[("counts", " 5=1")]),
        ("fuzz.Fuzz.Call", &[("flags", "yes={}")]),
        ("fuzz.Fuzz.Call", &[("mask", "a_b")]),
        ("registry.Registry.Register", &[("endpoints", "0")]),
        ("registry.Registry.Register", &[("nodes", r#"{"id":5}"#)]),
    ];
    for (method, flags) in cases {
        let conversion = Conversion::run(endpoint(method), flags).expect("clap takes the flags");
        if !conversion.names_a_flag() {
            let message = conversion.result.err().map(|e| e.message).unwrap_or_default();
            failures.push(format!("{method} {:?}: {message}", &conversion.argv[1..]));
        }
    }
    // Two fields of one oneof: the error should name both flags.
    let consume = endpoint("events.Stream.Consume");
    let oneof: Vec<&str> =
        consume.flags.iter().map(|(_, l)| l.as_str()).filter(|l| *l == "ack" || *l == "nack").collect();
    if oneof.len() == 2 {
        let conversion = Conversion::run(consume, &[("ack", "x"), ("nack", "y")]).expect("clap takes the flags");
        if let Err(e) = &conversion.result
            && !(e.message.contains("--ack") && e.message.contains("--nack"))
        {
            failures.push(format!("events.Stream.Consume {:?}: {}", &conversion.argv[1..], e.message));
        }
    }
    assert!(failures.is_empty(), "{} inputs are mishandled:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_fuzz_endpoint_has_a_flag_for_every_field() {
    let Endpoint { flags, .. } = &ENDPOINTS[0];
    let longs: Vec<&str> = flags.iter().map(|(_, long)| long.as_str()).collect();
    for long in ["i32", "user-email", "color", "inner-name", "inner-child-child-child-child-child", "labels", "when"] {
        assert!(longs.contains(&long), "no --{long} in {longs:?}");
    }
    // Past the flag depth, a nested message takes JSON.
    assert!(!longs.iter().any(|l| l.starts_with("inner-child-child-child-child-child-")), "{longs:?}");
}

/// A small deterministic generator for JSON shaped by a message descriptor.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// Any JSON value: the edge cases of every kind's JSON form, near misses, and arbitrary shapes.
fn any_json(rng: &mut Rng, depth: usize) -> Value {
    let scalars = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(7),
        json!(2_147_483_648u64),
        json!(-2_147_483_649i64),
        json!(4_294_967_296u64),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(1e3),
        json!(1e39),
        json!(-1e300),
        json!(""),
        json!("abc"),
        json!("5"),
        json!("-5"),
        json!(" 5"),
        json!("+5"),
        json!("1.5"),
        json!("1e3"),
        json!("9223372036854775808"),
        json!("18446744073709551616"),
        json!("NaN"),
        json!("Infinity"),
        json!("-Infinity"),
        json!("inf"),
        json!("aGk="),
        json!("aGk"),
        json!("a-_b"),
        json!("not base64!"),
        json!("RED"),
        json!("red"),
        json!("NULL_VALUE"),
        json!("2024-01-02T15:04:05Z"),
        json!("2024-13-99T99:99:99Z"),
        json!("1.5s"),
        json!("1e300s"),
        json!("fooBar,baz"),
        json!("a_b"),
        json!("true"),
    ];
    match rng.below(if depth > 2 { 1 } else { 6 }) {
        0..=2 => rng.pick(&scalars),
        3 => Value::Array((0..rng.below(3)).map(|_| any_json(rng, depth + 1)).collect()),
        4 => {
            let keys = ["name", "x", "@type", "value", "1", "true", "-5", "k"];
            let mut object = Map::new();
            for _ in 0..rng.below(3) {
                object.insert(rng.pick(&keys).to_string(), any_json(rng, depth + 1));
            }
            if rng.below(4) == 0 {
                object.insert("@type".into(), json!("type.googleapis.com/google.protobuf.Duration"));
                object.insert("value".into(), json!("1s"));
            }
            Value::Object(object)
        }
        _ => json!({}),
    }
}

/// A JSON request for `message`: each field half of the time, by its proto or JSON name, with a value of its kind
/// or any JSON; now and then an unknown field.
fn random_request(rng: &mut Rng, message: &MessageDescriptor, depth: usize) -> Value {
    let mut object = Map::new();
    for field in message.fields() {
        if rng.below(2) == 0 {
            continue;
        }
        let key = if rng.below(2) == 0 { field.name().to_string() } else { field.json_name().to_string() };
        let value = if rng.below(3) == 0 {
            any_json(rng, depth + 1)
        } else if field.is_list() {
            Value::Array((0..rng.below(3)).map(|_| element(rng, &field.kind(), depth)).collect())
        } else if field.is_map() {
            let entry = field.kind().as_message().cloned().expect("a map entry");
            let keys = ["k", "1", "-5", "true", "0x10", " 5"];
            let mut map = Map::new();
            for _ in 0..rng.below(3) {
                map.insert(rng.pick(&keys).to_string(), element(rng, &entry.map_entry_value_field().kind(), depth));
            }
            Value::Object(map)
        } else {
            element(rng, &field.kind(), depth)
        };
        object.insert(key, value);
    }
    if rng.below(10) == 0 {
        object.insert("nope".into(), json!(1));
    }
    Value::Object(object)
}

/// A value for one element of `kind`: a nested request for a message (not too deep), else any JSON.
fn element(rng: &mut Rng, kind: &Kind, depth: usize) -> Value {
    match kind {
        Kind::Message(m) if depth < 4 && !m.full_name().starts_with("google.protobuf.") && rng.below(4) != 0 => {
            random_request(rng, m, depth + 1)
        }
        Kind::Enum(e) if rng.below(2) == 0 => {
            let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            json!(rng.pick(&names))
        }
        _ => any_json(rng, depth + 1),
    }
}

proptest! {
    #![proptest_config(micro_core::testing::config(512))]

    /// The schema check (`micro_client::json`) refuses exactly the JSON requests the proto3 JSON conversion refuses,
    /// for JSON shaped like the requests of every endpoint (the `fuzz` one half of the time).
    #[test]
    fn the_json_check_agrees_with_the_conversion(endpoint in endpoint_with_flags(), seed in any::<u64>()) {
        let input = ENDPOINTS[endpoint].method.input();
        let mut rng = Rng(seed | 1);
        let value = random_request(&mut rng, &input, 0);
        let checked = micro_client::json::check(&value, &input);
        let converted = DynamicMessage::deserialize(input.clone(), value.clone());
        prop_assert_eq!(
            checked.is_ok(),
            converted.is_ok(),
            "{} for {}: the check says {:?}, the conversion {:?}",
            value,
            input.full_name(),
            checked.err().map(|e| e.to_string()),
            converted.err().map(|e| e.to_string())
        );
    }
}
