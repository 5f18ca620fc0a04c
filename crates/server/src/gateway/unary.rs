//! Unary calls through the proxy without tonic's streaming client, the gateway's hot path.
//!
//! tonic's `Grpc::unary` wraps the one message in a stream, encodes it through a buffered streaming body, and reads
//! the answer through `Streaming` and its decoder: several layers of boxed bodies and futures per call. A unary
//! call needs none of it: the request is one gRPC frame (a flag byte, a 4-byte length, the message) and the answer
//! is read frame by frame until its trailers. Every outcome follows tonic's client case by case — the same codes
//! and texts for a trailers-only error, an error in the trailers, a missing `grpc-status`, a compressed or oversized
//! message, a truncated body — so a caller cannot tell the two paths apart; the streaming kinds still go through
//! tonic.

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body::Body as _;
use micro_client::dynamic::decode_message;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use std::borrow::Cow;
use std::pin::Pin;
use tonic::{Code, Status};
use tower::Service;

/// The length of a gRPC frame's prefix: the compression flag and the message length.
const PREFIX: usize = 5;

/// Calls `path` through `proxy` with `message` and the request `headers` (credentials, namespace, service) and
/// returns the answer decoded as `output`. Messages larger than `max_message` are refused either way.
pub(super) async fn call(
    proxy: &crate::proxy::Proxy,
    path: http::uri::PathAndQuery,
    mut headers: HeaderMap,
    message: &DynamicMessage,
    output: &MessageDescriptor,
    max_message: usize,
    peer: Option<crate::auth::Peer>,
) -> Result<DynamicMessage, Status> {
    // The request as tonic's client sends it without compression or deadline.
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let len = message.encoded_len();
    if len > max_message {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {max_message} bytes"
        )));
    }
    let mut frame = Vec::with_capacity(PREFIX + len);
    frame.push(0);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode(&mut frame).map_err(|e| Status::internal(format!("Error encoding: {e}")))?;
    let mut req = http::Request::new(Body::from(frame));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = http::Uri::from(path);
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = headers;
    if let Some(peer) = peer {
        req.extensions_mut().insert(peer);
    }
    let rsp = match proxy.clone().call(req).await {
        Ok(rsp) => rsp,
        Err(never) => match never {},
    };
    let (parts, body) = rsp.into_parts();
    read_response(parts.status, &parts.headers, body, output, max_message).await
}

/// The message of a unary answer, or the status that ends it.
async fn read_response(
    http_status: StatusCode,
    headers: &HeaderMap,
    mut body: Body,
    output: &MessageDescriptor,
    max_message: usize,
) -> Result<DynamicMessage, Status> {
    if let Some(encoding) = headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        // The gateway accepts no compression, so a compressed answer is refused as tonic's client refuses it.
        let name = match std::str::from_utf8(encoding.as_bytes()) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(format!("{:?}", encoding.as_bytes())),
        };
        return Err(Status::unimplemented(format!("Content is compressed with `{name}` which isn't supported")));
    }
    // A `grpc-status` among the headers is a trailers-only answer: an error ends the call here.
    let trailers_only = match Status::from_header_map(headers) {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(_) => true,
        None => false,
    };
    let mut reader = Reader { http_status, trailers_only, output, max_message, buf: BytesMut::new(), message: None };
    let trailers = loop {
        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => reader.data(data)?,
                Err(frame) => break frame.into_trailers().ok(),
            },
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            None if reader.buf.has_remaining() => return Err(Status::internal("Unexpected EOF decoding stream.")),
            None => break None,
        }
    };
    if !trailers_only {
        infer_status(trailers.as_ref(), http_status)?;
    }
    reader.message.ok_or_else(|| Status::internal("Missing response message."))
}

/// The messages of an answer as its data arrives; the first is kept, later ones are decoded (so that a bad one
/// fails the call, as in tonic) and dropped.
struct Reader<'a> {
    http_status: StatusCode,
    trailers_only: bool,
    output: &'a MessageDescriptor,
    max_message: usize,
    /// Bytes of an incomplete frame.
    buf: BytesMut,
    message: Option<DynamicMessage>,
}

impl Reader<'_> {
    fn data(&mut self, mut data: Bytes) -> Result<(), Status> {
        if self.buf.is_empty() {
            // Whole frames are taken straight from the chunk, without a copy; only a partial one is kept.
            while let Some(len) = self.frame_len(&data)? {
                data.advance(PREFIX);
                self.message(data.split_to(len))?;
            }
            self.buf.extend_from_slice(&data);
        } else {
            self.buf.extend_from_slice(&data);
            while let Some(len) = self.frame_len(&self.buf)? {
                self.buf.advance(PREFIX);
                let frame = self.buf.split_to(len).freeze();
                self.message(frame)?;
            }
        }
        Ok(())
    }

    /// The length of the frame at the start of `buf` once it is complete; its prefix is checked as soon as it is
    /// there.
    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, Status> {
        let Some(prefix) = buf.get(..PREFIX) else { return Ok(None) };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ));
            }
            f if self.trailers_only => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                )));
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1) while receiving response with status: {}",
                    self.http_status
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message
            )));
        }
        Ok((buf.len() >= PREFIX + len).then_some(len))
    }

    fn message(&mut self, bytes: Bytes) -> Result<(), Status> {
        let message = decode_message(self.output, bytes)?;
        self.message.get_or_insert(message);
        Ok(())
    }
}

