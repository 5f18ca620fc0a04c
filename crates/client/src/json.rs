//! JSON requests checked against their message type before conversion, so that a request that does not fit says
//! which field is wrong and why: `name: expected string, got number`, `options.level: expected int32, got string
//! "high"`, `tags[2]: …`, `labels["k"]: …`, or `unknown field "nmae" in helloworld.CallRequest; valid fields: name`.
//!
//! [`check`] walks a [`serde_json::Value`] along a [`MessageDescriptor`] and accepts what the proto3 JSON mapping
//! (as prost-reflect reads it) accepts: a field by its JSON (lowerCamelCase) name or its proto name, `null` for
//! any field (its default), 64-bit integers as numbers or decimal strings (32-bit ones too), floats as numbers or
//! `"NaN"`/`"Infinity"`/`"-Infinity"`, enums by name or number, bytes in base64 (standard or URL-safe, padding
//! optional), and the well-known types in their JSON forms (a Timestamp in RFC 3339, a Duration as `"1.5s"`,
//! wrappers as their value, Struct/Value/ListValue as any JSON, FieldMask as `"a,b.c"`, Any with `@type`).
//! [`to_message`] checks and converts; [`parse`] reads one JSON document first.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use micro_core::schema::is_well_known;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;
use std::collections::HashMap;

/// A JSON request that does not fit its message type: where ([`JsonError::path`]) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", prefix(.path))]
pub struct JsonError {
    /// Where: `options.surname`, `tags[2]`, `labels["k"]`, or empty for the request itself. Field names are as the
    /// JSON wrote them.
    pub path: String,
    /// What is wrong there.
    pub problem: Problem,
}

fn prefix(path: &str) -> String {
    if path.is_empty() { String::new() } else { format!("{path}: ") }
}

fn list(names: &[String]) -> String {
    if names.is_empty() { "none".into() } else { names.join(", ") }
}

/// What is wrong with a JSON request at one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The text is not one JSON document (serde_json's message, with the line and column).
    #[error("{0}")]
    Syntax(String),
    /// A value of the wrong JSON type: `expected string, got number`.
    #[error("expected {expected}, got {got}")]
    Type {
        /// What the field takes, e.g. `string`, `int64`, `object (echo.Options)`.
        expected: String,
        /// What the JSON has: `number`, `string "abc"`, `array`…
        got: String,
    },
    /// A field the message does not have.
    #[error("unknown field {field:?} in {message}; valid fields: {}", list(.valid))]
    UnknownField {
        /// The name as written.
        field: String,
        /// The message's full name.
        message: String,
        /// The proto names of the message's fields, in declaration order.
        valid: Vec<String>,
    },
    /// Two fields of one oneof; the error's path is the second one's.
    #[error("fields {first:?} and {second:?} are both in oneof {oneof:?}; give only one")]
    Oneof {
        /// The oneof's name.
        oneof: String,
        /// The field set first, as written.
        first: String,
        /// The field set second, as written.
        second: String,
    },
    /// A value of the right JSON type that the field cannot take: out of range, an unknown enum name, bad base64…
    #[error("{0}")]
    Value(String),
}

impl JsonError {
    fn new(path: &str, problem: Problem) -> Self {
        Self { path: path.to_string(), problem }
    }

    fn mismatch(path: &str, expected: impl Into<String>, got: &Value) -> Self {
        Self::new(path, Problem::Type { expected: expected.into(), got: describe(got) })
    }

    fn value(path: &str, reason: impl Into<String>) -> Self {
        Self::new(path, Problem::Value(reason.into()))
    }
}

