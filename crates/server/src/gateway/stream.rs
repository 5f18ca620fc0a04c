//! Streamed responses: every message of a server- or bidi-streaming call is written and flushed as it arrives, as
//! Server-Sent Events (`data: <json>\n\n`) when the client accepts `text/event-stream`, else as NDJSON (one JSON
//! object per line, `application/x-ndjson`).
//!
//! An error after the stream has begun ends it with one last item: an SSE event named `error`, or an NDJSON line
//! `{"error":{"id","code","detail","status"}}`. Streams also end when the gateway shuts down, so that a graceful
//! shutdown is not held up by an endless watch.

use super::error::ApiError;
use axum::body::Body;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, header};
use prost_reflect::DynamicMessage;
use std::convert::Infallible;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How a stream is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Server-Sent Events.
    Sse,
    /// Newline-delimited JSON.
    Ndjson,
}

impl Format {
    /// The format a request asks for by its `Accept` header.
    pub fn for_accept(accept: Option<&HeaderValue>) -> Self {
        let sse = accept
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.split(',').any(|t| t.trim().to_ascii_lowercase().starts_with("text/event-stream")));
        if sse { Format::Sse } else { Format::Ndjson }
    }
}

/// One item of a response stream: a message or the error that ended it.
enum Item {
    Message(Vec<u8>),
    Error(ApiError),
}

/// The messages of `messages` followed by at most one error, ending early when `closing` is cancelled.
fn items<S>(service: String, messages: S, closing: CancellationToken) -> impl Stream<Item = Item> + Send + 'static
where
    S: Stream<Item = Result<DynamicMessage, Status>> + Send + Unpin + 'static,
{
    futures::stream::unfold(Some(messages), move |state| {
        let service = service.clone();
        async move {
            let mut messages = state?;
            match messages.next().await? {
                Ok(m) => Some((Item::Message(super::json_bytes(&m)), Some(messages))),
                Err(status) => Some((Item::Error(ApiError::from_status(&service, &status)), None)),
            }
        }
    })
    .take_until(closing.cancelled_owned())
}

/// The HTTP response that streams `messages` in `format`.
pub fn respond<S>(format: Format, service: String, messages: S, closing: CancellationToken) -> Response
where
    S: Stream<Item = Result<DynamicMessage, Status>> + Send + Unpin + 'static,
{
    let items = items(service, messages, closing);
    match format {
        Format::Sse => {
            let events = items.map(|item| {
                Ok::<_, Infallible>(match item {
                    Item::Message(json) => Event::default().data(String::from_utf8_lossy(&json)),
                    Item::Error(e) => Event::default().event("error").data(e.to_json()),
                })
            });
            let mut rsp = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
            rsp.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
            rsp
        }
        Format::Ndjson => {
            let lines = items.map(|item| {
                let mut line = match item {
                    Item::Message(json) => json,
                    Item::Error(e) => format!("{{\"error\":{}}}", e.to_json()).into_bytes(),
                };
                line.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(line))
            });
            let mut rsp = Body::from_stream(lines).into_response();
            let headers = rsp.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
            rsp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::schema::Schema;

    fn msg(service: &str) -> DynamicMessage {
        let schema = Schema::decode(micro_core::proto::FILE_DESCRIPTOR_SET).unwrap();
        let d = schema.pool.get_message_by_name("registry.GetRequest").unwrap();
        let mut m = DynamicMessage::new(d);
        m.set_field_by_name("service", prost_reflect::Value::String(service.into()));
        m
    }

    async fn body_text(rsp: Response) -> String {
        let bytes = axum::body::to_bytes(rsp.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(Format::for_accept(None), Format::Ndjson);
        let v = HeaderValue::from_static("application/json, Text/Event-Stream;q=0.9");
        assert_eq!(Format::for_accept(Some(&v)), Format::Sse);
        let v = HeaderValue::from_static("*/*");
        assert_eq!(Format::for_accept(Some(&v)), Format::Ndjson);
    }

    #[tokio::test]
    async fn ndjson_lines_then_error() {
        let items =
            futures::stream::iter(vec![Ok(msg("a")), Ok(msg("b")), Err(Status::not_found("gone")), Ok(msg("c"))]);
        let rsp = respond(Format::Ndjson, "svc".into(), items, CancellationToken::new());
        assert_eq!(rsp.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        let text = body_text(rsp).await;
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["service"], "a");
        assert_eq!(lines[1]["service"], "b");
        assert_eq!(lines[2]["error"]["code"], 404);
        assert_eq!(lines[2]["error"]["id"], "svc");
    }

    #[tokio::test]
    async fn sse_events_then_error() {
        let items = futures::stream::iter(vec![Ok(msg("a")), Err(Status::unavailable("down"))]);
        let rsp = respond(Format::Sse, "svc".into(), items, CancellationToken::new());
        assert_eq!(rsp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let text = body_text(rsp).await;
        assert!(text.starts_with("data: {\""), "{text}");
        assert!(text.contains("\n\nevent: error\ndata: {"), "{text}");
        assert!(text.contains("\"code\":503"), "{text}");
    }

    #[tokio::test]
    async fn closing_ends_endless_streams() {
        let closing = CancellationToken::new();
        let endless = futures::stream::pending::<Result<DynamicMessage, Status>>();
        let rsp = respond(Format::Ndjson, "svc".into(), endless, closing.clone());
        closing.cancel();
        let text = tokio::time::timeout(std::time::Duration::from_secs(5), body_text(rsp)).await.unwrap();
        assert_eq!(text, "");
    }
}