/// The status of an answer from its trailers, else from its HTTP status (gRPC's HTTP-to-gRPC mapping), as tonic's
/// client infers it.
fn infer_status(trailers: Option<&HeaderMap>, http_status: StatusCode) -> Result<(), Status> {
    // The common case without building a `Status`, which copies the trailers: `0` is the only text of OK, and
    // without a message there is no text that could fail to decode (tonic turns that into Unknown).
    if let Some(trailers) = trailers
        && trailers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"0")
        && !trailers.contains_key("grpc-message")
    {
        return Ok(());
    }
    if let Some(status) = trailers.and_then(Status::from_header_map) {
        return if status.code() == Code::Ok { Ok(()) } else { Err(status) };
    }
    let code = match http_status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        StatusCode::OK => {
            return Err(Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status (possible truncation by a proxy or load balancer)",
            ));
        }
        _ => Code::Unknown,
    };
    Err(Status::new(code, format!("grpc-status header missing, mapped from HTTP status code {}", http_status.as_u16())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::schema::Schema;

    fn output() -> MessageDescriptor {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        schema.pool.get_message_by_name("registry.GetRequest").unwrap()
    }

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// A body of the given data chunks, then trailers with `grpc-status` (when given).
    fn body(chunks: Vec<Vec<u8>>, status: Option<&'static str>) -> Body {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
            chunks.into_iter().map(|c| Ok(http_body::Frame::data(Bytes::from(c)))).collect();
        if let Some(code) = status {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static(code));
            if code != "0" {
                trailers.insert("grpc-message", HeaderValue::from_static("went%20wrong"));
            }
            frames.push(Ok(http_body::Frame::trailers(trailers)));
        }
        Body::new(StreamBody(futures::stream::iter(frames)))
    }

    /// A body made of a stream of frames (http-body-util's `StreamBody`, which micro does not depend on).
    struct StreamBody<S>(S);

    impl<S> http_body::Body for StreamBody<S>
    where
        S: futures::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>> + Unpin,
    {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Pin::new(&mut self.0).poll_next(cx)
        }
    }

    fn read(status: StatusCode, headers: HeaderMap, body: Body) -> Result<DynamicMessage, Status> {
        let output = output();
        futures::executor::block_on(read_response(status, &headers, body, &output, 1024))
    }

    fn encoded(service: &str) -> Vec<u8> {
        micro_core::proto::registry::GetRequest { service: service.into(), ..Default::default() }.encode_to_vec()
    }

    fn service_of(m: &DynamicMessage) -> String {
        m.get_field_by_name("service").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    #[test]
    fn a_message_and_ok_trailers() {
        let m = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &encoded("a"))], Some("0"))).unwrap();
        assert_eq!(service_of(&m), "a");
        // Split anywhere, even inside the prefix, and followed by a second message, which is dropped.
        let mut all = frame(0, &encoded("first"));
        all.extend(frame(0, &encoded("second")));
        let chunks = vec![all[..3].to_vec(), all[3..9].to_vec(), all[9..].to_vec()];
        let m = read(StatusCode::OK, HeaderMap::new(), body(chunks, Some("0"))).unwrap();
        assert_eq!(service_of(&m), "first");
        // OK with a message that does not decode is Unknown, as in tonic.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("%FF"));
        let frames = vec![
            Ok(http_body::Frame::data(Bytes::from(frame(0, &encoded("a"))))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let e =
            read(StatusCode::OK, HeaderMap::new(), Body::new(StreamBody(futures::stream::iter(frames)))).unwrap_err();
        assert_eq!(e.code(), Code::Unknown);
        // An empty message is a message.
        let m = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &[])], Some("0"))).unwrap();
        assert_eq!(service_of(&m), "");
    }

    #[test]
    fn statuses_match_tonic() {
        // An error in the trailers wins over the message.
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &encoded("a"))], Some("5"))).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, "went wrong"));
        // Trailers-only: an error at once, OK without a message.
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        let e = read(StatusCode::OK, headers, body(vec![], None)).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        let e = read(StatusCode::OK, headers, body(vec![], None)).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Internal, "Missing response message."));
        // OK trailers without a message.
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![], Some("0"))).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Internal, "Missing response message."));
        // No grpc-status at all.
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &encoded("a"))], None)).unwrap_err();
        assert_eq!(e.code(), Code::Unknown);
        assert!(e.message().contains("missing grpc-status trailer"), "{}", e.message());
        let e = read(StatusCode::SERVICE_UNAVAILABLE, HeaderMap::new(), body(vec![], None)).unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unavailable, "grpc-status header missing, mapped from HTTP status code 503")
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(1, &encoded("a"))], Some("0"))).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(e.message().contains("compressed-flag"), "{}", e.message());
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(7, &encoded("a"))], Some("0"))).unwrap_err();
        assert!(e.message().contains("invalid compression flag: 7"), "{}", e.message());
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &[0; 2000])], Some("0"))).unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        // A body that ends inside a frame.
        let e = read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &encoded("a"))[..4].to_vec()], None))
            .unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Internal, "Unexpected EOF decoding stream."));
        // A message that does not decode as the output type.
        let e =
            read(StatusCode::OK, HeaderMap::new(), body(vec![frame(0, &[0x0a, 0x05, b'a'])], Some("0"))).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        // A compressed answer.
        let mut headers = HeaderMap::new();
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let e = read(StatusCode::OK, headers, body(vec![], Some("0"))).unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
    }
}
