//! `micro logs`: print or follow a service's logs.
//!
//! Prints the last lines a service wrote (15 by default, `-n` for more), each as its text; `-f` then follows new
//! lines until Ctrl-C or until the service is killed. `--since 10m` (or an RFC 3339 time) gives every line since
//! then. `-o json` prints one JSON document per line (`{"timestamp","message","metadata"}`). `micro logs server`
//! is the server's own log, and `micro logs registry` (any core service) its lines of that service. `--build` shows
//! the output of the service's latest deployment (cargo's) instead.

use super::output::Printer;
use super::run::{client, runtime_error, split_version};
use crate::exit::CliError;
use crate::settings::{Output, Settings};
use micro_core::proto::runtime::{LogRecord, LogsOptions, LogsRequest};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Flags of `micro logs`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro logs greeter\n  \
    micro logs -f -n 100 greeter\n  \
    micro logs --since 10m server\n  \
    micro logs greeter -o json --jq .message")]
pub struct Args {
    /// The service (NAME or NAME@VERSION), or `server` for the server's own log.
    #[arg(value_name = "NAME")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::log_candidates))]
    pub name: Option<String>,
    /// Follow new lines until Ctrl-C (or until the service is killed).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the last lines to print first [default: 15, or every line with --since].
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub count: Option<u64>,
    /// Only lines since then: a duration (`10m`, `1h30m`) or a time (`2024-05-01T10:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Show the output of the service's latest deployment (its build) instead.
    #[arg(long)]
    pub build: bool,
}

/// Parses `--since`: a duration before now, or an RFC 3339 time; Unix seconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, CliError> {
    let at = match humantime::parse_duration(text) {
        Ok(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            CliError::input(format!(
                "invalid --since {text:?}: use a duration like 10m or 1h30m, or a time like 2024-05-01T10:00:00Z"
            ))
        })?,
    };
    Ok(at.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0).max(1))
}

fn print(out: &mut impl Write, printer: &Printer, record: &LogRecord) -> std::io::Result<()> {
    match printer.format() {
        Output::Table => writeln!(out, "{}", record.message)?,
        _ => {
            let metadata: std::collections::BTreeMap<&String, &String> = record.metadata.iter().collect();
            let time = record.metadata.get("time").cloned().unwrap_or_default();
            let doc = serde_json::json!({"timestamp": time, "message": record.message, "metadata": metadata});
            printer.json_line(out, &doc)?;
        }
    }
    out.flush()
}

/// Runs `micro logs`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let Some(given) = args.name.filter(|n| !n.is_empty()) else {
        return Err(CliError::input("Missing NAME: micro logs NAME (see `micro status`), or micro logs server").into());
    };
    let (name, version) = split_version(&given);
    let name = if name == "." { super::kill::dot_name()? } else { name };
    let since = args.since.as_deref().map(|s| parse_since(s, SystemTime::now())).transpose()?.unwrap_or(0);
    let count = match args.count {
        Some(0) => -1,
        Some(n) => n.min(i64::MAX as u64) as i64,
        None => 0,
    };
    let (mut client, conn) = client(settings).await?;
    let req = LogsRequest {
        service: name,
        stream: args.follow,
        count,
        since,
        options: Some(LogsOptions { namespace: settings.namespace.clone() }),
        version,
        build: args.build,
        build_id: String::new(),
    };
    let mut stream =
        client.logs(conn.request(req)).await.map_err(|s| runtime_error(settings, &s, "Runtime.Logs"))?.into_inner();
    let printer = Printer::new(settings.output, Output::Table);
    let mut out = std::io::stdout().lock();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(record)) => {
                    if args.build && record.metadata.get("stage").is_some_and(|s| s == "done") && record.message.is_empty() {
                        continue;
                    }
                    print(&mut out, &printer, &record)?
                }
                Ok(None) => return Ok(()),
                Err(s) => return Err(runtime_error(settings, &s, "Runtime.Logs").into()),
            },
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_values() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("10m", now).unwrap(), 10_000 - 600);
        assert_eq!(parse_since("2024-05-01T10:00:00Z", now).unwrap(), 1_714_557_600);
        assert!(parse_since("yesterday", now).is_err());
    }
}
