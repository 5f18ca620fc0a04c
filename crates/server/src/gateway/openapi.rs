//! `GET /openapi.json`: an OpenAPI 3.0 document of every service in a namespace, generated from the registry.
//!
//! Each endpoint is a `POST` operation at the path the gateway resolves back to it (`/helloworld/call`,
//! `/registry/list-services`, `/foo/bar/handler/method` for a service `foo.bar`). Request and response bodies are
//! described under `components/schemas` from the protobuf descriptors, named by the messages' full names, with
//! the proto comments as descriptions and the proto3 JSON mapping for types: enums are string enums, 64-bit
//! integers strings, repeated fields arrays, maps objects with `additionalProperties`, bytes base64 strings, and the
//! well-known types their JSON forms (Timestamp a `date-time` string, Duration a string like `1.5s`).
//! Streaming endpoints declare `application/x-ndjson` (and `text/event-stream` for responses).

use micro_core::proto::registry::Service;
use micro_core::schema::{Schema, comment, field_comment, find_method, method_comment, service_comment};
use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The name of the error schema under `components/schemas`.
pub const ERROR_SCHEMA: &str = "micro.api.Error";

/// Kebab case of an identifier: `ListServices` → `list-services`, `HTTPCall` → `http-call`.
pub fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if (prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower))
                && !out.ends_with('-')
            {
                out.push('-');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The gateway path of endpoint `endpoint` (`Handler.Method`) of `service`: `/service/method` when the handler is
/// the service's own name, else `/service/as/segments/handler/method`.
pub fn endpoint_path(service: &str, endpoint: &str) -> String {
    let (handler, method) = endpoint.split_once('.').unwrap_or((endpoint, "call"));
    let same = |a: &str, b: &str| {
        let n = |s: &str| s.chars().filter(|c| *c != '-' && *c != '_').flat_map(char::to_lowercase).collect::<String>();
        n(a) == n(b)
    };
    if !service.contains('.') && same(handler, service) {
        format!("/{service}/{}", kebab(method))
    } else {
        format!("/{}/{}/{}", service.replace('.', "/"), kebab(handler), kebab(method))
    }
}

/// Collects the schemas of messages and enums as they are referenced.
#[derive(Default)]
struct Components {
    schemas: BTreeMap<String, Value>,
    pending: Vec<MessageDescriptor>,
    seen: BTreeSet<String>,
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn with_description(schema: Value, description: Option<String>) -> Value {
    let Some(description) = description else { return schema };
    match schema {
        // Siblings of `$ref` are ignored in OpenAPI 3.0: wrap the reference.
        Value::Object(o) if o.contains_key("$ref") => {
            json!({ "allOf": [Value::Object(o)], "description": description })
        }
        Value::Object(mut o) => {
            o.insert("description".into(), Value::String(description));
            Value::Object(o)
        }
        other => other,
    }
}

impl Components {
    /// A reference to a message's schema, which is generated later.
    fn message(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(wkt) = well_known(message) {
            return wkt;
        }
        let name = message.full_name().to_string();
        if self.seen.insert(name.clone()) {
            self.pending.push(message.clone());
        }
        reference(&name)
    }

    fn enumeration(&mut self, e: &EnumDescriptor) -> Value {
        let name = e.full_name().to_string();
        if self.seen.insert(name.clone()) {
            let values: Vec<Value> = e.values().map(|v| Value::String(v.name().to_string())).collect();
            let schema = json!({ "type": "string", "enum": values });
            let schema = with_description(schema, comment(&e.parent_file(), e.path()));
            self.schemas.insert(name.clone(), schema);
        }
        reference(&name)
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(e) => self.enumeration(e),
            Kind::Message(m) => self.message(m),
        }
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let kind = field.kind();
        let schema = if field.is_map() {
            let value = match &kind {
                Kind::Message(entry) => self.kind(&entry.map_entry_value_field().kind()),
                _ => json!({}),
            };
            json!({ "type": "object", "additionalProperties": value })
        } else if field.is_list() {
            json!({ "type": "array", "items": self.kind(&kind) })
        } else {
            self.kind(&kind)
        };
        with_description(schema, field_comment(field))
    }

    /// Generates the schemas of every referenced message.
    fn drain(&mut self) {
        while let Some(message) = self.pending.pop() {
            let mut properties = Map::new();
            for field in message.fields() {
                let schema = self.field(&field);
                properties.insert(field.name().to_string(), schema);
            }
            let schema = json!({ "type": "object", "properties": properties });
            let schema = with_description(schema, comment(&message.parent_file(), message.path()));
            self.schemas.insert(message.full_name().to_string(), schema);
        }
    }
}

/// The JSON schema of a well-known type, or `None` for other messages.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    let scalar = |t: &str, f: Option<&str>| {
        let mut o = json!({ "type": t, "nullable": true });
        if let Some(f) = f {
            o["format"] = json!(f);
        }
        o
    };
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "format": "duration", "example": "1.5s" }),
        "google.protobuf.FieldMask" => json!({ "type": "string", "example": "a,b.c" }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": true
        }),
        "google.protobuf.DoubleValue" => scalar("number", Some("double")),
        "google.protobuf.FloatValue" => scalar("number", Some("float")),
        "google.protobuf.Int64Value" => scalar("string", Some("int64")),
        "google.protobuf.UInt64Value" => scalar("string", Some("uint64")),
        "google.protobuf.Int32Value" => scalar("integer", Some("int32")),
        "google.protobuf.UInt32Value" => scalar("integer", Some("int64")),
        "google.protobuf.BoolValue" => scalar("boolean", None),
        "google.protobuf.StringValue" => scalar("string", None),
        "google.protobuf.BytesValue" => scalar("string", Some("byte")),
        _ => return None,
    })
}

