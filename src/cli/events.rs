//! `micro events`: publish, consume and read durable events.
//!
//! - `micro events publish TOPIC [MESSAGE|-] [--metadata k=v]` stores one event, or one per non-empty line of
//!   stdin (`-`, or no MESSAGE). With `-o json`/`raw` it prints each event's `id` and `sequence`.
//! - `micro events consume TOPIC [--group G] [--offset 10m|RFC3339 | --sequence N] [--auto-ack]` prints events as
//!   JSON lines and acknowledges each one once printed, until Ctrl-C, `--count` events, or the server stops. A new
//!   group starts at the head (only new events) unless `--offset` or `--sequence` says otherwise; an existing group
//!   resumes after its last acknowledged event.
//! - `micro events read TOPIC [--limit N] [--offset N]` lists past events, oldest first: a table, or with `-o json`
//!   an array of the same objects `consume` prints.
//!
//! An event prints as `{"id","topic","sequence","timestamp" (RFC 3339, UTC),"metadata","payload"|"payload_base64",
//! "redelivered"}`: `payload` holds the payload when it is UTF-8 text, else `payload_base64` holds it in base64.

use super::call::parse_metadata;
use super::output::Printer;
use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::{Output, Settings};
use base64::Engine;
use clap::Subcommand;
use futures::StreamExt;
use micro_core::proto::events::{
    ConsumeRequest, Event, PublishRequest, ReadRequest, Subscribe, consume_request::Request as ConsumeOp,
    store_client::StoreClient, stream_client::StreamClient,
};
use micro_server::events::service::{MAX_EVENT, MAX_READ_LIMIT};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Arguments of `micro events`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro events publish orders '{\"id\": 1}'\n  \
    micro events consume orders --group billing\n  \
    micro events read orders --limit 10 --jq '.[].payload'")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// `micro events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Store an event: `micro events publish TOPIC MESSAGE`, or one event per line of stdin (`-` or no MESSAGE).
    Publish(PublishArgs),
    /// Print events as JSON lines, acknowledging each once printed, until Ctrl-C.
    Consume(ConsumeArgs),
    /// List past events of a topic, oldest first.
    Read(ReadArgs),
}

/// Flags of `micro events publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    pub topic: Option<String>,
    /// The payload; `-` or nothing publishes each non-empty line of stdin as one event.
    #[arg(value_name = "MESSAGE|-", allow_hyphen_values = true)]
    pub message: Option<String>,
    /// Metadata, `key=value` (repeat the flag or give a comma list).
    #[arg(long, short = 'm', value_delimiter = ',', value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
}

/// Flags of `micro events consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    pub topic: Option<String>,
    /// The consumer group: its members share the events, and it remembers what was acknowledged. Without it the
    /// consumer has a private group that ends with it.
    #[arg(long, short = 'g', value_name = "G")]
    pub group: Option<String>,
    /// Where a new group starts: a time as a duration ago (`10m`, `2h`) or RFC 3339 (`2024-01-02T15:04:05Z`).
    #[arg(long, value_name = "10m|RFC3339", conflicts_with = "sequence")]
    pub offset: Option<String>,
    /// Where a new group starts: this sequence (1 is the first event).
    #[arg(long, value_name = "N")]
    pub sequence: Option<u64>,
    /// Let the server acknowledge each event as it sends it (else each is acknowledged once printed).
    #[arg(long)]
    pub auto_ack: bool,
    /// Deliver an event again when it is not acknowledged within this time (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ack_wait: Option<Duration>,
    /// Give up on an event after this many redeliveries (default: never).
    #[arg(long, value_name = "N")]
    pub retry_limit: Option<u32>,
    /// Exit after this many events.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
}

/// Flags of `micro events read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    pub topic: Option<String>,
    /// How many events (default 25, at most 1000).
    #[arg(long, short = 'l', value_name = "N")]
    pub limit: Option<u64>,
    /// How many events to skip first, from the oldest.
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| format!("Invalid duration {s:?}. Try 500ms, 30s or 5m"))
}

/// Parses a consume offset: a duration ago (`10m`) or an RFC 3339 time (UTC `Z`, or `±HH:MM`); returns Unix
/// seconds.
pub fn parse_offset(text: &str, now: SystemTime) -> Result<i64, CliError> {
    let invalid = || {
        CliError::input(format!(
            "Invalid offset {text:?}: expected a duration ago such as 10m or 2h, or an RFC 3339 time such as \
             2024-01-02T15:04:05Z"
        ))
    };
    let time = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago).ok_or_else(invalid)?
    } else {
        parse_rfc3339(text).ok_or_else(invalid)?
    };
    let secs = time.duration_since(UNIX_EPOCH).map_err(|_| invalid())?.as_secs();
    Ok(secs.max(1) as i64)
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    if !text.is_ascii() {
        return None;
    }
    if let Ok(t) = humantime::parse_rfc3339(text) {
        return Some(t);
    }
    // A numeric zone, `+02:00`: parse the local part and shift it to UTC.
    let b = text.as_bytes();
    let n = b.len();
    if n < 6 || !matches!(b[n - 6], b'+' | b'-') || b[n - 3] != b':' {
        return None;
    }
    let base = humantime::parse_rfc3339_weak(&text[..n - 6]).ok()?;
    let hours: u64 = text[n - 5..n - 3].parse().ok()?;
    let minutes: u64 = text[n - 2..].parse().ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    if b[n - 6] == b'+' { base.checked_sub(shift) } else { base.checked_add(shift) }
}

