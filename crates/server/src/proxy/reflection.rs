//! gRPC server reflection (v1 and v1alpha) for the whole platform, answered by the proxy.
//!
//! The answers come from the schemas in the registry, per namespace (the `micro-namespace` header), plus the core
//! services' own. So grpcurl, Postman and any reflection client discover every service through one address.
//! v1alpha has the same wire format as v1, so it is served by re-encoding its messages.

use micro_core::schema::Schema;
use prost::Message;
use prost_reflect::FileDescriptor;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// What reflection describes: the services and schemas visible in a namespace.
pub trait Catalog: Send + Sync + 'static {
    /// Fully-qualified gRPC service names, sorted.
    fn services(&self, namespace: &str) -> Vec<String>;
    /// The schemas that describe them.
    fn schemas(&self, namespace: &str) -> Vec<Schema>;
}

/// The reflection service over a [`Catalog`].
pub struct Reflection<C> {
    catalog: Arc<C>,
}

impl<C> Clone for Reflection<C> {
    fn clone(&self) -> Self {
        Self { catalog: self.catalog.clone() }
    }
}

impl<C: Catalog> Reflection<C> {
    /// Reflection over `catalog`.
    pub fn new(catalog: Arc<C>) -> Self {
        Self { catalog }
    }

    /// The v1 gRPC service.
    pub fn v1(&self) -> v1::server_reflection_server::ServerReflectionServer<Self> {
        v1::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    /// The v1alpha gRPC service.
    pub fn v1alpha(&self) -> v1alpha::server_reflection_server::ServerReflectionServer<Self> {
        v1alpha::server_reflection_server::ServerReflectionServer::new(self.clone())
    }

    fn answer(&self, namespace: &str, req: v1::ServerReflectionRequest) -> v1::ServerReflectionResponse {
        let message = match req.message_request.clone() {
            None => Err(Status::invalid_argument("empty reflection request")),
            Some(MessageRequest::ListServices(_)) => {
                Ok(MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .catalog
                        .services(namespace)
                        .into_iter()
                        .map(|name| v1::ServiceResponse { name })
                        .collect(),
                }))
            }
            Some(MessageRequest::FileByFilename(name)) => self
                .find(namespace, |s| s.pool.get_file_by_name(&name))
                .ok_or_else(|| Status::not_found(format!("file {name:?} not found"))),
            Some(MessageRequest::FileContainingSymbol(symbol)) => self
                .find(namespace, |s| symbol_file(s, &symbol))
                .ok_or_else(|| Status::not_found(format!("symbol {symbol:?} not found"))),
            Some(MessageRequest::FileContainingExtension(ext)) => self
                .find(namespace, |s| {
                    let msg = s.pool.get_message_by_name(&ext.containing_type)?;
                    Some(msg.get_extension(ext.extension_number as u32)?.parent_file())
                })
                .ok_or_else(|| Status::not_found(format!("extension {} not found", ext.extension_number))),
            Some(MessageRequest::AllExtensionNumbersOfType(ty)) => self
                .catalog
                .schemas(namespace)
                .iter()
                .find_map(|s| s.pool.get_message_by_name(&ty))
                .map(|m| {
                    MessageResponse::AllExtensionNumbersResponse(v1::ExtensionNumberResponse {
                        base_type_name: ty.clone(),
                        extension_number: m.extensions().map(|e| e.number() as i32).collect(),
                    })
                })
                .ok_or_else(|| Status::not_found(format!("type {ty:?} not found"))),
        };
        let message_response = match message {
            Ok(m) => m,
            Err(status) => MessageResponse::ErrorResponse(v1::ErrorResponse {
                error_code: status.code() as i32,
                error_message: status.message().to_string(),
            }),
        };
        v1::ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req),
            message_response: Some(message_response),
        }
    }

    /// The file found by `lookup` in the first schema that has it, with its transitive dependencies.
    fn find(&self, namespace: &str, lookup: impl Fn(&Schema) -> Option<FileDescriptor>) -> Option<MessageResponse> {
        let schemas = self.catalog.schemas(namespace);
        let file = schemas.iter().find_map(lookup)?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        collect(&file, &mut seen, &mut out);
        Some(MessageResponse::FileDescriptorResponse(v1::FileDescriptorResponse { file_descriptor_proto: out }))
    }

    fn stream<Req, Rsp>(
        &self,
        req: Request<Streaming<Req>>,
    ) -> impl Stream<Item = Result<Rsp, Status>> + Send + 'static + use<C, Req, Rsp>
    where
        Req: Message + Default + Send + 'static,
        Rsp: Message + Default + Send + 'static,
    {
        let namespace = req
            .metadata()
            .get(micro_core::metadata::NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or(micro_core::DEFAULT_NAMESPACE)
            .to_string();
        let this = self.clone();
        req.into_inner().map(move |msg| {
            let msg = msg?;
            // Same wire format for v1 and v1alpha: re-encode.
            let req = v1::ServerReflectionRequest::decode(msg.encode_to_vec().as_slice())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let rsp = this.answer(&namespace, req);
            Rsp::decode(rsp.encode_to_vec().as_slice()).map_err(|e| Status::internal(e.to_string()))
        })
    }
}

/// The file that defines a symbol: a service, method, message, field, enum, enum value or extension.
fn symbol_file(schema: &Schema, symbol: &str) -> Option<FileDescriptor> {
    let pool = &schema.pool;
    if let Some(s) = pool.get_service_by_name(symbol) {
        return Some(s.parent_file());
    }
    if let Some(m) = pool.get_message_by_name(symbol) {
        return Some(m.parent_file());
    }
    if let Some(e) = pool.get_enum_by_name(symbol) {
        return Some(e.parent_file());
    }
    if let Some(x) = pool.get_extension_by_name(symbol) {
        return Some(x.parent_file());
    }
    let (parent, member) = symbol.rsplit_once('.')?;
    if let Some(s) = pool.get_service_by_name(parent) {
        return s.methods().any(|m| m.name() == member).then(|| s.parent_file());
    }
    if let Some(m) = pool.get_message_by_name(parent) {
        return m.get_field_by_name(member).map(|_| m.parent_file());
    }
    pool.get_enum_by_name(parent).and_then(|e| e.get_value_by_name(member).map(|_| e.parent_file()))
}

/// Adds `file` and, first, everything it imports, each once.
fn collect(file: &FileDescriptor, seen: &mut HashSet<String>, out: &mut Vec<Vec<u8>>) {
    if !seen.insert(file.name().to_string()) {
        return;
    }
    for dep in file.dependencies() {
        collect(&dep, seen, out);
    }
    out.push(file.file_descriptor_proto().encode_to_vec());
}

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl<C: Catalog> v1::server_reflection_server::ServerReflection for Reflection<C> {
    type ServerReflectionInfoStream = BoxStream<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        req: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(Box::pin(self.stream(req))))
    }
}

#[tonic::async_trait]
impl<C: Catalog> v1alpha::server_reflection_server::ServerReflection for Reflection<C> {
    type ServerReflectionInfoStream = BoxStream<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        req: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(Box::pin(self.stream(req))))
    }
}
