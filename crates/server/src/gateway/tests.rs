//! In-process tests of the gateway: a registry, a real gRPC server on 127.0.0.1:0 serving the registry service and
//! a small streaming `echo.Echo` service (built from a hand-written descriptor), a [`Proxy`] over them (with the
//! registry also as its in-process core service, as in `micro server`), and the gateway's router driven with
//! `tower::ServiceExt::oneshot`. Calls to `echo` and to a service named `net-registry` cross the network.

use super::*;
use crate::registry::service::RegistryService;
use micro_core::proto::registry::{
    Node, Schema as SchemaMsg, Service as ServiceRecord, registry_server::RegistryServer,
};
use micro_core::schema::Schema;
use prost::Message;
use prost_reflect::Value as PValue;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
    ServiceDescriptorProto, field_descriptor_proto::Type,
};
use serde_json::{Value, json};
use std::pin::Pin;
use std::time::Duration;
use tonic::Status;
use tower::ServiceExt;

/// `package echo; message Ping { int64 stroke = 1; string note = 2; }` and
/// `service Echo { rpc Chat(stream Ping) returns (stream Ping); rpc Sum(stream Ping) returns (Ping); }`.
fn echo_schema() -> Schema {
    let field = |name: &str, number, ty: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(ty as i32),
        label: Some(prost_types::field_descriptor_proto::Label::Optional as i32),
        json_name: Some(name.into()),
        ..Default::default()
    };
    let method = |name: &str, client: bool, server: bool| MethodDescriptorProto {
        name: Some(name.into()),
        input_type: Some(".echo.Ping".into()),
        output_type: Some(".echo.Ping".into()),
        client_streaming: Some(client),
        server_streaming: Some(server),
        ..Default::default()
    };
    let file = FileDescriptorProto {
        name: Some("echo.proto".into()),
        package: Some("echo".into()),
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("Ping".into()),
            field: vec![field("stroke", 1, Type::Int64), field("note", 2, Type::String)],
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Echo".into()),
            method: vec![method("Chat", true, true), method("Sum", true, false)],
            ..Default::default()
        }],
        ..Default::default()
    };
    Schema::decode(FileDescriptorSet { file: vec![file] }.encode_to_vec()).unwrap()
}

type PingStream = Pin<Box<dyn futures::Stream<Item = Result<DynamicMessage, Status>> + Send>>;

/// The metadata the echo service saw, as `authorization|micro-namespace|micro-service`.
fn seen(md: &tonic::metadata::MetadataMap) -> String {
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    format!("{}|{}|{}", get("authorization"), get("micro-namespace"), get("micro-service"))
}

/// The echo service's routes: Chat echoes every ping with `note` set to the metadata it saw; Sum adds strokes.
fn echo_routes(ping: prost_reflect::MessageDescriptor) -> axum::Router {
    let chat_desc = ping.clone();
    let chat = tower::service_fn(move |req: http::Request<Body>| {
        let ping = chat_desc.clone();
        async move {
            let handler = tower::service_fn(|req: tonic::Request<tonic::Streaming<DynamicMessage>>| async move {
                let note = seen(req.metadata());
                let pings = req.into_inner().map(move |p| {
                    p.map(|mut p| {
                        p.set_field_by_name("note", PValue::String(note.clone()));
                        p
                    })
                });
                Ok::<_, Status>(tonic::Response::new(Box::pin(pings) as PingStream))
            });
            let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(ping));
            Ok::<_, Infallible>(grpc.streaming(handler, req).await)
        }
    });
    let sum_desc = ping.clone();
    let sum = tower::service_fn(move |req: http::Request<Body>| {
        let ping = sum_desc.clone();
        async move {
            let out = ping.clone();
            let handler = tower::service_fn(move |req: tonic::Request<tonic::Streaming<DynamicMessage>>| {
                let out = out.clone();
                async move {
                    let mut pings = req.into_inner();
                    let mut total = 0i64;
                    while let Some(p) = pings.next().await {
                        total += p?.get_field_by_name("stroke").and_then(|v| v.as_i64()).unwrap_or_default();
                    }
                    if total < 0 {
                        return Err(Status::invalid_argument(
                            r#"{"id":"echo","code":400,"detail":"negative total","status":"Bad Request"}"#,
                        ));
                    }
                    let mut m = DynamicMessage::new(out);
                    m.set_field_by_name("stroke", PValue::I64(total));
                    Ok::<_, Status>(tonic::Response::new(m))
                }
            });
            let mut grpc = tonic::server::Grpc::new(DynamicCodec::new(ping));
            Ok::<_, Infallible>(grpc.client_streaming(handler, req).await)
        }
    });
    axum::Router::new().route_service("/echo.Echo/Chat", chat).route_service("/echo.Echo/Sum", sum)
}

