//! Foreign services: a process in any language that serves gRPC with server reflection gets registered by the
//! runtime, so the proxy routes to it and the CLI builds commands for it like for any micro service.
//!
//! The runtime asks the process's reflection service (v1, else v1alpha) for its services and the files that define
//! them (with their imports), builds a descriptor set, and registers the services' endpoints and schema under the
//! runtime's name for the service, with the process as the node. The registration has no expiry: the runtime
//! removes it when the process stops.

use micro_core::proto::registry::{Node, Schema as SchemaMsg, Service};
use micro_core::schema::{self, Schema};
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_reflection::pb::{v1, v1alpha};

/// How long one reflection attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a foreign process serves.
#[derive(Clone, Debug)]
pub struct Served {
    /// The gRPC services (fully qualified), reflection and health left out.
    pub services: Vec<String>,
    /// Their schema.
    pub schema: Schema,
}

/// Reads the services of the gRPC server at `address` through its reflection service.
pub async fn discover(address: &str) -> Result<Served, String> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let files = match reflect_v1(channel.clone()).await {
        Ok(found) => found,
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            reflect_v1alpha(channel).await.map_err(|s| format!("reflection: {}", s.message()))?
        }
        Err(status) => return Err(format!("reflection: {}", status.message())),
    };
    let (services, files) = files;
    let set = FileDescriptorSet { file: in_dependency_order(files) };
    let schema = Schema::decode(set.encode_to_vec()).map_err(|e| e.to_string())?;
    let services =
        services.into_iter().filter(|s| !s.starts_with("grpc.reflection.") && !s.starts_with("grpc.health.")).collect();
    Ok(Served { services, schema })
}

type Found = (Vec<String>, HashMap<String, FileDescriptorProto>);

/// The reflection conversation, over any version: a request in, its answer out.
macro_rules! reflect {
    ($name:ident, $pb:ident) => {
        async fn $name(channel: Channel) -> Result<Found, tonic::Status> {
            use $pb::server_reflection_request::MessageRequest;
            use $pb::server_reflection_response::MessageResponse;
            let mut client = $pb::server_reflection_client::ServerReflectionClient::new(channel);
            let ask = |request: MessageRequest| $pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let next = |request: MessageRequest| {
                let tx = tx.clone();
                async move {
                    tx.send(ask(request)).await.map_err(|_| tonic::Status::unavailable("reflection stream closed"))
                }
            };
            // The first request goes out with the call: some servers (grpcio) send no headers before an answer.
            next(MessageRequest::ListServices(String::new())).await?;
            let mut answers =
                client.server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            let services: Vec<String> = match answers.message().await?.and_then(|r| r.message_response) {
                Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
                Some(MessageResponse::ErrorResponse(e)) => return Err(tonic::Status::internal(e.error_message)),
                _ => return Err(tonic::Status::internal("unexpected reflection answer to ListServices")),
            };
            let mut files: HashMap<String, FileDescriptorProto> = HashMap::new();
            let add =
                |files: &mut HashMap<String, FileDescriptorProto>, raw: Vec<Vec<u8>>| -> Result<(), tonic::Status> {
                    for bytes in raw {
                        let file = FileDescriptorProto::decode(bytes.as_slice())
                            .map_err(|e| tonic::Status::internal(format!("bad file descriptor: {e}")))?;
                        files.entry(file.name().to_string()).or_insert(file);
                    }
                    Ok(())
                };
            for service in &services {
                if service.starts_with("grpc.reflection.") {
                    continue;
                }
                next(MessageRequest::FileContainingSymbol(service.clone())).await?;
                match answers.message().await?.and_then(|r| r.message_response) {
                    Some(MessageResponse::FileDescriptorResponse(f)) => add(&mut files, f.file_descriptor_proto)?,
                    Some(MessageResponse::ErrorResponse(e)) => return Err(tonic::Status::internal(e.error_message)),
                    _ => return Err(tonic::Status::internal("unexpected reflection answer to FileContainingSymbol")),
                }
            }
            // Imports the server did not send with the files that need them.
            loop {
                let missing: Vec<String> = files
                    .values()
                    .flat_map(|f| f.dependency.iter())
                    .filter(|d| !files.contains_key(*d))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    break;
                }
                for name in missing {
                    next(MessageRequest::FileByFilename(name.clone())).await?;
                    match answers.message().await?.and_then(|r| r.message_response) {
                        Some(MessageResponse::FileDescriptorResponse(f)) => add(&mut files, f.file_descriptor_proto)?,
                        _ => return Err(tonic::Status::internal(format!("the server does not describe {name}"))),
                    }
                    if !files.contains_key(&name) {
                        return Err(tonic::Status::internal(format!("the server does not describe {name}")));
                    }
                }
            }
            Ok((services, files))
        }
    };
}

