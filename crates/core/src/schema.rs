//! Protobuf schemas: descriptor sets, their hashes, and what micro derives from them.
//!
//! A service registers its schema (a serialized `FileDescriptorSet`) with the registry. From it micro derives the
//! registry's endpoint records (Micro's `Value` trees), the CLI's typed flags and their help text (the proto
//! comments), and the proxy's gRPC reflection answers.

use crate::proto::registry::{Endpoint, Value};
use prost_reflect::{
    DescriptorPool, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor, ServiceDescriptor,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// How deep [`value_tree`] descends into nested messages (as Micro does, to stop at recursive types).
const MAX_DEPTH: usize = 6;

/// A decoded schema: the descriptor bytes, their hash and the descriptor pool.
#[derive(Clone, Debug)]
pub struct Schema {
    /// Hex SHA-256 of [`Schema::bytes`].
    pub hash: String,
    /// The serialized `FileDescriptorSet`.
    pub bytes: bytes::Bytes,
    /// The decoded descriptors.
    pub pool: DescriptorPool,
}

/// A schema that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid schema: {0}")]
pub struct SchemaError(#[from] prost_reflect::DescriptorError);

impl Schema {
    /// Decodes a serialized `FileDescriptorSet`.
    pub fn decode(bytes: impl Into<bytes::Bytes>) -> Result<Self, SchemaError> {
        let bytes = bytes.into();
        let pool = DescriptorPool::decode(bytes.clone())?;
        Ok(Self { hash: hash(&bytes), bytes, pool })
    }
}

/// Hex SHA-256 of a descriptor set: the key under which a schema is stored and cached.
pub fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Micro endpoint name of a method: `<Service>.<Method>`, e.g. `Helloworld.Call`.
pub fn endpoint_name(method: &MethodDescriptor) -> String {
    format!("{}.{}", method.parent_service().name(), method.name())
}

/// The gRPC path of a method, e.g. `/helloworld.Helloworld/Call`.
pub fn method_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// The registry endpoints of the given gRPC services (fully-qualified names) found in `pool`.
///
/// Unknown names are skipped, so a service can pass every name it serves (health and reflection included).
pub fn endpoints<'a>(pool: &DescriptorPool, services: impl IntoIterator<Item = &'a str>) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for name in services {
        let Some(service) = pool.get_service_by_name(name) else { continue };
        out.extend(service.methods().map(|m| endpoint(&m)));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The registry endpoint of one method.
pub fn endpoint(method: &MethodDescriptor) -> Endpoint {
    let mut metadata = HashMap::new();
    if method.is_client_streaming() || method.is_server_streaming() {
        metadata.insert("stream".to_string(), "true".to_string());
    }
    Endpoint {
        name: endpoint_name(method),
        request: Some(value_tree(&method.input())),
        response: Some(value_tree(&method.output())),
        metadata,
        method: method_path(method),
        client_stream: method.is_client_streaming(),
        server_stream: method.is_server_streaming(),
    }
}

/// Micro's `Value` tree of a message: its fields, with nested messages expanded (to a limited depth).
/// A recursive type is expanded once: its second appearance on a path shows only its type name.
pub fn value_tree(message: &MessageDescriptor) -> Value {
    let mut path = vec![message.full_name().to_string()];
    Value { name: message.name().to_string(), r#type: message.name().to_string(), values: fields(message, &mut path) }
}

fn fields(message: &MessageDescriptor, path: &mut Vec<String>) -> Vec<Value> {
    message
        .fields()
        .map(|f| {
            let values = match f.kind() {
                Kind::Message(m)
                    if !f.is_map()
                        && !is_well_known(&m)
                        && path.len() < MAX_DEPTH
                        && !path.iter().any(|p| p == m.full_name()) =>
                {
                    path.push(m.full_name().to_string());
                    let v = fields(&m, path);
                    path.pop();
                    v
                }
                _ => Vec::new(),
            };
            Value { name: f.name().to_string(), r#type: type_name(&f), values }
        })
        .collect()
}

/// Whether a message is one of protobuf's well-known types, which map to a JSON scalar (Timestamp, Duration…).
pub fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// The type of a field as micro shows it: `string`, `int64`, `[]string`, `map[string]string`, `Options`,
/// an enum's name, or a well-known type such as `Timestamp`.
pub fn type_name(field: &FieldDescriptor) -> String {
    if field.is_map()
        && let Kind::Message(entry) = field.kind()
    {
        return format!(
            "map[{}]{}",
            kind_name(&entry.map_entry_key_field().kind()),
            kind_name(&entry.map_entry_value_field().kind())
        );
    }
    let base = kind_name(&field.kind());
    if field.is_list() { format!("[]{base}") } else { base }
}

/// The name of a scalar kind, or of the message or enum type.
pub fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.name().into(),
        Kind::Enum(e) => e.name().into(),
        scalar => keyword(scalar).into(),
    }
}

/// The proto keyword of a kind: a scalar's name (`int64`, `bytes`…), or `message` or `enum`. The one table of
/// scalar names, which help, JSON errors and `micro describe` build theirs on.
pub fn keyword(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

/// The leading comment of the element at `path` in `file`, trimmed, if the schema kept source info.
pub fn comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref().or(location.trailing_comments.as_deref())?;
    let text = text.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The comment of a field.
pub fn field_comment(field: &FieldDescriptor) -> Option<String> {
    comment(&field.parent_file(), field.path())
}

/// The comment of a method.
pub fn method_comment(method: &MethodDescriptor) -> Option<String> {
    comment(&method.parent_file(), method.path())
}

/// The comment of a gRPC service.
pub fn service_comment(service: &ServiceDescriptor) -> Option<String> {
    comment(&service.parent_file(), service.path())
}

/// Finds a method by its gRPC path (`/pkg.Service/Method`).
pub fn find_method(pool: &DescriptorPool, path: &str) -> Option<MethodDescriptor> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Schema {
        Schema::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("core schema decodes")
    }

    #[test]
    fn endpoints_of_registry() {
        let schema = core();
        let eps = endpoints(&schema.pool, ["registry.Registry", "not.There"]);
        let names: Vec<_> = eps.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Registry.Deregister",
                "Registry.GetSchema",
                "Registry.GetService",
                "Registry.ListServices",
                "Registry.Register",
                "Registry.Watch"
            ]
        );
        let watch = eps.iter().find(|e| e.name == "Registry.Watch").unwrap();
        assert!(watch.server_stream && !watch.client_stream);
        assert_eq!(watch.metadata.get("stream").map(String::as_str), Some("true"));
        assert_eq!(watch.method, "/registry.Registry/Watch");
    }

    #[test]
    fn value_tree_expands_nested_and_names_types() {
        let schema = core();
        let service = schema.pool.get_message_by_name("registry.Service").unwrap();
        let tree = value_tree(&service);
        let ty = |n: &str| tree.values.iter().find(|v| v.name == n).unwrap().r#type.clone();
        assert_eq!(ty("metadata"), "map[string]string");
        assert_eq!(ty("endpoints"), "[]Endpoint");
        let options = tree.values.iter().find(|v| v.name == "options").unwrap();
        assert_eq!(options.values.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["ttl", "domain"]);
    }

    #[test]
    fn comments_come_from_source_info() {
        let schema = core();
        let msg = schema.pool.get_message_by_name("registry.GetRequest").unwrap();
        let field = msg.get_field_by_name("service").unwrap();
        assert_eq!(field_comment(&field).as_deref(), Some("The service name."));
        let m = find_method(&schema.pool, "/registry.Registry/GetService").unwrap();
        assert_eq!(method_comment(&m).as_deref(), Some("Get every version of one service."));
    }

    #[test]
    fn hash_is_stable_hex() {
        assert_eq!(hash(b"").len(), 64);
        assert_eq!(hash(b"a"), hash(b"a"));
        assert_ne!(hash(b"a"), hash(b"b"));
    }
}
