//! Dynamic calls: any method of any kind (unary, client, server or bidi streaming) with messages built at run time
//! from a schema, over one code path (`Grpc::streaming`).

use crate::Connection;
use bytes::Buf;
use futures::Stream;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Status, Streaming};

/// The largest message a dynamic call sends or accepts: 64 MiB. gRPC's default is 4 MiB; the service library
/// accepts this much too (`micro::MAX_MESSAGE_SIZE`), and the proxy passes messages through whatever their size.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A codec that encodes [`DynamicMessage`]s and decodes them by a message descriptor.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    /// A codec whose decoder produces messages of type `response`.
    pub fn new(response: MessageDescriptor) -> Self {
        Self { response }
    }
}

/// Encodes dynamic messages.
#[derive(Debug)]
pub struct DynamicEncoder;

/// Decodes dynamic messages of one type.
#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // Always Some, even for an empty buffer: an empty buffer is a valid message with every field at its default.
        decode_message(&self.0, src.copy_to_bytes(src.remaining())).map(Some)
    }
}

/// Decodes one response message of type `descriptor` from its encoding.
pub fn decode_message(descriptor: &MessageDescriptor, bytes: bytes::Bytes) -> Result<DynamicMessage, Status> {
    let mut message = DynamicMessage::new(descriptor.clone());
    message
        .merge(bytes)
        .map_err(|e| Status::internal(format!("decoding the response as {}: {e}", descriptor.full_name())))?;
    Ok(message)
}

/// Options of one call.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Metadata sent with the request.
    pub metadata: Vec<(String, String)>,
    /// The deadline, sent as `grpc-timeout`.
    pub timeout: Option<Duration>,
    /// The registered service name, sent as `micro-service` so the proxy routes without guessing.
    pub service: Option<String>,
}

/// A metadata pair that is not valid gRPC metadata.
#[derive(Debug, thiserror::Error)]
#[error("invalid metadata {key:?}: {reason}")]
pub struct MetadataError {
    /// The key.
    pub key: String,
    /// Why it is invalid.
    pub reason: String,
}

/// Calls `method` with a stream of requests and returns the stream of responses. Works for all four kinds:
/// a unary method takes the first request and yields one response.
pub async fn call<S>(
    conn: &Connection,
    method: &MethodDescriptor,
    requests: S,
    options: &CallOptions,
) -> Result<Result<Streaming<DynamicMessage>, Status>, MetadataError>
where
    S: Stream<Item = DynamicMessage> + Send + 'static,
{
    let mut req = conn.request(requests);
    for (k, v) in &options.metadata {
        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|e| MetadataError { key: k.clone(), reason: e.to_string() })?;
        let value =
            MetadataValue::try_from(v.as_str()).map_err(|e| MetadataError { key: k.clone(), reason: e.to_string() })?;
        req.metadata_mut().append(key, value);
    }
    if let Some(service) = &options.service
        && let Ok(v) = MetadataValue::try_from(service.as_str())
    {
        req.metadata_mut().insert(micro_core::metadata::SERVICE_HEADER, v);
    }
    if let Some(t) = options.timeout {
        req.set_timeout(t);
    }
    let path = micro_core::schema::method_path(method);
    let path = match http::uri::PathAndQuery::try_from(path.as_str()) {
        Ok(p) => p,
        Err(e) => return Ok(Err(Status::invalid_argument(format!("malformed method name: {path:?}: {e}")))),
    };
    let mut grpc = tonic::client::Grpc::new(conn.channel())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    if let Err(e) = grpc.ready().await {
        return Ok(Err(Status::unavailable(e.to_string())));
    }
    let codec = DynamicCodec::new(method.output());
    Ok(grpc.streaming(req, path, codec).await.map(|r| r.into_inner()))
}

/// JSON serialization as Micro's: proto field names (snake_case), in field order, with default values included.
/// Map entries are sorted by key, so output is stable from run to run.
pub fn message_to_json(message: &DynamicMessage) -> serde_json::Value {
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    let mut value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or_else(|e| serde_json::Value::String(format!("<unprintable message: {e}>")));
    sort_maps(&mut value, &prost_reflect::ReflectMessage::descriptor(message));
    value
}

/// Sorts the entries of every map field (protobuf maps are unordered) by key, recursively.
fn sort_maps(value: &mut serde_json::Value, descriptor: &prost_reflect::MessageDescriptor) {
    use prost_reflect::Kind;
    let serde_json::Value::Object(object) = value else { return };
    for field in descriptor.fields() {
        let Some(v) = object.get_mut(field.name()) else { continue };
        let Kind::Message(m) = field.kind() else { continue };
        if field.is_map() {
            if let serde_json::Value::Object(map) = v {
                map.sort_keys();
                let value_kind = m.map_entry_value_field().kind();
                if let Kind::Message(inner) = value_kind {
                    map.values_mut().for_each(|x| sort_maps(x, &inner));
                }
            }
        } else if let serde_json::Value::Array(items) = v {
            items.iter_mut().for_each(|x| sort_maps(x, &m));
        } else {
            sort_maps(v, &m);
        }
    }
}
