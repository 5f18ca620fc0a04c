//! The echo service: answers with what it was sent. Its request has one field of every kind the dynamic CLI
//! supports, so `micro echo echo --help` and `micro echo echo --flags…` exercise every flag type. `main.rs` runs it
//! as a micro service.

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// Generated code and descriptors of `echo.proto`.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("echo");

    /// The descriptor set of `echo.proto` (with its imports), registered with the service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));
}

use pb::echo_server::{Echo, EchoServer};
use pb::{Collected, Everything};

/// The handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Handler;

#[tonic::async_trait]
impl Echo for Handler {
    async fn echo(&self, req: Request<Everything>) -> Result<Response<Everything>, Status> {
        Ok(Response::new(req.into_inner()))
    }

    async fn collect(&self, req: Request<Streaming<Everything>>) -> Result<Response<Collected>, Status> {
        let mut stream = req.into_inner();
        let mut texts = Vec::new();
        while let Some(message) = stream.next().await {
            texts.push(message?.text);
        }
        let count = i32::try_from(texts.len()).map_err(|_| Status::out_of_range("too many messages"))?;
        Ok(Response::new(Collected { count, texts }))
    }
}

/// The micro service: name, schema and handler.
pub fn service() -> micro::Service {
    micro::Service::new("echo")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        .add_service(EchoServer::new(Handler).max_decoding_message_size(micro::MAX_MESSAGE_SIZE))
}
