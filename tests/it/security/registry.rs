//! Finding 1 and 2 of the attack run: registry hijack and anonymous damage. Each test replays the attack through
//! the real server's proxy and asserts that it no longer gets in.

use crate::support::{Platform, block_on, channel};
use echo::pb::echo_server::{Echo, EchoServer};
use echo::pb::{Collected, Everything};
use micro_core::proto::auth::{TokenRequest, auth_client::AuthClient};
use micro_core::proto::registry::{Endpoint, ListRequest, Node, Options, Service, registry_client::RegistryClient};
use std::sync::{Arc, Mutex};
use tonic::{Code, Request, Response, Status, Streaming};

/// A registration of `name` with one node at `address`, declaring `grpc` (e.g. `helloworld.Helloworld`).
fn record(name: &str, node: &str, address: &str, grpc: &str, domain: &str) -> Service {
    Service {
        name: name.into(),
        version: "latest".into(),
        endpoints: vec![Endpoint { name: "X.Call".into(), method: format!("/{grpc}/Call"), ..Default::default() }],
        nodes: vec![Node { id: node.into(), address: address.into(), ..Default::default() }],
        options: Some(Options { ttl: 60, domain: domain.into() }),
        ..Default::default()
    }
}

/// A request with an optional bearer token.
fn req<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(message);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

async fn register(p: &Platform, service: Service, token: Option<&str>) -> Result<(), Status> {
    RegistryClient::new(channel(p).await).register(req(service, token)).await.map(|_| ())
}

async fn deregister(p: &Platform, service: Service, token: Option<&str>) -> Result<(), Status> {
    RegistryClient::new(channel(p).await).deregister(req(service, token)).await.map(|_| ())
}

/// The node ids of `name` in the registry.
fn nodes(p: &Platform, name: &str) -> Vec<(String, String)> {
    let run = p.micro(["get", "service", name, "-o", "json"]);
    if run.code != 0 {
        return Vec::new();
    }
    let json = run.json();
    let mut out = Vec::new();
    for svc in json.as_array().into_iter().flatten() {
        for node in svc["nodes"].as_array().into_iter().flatten() {
            out.push((
                node["id"].as_str().unwrap_or_default().into(),
                node["address"].as_str().unwrap_or_default().into(),
            ));
        }
    }
    out
}

/// Logs in as a service account `id` (secret `secret`) and returns its access token.
async fn login(p: &Platform, id: &str, secret: &str) -> String {
    let token = AuthClient::new(channel(p).await)
        .token(TokenRequest { id: id.into(), secret: secret.into(), ..Default::default() })
        .await
        .expect("the service account logs in")
        .into_inner()
        .token
        .expect("a token");
    token.access_token
}

#[test]
fn anonymous_callers_can_no_longer_register_hijack_or_deregister() {
    let p = Platform::with(&["helloworld"]);
    let before = nodes(&p, "helloworld");
    assert_eq!(before.len(), 1, "{before:?}");
    let (id, address) = before[0].clone();
    block_on(async {
        // Add a node to helloworld, take over its node id, declare its gRPC service, in `micro` and elsewhere.
        let attacks = [
            record("helloworld", "evil-1", "127.0.0.1:9", "x.X", "micro"),
            record("helloworld", &id, "127.0.0.1:9", "x.X", "micro"),
            record("aaa", "aaa-1", "127.0.0.1:9", "helloworld.Helloworld", "micro"),
            record("helloworld", "evil-2", "127.0.0.1:9", "helloworld.Helloworld", "other"),
        ];
        for attack in attacks {
            let err = register(&p, attack.clone(), None).await.expect_err("an anonymous registration");
            assert_eq!(err.code(), Code::Unauthenticated, "{attack:?}: {err:?}");
            assert!(err.message().contains("local credential"), "{}", err.message());
        }
        // Anonymous deregistration of a core service and of helloworld.
        for name in ["store", "auth", "helloworld"] {
            let mut victim = record(name, &id, "", "x.X", "micro");
            victim.version = String::new();
            assert!(deregister(&p, victim, None).await.is_err(), "{name}");
        }
    });
    assert_eq!(nodes(&p, "helloworld"), vec![(id, address)], "helloworld's nodes changed");
    assert!(p.service_names().contains(&"store".to_string()));
    // The call still reaches helloworld.
    assert_eq!(p.micro(["helloworld", "--name=Jane"]).ok().json()["msg"], "Hello Jane");
}

#[test]
fn another_owner_cannot_take_a_service_name_a_core_service_or_a_claimed_grpc_service() {
    let p = Platform::with(&["helloworld"]);
    let (id, _) = nodes(&p, "helloworld")[0].clone();
    p.micro([
        "auth",
        "create",
        "account",
        "intruder",
        "--type",
        "service",
        "--secret",
        "x",
        "--scopes",
        "service:intruder",
    ])
    .ok();
    block_on(async {
        let token = login(&p, "intruder", "x").await;
        let t = Some(token.as_str());
        // Not its service: nodes of helloworld, its node id, a core service.
        for attack in [
            record("helloworld", "evil-1", "127.0.0.1:9", "x.X", "micro"),
            record("helloworld", &id, "127.0.0.1:9", "x.X", "micro"),
            record("store", "store-evil", "127.0.0.1:9", "x.X", "micro"),
        ] {
            let err = register(&p, attack, t).await.expect_err("a registration of another's service");
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        }
        let err = deregister(&p, record("helloworld", &id, "", "x.X", "micro"), t).await.expect_err("deregister");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // A core gRPC service cannot be declared at all.
        let err = register(&p, record("intruder", "i-1", "127.0.0.1:9", "auth.Auth", "micro"), t).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // Its own service may declare helloworld.Helloworld, but routing by path stays with helloworld.
        register(&p, record("intruder", "i-1", "127.0.0.1:9", "helloworld.Helloworld", "micro"), t).await.unwrap();
        use helloworld::pb::{CallRequest, helloworld_client::HelloworldClient};
        let mut client = HelloworldClient::with_interceptor(channel(&p).await, p.bearer());
        for _ in 0..4 {
            let reply = client.call(CallRequest { name: "Jane".into() }).await.expect("routed to helloworld");
            assert_eq!(reply.into_inner().msg, "Hello Jane");
        }
    });
}

