//! Exit codes: one [`ExitStatus`] and the one place where errors map to it.
//!
//! The codes follow Micro's table (reference §1.5), with one code added for "not found" (6). The README's "Exit
//! codes" table and `micro --help` show [`TABLE`]:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also a closed stdout pipe: `micro services \| head -1`) |
//! | 1 | a general failure: a timed-out request, an error a core service (store, config, auth, runtime…) answered a built-in command with, refusing to send a password or token in plaintext to a remote address |
//! | 2 | not authorized |
//! | 3 | a malformed method name |
//! | 4 | the service is not in the registry, or the micro server cannot be reached: nothing listens, something else (an HTTP server, the API gateway) answers, TLS and plaintext do not match, or its certificate does not verify |
//! | 5 | the service has no such endpoint |
//! | 6 | not found: no such store record, config key, account, rule or service in the runtime |
//! | 127 | the service answered with an error |
//! | 128 | bad input, in every command: a usage error (a missing subcommand or argument, an unknown command, flag or value), bad JSON, an unknown env, a bad `--jq` expression |
//!
//! Refusing to send a password or token in plaintext to a non-loopback address (`Settings::check_secrets_may_go`)
//! is a general failure, 1: nothing is wrong with the input, the env's address is not safe for secrets.
//!
//! A failure to reach the proxy says what was found at the address and what to do
//! ([`micro_client::diagnose::explain`]); every such message starts with `Failed to connect to micro server at`.
use tonic::Code;

/// The exit status of the `micro` process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success.
    Success,
    /// 1: a general failure.
    Failure,
    /// 2: not authorized.
    Unauthorized,
    /// 3: a malformed method name.
    MalformedMethod,
    /// 4: the service is not in the registry, or the server is unreachable.
    NotFound,
    /// 5: no such method.
    UnknownMethod,
    /// 6: the named record, key, account, rule or runtime service does not exist.
    Missing,
    /// 127: the service answered with an error.
    ServiceError,
    /// 128: invalid input.
    InvalidInput,
}

impl ExitStatus {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Unauthorized => 2,
            ExitStatus::MalformedMethod => 3,
            ExitStatus::NotFound => 4,
            ExitStatus::UnknownMethod => 5,
            ExitStatus::Missing => 6,
            ExitStatus::ServiceError => 127,
            ExitStatus::InvalidInput => 128,
        }
    }
}

impl ExitStatus {
    /// The status of an exit code of `micro` (`None` for a code micro does not use).
    pub fn from_code(code: u8) -> Option<Self> {
        [
            ExitStatus::Success,
            ExitStatus::Failure,
            ExitStatus::Unauthorized,
            ExitStatus::MalformedMethod,
            ExitStatus::NotFound,
            ExitStatus::UnknownMethod,
            ExitStatus::Missing,
            ExitStatus::ServiceError,
            ExitStatus::InvalidInput,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

/// The exit-code table, as `micro --help` shows it (the README's "Exit codes" table says the same).
pub const TABLE: &str = "\
Exit codes:
    0  success (also when stdout is a closed pipe: micro services | head -1)
    1  a general failure: a timed-out request, an error a core service answered with
    2  not authorized
    3  a malformed method name
    4  the service is not in the registry, or the micro server cannot be reached
    5  the service has no such endpoint
    6  not found: no such store record, config key, account, rule or runtime service
  127  the service answered with an error
  128  bad input: a usage error, an unknown command or flag, bad JSON, an unknown env";

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> Self {
        std::process::ExitCode::from(s.code())
    }
}

/// An error as the user sees it: a message for stderr and an exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// The exit status.
    pub status: ExitStatus,
    /// The message.
    pub message: String,
}

impl CliError {
    /// An error with a status.
    pub fn new(status: ExitStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// Invalid input (exit 128).
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ExitStatus::InvalidInput, message)
    }

    /// A general failure (exit 1).
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(ExitStatus::Failure, message)
    }

    /// Something named does not exist (exit 6).
    pub fn missing(message: impl Into<String>) -> Self {
        Self::new(ExitStatus::Missing, message)
    }
}

