//! `micro call SERVICE ENDPOINT [REQUEST]` and `micro stream …`: call any endpoint with a JSON request.
//!
//! The JSON is converted with the proto3 JSON mapping and the service's schema (snake_case and lowerCamelCase
//! names both work), after a check that names the field that does not fit ([`micro_client::json`]). Every kind of
//! RPC works with both commands: server streams print one document per message as it arrives, and client or bidi
//! streams read JSON lines from stdin when no request is given.
//!
//! The request is JSON text, `@FILE`, `@-` for stdin, or, when none is given, a piped stdin (a terminal is not read
//! for unary calls, which then send `{}`): see [`super::dynamic::request`]. `--print grpcurl|curl` prints a
//! command that makes the same call instead of making it ([`super::dynamic::print`]).

use super::dynamic::print::Print;
use super::dynamic::request::{self, Source};
use super::dynamic::{self, Invocation};
use crate::exit::CliError;
use crate::settings::Settings;
use std::time::Duration;

/// Arguments of `micro call` and `micro stream`.
#[derive(Debug, clap::Args)]
#[command(after_help = "The request is JSON (the words are joined by spaces), @FILE, or @- for stdin. Without one, \
a piped stdin is read: the whole of it is the request of a unary or server-streaming call, and client and bidi \
streams read one JSON request per line. A terminal stdin is not read for unary calls, which then send {}.")]
pub struct Args {
    /// The service, e.g. `helloworld`.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub service: String,
    /// The endpoint: `Helloworld.Call`, or a gRPC path such as `/helloworld.Helloworld/Call`.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::endpoint_candidates))]
    pub endpoint: String,
    /// The request: JSON (the words are joined by spaces), @FILE, or @- for stdin. Without it, a piped stdin is read.
    #[arg(value_name = "REQUEST")]
    pub request: Vec<String>,
    /// Metadata to send, `key=value` (repeat the flag or give a comma list).
    #[arg(long, short = 'm', value_delimiter = ',', value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Metadata to send, `key:value`, as curl and grpcurl take it (repeatable).
    #[arg(long, short = 'H', value_name = "KEY:VALUE")]
    pub header: Vec<String>,
    /// Deadline of the call, e.g. `500ms` or `5s` (unary calls default to 10s; streams to none).
    #[arg(long, alias = "request_timeout", value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Print the command that makes this call instead: grpcurl (through the proxy) or curl (through the HTTP API
    /// gateway, `MICRO_API`).
    #[arg(long, value_name = "TOOL", value_enum, hide_possible_values = true)]
    pub print: Option<Print>,
    /// A direct call (`--address`), with no proxy and no registry.
    #[command(flatten)]
    pub direct: super::direct::DirectArgs,
}

/// Parses a deadline such as `500ms` or `5s`.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
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

/// Splits `key:value` headers (spaces after the colon are dropped, as in HTTP).
pub fn parse_headers(headers: &[String]) -> Result<Vec<(String, String)>, CliError> {
    headers
        .iter()
        .map(|h| match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim_start().to_string())),
            _ => Err(CliError::input(format!("Invalid header {h:?}: expected KEY:VALUE"))),
        })
        .collect()
}

/// Where the request of `micro call` comes from: `@FILE` and `@-` stand alone; other words are JSON text.
pub fn source(words: &[String]) -> Result<Option<Source>, CliError> {
    match words {
        [] => Ok(None),
        [word] => Ok(Some(Source::parse(word))),
        [first, ..] if first.starts_with('@') => {
            Err(CliError::input(format!("{first} names the request's file: give it alone, without other words")))
        }
        _ => Ok(Some(Source::Text(words.join(" ")))),
    }
}

/// Runs `micro call` / `micro stream`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    if args.direct.address.is_some() {
        return super::direct::exec(settings, args).await;
    }
    let mut metadata = parse_metadata(&args.metadata)?;
    metadata.extend(parse_headers(&args.header)?);
    let source = source(&args.request)?;
    let conn = settings.connect_authed().await?;
    let (service, schema) = dynamic::resolve(settings, &conn, &args.service, false).await?;
    let method = dynamic::find_endpoint(&service, schema.as_ref(), &args.endpoint)?;
    let requests = request::for_call(&method, source, settings.stdin_tty, settings.stderr_tty).await?;
    let invocation = Invocation { service: service.name.clone(), method, requests, metadata, timeout: args.timeout };
    if let Some(tool) = args.print {
        return dynamic::print::print(settings, &invocation, tool);
    }
    let errors = dynamic::proxy_error(settings, &invocation.method);
    dynamic::invoke(settings, &conn, invocation, settings.output, &errors).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_metadata() {
        let h = parse_headers(&["trace-id: abc".into(), "x:y:z".into()]).unwrap();
        assert_eq!(h, vec![("trace-id".into(), "abc".into()), ("x".into(), "y:z".into())]);
        assert!(parse_headers(&["nocolon".into()]).unwrap_err().message.contains("KEY:VALUE"));
        assert!(parse_headers(&[":v".into()]).is_err());
        assert_eq!(parse_metadata(&["a=b=c".into()]).unwrap(), vec![("a".into(), "b=c".into())]);
    }

    #[test]
    fn request_words() {
        assert_eq!(source(&[]).unwrap(), None);
        assert_eq!(source(&["@-".into()]).unwrap(), Some(Source::Stdin));
        assert_eq!(source(&["@a.json".into()]).unwrap(), Some(Source::File("a.json".into())));
        assert_eq!(source(&["{\"a\":".into(), "1}".into()]).unwrap(), Some(Source::Text("{\"a\": 1}".into())));
        assert!(source(&["@a.json".into(), "x".into()]).is_err());
    }
}
