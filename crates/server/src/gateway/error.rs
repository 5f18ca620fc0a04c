//! Errors of the API gateway, as Micro answers them: a JSON body `{"id","code","detail","status"}` whose `code` is
//! the HTTP status, mapped from the gRPC status code of the call.
//!
//! Services written for Micro put a micro error (the same JSON) into the gRPC status message; its `detail` is
//! unwrapped so that clients see the message, not JSON inside JSON.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tonic::{Code, Status};

/// An error answered by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// Who answered: the service name, or `micro.api` for the gateway itself.
    pub id: String,
    /// The HTTP status code.
    pub code: u16,
    /// What went wrong.
    pub detail: String,
    /// The reason phrase of `code`, e.g. `Not Found`.
    pub status: String,
}

/// The id of errors raised by the gateway itself, before a service is known.
pub const GATEWAY_ID: &str = "micro.api";

impl ApiError {
    /// An error with the given HTTP status.
    pub fn new(id: impl Into<String>, code: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            code: code.as_u16(),
            detail: detail.into(),
            status: code.canonical_reason().unwrap_or("Unknown").to_string(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, StatusCode::BAD_REQUEST, detail)
    }

    /// 404 Not Found.
    pub fn not_found(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, StatusCode::NOT_FOUND, detail)
    }

    /// 500 Internal Server Error.
    pub fn internal(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(id, StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// The error of a failed gRPC call to `service`.
    pub fn from_status(service: &str, status: &Status) -> Self {
        let mut code = http_status(status.code());
        let mut detail = status.message().to_string();
        if let Some(micro) = micro_error(status.message()) {
            detail = micro.detail;
            // Micro maps codes it has no gRPC code for (429, for example) to Unknown: recover them.
            if status.code() == Code::Unknown
                && let Some(c) = micro.code.and_then(|c| StatusCode::from_u16(c).ok())
                && (c.is_client_error() || c.is_server_error())
            {
                code = c;
            }
        }
        if detail.is_empty() {
            detail = code.canonical_reason().unwrap_or("error").to_lowercase();
        }
        Self::new(service, code, detail)
    }

    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON text of this error.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and a number cannot fail; fall back to a fixed text all the same.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"id":"micro.api","code":500,"detail":"error","status":"Internal Server Error"}"#.to_string()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.id, self.detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut rsp = (self.status_code(), self.to_json()).into_response();
        rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        rsp
    }
}

/// The HTTP status of a gRPC status code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A micro error found in a gRPC status message.
struct MicroError {
    detail: String,
    code: Option<u16>,
}

/// Parses a status message that is the JSON of a micro error (`{"id","code","detail","status"}`).
fn micro_error(message: &str) -> Option<MicroError> {
    let message = message.trim();
    if !message.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(message).ok()?;
    let object = value.as_object()?;
    let detail = object.get("detail")?.as_str()?.to_string();
    let code = object.get("code").and_then(|c| c.as_u64()).and_then(|c| u16::try_from(c).ok());
    Some(MicroError { detail, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http() {
        let table = [
            (Code::NotFound, 404),
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::DeadlineExceeded, 408),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 412),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::DataLoss, 500),
            (Code::Cancelled, 500),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    #[test]
    fn status_becomes_micro_error_json() {
        let e = ApiError::from_status("helloworld", &Status::not_found("no such greeting"));
        assert_eq!(e.code, 404);
        assert_eq!(e.status, "Not Found");
        let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"helloworld","code":404,"detail":"no such greeting","status":"Not Found"})
        );
    }

    #[test]
    fn micro_json_messages_are_unwrapped() {
        let msg = r#"{"id":"go.micro.srv.foo","code":400,"detail":"name is required","status":"Bad Request"}"#;
        let e = ApiError::from_status("foo", &Status::invalid_argument(msg));
        assert_eq!((e.code, e.detail.as_str(), e.id.as_str()), (400, "name is required", "foo"));
        // A code with no gRPC equivalent travels as Unknown; the micro error's code is used.
        let msg = r#"{"id":"foo","code":429,"detail":"slow down","status":"Too Many Requests"}"#;
        let e = ApiError::from_status("foo", &Status::unknown(msg));
        assert_eq!((e.code, e.detail.as_str()), (429, "slow down"));
        // Not micro JSON: kept as it is.
        let e = ApiError::from_status("foo", &Status::internal("{not json"));
        assert_eq!((e.code, e.detail.as_str()), (500, "{not json"));
        let e = ApiError::from_status("foo", &Status::internal(""));
        assert_eq!(e.detail, "internal server error");
    }

    #[test]
    fn into_response_sets_status_and_type() {
        let rsp = ApiError::bad_request("x", "bad").into_response();
        assert_eq!(rsp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rsp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