/// A JSON value in a few words: its type, and a short string or the number itself where that helps.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Number(_) => "number".into(),
        Value::String(s) if s.chars().count() <= 40 => format!("string {s:?}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Parses `text` as one JSON document and converts it to a `message` ([`to_message`]).
pub fn parse(text: &str, message: &MessageDescriptor) -> Result<DynamicMessage, JsonError> {
    let value: Value = serde_json::from_str(text).map_err(|e| JsonError::new("", Problem::Syntax(e.to_string())))?;
    to_message(value, message)
}

/// Checks `value` against `message` ([`check`]), then converts it with the proto3 JSON mapping.
pub fn to_message(value: Value, message: &MessageDescriptor) -> Result<DynamicMessage, JsonError> {
    check(&value, message)?;
    // What the check lets through converts; should the two ever disagree, the conversion's own message is kept.
    DynamicMessage::deserialize(message.clone(), value).map_err(|e| JsonError::value("", e.to_string()))
}

/// Checks that `value` is a JSON request of type `message`, naming the first field that does not fit.
pub fn check(value: &Value, message: &MessageDescriptor) -> Result<(), JsonError> {
    if !value.is_object() && !is_well_known(message) {
        let expected = format!("a JSON object ({})", message.full_name());
        return Err(JsonError::new("", Problem::Type { expected, got: describe(value) }));
    }
    check_message(value, message, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn check_message(value: &Value, message: &MessageDescriptor, path: &str) -> Result<(), JsonError> {
    if is_well_known(message) && message.full_name() != "google.protobuf.Empty" {
        return check_well_known(value, message, path);
    }
    let Value::Object(object) = value else {
        return Err(JsonError::mismatch(path, format!("object ({})", message.full_name()), value));
    };
    // The field of each oneof already set, to refuse a second one as the conversion does.
    let mut oneofs: HashMap<String, &str> = HashMap::new();
    for (key, item) in object {
        let field = message.get_field_by_json_name(key).or_else(|| message.get_field_by_name(key));
        let Some(field) = field else {
            if message.get_extension_by_json_name(key).is_some() {
                continue;
            }
            return Err(JsonError::new(
                path,
                Problem::UnknownField {
                    field: key.clone(),
                    message: message.full_name().to_string(),
                    valid: message.fields().map(|f| f.name().to_string()).collect(),
                },
            ));
        };
        // `null` is the field's default (for Value, a null value).
        if item.is_null() {
            continue;
        }
        if let Some(oneof) = field.containing_oneof()
            && let Some(first) = oneofs.insert(oneof.name().to_string(), key)
        {
            let problem =
                Problem::Oneof { oneof: oneof.name().to_string(), first: first.to_string(), second: key.clone() };
            return Err(JsonError::new(&join(path, key), problem));
        }
        check_field(item, &field, &join(path, key))?;
    }
    Ok(())
}

fn check_field(value: &Value, field: &FieldDescriptor, path: &str) -> Result<(), JsonError> {
    let kind = field.kind();
    if field.is_map() {
        let entry = kind.as_message().expect("a map field's kind is its entry message");
        let (key_kind, value_kind) = (entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind());
        let Value::Object(entries) = value else {
            let expected = format!("an object (map<{}, {}>)", kind_name(&key_kind), kind_name(&value_kind));
            return Err(JsonError::mismatch(path, expected, value));
        };
        for (key, item) in entries {
            let at = format!("{path}[{}]", Value::String(key.clone()));
            check_map_key(key, &key_kind, &at)?;
            check_element(item, &value_kind, &at)?;
        }
        return Ok(());
    }
    if field.is_list() {
        let Value::Array(items) = value else {
            return Err(JsonError::mismatch(path, format!("an array of {}", kind_name(&kind)), value));
        };
        for (i, item) in items.iter().enumerate() {
            check_element(item, &kind, &format!("{path}[{i}]"))?;
        }
        return Ok(());
    }
    check_single(value, &kind, path)
}

/// A list item or map value: `null` is refused there, except where it is a value of its own (a Value, a NullValue).
fn check_element(value: &Value, kind: &Kind, path: &str) -> Result<(), JsonError> {
    let null_is_a_value = match kind {
        Kind::Message(m) => m.full_name() == "google.protobuf.Value",
        Kind::Enum(e) => e.full_name() == "google.protobuf.NullValue",
        _ => false,
    };
    if value.is_null() && !null_is_a_value {
        return Err(JsonError::mismatch(path, kind_name(kind), value));
    }
    check_single(value, kind, path)
}

fn check_map_key(key: &str, kind: &Kind, path: &str) -> Result<(), JsonError> {
    let ok = match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => key.parse::<i32>().is_ok(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => key.parse::<i64>().is_ok(),
        Kind::Uint32 | Kind::Fixed32 => key.parse::<u32>().is_ok(),
        Kind::Uint64 | Kind::Fixed64 => key.parse::<u64>().is_ok(),
        Kind::Bool => key.parse::<bool>().is_ok(),
        _ => true,
    };
    if ok { Ok(()) } else { Err(JsonError::value(path, format!("the key {key:?} is not a {}", kind_name(kind)))) }
}

/// The proto name of a kind, as help and errors show it.
fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Bytes => "bytes (base64)".into(),
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        scalar => micro_core::schema::keyword(scalar).into(),
    }
}

/// Integer ranges, as prost-reflect reads integers: a JSON number without a fraction, or a decimal string.
#[derive(Clone, Copy)]
enum Int {
    I32,
    I64,
    U32,
    U64,
}

impl Int {
    fn of(kind: &Kind) -> Option<Int> {
        Some(match kind {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Int::I32,
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Int::I64,
            Kind::Uint32 | Kind::Fixed32 => Int::U32,
            Kind::Uint64 | Kind::Fixed64 => Int::U64,
            _ => return None,
        })
    }

    fn range(self) -> (i128, i128) {
        match self {
            Int::I32 => (i32::MIN.into(), i32::MAX.into()),
            Int::I64 => (i64::MIN.into(), i64::MAX.into()),
            Int::U32 => (0, u32::MAX.into()),
            Int::U64 => (0, u64::MAX.into()),
        }
    }

    fn parses(self, s: &str) -> bool {
        match self {
            Int::I32 => s.parse::<i32>().is_ok(),
            Int::I64 => s.parse::<i64>().is_ok(),
            Int::U32 => s.parse::<u32>().is_ok(),
            Int::U64 => s.parse::<u64>().is_ok(),
        }
    }
}

fn check_int(value: &Value, int: Int, kind: &Kind, path: &str) -> Result<(), JsonError> {
    let name = kind_name(kind);
    let (min, max) = int.range();
    let out_of_range = |n: &dyn std::fmt::Display| JsonError::value(path, format!("{n} is out of range for {name}"));
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if !(min..=max).contains(&i128::from(i)) {
                    return Err(out_of_range(n));
                }
            } else if let Some(u) = n.as_u64() {
                if i128::from(u) > max {
                    return Err(out_of_range(n));
                }
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() != 0.0 {
                    return Err(JsonError::value(path, format!("expected an integer ({name}), got {n}")));
                }
                if f < min as f64 || f > max as f64 {
                    return Err(out_of_range(n));
                }
            }
            Ok(())
        }
        Value::String(s) if int.parses(s) => Ok(()),
        Value::String(s) if s.parse::<i128>().is_ok() => Err(out_of_range(s)),
        _ => Err(JsonError::mismatch(path, name, value)),
    }
}

