//! `micro broker`: publish messages and subscribe to topics.
//!
//! `micro broker publish TOPIC MESSAGE` publishes one message; `micro broker publish TOPIC -` publishes every
//! non-empty line of stdin as a message, over one streaming call. `micro broker subscribe TOPIC [--queue Q]`
//! prints each message as one JSON line until Ctrl-C, `--count` messages, or the server stops:
//!
//! ```text
//! {"topic":"orders","header":{"k":"v"},"body":"hello"}
//! {"topic":"orders","header":{},"body_base64":"AAEC"}
//! ```
//!
//! `body` holds the body when it is UTF-8 text; otherwise `body_base64` holds it in standard base64. Topics are per
//! namespace (`--namespace`), and delivery is at most once: a subscriber sees what is published while it listens.

use super::call::parse_metadata;
use super::output::Printer;
use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::{Output, Settings};
use base64::Engine;
use clap::Subcommand;
use futures::FutureExt;
use micro_core::proto::broker::{Message, PublishRequest, SubscribeRequest, broker_client::BrokerClient};
use micro_server::broker::MAX_BODY;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};

/// Arguments of `micro broker`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro broker publish greetings hello\n  \
    tail -f app.log | micro broker publish logs -\n  \
    micro broker subscribe greetings --jq .body")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: BrokerCommand,
}

/// `micro broker` subcommands.
#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Publish a message: `micro broker publish TOPIC MESSAGE`, or `-` to publish each line of stdin.
    Publish(PublishArgs),
    /// Print the messages of a topic as JSON lines until Ctrl-C (`body`, or `body_base64` when not UTF-8).
    Subscribe(SubscribeArgs),
}

/// Flags of `micro broker publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    pub topic: Option<String>,
    /// The message body, or `-` to publish every non-empty line of stdin as one message.
    #[arg(value_name = "MESSAGE|-", allow_hyphen_values = true)]
    pub message: Option<String>,
    /// A header to set, `key=value` (repeat the flag or give a comma list).
    #[arg(long, short = 'H', alias = "metadata", value_delimiter = ',', value_name = "KEY=VALUE")]
    pub header: Vec<String>,
}

/// Flags of `micro broker subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The topic.
    #[arg(value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Join queue group Q: each message goes to one member of the group.
    #[arg(long, short = 'q', value_name = "Q")]
    pub queue: Option<String>,
    /// Exit after this many messages.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
}

fn topic(topic: Option<String>) -> Result<String, CliError> {
    topic.filter(|t| !t.is_empty()).ok_or_else(|| CliError::input("Missing topic"))
}

/// Maps an RPC error as every built-in does ([`from_core_status`]): a refused value is bad input (128).
fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str) -> CliError {
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, "")
}

fn too_large(len: usize) -> CliError {
    CliError::input(format!("message is {len} bytes; the broker takes at most {MAX_BODY} bytes (1 MiB)"))
}

/// A message as one JSON line: topic, headers (sorted) and the body as text, or base64 when it is not UTF-8.
pub fn message_json(topic: &str, message: &Message) -> Value {
    let header: BTreeMap<&String, &String> = message.header.iter().collect();
    match std::str::from_utf8(&message.body) {
        Ok(text) => json!({"topic": topic, "header": header, "body": text}),
        Err(_) => json!({
            "topic": topic,
            "header": header,
            "body_base64": base64::engine::general_purpose::STANDARD.encode(&message.body),
        }),
    }
}

/// Runs `micro broker`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    match args.command {
        BrokerCommand::Publish(a) => publish(settings, a).await,
        BrokerCommand::Subscribe(a) => subscribe(settings, a).await,
    }
}