fn topic(topic: Option<String>) -> Result<String, CliError> {
    topic.filter(|t| !t.is_empty()).ok_or_else(|| CliError::input("Missing topic"))
}

/// Maps an RPC error as every built-in does ([`from_core_status`]): a refused value is bad input (128).
fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str) -> CliError {
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, "")
}

fn rfc3339(nanos: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

/// An event as JSON: the payload as text, or base64 when it is not UTF-8.
pub fn event_json(event: &Event) -> Value {
    let metadata: BTreeMap<&String, &String> = event.metadata.iter().collect();
    let mut v = json!({
        "id": event.id,
        "topic": event.topic,
        "sequence": event.sequence,
        "timestamp": rfc3339(event.timestamp),
        "metadata": metadata,
    });
    match std::str::from_utf8(&event.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => v["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
    }
    v["redelivered"] = json!(event.redelivered);
    v
}

/// Runs `micro events`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    match args.command {
        EventsCommand::Publish(a) => publish(settings, a).await,
        EventsCommand::Consume(a) => consume(settings, a).await,
        EventsCommand::Read(a) => read(settings, a).await,
    }
}

async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<()> {
    let topic = topic(args.topic)?;
    let metadata: HashMap<String, String> = parse_metadata(&args.metadata)?.into_iter().collect();
    let meta_size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    let check = |payload: &[u8]| {
        if payload.len() + meta_size > MAX_EVENT {
            return Err(CliError::input(format!(
                "event is {} bytes (payload and metadata); events are at most {MAX_EVENT} bytes (1 MiB)",
                payload.len() + meta_size
            )));
        }
        Ok(())
    };
    let printer = Printer::new(settings.output, Output::Table);
    let conn = settings.connect_authed().await?;
    let mut client = StreamClient::new(conn.channel());
    let mut send = async |payload: Vec<u8>| -> anyhow::Result<()> {
        let req = PublishRequest { topic: topic.clone(), metadata: metadata.clone(), payload, timestamp: 0 };
        let rsp = client
            .publish(conn.request(req))
            .await
            .map_err(|s| rpc_error(settings, &s, "Stream.Publish"))?
            .into_inner();
        if printer.format() != Output::Table {
            printer.json(&json!({"id": rsp.id, "sequence": rsp.sequence}))?;
        }
        Ok(())
    };
    match args.message.as_deref() {
        Some(message) if message != "-" => {
            check(message.as_bytes())?;
            send(message.as_bytes().to_vec()).await
        }
        _ => {
            // One event per line, in order: each is durable before the next is sent.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, CliError>>(64);
            std::thread::spawn(move || {
                let mut stdin = std::io::stdin().lock();
                loop {
                    let mut line = Vec::new();
                    let item = match stdin.read_until(b'\n', &mut line) {
                        Ok(0) => break,
                        Ok(_) => {
                            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                line.pop();
                            }
                            if line.is_empty() {
                                continue;
                            }
                            Ok(line)
                        }
                        Err(e) => Err(CliError::failure(format!("cannot read stdin: {e}"))),
                    };
                    let failed = item.is_err();
                    if tx.blocking_send(item).is_err() || failed {
                        break;
                    }
                }
            });
            while let Some(line) = rx.recv().await {
                let line = line?;
                check(&line)?;
                send(line).await?;
            }
            Ok(())
        }
    }
}