fn check_float(value: &Value, kind: &Kind, path: &str) -> Result<(), JsonError> {
    let single = *kind == Kind::Float;
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if single && f.is_finite() && f.abs() > f64::from(f32::MAX) {
                return Err(JsonError::value(path, format!("{n} is out of range for float")));
            }
            Ok(())
        }
        Value::String(s) if s.parse::<f64>().is_ok() || matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            Ok(())
        }
        _ => Err(JsonError::mismatch(path, format!("{} (a number, \"NaN\" or \"Infinity\")", kind_name(kind)), value)),
    }
}

/// Base64 as the proto3 JSON mapping reads bytes: standard or URL-safe, with or without padding.
fn is_base64(s: &str) -> bool {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    STANDARD.decode(s).is_ok() || URL_SAFE.decode(s).is_ok()
}

fn check_single(value: &Value, kind: &Kind, path: &str) -> Result<(), JsonError> {
    if let Some(int) = Int::of(kind) {
        return check_int(value, int, kind, path);
    }
    match kind {
        Kind::Double | Kind::Float => check_float(value, kind, path),
        Kind::Bool if value.is_boolean() => Ok(()),
        Kind::String if value.is_string() => Ok(()),
        Kind::Bytes => match value {
            Value::String(s) if is_base64(s) => Ok(()),
            Value::String(_) => {
                Err(JsonError::value(path, "expected bytes in base64, got a string that is not base64"))
            }
            _ => Err(JsonError::mismatch(path, "bytes (a base64 string)", value)),
        },
        Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => match value {
            Value::Null => Ok(()),
            Value::String(s) if s == "NULL_VALUE" => Ok(()),
            _ => Err(JsonError::mismatch(path, "null", value)),
        },
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            match value {
                Value::String(s) if e.get_value_by_name(s).is_some() => Ok(()),
                Value::String(s) => Err(JsonError::value(
                    path,
                    format!("unknown value {s:?} for enum {}; valid values: {}", e.full_name(), list(&names)),
                )),
                Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => Ok(()),
                Value::Number(n) => Err(JsonError::value(
                    path,
                    format!(
                        "{n} is not a value of enum {}: give a name ({}) or a 32-bit number",
                        e.full_name(),
                        list(&names)
                    ),
                )),
                _ => Err(JsonError::mismatch(path, format!("enum {} (a name or a number)", e.full_name()), value)),
            }
        }
        Kind::Message(m) => check_message(value, m, path),
        _ => Err(JsonError::mismatch(path, kind_name(kind), value)),
    }
}