async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<()> {
    let topic = topic(args.topic)?;
    let message = args.message.ok_or_else(|| {
        CliError::input("Missing message: give it as an argument, or `-` to publish each line of stdin")
    })?;
    let header: HashMap<String, String> = parse_metadata(&args.header)?.into_iter().collect();
    let conn = settings.connect_authed().await?;
    let mut client = BrokerClient::new(conn.channel());
    if message != "-" {
        if message.len() > MAX_BODY {
            return Err(too_large(message.len()).into());
        }
        let req = PublishRequest { topic, message: Some(Message { header, body: message.into_bytes() }) };
        client.publish(conn.request(req)).await.map_err(|s| rpc_error(settings, &s, "Broker.Publish"))?;
        return Ok(());
    }

    // One message per line of stdin, read on a blocking thread and streamed as they come.
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1024);
    let (fail_tx, mut fail_rx) = tokio::sync::oneshot::channel::<CliError>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = fail_tx.send(CliError::failure(format!("cannot read stdin: {e}")));
                    return;
                }
            }
            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                line.pop();
            }
            if line.is_empty() {
                continue;
            }
            if line.len() > MAX_BODY {
                let _ = fail_tx.send(too_large(line.len()));
                return;
            }
            let req = PublishRequest {
                topic: topic.clone(),
                message: Some(Message { header: header.clone(), body: std::mem::take(&mut line) }),
            };
            if tx.blocking_send(req).is_err() {
                return;
            }
        }
    });
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let sent = client.publish_stream(conn.request(requests)).await;
    // A failure reading stdin ends the stream early: report it rather than the count.
    if let Ok(e) = fail_rx.try_recv() {
        return Err(e.into());
    }
    let count = sent.map_err(|s| rpc_error(settings, &s, "Broker.PublishStream"))?.into_inner().count;
    if settings.stderr_tty {
        eprintln!("Published {count} message{}", if count == 1 { "" } else { "s" });
    }
    Ok(())
}

async fn subscribe(settings: &Settings, args: SubscribeArgs) -> anyhow::Result<()> {
    let topic = topic(args.topic)?;
    let queue = args.queue.unwrap_or_default();
    let conn = settings.connect_authed().await?;
    let mut client = BrokerClient::new(conn.channel());
    let req = SubscribeRequest { topic: topic.clone(), queue: queue.clone() };
    let mut stream = client
        .subscribe(conn.request(req))
        .await
        .map_err(|s| rpc_error(settings, &s, "Broker.Subscribe"))?
        .into_inner();
    if queue.is_empty() {
        eprintln!("Subscribed to {topic}");
    } else {
        eprintln!("Subscribed to {topic} in queue group {queue}");
    }
    if args.count == Some(0) {
        return Ok(());
    }
    let stop = micro::shutdown_signal();
    tokio::pin!(stop);
    let printer = Printer::new(settings.output, Output::Json);
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut received = 0u64;
    loop {
        // Flush only when no message is ready, so bursts are written in large chunks.
        let next = match stream.message().now_or_never() {
            Some(next) => next,
            None => {
                out.flush()?;
                tokio::select! {
                    next = stream.message() => next,
                    _ = &mut stop => break,
                }
            }
        };
        match next {
            Ok(Some(message)) => {
                printer.json_line(&mut out, &message_json(&topic, &message))?;
                received += 1;
                if args.count.is_some_and(|n| received >= n) {
                    break;
                }
            }
            Ok(None) => {
                out.flush()?;
                eprintln!("The server ended the subscription");
                break;
            }
            Err(status) => {
                out.flush()?;
                return Err(rpc_error(settings, &status, "Broker.Subscribe").into());
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_print_as_text_or_base64() {
        let mut m =
            Message { header: [("b".into(), "2".into()), ("a".into(), "1".into())].into(), body: b"hi".to_vec() };
        assert_eq!(
            serde_json::to_string(&message_json("t", &m)).unwrap(),
            r#"{"topic":"t","header":{"a":"1","b":"2"},"body":"hi"}"#
        );
        m.header.clear();
        m.body = vec![0xff, 0x00];
        assert_eq!(
            serde_json::to_string(&message_json("t", &m)).unwrap(),
            r#"{"topic":"t","header":{},"body_base64":"/wA="}"#
        );
    }
}