/// The status of a command line clap refused: help and version asked for are success, every other error (an
/// unknown or missing subcommand, argument or flag, a value that does not parse) is bad input.
pub fn from_clap(kind: clap::error::ErrorKind) -> ExitStatus {
    use clap::error::ErrorKind;
    match kind {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitStatus::Success,
        _ => ExitStatus::InvalidInput,
    }
}

/// Where an RPC went, to name it in error messages.
#[derive(Clone, Debug, Default)]
pub struct RpcContext {
    /// The proxy address.
    pub address: String,
    /// The endpoint, e.g. `Helloworld.Call`.
    pub endpoint: String,
}

/// The detail of a gRPC message: Micro services send `{"id","code","detail","status"}` JSON.
pub fn detail(message: &str) -> String {
    if message.starts_with('{')
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(message)
        && let Some(d) = v.get("detail").and_then(|d| d.as_str())
    {
        return d.to_string();
    }
    message.to_string()
}

/// Maps a gRPC status to what the user sees, following Micro's table.
///
/// A failure to reach the proxy (a transport error, or an answer that is not gRPC) is explained from what is at
/// `ctx.address` ([`micro_client::diagnose::explain`], which may probe the address for a moment): exit 4.
pub fn from_status(status: &tonic::Status, ctx: &RpcContext) -> CliError {
    if !ctx.address.is_empty()
        && let Some(message) = micro_client::diagnose::explain(status, &ctx.address)
    {
        return CliError::new(ExitStatus::NotFound, message);
    }
    let message = detail(status.message());
    match status.code() {
        Code::Unavailable if !message.starts_with("service \"") => {
            CliError::new(ExitStatus::NotFound, format!("Failed to connect to micro server at {}", ctx.address))
        }
        Code::NotFound if message.starts_with("service \"") && message.ends_with("\" not found") => {
            let name = &message["service \"".len()..message.len() - "\" not found".len()];
            CliError::new(ExitStatus::NotFound, format!("Service \"{name}\" not found"))
        }
        Code::Unimplemented => {
            CliError::new(ExitStatus::UnknownMethod, format!("Service method \"{}\" not found", ctx.endpoint))
        }
        Code::InvalidArgument if message.starts_with("malformed method name") => CliError::new(
            ExitStatus::MalformedMethod,
            format!("Method name \"{}\" invalid format. Expecting service.endpoint", ctx.endpoint),
        ),
        Code::DeadlineExceeded => CliError::new(ExitStatus::Failure, "Request timed out"),
        // tonic reports a client-side deadline as CANCELLED "Timeout expired".
        Code::Cancelled if message.contains("Timeout expired") => {
            CliError::new(ExitStatus::Failure, "Request timed out")
        }
        Code::Unauthenticated if message.starts_with("invalid token") => {
            CliError::new(ExitStatus::Unauthorized, format!("Not authorized: {message}. Run `micro login` again"))
        }
        Code::Unauthenticated => {
            CliError::new(ExitStatus::Unauthorized, "Not authorized to perform this request. Run `micro login` first")
        }
        Code::PermissionDenied => CliError::new(ExitStatus::Unauthorized, message),
        _ if message.is_empty() => CliError::new(ExitStatus::ServiceError, format!("{:?}", status.code())),
        _ => CliError::new(ExitStatus::ServiceError, message),
    }
}

/// Maps the error a core service (store, config, auth, runtime, broker, events) answered a built-in command with.
///
/// Connection, authorization and registry failures map as in [`from_status`]. An error the service answered with
/// is mapped by its gRPC code, never by its text: `NOT_FOUND` is not found (6), `INVALID_ARGUMENT` and
/// `OUT_OF_RANGE` bad input (128), anything else a general failure (1, as Micro); the message is the service's,
/// after `prefix: ` when a prefix is given (Micro's `Error creating account: …`).
pub fn from_core_status(status: &tonic::Status, ctx: &RpcContext, prefix: &str) -> CliError {
    let e = from_status(status, ctx);
    if e.status != ExitStatus::ServiceError {
        return e;
    }
    let message = if prefix.is_empty() { e.message } else { format!("{prefix}: {}", e.message) };
    match status.code() {
        Code::NotFound => CliError::missing(message),
        Code::InvalidArgument | Code::OutOfRange => CliError::input(message),
        _ => CliError::failure(message),
    }
}