async fn consume(settings: &Settings, args: ConsumeArgs) -> anyhow::Result<()> {
    let topic = topic(args.topic)?;
    let offset = match &args.offset {
        Some(text) => parse_offset(text, SystemTime::now())?,
        None => 0,
    };
    let subscribe = Subscribe {
        topic: topic.clone(),
        group: args.group.unwrap_or_default(),
        offset,
        start_sequence: args.sequence.unwrap_or(0),
        auto_ack: args.auto_ack,
        ack_wait: args.ack_wait.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64),
        retry_limit: args.retry_limit.map_or(0, |r| r.min(i32::MAX as u32) as i32),
    };
    let conn = settings.connect_authed().await?;
    let mut client = StreamClient::new(conn.channel());
    let (tx, rx) = tokio::sync::mpsc::channel::<ConsumeRequest>(256);
    let _ = tx.send(ConsumeRequest { request: Some(ConsumeOp::Subscribe(subscribe)) }).await;
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut stream = client
        .consume(conn.request(requests))
        .await
        .map_err(|s| rpc_error(settings, &s, "Stream.Consume"))?
        .into_inner();
    eprintln!("Consuming {topic}");
    if args.count == Some(0) {
        return Ok(());
    }
    let stop = micro::shutdown_signal();
    tokio::pin!(stop);
    let printer = Printer::new(settings.output, Output::Json);
    let mut out = std::io::stdout();
    let mut printed = 0u64;
    loop {
        let next = tokio::select! {
            next = stream.message() => next,
            _ = &mut stop => break,
        };
        match next {
            Ok(Some(event)) => {
                // Printed (and flushed) before it is acknowledged: an event is never lost between the two.
                let mut line = Vec::new();
                printer.json_line(&mut line, &event_json(&event))?;
                out.write_all(&line)?;
                out.flush()?;
                if !args.auto_ack {
                    let _ = tx.send(ConsumeRequest { request: Some(ConsumeOp::Ack(event.id)) }).await;
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            Ok(None) => {
                eprintln!("The server ended the consumer");
                return Ok(());
            }
            Err(status) => return Err(rpc_error(settings, &status, "Stream.Consume").into()),
        }
    }
    // Closing our side tells the server we are done: it applies the acks sent so far, then ends the stream.
    drop(tx);
    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    Ok(())
}

async fn read(settings: &Settings, args: ReadArgs) -> anyhow::Result<()> {
    let topic = topic(args.topic)?;
    if let Some(limit) = args.limit
        && (limit == 0 || limit > MAX_READ_LIMIT)
    {
        return Err(
            CliError::input(format!("Invalid limit {limit}: read 1 to {MAX_READ_LIMIT} events at a time")).into()
        );
    }
    let conn = settings.connect_authed().await?;
    let mut client = StoreClient::new(conn.channel());
    let req = ReadRequest { topic, limit: args.limit.unwrap_or(0), offset: args.offset.unwrap_or(0) };
    let events =
        client.read(conn.request(req)).await.map_err(|s| rpc_error(settings, &s, "Store.Read"))?.into_inner().events;
    let printer = Printer::new(settings.output, Output::Table);
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let mut metadata: Vec<String> = e.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            metadata.sort();
            vec![
                e.sequence.to_string(),
                e.id.clone(),
                rfc3339(e.timestamp),
                metadata.join(" "),
                payload_text(&e.payload),
            ]
        })
        .collect();
    printer.table(&["SEQUENCE", "ID", "TIMESTAMP", "METADATA", "PAYLOAD"], &rows, || {
        Value::Array(events.iter().map(event_json).collect())
    })?;
    Ok(())
}

/// A payload for a table cell: text on one line, shortened past 80 characters; `<N bytes>` when not UTF-8.
fn payload_text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            let text = text.replace(['\n', '\r', '\t'], " ");
            if text.chars().count() > 80 { format!("{}…", text.chars().take(79).collect::<String>()) } else { text }
        }
        Err(_) => format!("<{} bytes>", payload.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_durations_ago_or_rfc3339() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_offset("10m", now).unwrap(), 1_700_000_000 - 600);
        assert_eq!(parse_offset("1h 30m", now).unwrap(), 1_700_000_000 - 5400);
        assert_eq!(parse_offset("2023-11-14T22:13:20Z", now).unwrap(), 1_700_000_000);
        assert_eq!(parse_offset("2023-11-14T22:13:20.5Z", now).unwrap(), 1_700_000_000);
        assert_eq!(parse_offset("2023-11-15T00:13:20+02:00", now).unwrap(), 1_700_000_000);
        assert_eq!(parse_offset("2023-11-14T20:13:20-02:00", now).unwrap(), 1_700_000_000);
        for bad in ["yesterday", "10", "2023-13-01T00:00:00Z", "", "é-11-14T22:13:20Z", "2023-11-14T22:13:20+0x:00"] {
            let e = parse_offset(bad, now).unwrap_err();
            assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput, "{bad}");
            assert!(e.message.contains("RFC 3339"), "{}", e.message);
        }
    }

    #[test]
    fn events_print_with_text_or_base64_payloads() {
        let mut e = Event {
            id: "x".into(),
            topic: "t".into(),
            metadata: [("k".into(), "v".into())].into(),
            payload: b"hi".to_vec(),
            timestamp: 1_700_000_000_000_000_001,
            sequence: 3,
            redelivered: 1,
        };
        assert_eq!(
            serde_json::to_string(&event_json(&e)).unwrap(),
            r#"{"id":"x","topic":"t","sequence":3,"timestamp":"2023-11-14T22:13:20.000000001Z","metadata":{"k":"v"},"payload":"hi","redelivered":1}"#
        );
        e.payload = vec![0xff];
        assert_eq!(event_json(&e)["payload_base64"], "/w==");
        assert_eq!(payload_text(&[0xff, 0]), "<2 bytes>");
        assert_eq!(payload_text("a\nb".as_bytes()), "a b");
        assert_eq!(payload_text("x".repeat(100).as_bytes()).chars().count(), 80);
    }
}
