//! JSON Schemas of protobuf messages, for the proto3 JSON mapping: what a JSON request must look like to convert
//! into a message (MCP tools publish one as their `inputSchema`, and one of the response as their `outputSchema`).
//!
//! Scalars take their proto3 JSON forms (64-bit integers as a string or an integer, bytes as base64, floats also
//! as `"NaN"`/`"Infinity"`), enums the names of their values, repeated fields arrays, maps objects whose values
//! follow `additionalProperties`, and well-known types their special JSON forms (Timestamp, Duration and
//! FieldMask strings, Struct objects, Value anything, wrappers their inner scalar). Field comments become
//! `description`s. A message already being described further up the tree (recursion) is cut off to an object.

use micro_core::schema;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

/// How deep nested messages are described; deeper ones are any object.
const MAX_DEPTH: usize = 12;

/// The JSON Schema (draft 2020-12 subset) of `message`, an object schema.
pub fn message_schema(message: &MessageDescriptor) -> Map<String, Value> {
    let mut stack = Vec::new();
    match message_value(message, &mut stack) {
        Value::Object(mut o) => {
            if o.get("type") != Some(&json!("object")) {
                // A well-known type at the root (e.g. Empty is an object anyway); MCP wants an object schema.
                o = Map::from_iter([("type".to_string(), json!("object"))]);
            }
            o
        }
        _ => Map::from_iter([("type".to_string(), json!("object"))]),
    }
}

fn message_value(message: &MessageDescriptor, stack: &mut Vec<String>) -> Value {
    if let Some(wkt) = well_known(message) {
        return wkt;
    }
    let name = message.full_name().to_string();
    if stack.contains(&name) || stack.len() >= MAX_DEPTH {
        return json!({ "type": "object", "description": format!("a {} message (recursive; not expanded)", message.name()) });
    }
    stack.push(name);
    let mut properties = Map::new();
    for field in message.fields() {
        properties.insert(field.name().to_string(), field_value(&field, stack));
    }
    stack.pop();
    json!({ "type": "object", "properties": properties, "additionalProperties": false })
}

fn field_value(field: &FieldDescriptor, stack: &mut Vec<String>) -> Value {
    let mut value = if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("a map field's kind is its entry message") };
        let key = entry.map_entry_key_field().kind();
        let mut object = json!({ "type": "object", "additionalProperties": kind_value(&entry.map_entry_value_field().kind(), stack) });
        if let Some(pattern) = key_pattern(&key) {
            object["propertyNames"] = json!({ "pattern": pattern });
        }
        object
    } else if field.is_list() {
        json!({ "type": "array", "items": kind_value(&field.kind(), stack) })
    } else {
        kind_value(&field.kind(), stack)
    };
    if let Some(comment) = schema::field_comment(field)
        && let Value::Object(o) = &mut value
    {
        o.insert("description".into(), Value::String(comment));
    }
    value
}

/// Map keys are strings in JSON; integer and bool keys must look like one.
fn key_pattern(kind: &Kind) -> Option<&'static str> {
    match kind {
        Kind::Bool => Some("^(true|false)$"),
        Kind::String => None,
        _ => Some("^-?[0-9]+$"),
    }
}

fn kind_value(kind: &Kind, stack: &mut Vec<String>) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$",
            "description": "a 64-bit integer, as a decimal string or a number"
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]+$", "minimum": 0,
            "description": "an unsigned 64-bit integer, as a decimal string or a number"
        }),
        Kind::Float | Kind::Double => json!({
            "anyOf": [{ "type": "number" }, { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }]
        }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            json!({ "type": "string", "enum": names })
        }
        Kind::Message(m) => message_value(m, stack),
    }
}