/// The well-known types, in their JSON forms. Their content (a timestamp's format, an Any's payload) is checked by
/// converting the value alone.
fn check_well_known(value: &Value, message: &MessageDescriptor, path: &str) -> Result<(), JsonError> {
    let name = message.full_name();
    let expected = match name {
        "google.protobuf.Value" => return Ok(()),
        "google.protobuf.Struct" if value.is_object() => return Ok(()),
        "google.protobuf.ListValue" if value.is_array() => return Ok(()),
        "google.protobuf.Struct" => "a JSON object (google.protobuf.Struct)",
        "google.protobuf.ListValue" => "a JSON array (google.protobuf.ListValue)",
        "google.protobuf.Timestamp" => "an RFC 3339 timestamp such as \"2024-01-02T15:04:05Z\"",
        "google.protobuf.Duration" => "a duration in seconds such as \"1.5s\"",
        "google.protobuf.FieldMask" => "a field mask such as \"name,options.surname\"",
        "google.protobuf.Any" => "an object with \"@type\" (google.protobuf.Any)",
        "google.protobuf.DoubleValue"
        | "google.protobuf.FloatValue"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.BoolValue"
        | "google.protobuf.StringValue"
        | "google.protobuf.BytesValue" => {
            // The wrappers: the wrapped value itself.
            let inner = message.get_field_by_name("value").map(|f| f.kind()).unwrap_or(Kind::String);
            return check_single(value, &inner, path);
        }
        _ => return check_message_fields(value, message, path),
    };
    let right_type = match name {
        "google.protobuf.Any" => value.is_object(),
        _ => value.is_string(),
    };
    if !right_type {
        return Err(JsonError::mismatch(path, expected, value));
    }
    DynamicMessage::deserialize(message.clone(), value.clone()).map(|_| ()).map_err(|e| {
        let got = describe(value);
        JsonError::value(path, format!("expected {expected}, got {got} ({e})"))
    })
}

