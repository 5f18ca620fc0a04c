//! `micro call SERVICE ENDPOINT [JSON]` and `micro stream …`: call any endpoint with a JSON request.
//!
//! The JSON is converted with the proto3 JSON mapping and the service's schema (snake_case and lowerCamelCase
//! names both work). Every kind of RPC works with both commands: server streams print one document per message as
//! it arrives, and client or bidi streams read JSON lines from stdin when no JSON argument is given.

use super::dynamic::{self, Invocation};
use crate::exit::CliError;
use crate::settings::Settings;
use prost_reflect::DynamicMessage;
use std::time::Duration;

/// Arguments of `micro call` and `micro stream`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service, e.g. `helloworld`.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub service: String,
    /// The endpoint: `Helloworld.Call`, or a gRPC path such as `/helloworld.Helloworld/Call`.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::endpoint_candidates))]
    pub endpoint: String,
    /// The request as JSON (the words are joined by spaces). Without it, client and bidi streams read JSON lines
    /// from stdin, and other calls send `{}`.
    pub request: Vec<String>,
    /// Metadata to send, `key=value` (repeat the flag or give a comma list).
    #[arg(long, short = 'm', value_delimiter = ',', value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Deadline of the call, e.g. `500ms` or `5s` (unary calls default to 10s; streams to none).
    #[arg(long, alias = "request_timeout", value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("Invalid format for timeout duration {s:?}. Try 500ms or 5s"))
}

/// Splits `key=value` pairs.
pub fn parse_metadata(pairs: &[String]) -> Result<Vec<(String, String)>, CliError> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::input(format!("Invalid metadata {p:?}: expected KEY=VALUE"))),
        })
        .collect()
}

/// Runs `micro call` / `micro stream`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let (service, schema) = dynamic::resolve(settings, &conn, &args.service, false).await?;
    let method = dynamic::find_endpoint(&service, schema.as_ref(), &args.endpoint)?;
    let first = if args.request.is_empty() {
        None
    } else {
        let text = args.request.join(" ");
        let mut de = serde_json::Deserializer::from_str(&text);
        let message = DynamicMessage::deserialize(method.input(), &mut de)
            .and_then(|m| de.end().map(|_| m))
            .map_err(|e| CliError::input(format!("Error creating request: {e}")))?;
        Some(message)
    };
    let invocation = Invocation {
        service: service.name.clone(),
        method,
        first,
        metadata: parse_metadata(&args.metadata)?,
        timeout: args.timeout,
    };
    dynamic::invoke(settings, &conn, invocation, settings.output).await
}
