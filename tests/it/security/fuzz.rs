//! Finding 11: malformed protobuf sent to the core services through the proxy is the caller's mistake,
//! `INVALID_ARGUMENT`, not `INTERNAL`. The requests are raw bytes in a well-formed gRPC frame, sent with the admin's
//! token so that the proxy lets them through to the service, which decodes them. `docs/fuzzing.md` describes the
//! property tests that cover the same decode paths in process.

use crate::support::{Platform, block_on, channel};
use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use micro_core::proto::auth::TokenRequest;
use prost::Message;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A codec that sends and receives message bytes as they are.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// Bytes that are not a protobuf message: field 31 with wire type 7 (there is none), then a truncated varint.
const MALFORMED: &[u8] = &[0xff, 0xff, 0xff];

/// Sends `body` as the one request message of `path` with the admin's token; the status of the answer.
async fn call(p: &Platform, channel: Channel, path: &str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the proxy is ready");
    let mut request = tonic::Request::new(body);
    let bearer = format!("Bearer {}", p.token()).parse().expect("a token is ASCII");
    request.metadata_mut().insert("authorization", bearer);
    let path = PathAndQuery::try_from(path.to_string()).expect("a gRPC path");
    let answer = tokio::time::timeout(Duration::from_secs(10), grpc.unary(request, path.clone(), RawCodec))
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer a malformed request within 10 s"));
    match answer {
        Ok(_) => Status::ok(""),
        Err(status) => status,
    }
}

fn assert_invalid_argument(path: &str, status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    assert!(status.message().contains("not a valid protobuf message"), "{path}: {status:?}");
}

#[test]
fn malformed_protobuf_is_invalid_argument_not_internal() {
    let p = Platform::start();
    block_on(async {
        let channel = channel(&p).await;
        for path in ["/store.Store/Read", "/registry.Registry/Register", "/auth.Auth/Token"] {
            let status = call(&p, channel.clone(), path, MALFORMED.to_vec()).await;
            assert_invalid_argument(path, &status);
        }
        // The same call with a well-formed request is decoded, and refused for what it says.
        let valid = TokenRequest { id: "nobody".into(), secret: "wrong".into(), ..Default::default() };
        let status = call(&p, channel.clone(), "/auth.Auth/Token", valid.encode_to_vec()).await;
        assert_ne!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_ne!(status.code(), Code::Internal, "{status:?}");
    });
}

/// Every method of every core gRPC service, unary or streaming, answers a malformed first message with
/// `INVALID_ARGUMENT`.
#[test]
fn every_core_method_refuses_malformed_protobuf_as_invalid_argument() {
    let p = Platform::start();
    let pool = prost_reflect::DescriptorPool::decode(micro_core::proto::FILE_DESCRIPTOR_SET).expect("the core schema");
    // The services the proxy serves in process (debug.Debug is served by each service process instead).
    let paths: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() != "debug")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .map(|m| format!("/{}/{}", m.parent_service().full_name(), m.name()))
        .collect();
    assert!(paths.len() > 30, "{paths:?}");
    block_on(async {
        let channel = channel(&p).await;
        for path in &paths {
            let status = call(&p, channel.clone(), path, MALFORMED.to_vec()).await;
            assert_invalid_argument(path, &status);
        }
    });
}