fn content(media: &[&str], schema: &Value) -> Value {
    Value::Object(media.iter().map(|m| (m.to_string(), json!({ "schema": schema }))).collect())
}

/// The OpenAPI document of `services` (as the registry lists them), with `schema` to look their schemas up.
pub fn document(services: &[Service], schema: impl Fn(&str) -> Option<Schema>) -> Value {
    let mut by_name: BTreeMap<&str, Vec<&Service>> = BTreeMap::new();
    for s in services {
        by_name.entry(s.name.as_str()).or_default().push(s);
    }
    let mut components = Components::default();
    let mut paths = Map::new();
    let mut tags = Vec::new();
    for (name, versions) in by_name {
        let mut done = BTreeSet::new();
        let mut description = None;
        for version in versions {
            let Some(hash) = version.schema.as_ref().map(|s| s.hash.as_str()).filter(|h| !h.is_empty()) else {
                continue;
            };
            let Some(schema) = schema(hash) else { continue };
            for endpoint in &version.endpoints {
                if !done.insert(endpoint.name.clone()) {
                    continue;
                }
                let Some(method) = find_method(&schema.pool, &endpoint.method) else { continue };
                if description.is_none() {
                    description = service_comment(method.parent_service());
                }
                let input = components.message(&method.input());
                let output = components.message(&method.output());
                let request_media: &[&str] =
                    if method.is_client_streaming() { &["application/x-ndjson"] } else { &["application/json"] };
                let response_media: &[&str] = if method.is_server_streaming() {
                    &["application/x-ndjson", "text/event-stream"]
                } else {
                    &["application/json"]
                };
                let mut operation = json!({
                    "tags": [name],
                    "operationId": format!("{name}.{}", endpoint.name),
                    "summary": endpoint.name,
                    "parameters": [{ "$ref": "#/components/parameters/namespace" }],
                    "requestBody": { "content": content(request_media, &input) },
                    "responses": {
                        "200": { "description": "OK", "content": content(response_media, &output) },
                        "default": {
                            "description": "An error",
                            "content": content(&["application/json"], &reference(ERROR_SCHEMA))
                        }
                    }
                });
                let mut notes = Vec::new();
                if let Some(c) = method_comment(&method) {
                    notes.push(c);
                }
                if method.is_client_streaming() {
                    notes.push("The request is a stream: one JSON message per line.".into());
                }
                if method.is_server_streaming() {
                    notes.push(
                        "The response is a stream: one JSON message per line, or Server-Sent Events when \
                         `Accept: text/event-stream`."
                            .into(),
                    );
                }
                if !notes.is_empty() {
                    operation["description"] = Value::String(notes.join("\n\n"));
                }
                paths.insert(endpoint_path(name, &endpoint.name), json!({ "post": operation }));
            }
        }
        let mut tag = json!({ "name": name });
        if let Some(d) = description {
            tag["description"] = Value::String(d);
        }
        tags.push(tag);
    }
    components.drain();
    let mut schemas = components.schemas;
    schemas.insert(
        ERROR_SCHEMA.into(),
        json!({
            "type": "object",
            "description": "An error, as micro answers it.",
            "properties": {
                "id": { "type": "string", "description": "The service that answered." },
                "code": { "type": "integer", "format": "int32", "description": "The HTTP status code." },
                "detail": { "type": "string", "description": "What went wrong." },
                "status": { "type": "string", "description": "The reason phrase of the code." }
            }
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "micro API",
            "version": micro_core::VERSION,
            "description": "The services of one namespace, through the micro API gateway. Requests and responses use \
                            the proto3 JSON mapping; fields may also be given as query parameters."
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {
                "namespace": {
                    "name": "Micro-Namespace",
                    "in": "header",
                    "required": false,
                    "description": "The namespace of the service.",
                    "schema": { "type": "string", "default": micro_core::DEFAULT_NAMESPACE }
                }
            },
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [{}, { "bearer": [] }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::proto::registry::Schema as SchemaMsg;

    fn registry_service(name: &str) -> (Service, Schema) {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let service = Service {
            name: name.into(),
            endpoints: micro_core::schema::endpoints(&schema.pool, ["registry.Registry"]),
            schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: Default::default() }),
            ..Default::default()
        };
        (service, schema)
    }

    /// Every `$ref` in `value` names a schema in `schemas`.
    fn check_refs(value: &Value, schemas: &Map<String, Value>) {
        match value {
            Value::Object(o) => {
                for (k, v) in o {
                    if k == "$ref" {
                        let r = v.as_str().unwrap();
                        if let Some(name) = r.strip_prefix("#/components/schemas/") {
                            assert!(schemas.contains_key(name), "dangling {r}");
                        }
                    } else {
                        check_refs(v, schemas);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| check_refs(v, schemas)),
            _ => {}
        }
    }

    #[test]
    fn kebab_case() {
        assert_eq!(kebab("ListServices"), "list-services");
        assert_eq!(kebab("Call"), "call");
        assert_eq!(kebab("HTTPCall"), "http-call");
        assert_eq!(kebab("GetV2"), "get-v2");
        assert_eq!(kebab("snake_case"), "snake-case");
    }

    #[test]
    fn paths_resolve_back_to_their_endpoints() {
        for (service, endpoint, path) in [
            ("helloworld", "Helloworld.Call", "/helloworld/call"),
            ("registry", "Registry.ListServices", "/registry/list-services"),
            ("greeter", "Helloworld.PingPong", "/greeter/helloworld/ping-pong"),
            ("foo.bar", "Bar.Baz", "/foo/bar/bar/baz"),
            ("ping-pong", "PingPong.Call", "/ping-pong/call"),
        ] {
            assert_eq!(endpoint_path(service, endpoint), path);
            let c = &super::super::resolve::candidates(path)[0];
            assert_eq!((c.service.as_str(), c.endpoint().to_lowercase()), (service, endpoint.to_lowercase()));
        }
    }

    #[test]
    fn document_describes_the_registry() {
        let (service, schema) = registry_service("registry");
        let doc = document(&[service.clone(), service], |h| (h == schema.hash).then(|| schema.clone()));
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 6);
        let op = &paths["/registry/get-service"]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/registry.GetRequest"
        );
        assert_eq!(op["description"], "Get every version of one service.");
        let watch = &paths["/registry/watch"]["post"]["responses"]["200"]["content"];
        assert!(watch.get("text/event-stream").is_some() && watch.get("application/x-ndjson").is_some());

        let schemas = doc["components"]["schemas"].as_object().unwrap();
        check_refs(&doc, schemas);
        let get = &schemas["registry.GetRequest"]["properties"];
        assert_eq!(get["service"]["type"], "string");
        assert_eq!(get["service"]["description"], "The service name.");
        assert_eq!(get["options"]["allOf"][0]["$ref"], "#/components/schemas/registry.Options");
        let options = &schemas["registry.Options"]["properties"];
        assert_eq!(options["ttl"]["type"], "string");
        assert_eq!(options["ttl"]["format"], "int64");
        let svc = &schemas["registry.Service"]["properties"];
        assert_eq!(svc["metadata"]["additionalProperties"]["type"], "string");
        assert_eq!(svc["endpoints"]["type"], "array");
        assert_eq!(svc["endpoints"]["items"]["$ref"], "#/components/schemas/registry.Endpoint");
        assert_eq!(schemas["registry.Schema"]["properties"]["descriptor_set"]["format"], "byte");
        // Recursive messages (Value has Values) are referenced, not expanded.
        assert_eq!(
            schemas["registry.Value"]["properties"]["values"]["items"]["$ref"],
            "#/components/schemas/registry.Value"
        );
        assert!(schemas.contains_key(ERROR_SCHEMA));
        assert_eq!(doc["tags"][0]["name"], "registry");
        assert!(doc["tags"][0]["description"].as_str().unwrap().starts_with("Registry keeps"));
    }

    #[test]
    fn enums_and_well_known_types() {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut c = Components::default();
        let event = schema.pool.get_message_by_name("registry.Event").unwrap();
        c.message(&event);
        c.drain();
        let e = &c.schemas["registry.EventType"];
        assert_eq!(e["type"], "string");
        assert_eq!(e["enum"], json!(["Create", "Delete", "Update"]));
        let pool = prost_reflect::DescriptorPool::global();
        let ts = pool.get_message_by_name("google.protobuf.Timestamp").unwrap();
        assert_eq!(c.message(&ts)["format"], "date-time");
        let d = pool.get_message_by_name("google.protobuf.Duration").unwrap();
        assert_eq!(c.message(&d)["type"], "string");
    }

    #[test]
    fn services_without_schema_are_listed_without_paths() {
        let (mut service, _) = registry_service("bare");
        service.schema = None;
        let doc = document(&[service], |_| None);
        assert_eq!(doc["paths"], json!({}));
        assert_eq!(doc["tags"][0]["name"], "bare");
    }
}
