//! A gRPC reflection client: the schema of any gRPC server that offers reflection, as a descriptor pool.
//!
//! One conversation on `ServerReflectionInfo`: `ListServices`, then `FileContainingSymbol` for each service, then
//! `FileByFilename` for any import the answers left out (the well-known types come from prost-reflect when the
//! server does not send them). The `grpc.reflection.v1` service is asked first; a server that does not implement
//! it (UNIMPLEMENTED) is asked through `grpc.reflection.v1alpha`, whose messages are the same on the wire.

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// The method of reflection v1.
pub const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// The method of reflection v1alpha, which older servers (grpcio, grpc-go before 1.57, micro services) offer.
pub const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// The reflection services' own names, which are not asked for their files.
const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Why the schema could not be had through reflection.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The server implements neither reflection v1 nor v1alpha.
    #[error("the server does not offer gRPC reflection")]
    Unsupported,
    /// The conversation failed: the server is unreachable, refused the caller, or answered with an error.
    #[error("reflection failed: {0}")]
    Rpc(Status),
    /// The server answered, but not with usable descriptors.
    #[error("the server's reflection answered {0}")]
    Answer(String),
}

/// The services a server lists and the descriptors of their files.
#[derive(Clone, Debug)]
pub struct Reflected {
    /// The services the server lists (the reflection service itself included), as it lists them.
    pub services: Vec<String>,
    /// Every file the server described, with its imports.
    pub pool: DescriptorPool,
}

/// Asks the server on `channel` for its schema, sending `metadata` with the conversation, which must end within
/// `timeout`.
pub async fn reflect(
    channel: Channel,
    metadata: &MetadataMap,
    timeout: Duration,
) -> Result<Reflected, ReflectionError> {
    let conversation = async {
        for path in [V1, V1ALPHA] {
            match converse(channel.clone(), path, metadata).await {
                Err(ReflectionError::Rpc(status)) if status.code() == Code::Unimplemented => continue,
                other => return other,
            }
        }
        Err(ReflectionError::Unsupported)
    };
    match tokio::time::timeout(timeout, conversation).await {
        Ok(result) => result,
        Err(_) => Err(ReflectionError::Rpc(Status::deadline_exceeded("reflection did not answer in time"))),
    }
}

/// One side of a reflection conversation: a request out, its answer back.
struct Conversation {
    requests: mpsc::Sender<ServerReflectionRequest>,
    responses: tonic::Streaming<ServerReflectionResponse>,
}

impl Conversation {
    async fn ask(&mut self, request: MessageRequest) -> Result<MessageResponse, ReflectionError> {
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        if self.requests.send(request).await.is_err() {
            return Err(ReflectionError::Answer("nothing: it closed the stream".into()));
        }
        match self.responses.message().await {
            Ok(Some(ServerReflectionResponse { message_response: Some(answer), .. })) => Ok(answer),
            Ok(Some(_)) => Err(ReflectionError::Answer("an empty message".into())),
            Ok(None) => Err(ReflectionError::Answer("nothing: it ended the stream".into())),
            Err(status) => Err(ReflectionError::Rpc(status)),
        }
    }
}

/// The files of the answer to one request, or none when the server answered with an error (an unknown symbol).
fn files(answer: MessageResponse) -> Result<Vec<Vec<u8>>, ReflectionError> {
    match answer {
        MessageResponse::FileDescriptorResponse(files) => Ok(files.file_descriptor_proto),
        MessageResponse::ErrorResponse(_) => Ok(Vec::new()),
        other => Err(ReflectionError::Answer(format!("{other:?} to a file request"))),
    }
}

/// Files by name: each decoded (for its name and imports) and as the server sent it (for the pool).
type Files = BTreeMap<String, (FileDescriptorProto, Vec<u8>)>;

/// Adds the files of one answer (a file already there is kept).
fn add(found: &mut Files, files: Vec<Vec<u8>>) -> Result<(), ReflectionError> {
    for raw in files {
        let file = FileDescriptorProto::decode(raw.as_slice())
            .map_err(|e| ReflectionError::Answer(format!("a file descriptor that does not decode: {e}")))?;
        found.entry(file.name().to_string()).or_insert((file, raw));
    }
    Ok(())
}

async fn converse(channel: Channel, path: &'static str, metadata: &MetadataMap) -> Result<Reflected, ReflectionError> {
    let (requests, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    *request.metadata_mut() = metadata.clone();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| ReflectionError::Rpc(Status::from_error(e.into())))?;
    // The first request waits in the channel, so a server that answers only after one sees it.
    let list =
        ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices("".into())) };
    let _ = requests.send(list).await;
    let codec = tonic_prost::ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default();
    let responses = grpc
        .streaming(request, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map_err(ReflectionError::Rpc)?
        .into_inner();
    let mut conversation = Conversation { requests, responses };
    let services = match conversation.responses.message().await {
        Ok(Some(ServerReflectionResponse {
            message_response: Some(MessageResponse::ListServicesResponse(list)),
            ..
        })) => list.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        Ok(Some(ServerReflectionResponse { message_response: Some(MessageResponse::ErrorResponse(e)), .. })) => {
            return Err(ReflectionError::Rpc(Status::new(Code::from_i32(e.error_code), e.error_message)));
        }
        Ok(other) => return Err(ReflectionError::Answer(format!("{other:?} to ListServices"))),
        Err(status) => return Err(ReflectionError::Rpc(status)),
    };

    let mut found = Files::new();
    for service in services.iter().filter(|s| !REFLECTION_SERVICES.contains(&s.as_str())) {
        let answer = conversation.ask(MessageRequest::FileContainingSymbol(service.clone())).await?;
        add(&mut found, files(answer)?)?;
    }
    // Imports the answers left out: asked by name, else prost-reflect's well-known types.
    let known = DescriptorPool::global();
    let mut asked: Vec<String> = Vec::new();
    loop {
        let mut missing: Vec<String> = found
            .values()
            .flat_map(|(f, _)| f.dependency.iter().cloned())
            .filter(|d| !found.contains_key(d) && !asked.contains(d))
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            asked.push(name.clone());
            let answer = conversation.ask(MessageRequest::FileByFilename(name.clone())).await?;
            add(&mut found, files(answer)?)?;
            if !found.contains_key(&name)
                && let Some(file) = known.get_file_by_name(&name)
            {
                let proto = file.file_descriptor_proto().clone();
                let raw = proto.encode_to_vec();
                found.insert(name, (proto, raw));
            }
        }
    }
    drop(conversation);

    // A FileDescriptorSet is its files, each a length-delimited field 1: decoding it keeps custom options.
    let mut set = Vec::new();
    for (_, raw) in found.values() {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
        prost::encoding::encode_varint(raw.len() as u64, &mut set);
        set.extend_from_slice(raw);
    }
    let pool = DescriptorPool::decode(set.as_slice())
        .map_err(|e| ReflectionError::Answer(format!("descriptors that do not fit together: {e}")))?;
    Ok(Reflected { services, pool })
}
