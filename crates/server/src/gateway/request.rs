//! Building request messages from HTTP: the JSON body (or a form) and the query parameters, converted with the
//! proto3 JSON mapping and the method's input descriptor.
//!
//! Query parameters are read against the schema, so `?name=123` sets a string and `?count=3` a number; keys may
//! name nested fields as `a.b` or `a[b]`, map entries as `m[key]`, and repeated fields by repeating the key (or as
//! `a[]`). Unknown keys are ignored, as unknown JSON fields are (Micro and grpc-gateway ignore them too). When both
//! the query and the body set fields, the body's message is merged over the query's with protobuf merge semantics:
//! fields the body sets win, repeated fields are concatenated.
//!
//! A body that is not JSON, or a field of the wrong type, is a 400 that names the field (`options.ttl`).

use super::error::ApiError;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

/// The conversion options: unknown fields are ignored.
const OPTIONS: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(false);

/// Decodes `%XX` escapes (and `+` as a space, in query strings and forms). Bad escapes are kept as they are.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The `key=value` pairs of a query string or form body, decoded.
pub fn parse_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = String::from_utf8_lossy(&percent_decode(k.as_bytes(), true)).into_owned();
            let v = String::from_utf8_lossy(&percent_decode(v.as_bytes(), true)).into_owned();
            (k, v)
        })
        .collect()
}

/// The field path of a query key: `a.b`, `a[b]` and `a[]` (the last marks an append).
fn key_path(key: &str) -> Vec<&str> {
    key.split(['.', '[', ']']).filter(|s| !s.is_empty()).collect()
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message.get_field_by_name(name).or_else(|| message.get_field_by_json_name(name))
}

/// The JSON value of one query value for a field of kind `kind`.
fn scalar(kind: &Kind, raw: &str) -> Value {
    match kind {
        Kind::Bool => match raw {
            "" | "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => Value::String(raw.to_string()),
        },
        Kind::Enum(e) => match raw.parse::<i64>() {
            Ok(n) if e.get_value_by_name(raw).is_none() => Value::from(n),
            _ => Value::String(raw.to_string()),
        },
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue" => Value::String(raw.to_string()),
            "google.protobuf.BoolValue" => scalar(&Kind::Bool, raw),
            _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        },
        // Numbers are accepted as strings by the proto3 JSON mapping, 64-bit ones without loss.
        _ => Value::String(raw.to_string()),
    }
}

/// Sets the field at `path` of `object` (a message of type `message`) from a query value. Unknown fields are
/// skipped.
fn set(object: &mut Map<String, Value>, message: &MessageDescriptor, path: &[&str], raw: &str) {
    let Some((name, rest)) = path.split_first() else { return };
    let Some(field) = find_field(message, name) else { return };
    let key = field.name().to_string();
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else { return };
        let value_kind = entry.map_entry_value_field().kind();
        let Some((map_key, rest)) = rest.split_first() else {
            // `?labels={"a":"b"}`: the whole map as JSON.
            object.insert(key, serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())));
            return;
        };
        let map = object.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !map.is_object() {
            *map = Value::Object(Map::new());
        }
        let Value::Object(map) = map else { return };
        match (&value_kind, rest.is_empty()) {
            (_, true) => {
                map.insert(map_key.to_string(), scalar(&value_kind, raw));
            }
            (Kind::Message(m), false) if !micro_core::schema::is_well_known(m) => {
                let inner = map.entry(map_key.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if !inner.is_object() {
                    *inner = Value::Object(Map::new());
                }
                if let Value::Object(inner) = inner {
                    set(inner, m, rest, raw);
                }
            }
            _ => {}
        }
        return;
    }
    if let Kind::Message(m) = &kind
        && !rest.is_empty()
        && !field.is_list()
        && !micro_core::schema::is_well_known(m)
    {
        let inner = object.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if !inner.is_object() {
            *inner = Value::Object(Map::new());
        }
        if let Value::Object(inner) = inner {
            set(inner, m, rest, raw);
        }
        return;
    }
    if !rest.is_empty() {
        return;
    }
    let value = scalar(&kind, raw);
    if field.is_list() {
        let list = object.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        if let Value::Array(list) = list {
            list.push(value);
        }
    } else {
        object.insert(key, value);
    }
}

/// The deepest field path a query key may name; deeper keys are ignored (as unknown ones are).
const MAX_KEY_DEPTH: usize = 32;

/// The JSON object that query (or form) pairs describe, for messages of type `message`.
pub fn pairs_to_json(message: &MessageDescriptor, pairs: &[(String, String)]) -> Map<String, Value> {
    let mut object = Map::new();
    for (k, v) in pairs {
        let path = key_path(k);
        if path.len() <= MAX_KEY_DEPTH {
            set(&mut object, message, &path, v);
        }
    }
    object
}

