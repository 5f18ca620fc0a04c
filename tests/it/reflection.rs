//! gRPC reflection through the proxy (v1 and v1alpha): one address describes every registered service.

use crate::support::{Platform, block_on, channel};
use prost::Message;
use prost_types::FileDescriptorProto;

/// What one reflection conversation found.
#[derive(Debug, Default)]
struct Found {
    services: Vec<String>,
    /// The files answering `FileContainingSymbol helloworld.Helloworld`.
    helloworld_files: Vec<FileDescriptorProto>,
    /// The files answering `FileContainingSymbol echo.Everything`.
    echo_files: Vec<FileDescriptorProto>,
    /// The error code answering an unknown symbol.
    unknown_symbol_error: Option<i32>,
}

/// Asks, in one stream: ListServices, two FileContainingSymbol and an unknown symbol. `$pb` is the version's module.
macro_rules! reflect {
    ($pb:path, $channel:expr) => {{
        use pb::server_reflection_client::ServerReflectionClient;
        use pb::server_reflection_request::MessageRequest;
        use pb::server_reflection_response::MessageResponse;
        use $pb as pb;
        let request = |m: MessageRequest| pb::ServerReflectionRequest { host: String::new(), message_request: Some(m) };
        let requests = vec![
            request(MessageRequest::ListServices(String::new())),
            request(MessageRequest::FileContainingSymbol("helloworld.Helloworld".into())),
            request(MessageRequest::FileContainingSymbol("echo.Everything".into())),
            request(MessageRequest::FileContainingSymbol("nosuch.Thing".into())),
        ];
        let mut client = ServerReflectionClient::new($channel);
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection through the proxy")
            .into_inner();
        let mut found = Found::default();
        let mut answers = 0;
        while let Some(response) = responses.message().await.expect("a reflection response") {
            answers += 1;
            let asked = response.original_request.and_then(|r| r.message_request);
            match (asked, response.message_response) {
                (_, Some(MessageResponse::ListServicesResponse(list))) => {
                    found.services = list.service.into_iter().map(|s| s.name).collect();
                }
                (
                    Some(MessageRequest::FileContainingSymbol(symbol)),
                    Some(MessageResponse::FileDescriptorResponse(files)),
                ) => {
                    let files = files
                        .file_descriptor_proto
                        .iter()
                        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).expect("a file descriptor"))
                        .collect();
                    match symbol.as_str() {
                        "helloworld.Helloworld" => found.helloworld_files = files,
                        "echo.Everything" => found.echo_files = files,
                        other => panic!("files for a symbol not asked for: {other}"),
                    }
                }
                (_, Some(MessageResponse::ErrorResponse(e))) => found.unknown_symbol_error = Some(e.error_code),
                other => panic!("unexpected reflection response: {other:?}"),
            }
        }
        assert_eq!(answers, 4, "one answer per request: {found:?}");
        found
    }};
}

fn check(found: &Found) {
    for service in ["helloworld.Helloworld", "echo.Echo", "registry.Registry", "grpc.health.v1.Health"] {
        assert!(found.services.iter().any(|s| s == service), "{service} missing from {:?}", found.services);
    }
    let mut sorted = found.services.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), found.services.len(), "no duplicates: {:?}", found.services);

    let hello = found
        .helloworld_files
        .iter()
        .find(|f| f.name() == "helloworld.proto")
        .unwrap_or_else(|| panic!("helloworld.proto missing: {:?}", names(&found.helloworld_files)));
    assert_eq!(hello.package(), "helloworld");
    let methods: Vec<&str> = hello.service.iter().flat_map(|s| s.method.iter().map(|m| m.name())).collect();
    assert_eq!(methods, ["Call", "Stream", "PingPong"]);

    // A file comes with its imports, so a client can resolve every type.
    let echo_names = names(&found.echo_files);
    for file in ["echo.proto", "google/protobuf/timestamp.proto", "google/protobuf/duration.proto"] {
        assert!(echo_names.contains(&file.to_string()), "{file} missing from {echo_names:?}");
    }

    assert_eq!(found.unknown_symbol_error, Some(tonic::Code::NotFound as i32), "an unknown symbol is NOT_FOUND");
}

fn names(files: &[FileDescriptorProto]) -> Vec<String> {
    files.iter().map(|f| f.name().to_string()).collect()
}

#[test]
fn v1_lists_and_describes_registered_services() {
    let p = Platform::with(&["helloworld", "echo"]);
    let found = block_on(async { reflect!(tonic_reflection::pb::v1, channel(&p).await) });
    check(&found);
}

#[test]
fn v1alpha_lists_and_describes_registered_services() {
    let p = Platform::with(&["helloworld", "echo"]);
    let found = block_on(async { reflect!(tonic_reflection::pb::v1alpha, channel(&p).await) });
    check(&found);
}

#[test]
fn a_service_that_leaves_leaves_reflection() {
    let p = Platform::with(&["echo"]);
    let mut hello = p.spawn_service("helloworld", crate::support::SHORT_TTL);
    let before = block_on(async { reflect!(tonic_reflection::pb::v1, channel(&p).await) });
    assert!(before.services.iter().any(|s| s == "helloworld.Helloworld"), "{:?}", before.services);
    hello.kill();
    p.wait_until("helloworld expires", |p| !p.service_names().contains(&"helloworld".to_string()));
    let after = block_on(async { reflect!(tonic_reflection::pb::v1, channel(&p).await) });
    assert!(!after.services.iter().any(|s| s == "helloworld.Helloworld"), "{:?}", after.services);
    assert!(after.services.iter().any(|s| s == "echo.Echo"), "{:?}", after.services);
}