reflect!(reflect_v1, v1);
reflect!(reflect_v1alpha, v1alpha);

/// The files with each one after those it imports.
fn in_dependency_order(files: HashMap<String, FileDescriptorProto>) -> Vec<FileDescriptorProto> {
    let files: BTreeMap<String, FileDescriptorProto> = files.into_iter().collect();
    let mut out = Vec::new();
    let mut done = std::collections::HashSet::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, FileDescriptorProto>,
        done: &mut std::collections::HashSet<String>,
        out: &mut Vec<FileDescriptorProto>,
    ) {
        if !done.insert(name.to_string()) {
            return;
        }
        let Some(file) = files.get(name) else { return };
        for dep in &file.dependency {
            visit(dep, files, done, out);
        }
        out.push(file.clone());
    }
    for name in files.keys() {
        visit(name, &files, &mut done, &mut out);
    }
    out
}

/// The registry record of a foreign process: its services' endpoints and schema, with one node at `address`.
pub fn record(name: &str, version: &str, address: &str, served: &Served) -> Service {
    let mut node_metadata = std::collections::HashMap::new();
    for (k, v) in [("server", "grpc"), ("transport", "grpc"), ("protocol", "grpc"), ("registrar", "runtime")] {
        node_metadata.insert(k.to_string(), v.to_string());
    }
    Service {
        name: name.to_string(),
        version: version.to_string(),
        metadata: Default::default(),
        endpoints: schema::endpoints(&served.schema.pool, served.services.iter().map(String::as_str)),
        nodes: vec![Node {
            id: format!("{name}-{}", uuid::Uuid::new_v4()),
            address: address.to_string(),
            port: 0,
            metadata: node_metadata,
        }],
        options: None,
        schema: Some(SchemaMsg { hash: served.schema.hash.clone(), descriptor_set: served.schema.bytes.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, deps: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            dependency: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn imports_come_first() {
        let files: HashMap<String, FileDescriptorProto> =
            [file("a.proto", &["c.proto", "b.proto"]), file("b.proto", &["c.proto"]), file("c.proto", &[])]
                .into_iter()
                .map(|f| (f.name().to_string(), f))
                .collect();
        let names: Vec<String> = in_dependency_order(files).iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, ["c.proto", "b.proto", "a.proto"]);
    }

    /// A reflection-enabled tonic server (the registry's own protos) is discovered with its services and schema.
    #[tokio::test]
    async fn discovers_a_reflecting_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(micro_core::proto::FILE_DESCRIPTOR_SET)
            .with_service_name("registry.Registry")
            .build_v1alpha()
            .unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(reflection)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let served = discover(&address).await.unwrap();
        assert_eq!(served.services, ["registry.Registry"]);
        let rec = record("reg", "latest", &address, &served);
        assert!(rec.endpoints.iter().any(|e| e.name == "Registry.GetService"), "{:?}", rec.endpoints);
        assert_eq!(rec.nodes[0].address, address);
        server.abort();
    }
}