struct Harness {
    registry: Arc<MemoryRegistry>,
    router: Router,
    gateway: Gateway,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn record(name: &str, address: &str, schema: &Schema, grpc: &str) -> ServiceRecord {
    ServiceRecord {
        name: name.into(),
        version: "latest".into(),
        endpoints: micro_core::schema::endpoints(&schema.pool, [grpc]),
        nodes: vec![Node { id: format!("{name}-1"), address: address.into(), ..Default::default() }],
        schema: Some(SchemaMsg { hash: schema.hash.clone(), descriptor_set: schema.bytes.clone() }),
        ..Default::default()
    }
}

async fn harness(config: GatewayConfig) -> Harness {
    let registry = Arc::new(MemoryRegistry::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let echo = echo_schema();
    let ping = echo.pool.get_message_by_name("echo.Ping").unwrap();
    let routes = tonic::service::Routes::from(echo_routes(ping))
        .add_service(RegistryServer::new(RegistryService::new(registry.clone())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tonic::transport::Server::builder().add_routes(routes).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let core = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
    registry.register("micro", record("registry", &address, &core, "registry.Registry"), Duration::ZERO).unwrap();
    registry.register("micro", record("echo", &address, &echo, "echo.Echo"), Duration::ZERO).unwrap();
    registry.register("micro", record("net-registry", &address, &core, "registry.Registry"), Duration::ZERO).unwrap();
    // As in `micro server`, the registry is also a core service, served in-process for every namespace.
    let core_router = tonic::service::Routes::new(RegistryServer::new(RegistryService::new(registry.clone())))
        .prepare()
        .into_axum_router();
    let proxy = Proxy::new(registry.clone(), core_router, ["registry".to_string()], ["registry.Registry".to_string()]);
    let gateway = Gateway::new(proxy, registry.clone(), config);
    Harness { registry, router: gateway.router(), gateway, _stop: stop }
}

fn req(method: Method, uri: &str, body: &str) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(h: &Harness, req: http::Request<Body>) -> Response {
    tokio::time::timeout(Duration::from_secs(10), h.router.clone().oneshot(req))
        .await
        .expect("answers in time")
        .unwrap()
}

async fn json_of(rsp: Response) -> (StatusCode, Value) {
    let status = rsp.status();
    let bytes = axum::body::to_bytes(rsp.into_body(), usize::MAX).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn text_of(rsp: Response) -> String {
    let bytes = tokio::time::timeout(Duration::from_secs(10), axum::body::to_bytes(rsp.into_body(), usize::MAX))
        .await
        .expect("the body ends in time")
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The next chunk of a streamed body, as text.
async fn next_chunk(stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin)) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a chunk in time");
    String::from_utf8(chunk.expect("a chunk").unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn unary_json_call() {
    let h = harness(GatewayConfig::default()).await;
    let (status, body) =
        json_of(send(&h, req(Method::POST, "/registry/get-service", r#"{"service":"echo"}"#)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["services"][0]["name"], "echo");
    assert_eq!(body["services"][0]["endpoints"][0]["name"], "Echo.Chat");
    // Defaults are emitted, with proto field names.
    assert_eq!(body["services"][0]["nodes"][0]["port"], "0");
    assert!(body["services"][0]["endpoints"][0].get("client_stream").is_some());

    // A GET with query parameters and no body; Micro's camel-case path.
    let (status, body) = json_of(send(&h, req(Method::GET, "/registry/getService?service=registry", "")).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["services"][0]["name"], "registry");
    let (_, list) = json_of(send(&h, req(Method::GET, "/registry/list-services", "")).await).await;
    assert_eq!(list["services"].as_array().unwrap().len(), 3);
    // The same call to a service over the network.
    let (status, body) =
        json_of(send(&h, req(Method::PUT, "/net-registry/registry/get-service", r#"{"service":"echo"}"#)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["services"][0]["name"], "echo");
}

#[tokio::test]
async fn errors_are_micro_json() {
    let h = harness(GatewayConfig::default()).await;
    let (status, body) = json_of(send(&h, req(Method::POST, "/nope", "{}")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["id"], "nope");
    assert_eq!(body["code"], 404);
    assert_eq!(body["status"], "Not Found");
    assert!(body["detail"].as_str().unwrap().contains("not found"));

    // A NotFound from the service itself.
    let (status, body) =
        json_of(send(&h, req(Method::POST, "/registry/get-service", r#"{"service":"x"}"#)).await).await;
    assert_eq!((status, body["id"].as_str()), (StatusCode::NOT_FOUND, Some("registry")));
    assert_eq!(body["detail"], "service \"x\" not found");

    // A field of the wrong type, and JSON that is not JSON.
    let (status, body) = json_of(send(&h, req(Method::POST, "/registry/get-service", r#"{"service":7}"#)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("\"service\""), "{body}");
    let (status, body) = json_of(send(&h, req(Method::POST, "/registry/get-service", "{nope")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("not valid JSON"), "{body}");

    // An unknown endpoint of a known service; a namespace without the service.
    let (status, _) = json_of(send(&h, req(Method::POST, "/registry/frobnicate", "{}")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut r = req(Method::POST, "/echo/sum", "{}");
    r.headers_mut().insert("micro-namespace", HeaderValue::from_static("other"));
    let (status, _) = json_of(send(&h, r).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A proto body is refused.
    let mut r = req(Method::POST, "/registry/list-services", "");
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    assert_eq!(send(&h, r).await.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A service whose node is down.
    let core = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
    let down = record("down", "127.0.0.1:1", &core, "registry.Registry");
    h.registry.register("micro", down, Duration::ZERO).unwrap();
    let (status, body) = json_of(send(&h, req(Method::POST, "/down/registry/list-services", "{}")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["id"], "down");

    // A micro error inside a gRPC status: its detail is unwrapped.
    let (status, body) = json_of(send(&h, req(Method::POST, "/echo/sum", "{\"stroke\":-3}")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"id":"echo","code":400,"detail":"negative total","status":"Bad Request"}));
}

#[tokio::test]
async fn server_stream_as_ndjson_and_sse() {
    let h = harness(GatewayConfig::default()).await;
    let core = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();

    // Over the network…
    let rsp = send(&h, req(Method::GET, "/net-registry/registry/watch?service=w1", "")).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
    let mut body = rsp.into_body().into_data_stream();
    h.registry.register("micro", record("w1", "127.0.0.1:9", &core, "registry.Registry"), Duration::ZERO).unwrap();
    let line = next_chunk(&mut body).await;
    assert!(line.ends_with('\n'), "{line:?}");
    let event: Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(event["action"], "create");
    assert_eq!(event["service"]["name"], "w1");

    // …and in-process.
    let mut r = req(Method::POST, "/registry/watch", r#"{"service":"w2"}"#);
    r.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
    let rsp = send(&h, r).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = rsp.into_body().into_data_stream();
    h.registry.register("micro", record("w2", "127.0.0.1:9", &core, "registry.Registry"), Duration::ZERO).unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        text.push_str(&next_chunk(&mut body).await);
    }
    let data = text.strip_prefix("data: ").unwrap_or_else(|| panic!("{text:?}"));
    let event: Value = serde_json::from_str(data.trim_end()).unwrap();
    assert_eq!((event["action"].as_str(), event["service"]["name"].as_str()), (Some("create"), Some("w2")));

    // Closing the gateway ends open streams.
    h.gateway.close_streams();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ends on close");
}

#[tokio::test]
async fn client_and_bidi_streams_take_ndjson() {
    let h = harness(GatewayConfig::default()).await;
    let (status, body) = json_of(
        send(&h, req(Method::POST, "/echo/sum", "{\"stroke\":1}\n{\"stroke\":\"2\"}\n\n{\"stroke\":3}\n")).await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stroke"], "6");
    let (_, body) = json_of(send(&h, req(Method::POST, "/echo/sum", r#"[{"stroke":4},{"stroke":5}]"#)).await).await;
    assert_eq!(body["stroke"], "9");
    let (status, body) =
        json_of(send(&h, req(Method::POST, "/echo/sum", "{\"stroke\":1}\n{\"stroke\":\"x\"}")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().starts_with("line 2: invalid value for field \"stroke\""), "{body}");

    // Bidi: every line comes back, with the metadata the service saw.
    let mut r = req(Method::POST, "/echo/chat?note=ignored", "{\"stroke\":1}\n{\"stroke\":2}\n");
    r.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t0k"));
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    let rsp = send(&h, r).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    let text = text_of(rsp).await;
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["stroke"], "1");
    assert_eq!(lines[1]["stroke"], "2");
    assert_eq!(lines[0]["note"], "Bearer t0k|micro|echo");

    // The micro-token cookie stands in for a missing Authorization header (from the gateway's own origin).
    let mut r = req(Method::POST, "/echo/chat", "{}");
    r.headers_mut().insert(header::COOKIE, HeaderValue::from_static("a=b; micro-token=c00k1e"));
    r.headers_mut().insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
    let text = text_of(send(&h, r).await).await;
    let line: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["note"], "Bearer c00k1e|micro|echo");
}

#[tokio::test]
async fn cors_and_root() {
    let preflight = |origin: &'static str| {
        http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/registry/list-services")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .body(Body::empty())
            .unwrap()
    };
    // By default, no origin gets CORS headers: browsers let no other origin read answers.
    let h = harness(GatewayConfig::default()).await;
    let rsp = send(&h, preflight("https://app.example")).await;
    assert_eq!(rsp.status(), StatusCode::OK);
    for name in [header::ACCESS_CONTROL_ALLOW_ORIGIN, header::ACCESS_CONTROL_ALLOW_CREDENTIALS] {
        assert!(rsp.headers().get(&name).is_none(), "{name}: {:?}", rsp.headers());
    }
    assert_eq!(text_of(rsp).await, "");

    let rsp = send(&h, req(Method::GET, "/", "")).await;
    assert!(rsp.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    let (status, body) = json_of(rsp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], micro_core::VERSION);
    assert_eq!(send(&h, req(Method::GET, "/favicon.ico", "")).await.status(), StatusCode::OK);

    // Configured origins get CORS with credentials; others get no CORS headers.
    let h = harness(GatewayConfig { cors_origins: vec!["https://ok.example".into()] }).await;
    let rsp = send(&h, preflight("https://ok.example")).await;
    let headers = rsp.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://ok.example");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(headers[header::VARY], "Origin");
    assert!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("Micro-Namespace"));
    assert!(headers[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("POST"));
    let rsp = send(&h, preflight("https://evil.example")).await;
    assert!(rsp.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // `*`: any origin may read, without credentials; configured origins still get them.
    let h = harness(GatewayConfig { cors_origins: vec!["*".into(), "https://ok.example".into()] }).await;
    let rsp = send(&h, preflight("https://evil.example")).await;
    assert_eq!(rsp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(rsp.headers().get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    let rsp = send(&h, preflight("https://ok.example")).await;
    assert_eq!(rsp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://ok.example");
    assert_eq!(rsp.headers()[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
}

/// A request to `uri` with the given headers and body.
fn with_headers(method: Method, uri: &str, headers: &[(&str, &str)], body: &str) -> http::Request<Body> {
    let mut r = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test]
async fn only_json_bodies_are_read_as_json() {
    let h = harness(GatewayConfig::default()).await;
    let get = r#"{"service":"echo"}"#;
    // A cross-site "simple" request's types are refused with a 415 that names the type to send.
    for ty in ["text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=x", "application/grpc"] {
        let r = with_headers(Method::POST, "/registry/get-service", &[("content-type", ty)], get);
        let (status, body) = json_of(send(&h, r).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ty}: {body}");
        assert!(body["detail"].as_str().unwrap().contains("Content-Type: application/json"), "{ty}: {body}");
    }
    // A body without a type is refused too (a Blob without a type is a "simple" request), an empty one is not.
    let (status, body) = json_of(send(&h, with_headers(Method::POST, "/registry/get-service", &[], get)).await).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("no Content-Type"), "{body}");
    let r = with_headers(Method::POST, "/registry/get-service?service=echo", &[], "");
    assert_eq!(send(&h, r).await.status(), StatusCode::OK);
    // JSON types are read.
    for ty in ["application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"] {
        let r = with_headers(Method::POST, "/registry/get-service", &[("content-type", ty)], get);
        let (status, body) = json_of(send(&h, r).await).await;
        assert_eq!((status, &body["services"][0]["name"]), (StatusCode::OK, &json!("echo")), "{ty}: {body}");
    }
    let r = with_headers(Method::POST, "/echo/sum", &[("content-type", "application/x-ndjson")], "{\"stroke\":2}\n");
    assert_eq!(json_of(send(&h, r).await).await.1["stroke"], "2");
    // Forms are read only with an Authorization header, never with the cookie alone.
    let form = &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "Bearer t")];
    let r = with_headers(Method::POST, "/registry/get-service", form, "service=echo");
    let (status, body) = json_of(send(&h, r).await).await;
    assert_eq!((status, &body["services"][0]["name"]), (StatusCode::OK, &json!("echo")), "{body}");
    let cookie_form = &[
        ("content-type", "application/x-www-form-urlencoded"),
        ("cookie", "micro-token=t"),
        ("sec-fetch-site", "same-origin"),
    ];
    let r = with_headers(Method::POST, "/registry/get-service", cookie_form, "service=echo");
    let (status, body) = json_of(send(&h, r).await).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Authorization"), "{body}");
    // The refusal comes before the path is resolved: a missing service answers the same.
    let r = with_headers(Method::POST, "/nosuch", &[("content-type", "text/plain")], "{}");
    assert_eq!(send(&h, r).await.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn cookie_calls_must_come_from_a_trusted_origin() {
    let h = harness(GatewayConfig { cors_origins: vec!["https://ok.example".into()] }).await;
    let chat = |headers: &[(&str, &str)]| {
        let mut all = vec![("content-type", "application/json"), ("host", "127.0.0.1:8080")];
        all.extend_from_slice(headers);
        with_headers(Method::POST, "/echo/chat", &all, "{}")
    };
    let cookie = ("cookie", "micro-token=c00k1e");
    let refused = |status: StatusCode, body: &Value| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["id"], GATEWAY_ID);
        body["detail"].as_str().unwrap().to_string()
    };
    // A foreign origin, no proof at all, a cross-site fetch (GET included): 403, before the service is reached.
    let (status, body) = json_of(send(&h, chat(&[cookie, ("origin", "https://evil.example")])).await).await;
    assert!(refused(status, &body).contains("https://evil.example"), "{body}");
    let (status, body) = json_of(send(&h, chat(&[cookie])).await).await;
    assert!(refused(status, &body).contains("Authorization"), "{body}");
    let get = with_headers(Method::GET, "/echo/chat", &[cookie, ("sec-fetch-site", "cross-site")], "");
    let (status, body) = json_of(send(&h, get).await).await;
    refused(status, &body);
    let (status, body) = json_of(send(&h, chat(&[cookie, ("origin", "null")])).await).await;
    refused(status, &body);
    // The gateway's own origin, a configured one, or a browser's same-origin request: the cookie is used.
    for proof in [
        ("origin", "http://127.0.0.1:8080"),
        ("origin", "https://ok.example"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-site", "none"),
    ] {
        let text = text_of(send(&h, chat(&[cookie, proof])).await).await;
        assert!(text.contains("Bearer c00k1e|micro|echo"), "{proof:?}: {text}");
    }
    // An Authorization header needs no proof: a browser sends it cross-origin only after a CORS preflight.
    let text =
        text_of(send(&h, chat(&[("authorization", "Bearer t0k"), ("origin", "https://evil.example")])).await).await;
    assert!(text.contains("Bearer t0k|micro|echo"), "{text}");
    // Anonymous calls: fine without browser headers, refused from a foreign origin.
    let (status, _) = json_of(send(&h, req(Method::POST, "/registry/list-services", "{}")).await).await;
    assert_eq!(status, StatusCode::OK);
    let r = with_headers(Method::POST, "/registry/list-services", &[("origin", "https://evil.example")], "");
    assert_eq!(send(&h, r).await.status(), StatusCode::FORBIDDEN);
    let r = with_headers(Method::GET, "/registry/list-services", &[("sec-fetch-site", "cross-site")], "");
    assert_eq!(send(&h, r).await.status(), StatusCode::FORBIDDEN);
    // With `*`, anonymous calls from anywhere are allowed, but the cookie still is not.
    let h = harness(GatewayConfig { cors_origins: vec!["*".into()] }).await;
    let r = with_headers(Method::POST, "/registry/list-services", &[("origin", "https://evil.example")], "");
    assert_eq!(send(&h, r).await.status(), StatusCode::OK);
    let (status, body) = json_of(send(&h, chat(&[cookie, ("origin", "https://evil.example")])).await).await;
    refused(status, &body);
}

#[test]
fn own_origins() {
    let uri = http::Uri::from_static("/x");
    let host = |h: &'static str| {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_static(h));
        m
    };
    let none: &[String] = &[];
    assert!(trusted_origin("http://127.0.0.1:8080", &host("127.0.0.1:8080"), &uri, none));
    assert!(trusted_origin("HTTPS://Api.Example", &host("api.example:443"), &uri, none));
    assert!(trusted_origin("http://api.example", &host("api.example"), &uri, none));
    assert!(!trusted_origin("http://127.0.0.1:3000", &host("127.0.0.1:8080"), &uri, none));
    assert!(!trusted_origin("http://evil.example", &host("127.0.0.1:8080"), &uri, none));
    assert!(!trusted_origin("ftp://127.0.0.1:8080", &host("127.0.0.1:8080"), &uri, none));
    assert!(!trusted_origin("null", &host("127.0.0.1:8080"), &uri, none));
    assert!(!trusted_origin("http://127.0.0.1:8080", &HeaderMap::new(), &uri, none));
    // HTTP/2 has no Host header: the request's authority is used.
    let h2 = http::Uri::from_static("http://127.0.0.1:8080/x");
    assert!(trusted_origin("http://127.0.0.1:8080", &HeaderMap::new(), &h2, none));
    assert!(trusted_origin("https://ok.example", &HeaderMap::new(), &uri, &["https://ok.example/".into()]));
    assert!(!trusted_origin("https://any.example", &HeaderMap::new(), &uri, &["*".into()]));
}

#[tokio::test]
async fn openapi_document() {
    let h = harness(GatewayConfig::default()).await;
    let (status, doc) = json_of(send(&h, req(Method::GET, "/openapi.json", "")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["version"], micro_core::VERSION);
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/registry/list-services", "/registry/watch", "/echo/chat", "/echo/sum"] {
        assert!(paths[p]["post"].is_object(), "{p} in {:?}", paths.keys().collect::<Vec<_>>());
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("echo.Ping") && schemas.contains_key("registry.ListResponse"));
    assert_eq!(schemas["echo.Ping"]["properties"]["stroke"]["type"], "string");
    assert!(paths["/echo/sum"]["post"]["requestBody"]["content"]["application/x-ndjson"].is_object());

    // Every documented path works through the gateway (a unary one, checked end to end).
    let (status, _) = json_of(send(&h, req(Method::POST, "/registry/list-services", "{}")).await).await;
    assert_eq!(status, StatusCode::OK);

    // Another namespace has no services.
    let mut r = req(Method::GET, "/openapi.json", "");
    r.headers_mut().insert("micro-namespace", HeaderValue::from_static("empty"));
    let (_, doc) = json_of(send(&h, r).await).await;
    assert_eq!(doc["paths"], json!({}));
}

#[tokio::test]
async fn serve_over_tcp_and_shut_down_with_open_streams() {
    let h = harness(GatewayConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, h.gateway.clone(), async {
        let _ = stopped.await;
    }));
    // A raw HTTP/1.1 client: a unary call, then an open watch.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = r#"{"service":"echo"}"#;
    let request = format!(
        "POST /registry/get-service HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"name\":\"echo\""), "{answer}");

    let mut watch = tokio::net::TcpStream::connect(address).await.unwrap();
    watch.write_all(b"GET /registry/watch HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), watch.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    stop.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), server).await.expect("shuts down with a stream open");
    done.unwrap().unwrap();
}

/// Reads `tcp` until the peer closes it (EOF or an error) and returns what arrived, or `None` if it is still open
/// after `within`.
async fn read_until_closed(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(out)
}

#[tokio::test]
async fn half_open_and_idle_connections_are_closed_but_quiet_streams_are_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness(GatewayConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits =
        conn::Limits { max_connections: 64, handshake: Duration::from_millis(500), idle: Duration::from_millis(800) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_limited(
        listener,
        h.gateway.clone(),
        async {
            let _ = stopped.await;
        },
        limits,
    ));
    let connect = || tokio::net::TcpStream::connect(address);

    // A watch, quiet for longer than every timeout, is not cut: an event still arrives on it.
    let watch_opened = tokio::time::Instant::now();
    let mut watch = connect().await.unwrap();
    watch
        .write_all(b"GET /registry/watch?service=late HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), watch.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A partial request line, a bare HTTP/2 preface and a silent connection are closed within the timeouts.
    let started = std::time::Instant::now();
    let mut partial = connect().await.unwrap();
    partial.write_all(b"GET /registry/list-services HT").await.unwrap();
    let mut preface = connect().await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut silent = connect().await.unwrap();
    for (name, tcp) in [("partial", &mut partial), ("preface", &mut preface), ("silent", &mut silent)] {
        assert!(read_until_closed(tcp, Duration::from_secs(5)).await.is_some(), "{name} is closed");
    }
    assert!(started.elapsed() >= Duration::from_millis(450), "not before the timeout: {:?}", started.elapsed());

    // A keep-alive connection is closed once idle after its answer.
    let mut keepalive = connect().await.unwrap();
    keepalive.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_until_closed(&mut keepalive, Duration::from_secs(5)).await.expect("closed when idle");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("openapi"), "{answer}");

    // The watch has been quiet for more than twice the idle timeout.
    tokio::time::sleep_until(watch_opened + Duration::from_secs(2)).await;
    let core = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
    h.registry.register("micro", record("late", "127.0.0.1:9", &core, "registry.Registry"), Duration::ZERO).unwrap();
    let mut text = String::new();
    while !text.contains("\"late\"") {
        let n = tokio::time::timeout(Duration::from_secs(10), watch.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the watch was closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }

    stop.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), server).await.expect("shuts down with a stream open");
    done.unwrap().unwrap();
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408() {
    use tokio::io::AsyncWriteExt;
    let h = harness(GatewayConfig::default()).await;
    let inner = &h.gateway.inner;
    let gateway = Gateway {
        inner: Arc::new(Inner {
            proxy: inner.proxy.clone(),
            registry: inner.registry.clone(),
            resolver: Resolver::new(inner.registry.clone()),
            config: inner.config.clone(),
            closing: CancellationToken::new(),
            issuers: Issuers::default(),
            body_timeout: Duration::from_millis(300),
        }),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let limits = conn::Limits { max_connections: 8, handshake: Duration::from_secs(30), idle: Duration::from_secs(30) };
    tokio::spawn(serve_limited(listener, gateway, std::future::pending(), limits));
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    tcp.write_all(
        b"POST /registry/get-service HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\nConnection: close\r\n\r\n{\"serv",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await.expect("answered and closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stopped arriving"), "{answer}");
}

#[test]
fn json_bytes_match_the_cli() {
    let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
    let d = schema.pool.get_message_by_name("registry.Service").unwrap();
    let m =
        DynamicMessage::decode(d, record("a", "b", &schema, "registry.Registry").encode_to_vec().as_slice()).unwrap();
    let ours: Value = serde_json::from_slice(&json_bytes(&m)).unwrap();
    assert_eq!(ours, micro_client::dynamic::message_to_json(&m));
}

#[test]
fn origins() {
    let o = HeaderValue::from_static("https://a.example");
    assert_eq!(allowed_origin(&[], Some(&o)), Cors::None);
    assert_eq!(allowed_origin(&[], None), Cors::None);
    assert_eq!(allowed_origin(&["https://a.example/".into()], Some(&o)), Cors::Origin(o.clone()));
    assert_eq!(allowed_origin(&["HTTPS://A.example".into()], Some(&o)), Cors::Origin(o.clone()));
    assert_eq!(allowed_origin(&["https://b.example".into()], Some(&o)), Cors::None);
    assert_eq!(allowed_origin(&["https://b.example".into()], None), Cors::None);
    assert_eq!(allowed_origin(&["*".into()], Some(&o)), Cors::Any);
    assert_eq!(allowed_origin(&["*".into()], None), Cors::Any);
    assert_eq!(allowed_origin(&["*".into(), "https://a.example".into()], Some(&o)), Cors::Origin(o));
    // `Any` never carries credentials; a configured origin always does.
    let any = cors(StatusCode::OK.into_response(), Cors::Any);
    assert_eq!(any.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(any.headers().get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    assert!(cors(StatusCode::OK.into_response(), Cors::None).headers().is_empty());
}

#[test]
fn namespace_from_header_then_token_issuer() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let token = format!("Bearer {}.{}.sig", b64(r#"{"alg":"EdDSA"}"#), b64(r#"{"sub":"1","iss":"tenant"}"#));
    let mut headers = HeaderMap::new();
    assert_eq!(namespace(&headers).unwrap(), "micro");
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&token).unwrap());
    assert_eq!(namespace(&headers).unwrap(), "tenant");
    headers.insert("micro-namespace", HeaderValue::from_static("other"));
    assert_eq!(namespace(&headers).unwrap(), "other");
    for bad in ["Bearer x", "Bearer a.!!!.c", "Basic abc", "Bearer a.e30.c"] {
        assert_eq!(token_issuer(&HeaderValue::from_static(bad)), None, "{bad}");
    }
    // Escaped issuers, and payloads too long for the stack buffer, read the same.
    let long = format!(r#"{{"sub":"{}","iss":"ten\u0061nt"}}"#, "x".repeat(2000));
    let value = HeaderValue::from_str(&format!("Bearer h.{}.s", b64(&long))).unwrap();
    assert_eq!(token_issuer(&value).as_deref(), Some("tenant"));
    // The cache answers as the parser does, for readable and unreadable tokens, also once it has been cleared.
    let issuers = Issuers::default();
    let tokens: Vec<HeaderValue> = (0..Issuers::LIMIT + 10)
        .map(|i| HeaderValue::from_str(&format!("Bearer h.{}.s", b64(&format!(r#"{{"iss":"ns{i}"}}"#)))).unwrap())
        .collect();
    for value in tokens.iter().chain(&tokens[..5]).chain([&value, &HeaderValue::from_static("Bearer x")]) {
        assert_eq!(issuers.of(value), token_issuer(value));
        assert_eq!(issuers.of(value), token_issuer(value));
    }
    assert!(issuers.0.read().unwrap().len() <= Issuers::LIMIT);
}