/// Removes serde_json's position suffix, which points into a document the client did not write.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    }
}

/// Finds the first field of `object` (for `message`) that does not convert, as `(path, reason)`.
fn locate(message: &MessageDescriptor, object: &Map<String, Value>, prefix: &str) -> Option<(String, String)> {
    for (key, value) in object {
        let Some(field) = find_field(message, key) else { continue };
        let single = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        let Err(error) = DynamicMessage::deserialize_with_options(message.clone(), single, &OPTIONS) else {
            continue;
        };
        let path = if prefix.is_empty() { field.name().to_string() } else { format!("{prefix}.{}", field.name()) };
        let kind = field.kind();
        let nested = match (&kind, value) {
            (Kind::Message(m), Value::Object(inner)) if field.is_map() => {
                let value_field = m.map_entry_value_field();
                inner.iter().find_map(|(k, v)| match (value_field.kind(), v) {
                    (Kind::Message(vm), Value::Object(o)) if !micro_core::schema::is_well_known(&vm) => {
                        locate(&vm, o, &format!("{path}[{k}]"))
                    }
                    _ => None,
                })
            }
            (Kind::Message(m), Value::Object(inner)) if !field.is_list() && !micro_core::schema::is_well_known(m) => {
                locate(m, inner, &path)
            }
            (_, Value::Array(items)) if field.is_list() => items.iter().enumerate().find_map(|(i, item)| {
                let at = format!("{path}[{i}]");
                match (&kind, item) {
                    (Kind::Message(m), Value::Object(o)) if !micro_core::schema::is_well_known(m) => {
                        if let Some(found) = locate(m, o, &at) {
                            return Some(found);
                        }
                    }
                    _ => {}
                }
                let one = Value::Object(Map::from_iter([(key.clone(), Value::Array(vec![item.clone()]))]));
                DynamicMessage::deserialize_with_options(message.clone(), one, &OPTIONS)
                    .err()
                    .map(|e| (at, strip_position(&e.to_string()).to_string()))
            }),
            _ => None,
        };
        return Some(nested.unwrap_or_else(|| (path, strip_position(&error.to_string()).to_string())));
    }
    None
}

/// Converts a JSON value to a message of type `message`, naming the field that does not convert.
pub fn from_json(message: &MessageDescriptor, value: Value, id: &str) -> Result<DynamicMessage, ApiError> {
    let Value::Object(object) = value else {
        return Err(ApiError::bad_request(id, format!("the request must be a JSON object, got {}", json_kind(&value))));
    };
    match DynamicMessage::deserialize_with_options(message.clone(), Value::Object(object.clone()), &OPTIONS) {
        Ok(m) => Ok(m),
        Err(e) => Err(field_error(message, &object, id, &e.to_string())),
    }
}

fn field_error(message: &MessageDescriptor, object: &Map<String, Value>, id: &str, fallback: &str) -> ApiError {
    match locate(message, object, "") {
        Some((path, reason)) => ApiError::bad_request(id, format!("invalid value for field \"{path}\": {reason}")),
        None => ApiError::bad_request(id, format!("invalid request: {}", strip_position(fallback))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts JSON text to a message, parsing straight into the message when it is valid.
pub fn from_json_bytes(message: &MessageDescriptor, body: &[u8], id: &str) -> Result<DynamicMessage, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let direct = DynamicMessage::deserialize_with_options(message.clone(), &mut de, &OPTIONS).and_then(|m| {
        de.end()?;
        Ok(m)
    });
    match direct {
        Ok(m) => Ok(m),
        Err(direct_error) => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(id, format!("the request body is not valid JSON: {e}")))?;
            match value {
                Value::Object(object) => Err(field_error(message, &object, id, &direct_error.to_string())),
                other => Err(ApiError::bad_request(
                    id,
                    format!("the request must be a JSON object, got {}", json_kind(&other)),
                )),
            }
        }
    }
}

/// Where the fields of a request come from.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The query string, without `?`.
    pub query: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// Whether the body is a form (`application/x-www-form-urlencoded`) rather than JSON.
    pub form: bool,
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

/// The request message of a unary or server-streaming call.
pub fn message(message: &MessageDescriptor, input: Input<'_>, id: &str) -> Result<DynamicMessage, ApiError> {
    let mut pairs = parse_pairs(input.query);
    if input.form {
        pairs.extend(parse_pairs(&String::from_utf8_lossy(input.body)));
    }
    let from_query = if pairs.is_empty() {
        None
    } else {
        Some(
            from_json(message, Value::Object(pairs_to_json(message, &pairs)), id)
                .map_err(|e| in_query(e, input.form))?,
        )
    };
    if input.form || is_blank(input.body) {
        return Ok(from_query.unwrap_or_else(|| DynamicMessage::new(message.clone())));
    }
    let from_body = from_json_bytes(message, input.body, id)?;
    Ok(merge(from_query, from_body))
}