/// The JSON forms of the well-known types, or `None` for any other message.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    let name = message.full_name();
    Some(match name {
        "google.protobuf.Timestamp" => json!({
            "type": "string", "format": "date-time",
            "description": "an RFC 3339 timestamp, e.g. 2024-01-02T15:04:05Z"
        }),
        "google.protobuf.Duration" => json!({
            "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$",
            "description": "a duration in seconds with an `s` suffix, e.g. 1.5s"
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string", "description": "field paths in lowerCamelCase, separated by commas"
        }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({ "description": "any JSON value" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Empty" => json!({ "type": "object", "additionalProperties": false }),
        "google.protobuf.Any" => json!({
            "type": "object", "required": ["@type"], "properties": { "@type": { "type": "string" } },
            "description": "a message of any type: `@type` is its type URL, the other keys its fields"
        }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => kind_value(&Kind::Double, &mut Vec::new()),
        "google.protobuf.Int64Value" => kind_value(&Kind::Int64, &mut Vec::new()),
        "google.protobuf.UInt64Value" => kind_value(&Kind::Uint64, &mut Vec::new()),
        "google.protobuf.Int32Value" => kind_value(&Kind::Int32, &mut Vec::new()),
        "google.protobuf.UInt32Value" => kind_value(&Kind::Uint32, &mut Vec::new()),
        "google.protobuf.BoolValue" => kind_value(&Kind::Bool, &mut Vec::new()),
        "google.protobuf.StringValue" => kind_value(&Kind::String, &mut Vec::new()),
        "google.protobuf.BytesValue" => kind_value(&Kind::Bytes, &mut Vec::new()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    /// A pool compiled from `source` (with the well-known types importable).
    fn pool(source: &str) -> DescriptorPool {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.proto"), source).unwrap();
        let files = protox::compile(["t.proto"], [dir.path()]).unwrap();
        DescriptorPool::from_file_descriptor_set(files).unwrap()
    }

    const SOURCE: &str = r#"
        syntax = "proto3";
        package t;
        import "google/protobuf/timestamp.proto";
        import "google/protobuf/duration.proto";
        import "google/protobuf/field_mask.proto";
        import "google/protobuf/struct.proto";
        import "google/protobuf/any.proto";
        import "google/protobuf/wrappers.proto";
        enum Color { RED = 0; GREEN = 1; }
        message Node {
          // The node's name.
          string name = 1;
          repeated Node children = 2;
        }
        message Req {
          int32 i32 = 1;
          int64 i64 = 2;
          uint64 u64 = 3;
          bytes data = 4;
          Color color = 5;
          repeated string tags = 6;
          map<string, int32> counts = 7;
          map<int64, Node> nodes = 8;
          Node root = 9;
          google.protobuf.Timestamp at = 10;
          google.protobuf.Duration wait = 11;
          google.protobuf.FieldMask mask = 12;
          google.protobuf.Struct meta = 13;
          google.protobuf.Value any_value = 14;
          google.protobuf.ListValue list = 15;
          google.protobuf.Any payload = 16;
          google.protobuf.Int64Value big = 17;
          google.protobuf.BoolValue flag = 18;
          double ratio = 19;
          bool on = 20;
        }
    "#;

    #[test]
    fn every_kind_of_field() {
        let pool = pool(SOURCE);
        let s = Value::Object(message_schema(&pool.get_message_by_name("t.Req").unwrap()));
        let p = &s["properties"];
        assert_eq!(s["type"], "object");
        assert_eq!(p["i32"]["type"], "integer");
        assert_eq!(p["i64"]["type"], json!(["string", "integer"]));
        assert_eq!(p["u64"]["type"], json!(["string", "integer"]));
        assert_eq!(p["data"]["contentEncoding"], "base64");
        assert_eq!(p["color"]["enum"], json!(["RED", "GREEN"]));
        assert_eq!(p["tags"]["items"]["type"], "string");
        assert_eq!(p["counts"]["additionalProperties"]["type"], "integer");
        assert_eq!(p["nodes"]["propertyNames"]["pattern"], "^-?[0-9]+$");
        assert_eq!(p["nodes"]["additionalProperties"]["properties"]["name"]["description"], "The node's name.");
        assert_eq!(p["at"]["format"], "date-time");
        assert_eq!(p["wait"]["type"], "string");
        assert_eq!(p["mask"]["type"], "string");
        assert_eq!(p["meta"]["type"], "object");
        assert!(p["any_value"].get("type").is_none(), "a Value is any JSON");
        assert_eq!(p["list"]["type"], "array");
        assert_eq!(p["payload"]["required"], json!(["@type"]));
        assert_eq!(p["big"]["type"], json!(["string", "integer"]));
        assert_eq!(p["flag"]["type"], "boolean");
        assert_eq!(p["ratio"]["anyOf"][0]["type"], "number");
        assert_eq!(p["on"]["type"], "boolean");
    }

    #[test]
    fn recursion_is_cut_off() {
        let pool = pool(SOURCE);
        let s = Value::Object(message_schema(&pool.get_message_by_name("t.Node").unwrap()));
        let child = &s["properties"]["children"]["items"];
        assert_eq!(child["type"], "object");
        assert!(child.get("properties").is_none(), "{child}");
    }

    #[test]
    fn schemas_accept_what_the_json_mapping_accepts() {
        // A request written to the schema converts; the generated names are the proto field names (the output's).
        let pool = pool(SOURCE);
        let req = pool.get_message_by_name("t.Req").unwrap();
        let s = Value::Object(message_schema(&req));
        let props = s["properties"].as_object().unwrap();
        for f in req.fields() {
            assert!(props.contains_key(f.name()), "{}", f.name());
        }
        let value = json!({
            "i64": "5", "u64": 7, "data": "aGk=", "color": "GREEN", "counts": {"a": 1}, "nodes": {"3": {"name": "x"}},
            "at": "2024-01-02T15:04:05Z", "wait": "1.5s", "mask": "a,b", "meta": {"k": [1]}, "any_value": null,
            "big": "9", "ratio": "NaN"
        });
        prost_reflect::DynamicMessage::deserialize(req, value).unwrap();
    }
}