#[test]
fn registrations_have_a_maximum_ttl_and_size_and_the_list_is_paged() {
    let p = Platform::start();
    let secret = std::fs::read_to_string(p.path("data").join("local.secret")).expect("the local credential");
    block_on(async {
        let local = |service: Service| {
            let mut r = Request::new(service);
            r.metadata_mut().insert("micro-local-credential", secret.trim().parse().unwrap());
            r
        };
        let mut registry = RegistryClient::new(channel(&p).await);
        // A TTL of 0 (never expires) and one that overflowed `Instant` (a panic before) are refused.
        for ttl in [0, -1, i64::MAX] {
            let mut s = record("ttl", "ttl-1", "127.0.0.1:9", "t.T", "micro");
            s.options.as_mut().unwrap().ttl = ttl;
            let err = registry.register(local(s)).await.expect_err("a bad TTL");
            assert_eq!(err.code(), Code::InvalidArgument, "{ttl}: {err:?}");
            assert!(err.message().contains("ttl must be between 1 and 86400"), "{}", err.message());
        }
        // A 1 MB node is refused, with the limit in the message.
        let mut big = record("big", "big-1", "127.0.0.1:9", "b.B", "micro");
        big.nodes[0].metadata.insert("pad".into(), "x".repeat(1 << 20));
        let err = registry.register(local(big)).await.expect_err("a 1 MB node");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("bytes"), "{}", err.message());
        // 100 records of ~200 KB each (within the record limit) still list, in pages the client follows.
        let pad = "y".repeat(200 * 1024);
        for i in 0..100 {
            let mut s = record(&format!("svc{i:03}"), &format!("n{i}"), "127.0.0.1:9", &format!("p{i}.P"), "micro");
            s.metadata.insert("pad".into(), pad.clone());
            registry.register(local(s)).await.unwrap_or_else(|e| panic!("svc{i:03}: {e:?}"));
        }
        let first = registry.list_services(ListRequest::default()).await.expect("the first page").into_inner();
        assert!(!first.next_page_token.is_empty(), "a 20 MB list comes in pages");
        assert!(first.services.len() < 100);
    });
    // `micro services` follows the pages: every service is listed.
    let names = p.service_names();
    assert!((0..100).all(|i| names.contains(&format!("svc{i:03}"))), "{} names", names.len());
    // The server never panicked.
    assert!(!p.server_log().contains("panicked"), "{}", p.server_log());
}

/// An echo handler that records whether each call carried a bearer token, and whom the proxy said called.
#[derive(Clone, Default)]
struct Spy {
    seen: Arc<Mutex<Vec<(bool, String)>>>,
}

#[tonic::async_trait]
impl Echo for Spy {
    async fn echo(&self, req: Request<Everything>) -> Result<Response<Everything>, Status> {
        let token = req.metadata().get("authorization").is_some();
        let account = req.metadata().get("micro-account-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.seen.lock().unwrap().push((token, account));
        Ok(Response::new(req.into_inner()))
    }

    async fn collect(&self, _: Request<Streaming<Everything>>) -> Result<Response<Collected>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

#[test]
fn the_callers_token_reaches_only_services_trusted_to_act_for_them() {
    let p = Platform::start();
    p.micro(["auth", "create", "account", "spy", "--type", "service", "--secret", "x", "--scopes", "service:spy"]).ok();
    let spy = Spy::default();
    let rt = crate::support::runtime();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = EchoServer::new(spy.clone());
    rt.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder().add_service(server).serve_with_incoming(incoming).await;
    });
    rt.block_on(async {
        let token = login(&p, "spy", "x").await;
        let mut s = record("spy", "spy-1", &address, "echo.Echo", "micro");
        s.endpoints[0] = Endpoint { name: "Echo.Echo".into(), method: "/echo.Echo/Echo".into(), ..Default::default() };
        let descriptor_set = echo::pb::FILE_DESCRIPTOR_SET.to_vec().into();
        s.schema = Some(micro_core::proto::registry::Schema { hash: String::new(), descriptor_set });
        register(&p, s, Some(&token)).await.expect("the service account registers its own service");
    });
    let call = || p.micro(["call", "spy", "Echo.Echo", r#"{"text":"hi"}"#]);
    assert_eq!(call().ok().json()["text"], "hi");
    // While the account is the service's own service account, the admin's token is forwarded.
    assert_eq!(spy.seen.lock().unwrap().last().cloned(), Some((true, "admin".to_string())));
    // Once the account is gone, the service is no longer trusted: the caller is named, the token is withheld.
    p.micro(["auth", "delete", "account", "spy"]).ok();
    assert_eq!(call().ok().json()["text"], "hi");
    assert_eq!(spy.seen.lock().unwrap().last().cloned(), Some((false, "admin".to_string())));
    drop(rt);
}