/// A well-known type without a JSON form of its own: an object of its fields.
fn check_message_fields(value: &Value, message: &MessageDescriptor, path: &str) -> Result<(), JsonError> {
    let Value::Object(_) = value else {
        return Err(JsonError::mismatch(path, format!("object ({})", message.full_name()), value));
    };
    DynamicMessage::deserialize(message.clone(), value.clone())
        .map(|_| ())
        .map_err(|e| JsonError::value(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, OneofDescriptorProto};
    use serde_json::json;

    fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>, label: Label) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            type_name: type_name.map(str::to_string),
            label: Some(label as i32),
            json_name: Some(crate::describe::default_json_name(name)),
            ..Default::default()
        }
    }

    /// `t.Req { name, count int32, big int64, ratio float, on bool, color Color, tags []string, labels
    /// map<string,int32>, options Options { surname, level int32 }, data bytes, user_email, when Timestamp,
    /// wait Duration, meta Struct, any_value Value, numbers map<int32,string>, oneof choice { a, b } }`.
    fn request() -> MessageDescriptor {
        use Label::{Optional, Repeated};
        let opt = Optional;
        let entry = |name: &str, key: Type, value: Type| DescriptorProto {
            name: Some(name.into()),
            field: vec![field("key", 1, key, None, opt), field("value", 2, value, None, opt)],
            options: Some(prost_types::MessageOptions { map_entry: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let mut a = field("a", 17, Type::String, None, opt);
        a.oneof_index = Some(0);
        let mut b = field("b", 18, Type::String, None, opt);
        b.oneof_index = Some(0);
        let req = DescriptorProto {
            name: Some("Req".into()),
            field: vec![
                field("name", 1, Type::String, None, opt),
                field("count", 2, Type::Int32, None, opt),
                field("big", 3, Type::Int64, None, opt),
                field("ratio", 4, Type::Float, None, opt),
                field("on", 5, Type::Bool, None, opt),
                field("color", 6, Type::Enum, Some(".t.Color"), opt),
                field("tags", 7, Type::String, None, Repeated),
                field("labels", 8, Type::Message, Some(".t.Req.LabelsEntry"), Repeated),
                field("options", 9, Type::Message, Some(".t.Options"), opt),
                field("data", 10, Type::Bytes, None, opt),
                field("user_email", 11, Type::String, None, opt),
                field("when", 12, Type::Message, Some(".google.protobuf.Timestamp"), opt),
                field("wait", 13, Type::Message, Some(".google.protobuf.Duration"), opt),
                field("meta", 14, Type::Message, Some(".google.protobuf.Struct"), opt),
                field("any_value", 15, Type::Message, Some(".google.protobuf.Value"), opt),
                field("numbers", 16, Type::Message, Some(".t.Req.NumbersEntry"), Repeated),
                a,
                b,
                field("items", 19, Type::Message, Some(".t.Options"), Repeated),
            ],
            nested_type: vec![
                entry("LabelsEntry", Type::String, Type::Int32),
                entry("NumbersEntry", Type::Int32, Type::String),
            ],
            oneof_decl: vec![OneofDescriptorProto { name: Some("choice".into()), ..Default::default() }],
            ..Default::default()
        };
        let options = DescriptorProto {
            name: Some("Options".into()),
            field: vec![field("surname", 1, Type::String, None, opt), field("level", 2, Type::Int32, None, opt)],
            ..Default::default()
        };
        let color = prost_types::EnumDescriptorProto {
            name: Some("Color".into()),
            value: ["COLOR_UNSPECIFIED", "RED", "GREEN"]
                .iter()
                .enumerate()
                .map(|(i, n)| prost_types::EnumValueDescriptorProto {
                    name: Some(n.to_string()),
                    number: Some(i as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            dependency: vec![
                "google/protobuf/timestamp.proto".into(),
                "google/protobuf/duration.proto".into(),
                "google/protobuf/struct.proto".into(),
            ],
            message_type: vec![req, options],
            enum_type: vec![color],
            ..Default::default()
        };
        let mut pool = DescriptorPool::global();
        pool.add_file_descriptor_proto(file).expect("a valid test file");
        pool.get_message_by_name("t.Req").expect("t.Req")
    }

    fn error(value: Value) -> String {
        let desc = request();
        let e = to_message(value, &desc).expect_err("an error");
        e.to_string()
    }

    fn ok(value: Value) -> DynamicMessage {
        to_message(value.clone(), &request()).unwrap_or_else(|e| panic!("{value} refused: {e}"))
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(error(json!({"name": 123})), "name: expected string, got number");
        assert_eq!(error(json!({"on": "yes"})), "on: expected bool, got string \"yes\"");
        assert_eq!(error(json!({"count": "abc"})), "count: expected int32, got string \"abc\"");
        assert_eq!(error(json!({"options": {"surname": 5}})), "options.surname: expected string, got number");
        assert_eq!(error(json!({"options": "x"})), "options: expected object (t.Options), got string \"x\"");
        assert_eq!(error(json!({"tags": ["a", "b", 3]})), "tags[2]: expected string, got number");
        assert_eq!(error(json!({"tags": "a"})), "tags: expected an array of string, got string \"a\"");
        assert_eq!(error(json!({"labels": {"k": "v"}})), "labels[\"k\"]: expected int32, got string \"v\"");
        assert_eq!(error(json!({"items": [{}, {"level": true}]})), "items[1].level: expected int32, got boolean");
        assert_eq!(error(json!([1])), "expected a JSON object (t.Req), got array");
    }

    #[test]
    fn unknown_fields_list_the_valid_ones() {
        let e = error(json!({"nmae": "x"}));
        assert!(e.starts_with("unknown field \"nmae\" in t.Req; valid fields: name, count, big, ratio"), "{e}");
        assert_eq!(
            error(json!({"options": {"surnme": "x"}})),
            "options: unknown field \"surnme\" in t.Options; valid fields: surname, level"
        );
    }

    #[test]
    fn values_out_of_range_or_unknown() {
        assert_eq!(error(json!({"count": 3_000_000_000u64})), "count: 3000000000 is out of range for int32");
        assert_eq!(error(json!({"count": "3000000000"})), "count: 3000000000 is out of range for int32");
        assert_eq!(error(json!({"count": 1.5})), "count: expected an integer (int32), got 1.5");
        assert_eq!(error(json!({"ratio": 1e39})), "ratio: 1e+39 is out of range for float");
        assert_eq!(
            error(json!({"color": "BLUE"})),
            "color: unknown value \"BLUE\" for enum t.Color; valid values: COLOR_UNSPECIFIED, RED, GREEN"
        );
        assert!(error(json!({"data": "not base64!"})).starts_with("data: expected bytes in base64"));
        assert_eq!(error(json!({"numbers": {"x": "a"}})), "numbers[\"x\"]: the key \"x\" is not a int32");
        assert!(error(json!({"when": "yesterday"})).starts_with("when: expected an RFC 3339 timestamp"));
        assert!(error(json!({"wait": 5})).starts_with("wait: expected a duration in seconds"));
        assert_eq!(
            error(json!({"a": "x", "b": "y"})),
            "b: fields \"a\" and \"b\" are both in oneof \"choice\"; give only one"
        );
        assert_eq!(error(json!({"tags": [null]})), "tags[0]: expected string, got null");
    }

    #[test]
    fn what_proto3_json_accepts_passes() {
        ok(json!({}));
        ok(json!({"name": "x", "userEmail": "a@b", "user_email": "c@d"}));
        ok(json!({"count": "5", "big": "-9223372036854775808", "ratio": "NaN"}));
        ok(json!({"count": 5.0, "big": 1e3, "ratio": "Infinity", "on": false}));
        ok(json!({"color": "GREEN"}));
        ok(json!({"color": 7}));
        ok(json!({"tags": [], "labels": {"a": 1, "b": "2"}, "numbers": {"-5": "x"}}));
        ok(json!({"options": {"surname": "S", "level": null}, "items": [{"surname": "x"}]}));
        ok(json!({"data": "aGk=", "when": "2024-01-02T15:04:05Z", "wait": "1.5s"}));
        ok(json!({"data": "aGk", "meta": {"x": [1, {"y": null}]}, "anyValue": null}));
        ok(json!({"any_value": [1, "two", null], "a": "only one", "b": null}));
        ok(json!({"name": null, "options": null, "tags": null, "labels": null, "when": null}));
    }

    #[test]
    fn syntax_errors_keep_serde_json_s_message() {
        let e = parse("{\"name\":", &request()).unwrap_err();
        assert_eq!(e.to_string(), "EOF while parsing a value at line 1 column 8");
        assert!(parse("{} {}", &request()).unwrap_err().to_string().starts_with("trailing characters"));
    }
}