/// The status and message of any error that reaches `main`.
pub fn classify(err: &anyhow::Error) -> (ExitStatus, String) {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::BrokenPipe {
                return (ExitStatus::Success, String::new());
            }
            // The printer reports a `--jq` error on the data as an I/O error around the CLI's error.
            if let Some(e) = io.get_ref().and_then(|e| e.downcast_ref::<CliError>()) {
                return (e.status, e.message.clone());
            }
        }
    }
    if let Some(e) = err.downcast_ref::<CliError>() {
        return (e.status, e.message.clone());
    }
    if let Some(s) = err.downcast_ref::<tonic::Status>() {
        let e = from_status(s, &RpcContext::default());
        return (e.status, e.message);
    }
    (ExitStatus::Failure, format!("{err:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RpcContext {
        RpcContext { address: "127.0.0.1:1".into(), endpoint: "Foo.Bar".into() }
    }

    #[test]
    fn micro_table() {
        let cases = [
            (tonic::Status::unavailable("tcp connect error"), 4, "Failed to connect to micro server at 127.0.0.1:1"),
            (tonic::Status::not_found("service \"x\" not found"), 4, "Service \"x\" not found"),
            (tonic::Status::unimplemented(""), 5, "Service method \"Foo.Bar\" not found"),
            (tonic::Status::deadline_exceeded("late"), 1, "Request timed out"),
            (tonic::Status::cancelled("Timeout expired"), 1, "Request timed out"),
            (
                tonic::Status::unauthenticated("no"),
                2,
                "Not authorized to perform this request. Run `micro login` first",
            ),
            (tonic::Status::internal(r#"{"id":"x","code":500,"detail":"boom","status":"Internal"}"#), 127, "boom"),
            (
                tonic::Status::invalid_argument("malformed method name: \"/x\""),
                3,
                "Method name \"Foo.Bar\" invalid format. Expecting service.endpoint",
            ),
        ];
        for (status, code, msg) in cases {
            let e = from_status(&status, &ctx());
            assert_eq!((e.status.code(), e.message.as_str()), (code, msg), "{status:?}");
        }
    }

    #[test]
    fn core_services_map_by_code() {
        let map = |s: tonic::Status| {
            let e = from_core_status(&s, &ctx(), "Error");
            (e.status.code(), e.message)
        };
        assert_eq!(map(tonic::Status::not_found("Account not found")), (6, "Error: Account not found".into()));
        assert_eq!(map(tonic::Status::invalid_argument("ID required")), (128, "Error: ID required".into()));
        assert_eq!(map(tonic::Status::already_exists("exists")), (1, "Error: exists".into()));
        // The proxy's own answers keep their codes.
        assert_eq!(map(tonic::Status::not_found("service \"x\" not found")).0, 4);
        assert_eq!(map(tonic::Status::unauthenticated("no")).0, 2);
    }

    #[test]
    fn clap_errors_are_bad_input_except_help() {
        use clap::error::ErrorKind;
        assert_eq!(from_clap(ErrorKind::DisplayHelp), ExitStatus::Success);
        assert_eq!(from_clap(ErrorKind::DisplayVersion), ExitStatus::Success);
        for kind in [
            ErrorKind::InvalidValue,
            ErrorKind::UnknownArgument,
            ErrorKind::InvalidSubcommand,
            ErrorKind::MissingSubcommand,
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
            ErrorKind::MissingRequiredArgument,
            ErrorKind::ValueValidation,
        ] {
            assert_eq!(from_clap(kind), ExitStatus::InvalidInput, "{kind:?}");
        }
        for code in 0..=255u8 {
            if let Some(status) = ExitStatus::from_code(code) {
                assert_eq!(status.code(), code);
                assert!(TABLE.contains(&format!("{code:>5}  ")), "the table lacks {code}");
            }
        }
    }

    #[test]
    fn broken_pipe_is_success() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("printing");
        assert_eq!(classify(&err).0, ExitStatus::Success);
        let err = anyhow::Error::from(CliError::input("bad"));
        assert_eq!(classify(&err), (ExitStatus::InvalidInput, "bad".to_string()));
    }
}

/// Real TLS and plaintext servers, reached through [`Connection`](micro_client::Connection), and the messages of
/// every failure.
#[cfg(test)]
mod tls_tests {
    use crate::exit::{ExitStatus, RpcContext, from_status};
    use micro_client::Connection;
    use micro_client::tls::ClientTls;
    use micro_client::tls::testing::{Ca, health_server};

    /// A health check through a connection to `address` with `tls`: `Ok` or the user's message and exit status.
    async fn check(address: &str, tls: &ClientTls) -> Result<(), (ExitStatus, String)> {
        let conn = Connection::with_tls(address, "micro", tls).unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(conn.channel());
        let req = conn.request(tonic_health::pb::HealthCheckRequest { service: String::new() });
        client.check(req).await.map(|_| ()).map_err(|s| {
            let e = from_status(&s, &RpcContext { address: address.into(), endpoint: "Health.Check".into() });
            (e.status, e.message)
        })
    }

    fn with_ca(ca: &Ca) -> ClientTls {
        ClientTls { ca_pem: Some(ca.pem()), ..Default::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_works_with_the_ca_and_every_mismatch_is_explained() {
        let ca = Ca::new();
        let tls = health_server(Some(ca.leaf(&["localhost", "127.0.0.1"], false)));
        let https = format!("https://{tls}");
        check(&https, &with_ca(&ca)).await.unwrap();

        // No CA: unknown issuer, exit 4.
        let (status, message) = check(&https, &ClientTls::default()).await.unwrap_err();
        assert_eq!(status, ExitStatus::NotFound, "{message}");
        assert!(message.contains("does not verify: unknown issuer") && message.contains("--ca-cert"), "{message}");

        // Skipping verification works.
        check(&https, &ClientTls { skip_verify: true, ..Default::default() }).await.unwrap();

        // The plaintext address of a TLS server: use https.
        let (status, message) = check(&tls, &with_ca(&ca)).await.unwrap_err();
        assert_eq!(status, ExitStatus::NotFound, "{message}");
        assert!(message.contains(&format!("speaks TLS: use https://{tls}")), "{message}");

        // A certificate for another name.
        let other = health_server(Some(ca.leaf(&["other.example"], false)));
        let (_, message) = check(&format!("https://{other}"), &with_ca(&ca)).await.unwrap_err();
        assert!(message.contains("wrong name: it is for other.example, not 127.0.0.1"), "{message}");

        // An expired certificate.
        let expired = health_server(Some(ca.leaf(&["127.0.0.1"], true)));
        let (status, message) = check(&format!("https://{expired}"), &with_ca(&ca)).await.unwrap_err();
        assert_eq!(status, ExitStatus::NotFound, "{message}");
        assert!(message.contains("does not verify: expired"), "{message}");

        // https to a plaintext server: no fallback, and the advice to use http.
        let plain = health_server(None);
        check(&plain, &ClientTls::default()).await.unwrap();
        let (status, message) = check(&format!("https://{plain}"), &with_ca(&ca)).await.unwrap_err();
        assert_eq!(status, ExitStatus::NotFound, "{message}");
        assert!(message.contains(&format!("does not speak TLS: use http://{plain}")), "{message}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_port_is_nothing_listening() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        for address in [closed.clone(), format!("https://{closed}")] {
            let (status, message) = check(&address, &ClientTls::default()).await.unwrap_err();
            assert_eq!(status, ExitStatus::NotFound);
            assert!(message.contains(&format!("nothing is listening at {closed} (connection refused)")), "{message}");
            assert!(message.contains("Is `micro server` running"), "{message}");
        }
    }
}
