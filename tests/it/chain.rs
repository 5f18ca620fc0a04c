//! The handler chain and the cache of the service library against a real server: the helloworld handler served
//! in-process behind a chain whose tokens the platform's auth verifies (`Auth.Inspect`) and whose call events go
//! to the real broker; and a store-backed cache shared by two cache instances.

use crate::support::{Dirs, Platform, block_on, runtime};
use futures::StreamExt;
use helloworld::pb::helloworld_client::HelloworldClient;
use helloworld::pb::{CallRequest, StreamRequest};
use micro::broker::Broker;
use micro::cache::{Cache, CacheExt, StoreCache};
use micro::chain::{CallEvent, Chain, EventKind, Inspect};
use micro::client::Client;
use micro::store::Store;
use micro_core::proto::auth::{GenerateRequest, Options, TokenRequest};
use micro_core::proto::registry::{Node, Options as RegisterOptions, Schema as SchemaMsg, Service as ServiceRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::Code;

/// A user `id` with `scopes`, created by the admin; returns its access token.
async fn user_token(p: &Platform, id: &str, scopes: &[&str]) -> String {
    let admin = micro_client::Connection::new(&p.addr, "micro").unwrap().with_token(Some(p.token()));
    let secret = format!("{id}-secret-1234");
    let generate = GenerateRequest {
        id: id.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        secret: secret.clone(),
        r#type: "user".into(),
        ..Default::default()
    };
    admin.auth().generate(admin.request(generate)).await.expect("the admin creates the account");
    let login = TokenRequest {
        id: id.into(),
        secret,
        options: Some(Options { namespace: "micro".into() }),
        ..Default::default()
    };
    let token = admin.auth().token(admin.request(login)).await.expect("login").into_inner().token.unwrap();
    token.access_token
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[test]
fn the_chain_verifies_tokens_with_the_platform_and_publishes_call_events() {
    let p = Platform::start();
    block_on(async {
        let jane = user_token(&p, "jane", &["hello:call"]).await;
        let admin = p.token().to_string();
        let client = Client::new(&p.addr, "micro").unwrap().with_token(&admin);
        let broker = Broker::from_client(&client);
        let events = broker.subscribe_stream("helloworld.calls", None).await.expect("subscribed");

        // The helloworld handler behind the chain, served in-process (it cannot register: no credential here).
        let chain = Chain::new()
            .events(broker.clone())
            .log()
            .authorize("Helloworld.Stream", "hello:admin")
            .authorize("Helloworld.*", "hello:call")
            .authenticate(Inspect::new(&Client::new(&p.addr, "micro").unwrap()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(helloworld::service().proxy(p.addr.clone()).layer(chain).serve(listener, async {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap();
        let mut hello = HelloworldClient::new(channel.connect().await.expect("the service answers"));

        // jane has `hello:call`: she may call, twice (the second time her token's account is cached).
        for _ in 0..2 {
            let rsp = hello.call(with_token(CallRequest { name: "Jane".into() }, Some(&jane))).await.expect("called");
            assert_eq!(rsp.into_inner().msg, "Hello Jane");
        }
        // No account, a forged token: UNAUTHENTICATED.
        let e = hello.call(with_token(CallRequest { name: "x".into() }, None)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let e = hello.call(with_token(CallRequest { name: "x".into() }, Some("forged.token.here"))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // Stream needs `hello:admin`, which jane lacks and the admin (scope `admin`) has.
        let e = hello.stream(with_token(StreamRequest { count: 2 }, Some(&jane))).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("\"hello:admin\"") && e.message().contains("jane"), "{}", e.message());
        let rsp = hello.stream(with_token(StreamRequest { count: 2 }, Some(&admin))).await.expect("admitted");
        let (mut stream, mut n) = (rsp.into_inner(), 0);
        while stream.message().await.expect("a message").is_some() {
            n += 1;
        }
        assert_eq!(n, 2);
        // The platform's health check passes through without an account.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.connect().await.unwrap());
        let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
        health.check(check).await.expect("health needs no account");

        // The events arrived in order on `helloworld.calls`.
        let events: Vec<CallEvent> = tokio::time::timeout(
            Duration::from_secs(10),
            events
                .take(9)
                .map(|m| serde_json::from_slice(&m.expect("a message").body).expect("a call event"))
                .collect(),
        )
        .await
        .expect("nine events");
        let seen: Vec<(EventKind, &str, Option<&str>, Option<i32>)> =
            events.iter().map(|e| (e.kind, e.endpoint.as_str(), e.account.as_deref(), e.code)).collect();
        use EventKind::*;
        assert_eq!(
            seen,
            [
                (Started, "Helloworld.Call", Some("jane"), None),
                (Succeeded, "Helloworld.Call", Some("jane"), Some(0)),
                (Started, "Helloworld.Call", Some("jane"), None),
                (Succeeded, "Helloworld.Call", Some("jane"), Some(0)),
                (Failed, "Helloworld.Call", None, Some(Code::Unauthenticated as i32)),
                (Failed, "Helloworld.Call", None, Some(Code::Unauthenticated as i32)),
                (Failed, "Helloworld.Stream", Some("jane"), Some(Code::PermissionDenied as i32)),
                (Started, "Helloworld.Stream", Some("admin"), None),
                (Succeeded, "Helloworld.Stream", Some("admin"), Some(0)),
            ][..],
            "{events:#?}"
        );
        assert!(events[1].duration_ms.is_some() && events[1].call_id == events[0].call_id, "{events:#?}");

        drop((hello, health, channel));
        let _ = stop.send(());
        server.await.unwrap().expect("the service stops cleanly");
    });
}

#[test]
fn a_store_cache_is_shared_by_two_instances() {
    let p = Platform::start();
    block_on(async {
        let client = Client::new(&p.addr, "micro").unwrap().with_token(p.token());
        let a = StoreCache::new(Store::from_client(&client));
        let b = StoreCache::new(Store::from_client(&client));

        a.set_json("greeting", &"hello", Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.get_json::<String>("greeting").await.unwrap().as_deref(), Some("hello"));
        b.delete("greeting").await.unwrap();
        assert_eq!(a.get("greeting").await.unwrap(), None);

        // The store expires values by their TTL.
        a.set_json("brief", &1u32, Duration::from_secs(1)).await.unwrap();
        assert_eq!(b.get_json::<u32>("brief").await.unwrap(), Some(1));
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert_eq!(b.get("brief").await.unwrap(), None, "expired");

        // 20 concurrent callers on each instance: one computation per instance at most, and the second instance
        // usually finds the first one's value. Everyone gets it.
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for cache in [a.clone(), b.clone()] {
            for _ in 0..20 {
                let (cache, runs) = (cache.clone(), runs.clone());
                tasks.push(tokio::spawn(async move {
                    cache
                        .get_or_compute("answer", Duration::from_secs(60), || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Ok::<_, tonic::Status>(42u64)
                        })
                        .await
                }));
            }
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 42);
        }
        let runs = runs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&runs), "{runs} computations for 40 callers on 2 instances");
        // A third instance (another process, say) finds the value without computing.
        let c = StoreCache::new(Store::from_client(&client));
        let v = c.get_or_compute("answer", Duration::from_secs(60), || async { Ok::<_, tonic::Status>(0u64) }).await;
        assert_eq!(v.unwrap(), 42);
    });
    // The values are records of the table `cache`.
    let listed = p.micro(["store", "list", "--table", "cache"]).ok();
    assert_eq!(listed.stdout, "answer\n", "{}", listed.snapshot());
}

/// Registers the helloworld handler served at `address` as the service `helloworld`, as the admin: a service an
/// admin registers is trusted to act for its callers, so the proxy forwards their tokens to it.
async fn register_as_admin(p: &Platform, address: std::net::SocketAddr) {
    let schema = micro::schema::Schema::decode(helloworld::pb::FILE_DESCRIPTOR_SET).unwrap();
    let record = ServiceRecord {
        name: "helloworld".into(),
        version: "latest".into(),
        endpoints: micro::schema::endpoints(&schema.pool, ["helloworld.Helloworld"]),
        nodes: vec![Node {
            id: "helloworld-in-process".into(),
            address: address.to_string(),
            metadata: [("protocol", "grpc"), ("transport", "grpc"), ("server", "grpc")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }],
        options: Some(RegisterOptions { ttl: 120, domain: "micro".into() }),
        schema: Some(SchemaMsg { hash: schema.hash, descriptor_set: schema.bytes }),
        ..Default::default()
    };
    let admin = micro_client::Connection::new(&p.addr, "micro").unwrap().with_token(Some(p.token()));
    admin.registry().register(admin.request(record)).await.expect("the admin registers helloworld");
}

#[test]
fn through_the_proxy_the_chain_verifies_the_callers_token() {
    let p = Platform::start();
    let rt = runtime();
    let _entered = rt.enter(); // connections are made in the runtime
    let jane = rt.block_on(user_token(&p, "jane", &["hello:call"]));
    let chain = Chain::new()
        .authorize("Helloworld.Stream", "hello:admin")
        .authorize("Helloworld.*", "hello:call")
        .authenticate(Inspect::new(&Client::new(&p.addr, "micro").unwrap()));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Served in-process; it cannot register itself (no credential here), so the admin registers it.
    let server = rt.spawn(helloworld::service().proxy(p.addr.clone()).layer(chain).serve(listener, async {
        let _ = stopped.await;
    }));
    rt.block_on(register_as_admin(&p, address));

    // The admin (scope `admin`) may call everything; jane (scope `hello:call`) may call but not stream.
    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"Admin"}"#]).ok();
    assert!(run.stdout.contains("Hello Admin"), "{}", run.snapshot());
    p.micro(["call", "helloworld", "Helloworld.Stream", r#"{"count":1}"#]).ok();
    let jane_cli = |args: &[&str]| p.cli_in(&Dirs::new(), args).env("MICRO_AUTH_TOKEN", &jane).run();
    let run = jane_cli(&["call", "helloworld", "Helloworld.Call", r#"{"name":"Jane"}"#]);
    assert!(run.code == 0 && run.stdout.contains("Hello Jane"), "{}", run.snapshot());
    let run = jane_cli(&["call", "helloworld", "Helloworld.Stream", r#"{"count":1}"#]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(run.stderr.contains("hello:admin") && run.stderr.contains("jane"), "{}", run.snapshot());

    let _ = stop.send(());
    rt.block_on(server).unwrap().expect("the service stops cleanly");
}

#[test]
fn through_the_proxy_the_identity_headers_name_the_caller() {
    let p = Platform::start();
    let rt = runtime();
    let _entered = rt.enter();
    // No token verification: the proxy's `micro-account-id` and `micro-account-issuer` name the caller, without
    // scopes.
    let chain = Chain::new().authorize("Helloworld.Stream", "hello:admin").authenticate_headers();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(helloworld::service().proxy(p.addr.clone()).layer(chain).serve(listener, async {
        let _ = stopped.await;
    }));
    rt.block_on(register_as_admin(&p, address));

    let run = p.micro(["call", "helloworld", "Helloworld.Call", r#"{"name":"Admin"}"#]).ok();
    assert!(run.stdout.contains("Hello Admin"), "{}", run.snapshot());
    // The account the headers name is the admin's, whose scopes the chain does not know.
    let run = p.micro(["call", "helloworld", "Helloworld.Stream", r#"{"count":1}"#]);
    assert_ne!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stderr.contains("the account admin does not have") && run.stderr.contains("scopes are unknown"),
        "{}",
        run.snapshot()
    );
    // Called directly (not through the proxy), without the headers: no account.
    let e = rt
        .block_on(async {
            let channel = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap();
            HelloworldClient::new(channel.connect().await.unwrap()).call(CallRequest { name: "x".into() }).await
        })
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let _ = stop.send(());
    rt.block_on(server).unwrap().expect("the service stops cleanly");
}
