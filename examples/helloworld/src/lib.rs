//! The helloworld service: greets, counts and plays ping-pong. Its handler is a library so that tests and
//! benchmarks can serve it in-process; `main.rs` runs it as a micro service.

use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Generated code and descriptors of `helloworld.proto`.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("helloworld");

    /// The descriptor set of `helloworld.proto`, registered with the service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/helloworld_descriptor.bin"));
}

use pb::helloworld_server::{Helloworld, HelloworldServer};
use pb::{CallRequest, CallResponse, Ping, Pong, StreamRequest, StreamResponse};

/// The most messages one Stream call sends.
pub const MAX_STREAM: i64 = 10_000;

/// The handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Handler;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Helloworld for Handler {
    async fn call(&self, req: Request<CallRequest>) -> Result<Response<CallResponse>, Status> {
        Ok(Response::new(CallResponse { msg: format!("Hello {}", req.into_inner().name) }))
    }

    type StreamStream = BoxStream<StreamResponse>;

    async fn stream(&self, req: Request<StreamRequest>) -> Result<Response<Self::StreamStream>, Status> {
        let count = req.into_inner().count;
        if !(0..=MAX_STREAM).contains(&count) {
            return Err(Status::invalid_argument(format!("count must be between 0 and {MAX_STREAM}, got {count}")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter((0..count).map(|i| Ok(StreamResponse { count: i }))))))
    }

    type PingPongStream = BoxStream<Pong>;

    async fn ping_pong(&self, req: Request<Streaming<Ping>>) -> Result<Response<Self::PingPongStream>, Status> {
        let pings = req.into_inner();
        Ok(Response::new(Box::pin(pings.map(|p| p.map(|p| Pong { stroke: p.stroke })))))
    }
}

/// The micro service: name, schema and handler.
pub fn service() -> micro::Service {
    micro::Service::new("helloworld")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        .add_service(HelloworldServer::new(Handler).max_decoding_message_size(micro::MAX_MESSAGE_SIZE))
}
