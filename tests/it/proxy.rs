//! The gRPC proxy: plain generated tonic clients reach services through it (routed by the gRPC path, without any
//! micro header), every kind of RPC is forwarded, and statuses pass through intact.

use crate::support::{Platform, SHORT_TTL, block_on, channel};
use echo::pb::Everything;
use echo::pb::echo_client::EchoClient;
use helloworld::pb::helloworld_client::HelloworldClient;
use helloworld::pb::{CallRequest, CallResponse, Ping, StreamRequest};
use micro::client::Client;
use tokio_stream::StreamExt;
use tonic::Code;

#[test]
fn a_plain_generated_client_calls_helloworld_through_the_proxy() {
    let p = Platform::with(&["helloworld"]);
    let msg = block_on(async {
        // Only the standard authorization header is added: no micro routing header.
        let mut client = HelloworldClient::with_interceptor(channel(&p).await, p.bearer());
        client.call(CallRequest { name: "Jane".into() }).await.expect("Helloworld.Call").into_inner().msg
    });
    assert_eq!(msg, "Hello Jane");
}

#[test]
fn unary_server_client_and_bidi_streams_are_forwarded() {
    let p = Platform::with(&["helloworld", "echo"]);
    block_on(async {
        let mut hello = HelloworldClient::with_interceptor(channel(&p).await, p.bearer());

        // Unary.
        let reply = hello.call(CallRequest { name: "unary".into() }).await.expect("Call").into_inner();
        assert_eq!(reply.msg, "Hello unary");

        // Server streaming.
        let stream = hello.stream(StreamRequest { count: 5 }).await.expect("Stream").into_inner();
        let counts: Vec<i64> = stream.map(|m| m.expect("a stream message").count).collect().await;
        assert_eq!(counts, [0, 1, 2, 3, 4]);

        // Bidi, in lock step: each pong arrives before the next ping is sent, so nothing is buffered on the way.
        let (tx, rx) = tokio::sync::mpsc::channel::<Ping>(1);
        tx.send(Ping { stroke: 1 }).await.expect("send the first ping");
        let mut pongs =
            hello.ping_pong(tokio_stream::wrappers::ReceiverStream::new(rx)).await.expect("PingPong").into_inner();
        for stroke in 1..=3 {
            if stroke > 1 {
                tx.send(Ping { stroke }).await.expect("send a ping");
            }
            let pong = pongs.message().await.expect("a pong").expect("the stream is open");
            assert_eq!(pong.stroke, stroke);
        }
        drop(tx);
        assert!(pongs.message().await.expect("a clean end").is_none(), "the stream ends when the pings end");

        // Client streaming.
        let mut echo = EchoClient::with_interceptor(channel(&p).await, p.bearer());
        let texts = ["a", "b", "c"].map(|t| Everything { text: t.into(), ..Default::default() });
        let collected = echo.collect(tokio_stream::iter(texts)).await.expect("Collect").into_inner();
        assert_eq!((collected.count, collected.texts), (3, vec!["a".to_string(), "b".into(), "c".into()]));
    });
}

#[test]
fn every_field_survives_the_round_trip() {
    let p = Platform::with(&["echo"]);
    let sent = Everything {
        text: "t".into(),
        count: -1,
        big: i64::MIN,
        small: u32::MAX,
        huge: u64::MAX,
        ratio: 0.25,
        score: 1.5,
        enabled: true,
        color: echo::pb::Color::Red as i32,
        tags: vec!["x".into(), "y".into()],
        numbers: vec![1, -2],
        labels: [("k".to_string(), "v".to_string())].into(),
        options: Some(echo::pb::Options { surname: "s".into(), level: 9 }),
        data: vec![0, 255],
        when: Some(prost_types::Timestamp { seconds: 1_704_207_845, nanos: 5 }),
        wait: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
        user_email: "e@x".into(),
    };
    let got = block_on(async {
        let mut client = EchoClient::with_interceptor(channel(&p).await, p.bearer());
        client.echo(sent.clone()).await.expect("Echo.Echo").into_inner()
    });
    assert_eq!(got, sent);
}

#[test]
fn the_service_library_client_routes_by_name() {
    let p = Platform::with(&["helloworld"]);
    let (msg, unknown) = block_on(async {
        let client = Client::new(&p.addr, "micro").expect("a client of the proxy").with_token(p.token());
        let mut hello = HelloworldClient::new(client.service("helloworld"));
        let msg = hello.call(CallRequest { name: "lib".into() }).await.expect("Call").into_inner().msg;
        // The micro-service header wins over the path: the path says helloworld, the header says x.
        let mut nowhere = HelloworldClient::new(client.service("x"));
        let unknown = nowhere.call(CallRequest { name: "lib".into() }).await.expect_err("no service x");
        (msg, unknown)
    });
    assert_eq!(msg, "Hello lib");
    assert_eq!((unknown.code(), unknown.message()), (Code::NotFound, "service \"x\" not found"));
}

/// Calls `path` through the proxy with a `CallRequest`, expecting an error status.
fn failed_call(p: &Platform, path: &'static str) -> tonic::Status {
    block_on(async {
        let channel = tonic::service::interceptor::InterceptedService::new(channel(p).await, p.bearer());
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.expect("the channel is ready");
        let codec = tonic_prost::ProstCodec::<CallRequest, CallResponse>::default();
        let uri = http::uri::PathAndQuery::from_static(path);
        grpc.unary(tonic::Request::new(CallRequest::default()), uri, codec).await.expect_err(path)
    })
}

#[test]
fn an_unknown_service_is_not_found() {
    let p = Platform::with(&["helloworld"]);
    let status = failed_call(&p, "/x.Nothing/Call");
    assert_eq!((status.code(), status.message()), (Code::NotFound, "service \"x\" not found"));
}

#[test]
fn an_unknown_method_of_a_known_service_is_unimplemented() {
    let p = Platform::with(&["helloworld"]);
    let status = failed_call(&p, "/helloworld.Helloworld/Nope");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[test]
fn service_statuses_pass_through() {
    let p = Platform::with(&["helloworld"]);
    let status = block_on(async {
        let mut hello = HelloworldClient::with_interceptor(channel(&p).await, p.bearer());
        match hello.stream(StreamRequest { count: -1 }).await {
            Err(status) => status,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Err(status) => break status,
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the stream ended without the service's error"),
                    }
                }
            }
        }
    });
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("count must be between 0 and"), "{status:?}");
}

#[test]
fn calls_keep_working_when_one_of_two_nodes_dies() {
    let p = Platform::start();
    let first = p.spawn_service("helloworld", SHORT_TTL);
    let mut second = p.spawn_service("helloworld", SHORT_TTL);
    let nodes = |p: &Platform| {
        let run = p.micro(["services", "-o", "json"]);
        let records: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        records
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["name"] == "helloworld")
            .map(|r| r["nodes"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    p.wait_until("both nodes are registered", |p| nodes(p) == 2);
    let call_many = |p: &Platform| {
        block_on(async {
            let mut hello = HelloworldClient::with_interceptor(channel(p).await, p.bearer());
            for i in 0..6 {
                let reply = hello.call(CallRequest { name: i.to_string() }).await.expect("Call").into_inner();
                assert_eq!(reply.msg, format!("Hello {i}"));
            }
        })
    };
    call_many(&p);
    second.kill();
    p.wait_until("the dead node expires", |p| nodes(p) == 1);
    call_many(&p);
    drop(first);
}