/// The request messages of a client- or bidi-streaming call: NDJSON (one JSON object per line) or a JSON array.
/// Query parameters apply to every message; a query alone makes one message.
pub fn messages(message: &MessageDescriptor, input: Input<'_>, id: &str) -> Result<Vec<DynamicMessage>, ApiError> {
    let pairs = parse_pairs(input.query);
    let from_query = if pairs.is_empty() {
        None
    } else {
        Some(from_json(message, Value::Object(pairs_to_json(message, &pairs)), id).map_err(|e| in_query(e, false))?)
    };
    let text = std::str::from_utf8(input.body)
        .map_err(|e| ApiError::bad_request(id, format!("the request body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(from_query.into_iter().collect());
    }
    let mut out = Vec::new();
    if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(trimmed)
            .map_err(|e| ApiError::bad_request(id, format!("the request body is not a JSON array: {e}")))?;
        for (i, item) in items.into_iter().enumerate() {
            let m = from_json(message, item, id).map_err(|e| at_message(e, "message", i))?;
            out.push(merge(from_query.clone(), m));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m = from_json_bytes(message, line.as_bytes(), id).map_err(|e| at_message(e, "line", i))?;
            out.push(merge(from_query.clone(), m));
        }
    }
    Ok(out)
}

fn in_query(mut e: ApiError, form: bool) -> ApiError {
    e.detail = format!("{}: {}", if form { "in the query or form" } else { "in the query" }, e.detail);
    e
}

fn at_message(mut e: ApiError, what: &str, index: usize) -> ApiError {
    e.detail = format!("{what} {}: {}", index + 1, e.detail);
    e
}

/// `over` merged over `base` (protobuf merge: set fields win, repeated fields are concatenated).
fn merge(base: Option<DynamicMessage>, over: DynamicMessage) -> DynamicMessage {
    match base {
        None => over,
        Some(mut base) => {
            // Both messages have the same descriptor, so merging the encoding cannot fail; keep `over` if it does.
            match base.merge(over.encode_to_vec().as_slice()) {
                Ok(()) => base,
                Err(_) => over,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::schema::Schema;
    use serde_json::json;

    fn desc(name: &str) -> MessageDescriptor {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        schema.pool.get_message_by_name(name).unwrap()
    }

    fn json_of(m: &DynamicMessage) -> Value {
        micro_client::dynamic::message_to_json(m)
    }

    fn input<'a>(query: &'a str, body: &'a str) -> Input<'a> {
        Input { query, body: body.as_bytes(), form: false }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%20b+c", true), b"a b c");
        assert_eq!(percent_decode(b"a%20b+c", false), b"a b+c");
        assert_eq!(percent_decode(b"%zz%4", true), b"%zz%4");
        assert_eq!(percent_decode(b"%", true), b"%");
        assert_eq!(percent_decode(b"%41", true), b"A");
        assert_eq!(
            parse_pairs("a=1&b&&c=x%3Dy"),
            [("a".into(), "1".into()), ("b".into(), "".into()), ("c".into(), "x=y".into())]
        );
    }

    #[test]
    fn query_parameters_follow_the_schema() {
        let m = message(&desc("registry.GetRequest"), input("service=123&options.ttl=5&options[domain]=x", ""), "t")
            .unwrap();
        assert_eq!(json_of(&m), json!({"service":"123","options":{"ttl":"5","domain":"x"}}));
        // lowerCamelCase names, maps, repeated fields, unknown keys ignored.
        let q = "name=a&metadata[k]=v&metadata.j=w&endpoints[]=x&nodes=bad&utm_source=z&descriptorSet=AQI%3D";
        let m = pairs_to_json(&desc("registry.Service"), &parse_pairs(q));
        assert_eq!(m.get("metadata"), Some(&json!({"k":"v","j":"w"})));
        assert_eq!(m.get("name"), Some(&json!("a")));
        assert!(!m.contains_key("utm_source"));
        let m = pairs_to_json(&desc("registry.Schema"), &parse_pairs("descriptorSet=AQI%3D&hash=h"));
        assert_eq!(Value::Object(m), json!({"descriptor_set":"AQI=","hash":"h"}));
    }

    #[test]
    fn deep_query_keys_are_ignored() {
        let key = vec!["options"; 100_000].join(".");
        let m = pairs_to_json(&desc("registry.GetRequest"), &[(key, "x".into())]);
        assert!(m.is_empty());
    }

    #[test]
    fn body_wins_over_query_and_repeated_fields_concatenate() {
        let m = message(
            &desc("registry.GetRequest"),
            input("service=q&options.domain=d", r#"{"service":"b","options":{"ttl":"7"}}"#),
            "t",
        )
        .unwrap();
        assert_eq!(json_of(&m), json!({"service":"b","options":{"ttl":"7","domain":"d"}}));
    }

    #[test]
    fn empty_body_gives_an_empty_message_and_camel_case_is_accepted() {
        let m = message(&desc("registry.GetRequest"), input("", "  \n"), "t").unwrap();
        assert_eq!(json_of(&m), json!({"service":""}));
        let m = message(&desc("registry.Schema"), input("", r#"{"descriptorSet":"AQI="}"#), "t").unwrap();
        assert_eq!(json_of(&m)["descriptor_set"], json!("AQI="));
        let m = message(&desc("registry.GetRequest"), input("", r#"{"service":"s","unknown":1}"#), "t").unwrap();
        assert_eq!(json_of(&m)["service"], json!("s"));
    }

    #[test]
    fn errors_name_the_field() {
        let d = desc("registry.GetRequest");
        let e = message(&d, input("", r#"{"service": 5}"#), "svc").unwrap_err();
        assert_eq!((e.code, e.id.as_str()), (400, "svc"));
        assert!(e.detail.contains("field \"service\""), "{}", e.detail);
        let e = message(&d, input("", r#"{"options": {"ttl": "many"}}"#), "svc").unwrap_err();
        assert!(e.detail.contains("field \"options.ttl\""), "{}", e.detail);
        let e = message(&d, input("options.ttl=many", ""), "svc").unwrap_err();
        assert!(e.detail.contains("in the query") && e.detail.contains("options.ttl"), "{}", e.detail);
        let e = message(&d, input("", r#"{"service": "x""#), "svc").unwrap_err();
        assert!(e.detail.contains("not valid JSON"), "{}", e.detail);
        let e = message(&d, input("", "[1]"), "svc").unwrap_err();
        assert!(e.detail.contains("JSON object"), "{}", e.detail);
        let e = message(&d, input("", r#"{"a":1} {"b":2}"#), "svc").unwrap_err();
        assert!(e.detail.contains("not valid JSON"), "{}", e.detail);
        // Repeated and map fields point at the element.
        let e = message(&desc("registry.ListResponse"), input("", r#"{"services":[{"name":"a"},{"name":1}]}"#), "s")
            .unwrap_err();
        assert!(e.detail.contains("field \"services[1].name\""), "{}", e.detail);
        let e = message(&desc("registry.Service"), input("", r#"{"metadata":{"a":1}}"#), "s").unwrap_err();
        assert!(e.detail.contains("field \"metadata\""), "{}", e.detail);
        let e = message(&desc("registry.Node"), input("", r#"{"port":[1]}"#), "s").unwrap_err();
        assert!(e.detail.contains("field \"port\""), "{}", e.detail);
    }

    #[test]
    fn forms_are_fields() {
        let i = Input { query: "options.ttl=3", body: b"service=f+x", form: true };
        let m = message(&desc("registry.GetRequest"), i, "t").unwrap();
        assert_eq!(json_of(&m), json!({"service":"f x","options":{"ttl":"3","domain":""}}));
    }

    #[test]
    fn streams_of_messages() {
        let d = desc("registry.GetRequest");
        let ms = messages(&d, input("options.domain=d", "{\"service\":\"a\"}\n\n{\"service\":\"b\"}\n"), "t").unwrap();
        let names: Vec<_> = ms.iter().map(|m| json_of(m)["service"].clone()).collect();
        assert_eq!(names, [json!("a"), json!("b")]);
        assert_eq!(json_of(&ms[1])["options"]["domain"], json!("d"));
        let ms = messages(&d, input("", r#"[{"service":"a"},{"service":"b"},{}]"#), "t").unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(messages(&d, input("", ""), "t").unwrap().len(), 0);
        assert_eq!(messages(&d, input("service=x", ""), "t").unwrap().len(), 1);
        let e = messages(&d, input("", "{\"service\":\"a\"}\n{\"service\":2}"), "t").unwrap_err();
        assert!(e.detail.starts_with("line 2:") && e.detail.contains("\"service\""), "{}", e.detail);
        let e = messages(&d, input("", r#"[{"service":"a"},{"service":2}]"#), "t").unwrap_err();
        assert!(e.detail.starts_with("message 2:"), "{}", e.detail);
    }
}
