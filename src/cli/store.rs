//! `micro store`: read, write, list and delete records; databases, tables, snapshots and restores.
//!
//! Records live in a database (the current namespace unless `--database` names another the account may use) and
//! a table (`--table`, default `micro`). As in Micro: `write KEY VALUE...` joins the value words with spaces and
//! prints nothing; `read KEY` prints each record's value on its own line (`-v` a `KEY VALUE EXPIRY` table,
//! `-o json` the records with base64 values); a missing key is `Not found` (exit 6). Unlike Micro, `--offset`
//! skips records (Micro applied it as a limit), `--database` is honoured, and snapshots work.
//!
//! `write KEY -` reads the value from stdin (binary safe). Keys are at most 1 KiB and values at most 4 MiB.
//!
//! # Snapshot file format (version 1)
//!
//! `micro store snapshot --destination file://PATH` writes every live record of the database (or of one
//! `--table`) to PATH; `micro store restore --source file://PATH` writes them back, replacing records with the
//! same keys (other records are kept), into the snapshot's database or `--database`. Both go through the
//! server's `Store.Export` and `Store.Import` RPCs, so they work against a remote server. The file is UTF-8 JSON
//! lines, readable by the owner only (mode 0600):
//!
//! 1. a header: `{"format":"micro-store-snapshot","version":1,"database":"micro","created_at":"2024-05-01T10:00:00Z"}`;
//! 2. one line per record, grouped by table and sorted by key within a table:
//!    `{"table":"micro","key":"k","value":"<standard base64>","metadata":{"name":{"type":"string","value":"v"}},"expires_at":1714557600000}`,
//!    where `metadata` is left out when empty and `expires_at` (Unix milliseconds) when the record never expires;
//! 3. a trailer: `{"end":true,"records":N}`, N being the number of record lines.
//!
//! A restore first reads the whole file and refuses it, writing nothing, if the header is missing or of another
//! format or version, a line is not valid, or the trailer is missing or counts differently (a truncated file).
//! Records that expired since the snapshot are skipped. Readers of a later version must keep reading version 1.

use super::output::Printer;
use crate::exit::{CliError, RpcContext, from_core_status};
use crate::settings::{Output, Settings};
use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use micro_client::Connection;
use micro_core::proto::store::{
    DatabasesRequest, DeleteOptions, DeleteRequest, ExportRequest, Field, ImportRequest, ImportResponse, ListOptions,
    ListRequest, ReadOptions, ReadRequest, Record, TablesRequest, WriteOptions, WriteRequest,
    store_client::StoreClient,
};
use micro_server::store::backend::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// The `format` of a snapshot's header line.
pub const SNAPSHOT_FORMAT: &str = "micro-store-snapshot";
/// The snapshot format version this micro writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// The largest message the CLI accepts from the store (see `server::store::service::MAX_MESSAGE_BYTES`).
const MAX_MESSAGE_BYTES: usize = micro_core::metadata::STORE_MAX_MESSAGE_BYTES;
/// Records per `ImportRequest` message, at most.
const IMPORT_RECORDS: usize = 500;
/// Bytes per `ImportRequest` message, about (a larger record goes alone).
const IMPORT_BYTES: usize = 4 * 1024 * 1024;

/// Arguments of `micro store`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro store write greeting \"hello world\"\n  \
    micro store read greeting\n  \
    micro store list --prefix user/ -o json --jq '.[]'\n  \
    micro store snapshot --destination file:///tmp/micro.snapshot")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// `micro store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Read records: `micro store read KEY`, or many with `--prefix` or `--suffix`.
    Read(ReadArgs),
    /// Write a record: `micro store write KEY VALUE...` (`-` as the value reads it from stdin).
    #[command(allow_negative_numbers = true)]
    Write(WriteArgs),
    /// List keys.
    List(ListArgs),
    /// Delete records: `micro store delete KEY...`.
    Delete(DeleteArgs),
    /// List the databases you may use.
    Databases,
    /// List the tables of a database.
    Tables(TablesArgs),
    /// Write every record of a database (or one table) to a snapshot file.
    Snapshot(SnapshotArgs),
    /// Write the records of a snapshot file back into the store.
    Restore(RestoreArgs),
}

/// Where records live.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The database (default: the current namespace).
    #[arg(long)]
    pub database: Option<String>,
    /// The table.
    #[arg(long, default_value = micro_server::store::backend::DEFAULT_TABLE)]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::table_candidates))]
    pub table: String,
}

/// Flags of `micro store read`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The key (with `--prefix` or `--suffix`: what keys start or end with).
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// Read every record whose key starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Read every record whose key ends with KEY.
    #[arg(long)]
    pub suffix: bool,
    /// The most records to read.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Matching records to skip first.
    #[arg(long)]
    pub offset: Option<u32>,
    /// `asc` or `desc`, by key.
    #[arg(long, default_value = "asc")]
    pub order: String,
    /// Print a table of keys, values and expiries.
    #[arg(short, long)]
    pub verbose: bool,
    /// Where to read.
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `micro store write`.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// The key, then the value (words are joined with spaces; `-` reads the value from stdin).
    #[arg(value_name = "KEY VALUE")]
    pub args: Vec<String>,
    /// Expire the record after this long, e.g. `10s`, `5m`, `1h` or `1h30m`.
    #[arg(long, value_name = "DURATION")]
    pub expiry: Option<String>,
    /// Metadata `name=value` (repeat the flag for more).
    #[arg(long, value_name = "NAME=VALUE")]
    pub metadata: Vec<String>,
    /// Where to write.
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `micro store list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The prefix (or, with `--suffix` given without a value, the suffix).
    #[arg(value_name = "PREFIX")]
    pub arg: Option<String>,
    /// Only keys that start with this (or with the argument).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Only keys that end with this (or with the argument).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "SUFFIX")]
    pub suffix: Option<String>,
    /// The most keys to list.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Matching keys to skip first.
    #[arg(long)]
    pub offset: Option<u32>,
    /// `asc` or `desc`.
    #[arg(long, default_value = "asc")]
    pub order: String,
    /// Where to list.
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `micro store delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The keys.
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// Where to delete.
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `micro store tables`.
#[derive(Debug, clap::Args)]
pub struct TablesArgs {
    /// The database (default: the current namespace).
    #[arg(long)]
    pub database: Option<String>,
}

/// Flags of `micro store snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Where to write the snapshot: `file:///path/to/file` (or a plain path).
    #[arg(long, value_name = "URL")]
    pub destination: Option<String>,
    /// The database (default: the current namespace).
    #[arg(long)]
    pub database: Option<String>,
    /// Only this table (default: every table of the database).
    #[arg(long)]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::table_candidates))]
    pub table: Option<String>,
}

/// Flags of `micro store restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot to read: `file:///path/to/file` (or a plain path).
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// The database to restore into (default: the snapshot's).
    #[arg(long)]
    pub database: Option<String>,
}

/// A store client over `conn`, with message limits that fit the largest answers.
pub fn client(conn: &Connection) -> StoreClient<Channel> {
    StoreClient::new(conn.channel())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Maps an RPC error: `not found` is Micro's `Not found` (exit 6); auth and connection errors as everywhere; other
/// errors of the store are `<prefix>: <detail>` as in Micro, exit 128 for a refused value, else 1
/// ([`from_core_status`]).
fn rpc_error(settings: &Settings, status: &tonic::Status, endpoint: &str, prefix: &str) -> CliError {
    if status.code() == tonic::Code::NotFound && crate::exit::detail(status.message()) == "not found" {
        return CliError::missing("Not found");
    }
    from_core_status(status, &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() }, prefix)
}

/// Parses an `--expiry` value (`10s`, `5m`, `1h`, `1h30m`, `500ms`); the record keeps whole seconds, rounded up.
pub fn parse_expiry(text: &str) -> Result<Duration, CliError> {
    let invalid = |why: &str| {
        CliError::input(format!("expiry flag is invalid: {text:?} {why}; use a duration such as 10s, 5m, 1h or 1h30m"))
    };
    let d = humantime::parse_duration(text.trim()).map_err(|_| invalid("is not a duration"))?;
    if d.is_zero() {
        return Err(invalid("is zero"));
    }
    if d.as_secs() > i64::MAX as u64 / 1000 {
        return Err(invalid("is too long"));
    }
    Ok(d)
}

fn parse_metadata(items: &[String]) -> Result<BTreeMap<String, Field>, CliError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| {
            CliError::input(format!("invalid --metadata {item:?}: use NAME=VALUE, e.g. --metadata owner=alice"))
        })?;
        out.insert(k.to_string(), Field { r#type: "string".into(), value: v.to_string() });
    }
    Ok(out)
}

/// A value as shown in a table: the text if it is UTF-8, else `0x` and the hex of its first 20 bytes (as Micro).
pub fn display_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => format!("0x{}", value.iter().take(20).map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// An expiry as shown in a table: `None`, or how long until it, e.g. `in 5 seconds`.
pub fn display_expiry(record: &Record, now_ms: i64) -> String {
    if record.expires_at <= 0 && record.expiry <= 0 {
        return "None".into();
    }
    let left = if record.expires_at > 0 {
        ((record.expires_at - now_ms).max(0) as u64).div_ceil(1000)
    } else {
        record.expiry as u64
    };
    let (n, unit) = match left {
        0..60 => (left, "second"),
        60..3600 => (left / 60, "minute"),
        3600..86400 => (left / 3600, "hour"),
        _ => (left / 86400, "day"),
    };
    format!("in {n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A record as `-o json` prints it, as Micro: the value in base64, metadata values by name, and `expiry` the time
/// left in nanoseconds (0 = never).
fn record_json(record: &Record, now_ms: i64) -> Value {
    let metadata: BTreeMap<&str, &str> = record.metadata.iter().map(|(k, f)| (k.as_str(), f.value.as_str())).collect();
    let expiry_ns: i64 = if record.expires_at > 0 {
        (record.expires_at - now_ms).max(0).saturating_mul(1_000_000)
    } else {
        record.expiry.saturating_mul(1_000_000_000)
    };
    json!({
        "key": record.key,
        "value": base64::engine::general_purpose::STANDARD.encode(&record.value),
        "metadata": metadata,
        "expiry": expiry_ns,
    })
}

/// Prints a list of names, one per line, or a JSON array.
fn print_names(printer: &Printer, names: &[String]) -> anyhow::Result<()> {
    if printer.format() == Output::Table {
        for n in names {
            printer.line(n)?;
        }
    } else {
        printer.json(&json!(names))?;
    }
    Ok(())
}

/// Runs `micro store`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    match args.command {
        StoreCommand::Read(a) => read(settings, &printer, a).await,
        StoreCommand::Write(a) => write(settings, a).await,
        StoreCommand::List(a) => list(settings, &printer, a).await,
        StoreCommand::Delete(a) => delete(settings, a).await,
        StoreCommand::Databases => {
            let conn = settings.connect_authed().await?;
            let databases = client(&conn)
                .databases(conn.request(DatabasesRequest {}))
                .await
                .map_err(|s| rpc_error(settings, &s, "Store.Databases", "Couldn't list databases"))?
                .into_inner()
                .databases;
            print_names(&printer, &databases)
        }
        StoreCommand::Tables(a) => {
            let conn = settings.connect_authed().await?;
            let req = conn.request(TablesRequest { database: a.database.unwrap_or_default() });
            let tables = client(&conn)
                .tables(req)
                .await
                .map_err(|s| rpc_error(settings, &s, "Store.Tables", "Couldn't list tables"))?
                .into_inner()
                .tables;
            print_names(&printer, &tables)
        }
        StoreCommand::Snapshot(a) => snapshot(settings, &printer, a).await,
        StoreCommand::Restore(a) => restore(settings, &printer, a).await,
    }
}

async fn read(settings: &Settings, printer: &Printer, a: ReadArgs) -> anyhow::Result<()> {
    // An empty key reads nothing, unless it is an empty prefix or suffix (every record).
    let key = a
        .keys
        .first()
        .cloned()
        .filter(|k| !k.is_empty() || a.prefix || a.suffix)
        .ok_or_else(|| CliError::input("Key arg is required: micro store read KEY"))?;
    if a.keys.len() > 1 {
        return Err(CliError::input("Too many arguments: `micro store read KEY` reads one key (or --prefix)").into());
    }
    check_order(&a.order)?;
    let conn = settings.connect_authed().await?;
    let req = conn.request(ReadRequest {
        key: key.clone(),
        options: Some(ReadOptions {
            database: a.target.database.unwrap_or_default(),
            table: a.target.table,
            prefix: a.prefix,
            suffix: a.suffix,
            limit: a.limit.unwrap_or(0),
            offset: a.offset.unwrap_or(0),
            order: a.order,
        }),
    });
    let records = client(&conn)
        .read(req)
        .await
        .map_err(|s| rpc_error(settings, &s, "Store.Read", &format!("Couldn't read {key} from store")))?
        .into_inner()
        .records;
    let now = now_ms();
    if printer.format() != Output::Table {
        printer.json(&Value::Array(records.iter().map(|r| record_json(r, now)).collect()))?;
    } else if a.verbose {
        let rows: Vec<Vec<String>> =
            records.iter().map(|r| vec![r.key.clone(), display_value(&r.value), display_expiry(r, now)]).collect();
        printer.table(&["KEY", "VALUE", "EXPIRY"], &rows, || Value::Null)?;
    } else {
        for r in &records {
            match std::str::from_utf8(&r.value) {
                Ok(text) => printer.line(text)?,
                Err(_) => {
                    // A binary value goes out as it is (the printer deals in text).
                    let mut out = std::io::stdout().lock();
                    out.write_all(&r.value)?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

fn check_order(order: &str) -> Result<(), CliError> {
    match order.to_ascii_lowercase().as_str() {
        "asc" | "desc" => Ok(()),
        _ => Err(CliError::input(format!("invalid --order {order:?}: use asc or desc"))),
    }
}

async fn write(settings: &Settings, a: WriteArgs) -> anyhow::Result<()> {
    if a.args.len() < 2 {
        return Err(CliError::input("Key and Value args are required").into());
    }
    let key = a.args[0].clone();
    if key.is_empty() {
        return Err(CliError::input("The key is empty: micro store write KEY VALUE").into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(CliError::input(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES} bytes (1 KiB)",
            key.len()
        ))
        .into());
    }
    let value: Vec<u8> = if a.args.len() == 2 && a.args[1] == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX_VALUE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .context("cannot read the value from stdin")?;
        buf
    } else {
        a.args[1..].join(" ").into_bytes()
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(
            CliError::input(format!("the value is larger than the limit of {MAX_VALUE_BYTES} bytes (4 MiB)")).into()
        );
    }
    let expiry = a.expiry.as_deref().map(parse_expiry).transpose()?;
    let metadata = parse_metadata(&a.metadata)?;
    let conn = settings.connect_authed().await?;
    let record = Record {
        key: key.clone(),
        value,
        expiry: expiry.map_or(0, |d| d.as_millis().div_ceil(1000) as i64),
        metadata: metadata.into_iter().collect(),
        expires_at: 0,
    };
    let req = conn.request(WriteRequest {
        record: Some(record),
        options: Some(WriteOptions {
            database: a.target.database.unwrap_or_default(),
            table: a.target.table,
            ..Default::default()
        }),
    });
    client(&conn)
        .write(req)
        .await
        .map_err(|s| rpc_error(settings, &s, "Store.Write", &format!("Couldn't write {key} to store")))?;
    Ok(())
}

async fn list(settings: &Settings, printer: &Printer, a: ListArgs) -> anyhow::Result<()> {
    check_order(&a.order)?;
    let arg = a.arg.unwrap_or_default();
    let pick = |flag: Option<String>| match flag {
        Some(v) if v.is_empty() => arg.clone(),
        Some(v) => v,
        None => String::new(),
    };
    let (prefix, suffix) = match (a.prefix, a.suffix) {
        // A bare argument is a prefix (Micro ignored it).
        (None, None) => (arg.clone(), String::new()),
        (p, s) => (pick(p), pick(s)),
    };
    let conn = settings.connect_authed().await?;
    let req = conn.request(ListRequest {
        options: Some(ListOptions {
            database: a.target.database.unwrap_or_default(),
            table: a.target.table,
            prefix,
            suffix,
            limit: a.limit.unwrap_or(0),
            offset: a.offset.unwrap_or(0),
            order: a.order,
        }),
    });
    let error = |s: tonic::Status| rpc_error(settings, &s, "Store.List", "Couldn't list from store");
    let mut stream = client(&conn).list(req).await.map_err(error)?.into_inner();
    let mut keys = Vec::new();
    while let Some(batch) = stream.message().await.map_err(error)? {
        keys.extend(batch.keys);
    }
    print_names(printer, &keys)
}

async fn delete(settings: &Settings, a: DeleteArgs) -> anyhow::Result<()> {
    if a.keys.is_empty() || a.keys.iter().any(String::is_empty) {
        return Err(CliError::input("key is required").into());
    }
    let conn = settings.connect_authed().await?;
    let mut store = client(&conn);
    for key in a.keys {
        let req = conn.request(DeleteRequest {
            key: key.clone(),
            options: Some(DeleteOptions {
                database: a.target.database.clone().unwrap_or_default(),
                table: a.target.table.clone(),
            }),
        });
        store
            .delete(req)
            .await
            .map_err(|s| rpc_error(settings, &s, "Store.Delete", &format!("couldn't delete key {key}")))?;
    }
    Ok(())
}

/// The path of a `file://` URL (or of a plain path); `what` names the flag in errors.
pub fn file_path(url: Option<&str>, what: &str) -> Result<PathBuf, CliError> {
    let url = url.filter(|u| !u.is_empty()).ok_or_else(|| {
        CliError::input(format!("--{what} is required, e.g. --{what} file:///tmp/micro-store.snapshot"))
    })?;
    let path = match url.split_once("://") {
        Some(("file", path)) => path,
        Some((scheme, _)) => return Err(CliError::input(format!("unsupported {what} scheme: {scheme}"))),
        None => url,
    };
    if path.is_empty() {
        return Err(CliError::input(format!("the {what} {url:?} names no file")));
    }
    Ok(PathBuf::from(path))
}

/// The header line of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// The format version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// The database the records came from.
    pub database: String,
    /// When the snapshot was taken (RFC 3339).
    pub created_at: String,
}

/// A record line of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The table.
    pub table: String,
    /// The key.
    pub key: String,
    /// The value, in standard base64.
    pub value: String,
    /// Metadata by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, SnapshotField>,
    /// When the record expires, in Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A metadata field in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotField {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its value.
    pub value: String,
}

/// The trailer line of a snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// Always `true`.
    pub end: bool,
    /// How many record lines precede it.
    pub records: u64,
}

fn to_line(table: &str, r: Record) -> SnapshotRecord {
    SnapshotRecord {
        table: table.to_string(),
        key: r.key,
        value: base64::engine::general_purpose::STANDARD.encode(&r.value),
        metadata: r.metadata.into_iter().map(|(k, f)| (k, SnapshotField { kind: f.r#type, value: f.value })).collect(),
        expires_at: (r.expires_at > 0).then_some(r.expires_at),
    }
}

fn from_line(line: SnapshotRecord) -> Result<(String, Record), String> {
    let value = base64::engine::general_purpose::STANDARD
        .decode(&line.value)
        .map_err(|e| format!("the value of {:?} is not base64 ({e})", line.key))?;
    let record = Record {
        key: line.key,
        value,
        expiry: 0,
        metadata: line.metadata.into_iter().map(|(k, f)| (k, Field { r#type: f.kind, value: f.value })).collect(),
        expires_at: line.expires_at.unwrap_or(0),
    };
    Ok((line.table, record))
}

async fn snapshot(settings: &Settings, printer: &Printer, a: SnapshotArgs) -> anyhow::Result<()> {
    let path = file_path(a.destination.as_deref(), "destination")?;
    let database = a.database.clone().unwrap_or_else(|| settings.namespace.clone());
    let conn = settings.connect_authed().await?;
    let mut store = client(&conn);
    let tables = match a.table {
        Some(t) => vec![t],
        None => {
            store
                .tables(conn.request(TablesRequest { database: database.clone() }))
                .await
                .map_err(|s| rpc_error(settings, &s, "Store.Tables", "Couldn't list tables"))?
                .into_inner()
                .tables
        }
    };
    let tmp = tmp_path(&path);
    let file = create_private(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT.into(),
        version: SNAPSHOT_VERSION,
        database: database.clone(),
        created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let written = async {
        writeln!(out, "{}", serde_json::to_string(&header)?)?;
        let mut count = 0u64;
        for table in &tables {
            let req = conn.request(ExportRequest { database: database.clone(), table: table.clone() });
            let error = |s: tonic::Status| rpc_error(settings, &s, "Store.Export", "Couldn't export from store");
            let mut stream = store.export(req).await.map_err(error)?.into_inner();
            while let Some(batch) = stream.message().await.map_err(error)? {
                for r in batch.records {
                    writeln!(out, "{}", serde_json::to_string(&to_line(table, r))?)?;
                    count += 1;
                }
            }
        }
        writeln!(out, "{}", serde_json::to_string(&SnapshotEnd { end: true, records: count })?)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok::<u64, anyhow::Error>(count)
    }
    .await;
    let count = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write the snapshot {}", path.display())));
        }
    };
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot move the snapshot to {}", path.display()))?;
    match printer.format() {
        Output::Table => printer.message(format!(
            "Snapshot of database {database}: {count} records from {} tables written to {}",
            tables.len(),
            path.display()
        )),
        _ => printer.json(&json!({
            "database": database, "tables": tables.len(), "records": count, "path": path.to_string_lossy(),
        }))?,
    }
    Ok(())
}

type ImportCall = tokio::task::JoinHandle<Result<tonic::Response<ImportResponse>, tonic::Status>>;

/// One `Store.Import` call in progress, for the records of one table.
struct Import {
    table: String,
    database: String,
    tx: tokio::sync::mpsc::Sender<ImportRequest>,
    call: Option<ImportCall>,
    batch: Vec<Record>,
    bytes: usize,
}

impl Import {
    fn start(conn: &Connection, store: &StoreClient<Channel>, database: &str, table: String) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<ImportRequest>(2);
        let mut store = store.clone();
        let req = conn.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let call = tokio::spawn(async move { store.import(req).await });
        Self { table, database: database.to_string(), tx, call: Some(call), batch: Vec::new(), bytes: 0 }
    }

    async fn push(&mut self, record: Record, settings: &Settings) -> anyhow::Result<()> {
        self.bytes += record.key.len() + record.value.len();
        self.batch.push(record);
        if self.batch.len() >= IMPORT_RECORDS || self.bytes >= IMPORT_BYTES {
            self.send(settings).await?;
        }
        Ok(())
    }

    async fn send(&mut self, settings: &Settings) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let msg = ImportRequest {
            database: self.database.clone(),
            table: self.table.clone(),
            records: std::mem::take(&mut self.batch),
        };
        self.bytes = 0;
        if self.tx.send(msg).await.is_err() {
            // The call ended early: its answer says why.
            if let Some(call) = self.call.take() {
                Self::answer(call, settings).await?;
            }
            anyhow::bail!("the store stopped the restore early");
        }
        Ok(())
    }

    async fn finish(mut self, settings: &Settings) -> anyhow::Result<ImportResponse> {
        self.send(settings).await?;
        drop(self.tx);
        let call = self.call.take().ok_or_else(|| anyhow::anyhow!("the import call already ended"))?;
        Self::answer(call, settings).await
    }

    async fn answer(call: ImportCall, settings: &Settings) -> anyhow::Result<ImportResponse> {
        match call.await? {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(rpc_error(settings, &s, "Store.Import", "Couldn't restore into the store").into()),
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Reads a snapshot file line by line, checking its header and trailer; calls `record` for each record line.
/// Returns the header and the number of records.
pub fn read_snapshot(
    path: &Path,
    mut record: impl FnMut(String, Record) -> anyhow::Result<()>,
) -> anyhow::Result<(SnapshotHeader, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the snapshot {}", path.display()))?;
    let bad = |line: usize, why: String| {
        CliError::input(format!("{} is not a valid snapshot: line {line}: {why}", path.display()))
    };
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let header: SnapshotHeader = match lines.next() {
        Some((_, line)) => {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&line)
                .ok()
                .filter(|h: &SnapshotHeader| h.format == SNAPSHOT_FORMAT)
                .ok_or_else(|| CliError::input(format!("{} is not a micro store snapshot", path.display())))?
        }
        None => return Err(CliError::input(format!("{} is empty, not a snapshot", path.display())).into()),
    };
    if header.version != SNAPSHOT_VERSION {
        return Err(CliError::input(format!(
            "{} is a snapshot of format version {}; this micro reads version {SNAPSHOT_VERSION}",
            path.display(),
            header.version
        ))
        .into());
    }
    let mut count = 0u64;
    let mut ended = false;
    for (i, line) in lines {
        let n = i + 1;
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if ended {
            return Err(bad(n, "text after the end line".into()).into());
        }
        if let Ok(end) = serde_json::from_str::<SnapshotEnd>(&line) {
            if !end.end || end.records != count {
                return Err(bad(n, format!("the end line counts {} records, the file has {count}", end.records)).into());
            }
            ended = true;
            continue;
        }
        let parsed: SnapshotRecord = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
        let (table, r) = from_line(parsed).map_err(|e| bad(n, e))?;
        count += 1;
        record(table, r)?;
    }
    if !ended {
        return Err(CliError::input(format!(
            "{} is not a valid snapshot: its end line is missing (the file is truncated?)",
            path.display()
        ))
        .into());
    }
    Ok((header, count))
}

async fn restore(settings: &Settings, printer: &Printer, a: RestoreArgs) -> anyhow::Result<()> {
    let path = file_path(a.source.as_deref(), "source")?;
    // First check the whole file, so that a bad file writes nothing.
    let check = path.clone();
    let (header, total) = tokio::task::spawn_blocking(move || read_snapshot(&check, |_, _| Ok(()))).await??;
    let database = a.database.unwrap_or(header.database);
    let conn = settings.connect_authed().await?;
    let store = client(&conn);

    // Then stream the records, one Import call per run of records of the same table.
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<(String, Record)>(IMPORT_RECORDS * 2);
    let reader = tokio::task::spawn_blocking(move || {
        read_snapshot(&path, |table, r| {
            lines_tx.blocking_send((table, r)).map_err(|_| anyhow::anyhow!("the restore stopped"))
        })
    });
    let (mut imported, mut expired) = (0u64, 0u64);
    let mut open: Option<Import> = None;
    while let Some((table, record)) = lines_rx.recv().await {
        if let Some(import) = open.take_if(|o| o.table != table) {
            let done = import.finish(settings).await?;
            imported += done.count;
            expired += done.expired;
        }
        let import = open.get_or_insert_with(|| Import::start(&conn, &store, &database, table));
        import.push(record, settings).await?;
    }
    if let Some(import) = open {
        let done = import.finish(settings).await?;
        imported += done.count;
        expired += done.expired;
    }
    reader.await??;
    let skipped = if expired > 0 { format!(" ({expired} had expired and were skipped)") } else { String::new() };
    match printer.format() {
        Output::Table => {
            printer.message(format!("Restored {imported} of {total} records into database {database}{skipped}"))
        }
        _ => printer.json(&json!({
            "database": database, "records": total, "restored": imported, "expired": expired,
        }))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_values() {
        assert_eq!(parse_expiry("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_expiry("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_expiry("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["abc", "10", "-1s", "0s", ""] {
            let e = parse_expiry(bad).unwrap_err();
            assert!(e.message.starts_with("expiry flag is invalid: "), "{bad}: {}", e.message);
            assert!(e.message.contains("10s, 5m, 1h"), "{}", e.message);
        }
    }

    #[test]
    fn file_urls() {
        assert_eq!(file_path(Some("file:///tmp/x"), "destination").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(file_path(Some("file://rel/x"), "destination").unwrap(), PathBuf::from("rel/x"));
        assert_eq!(file_path(Some("/tmp/y"), "source").unwrap(), PathBuf::from("/tmp/y"));
        assert_eq!(file_path(Some("s3://b/k"), "source").unwrap_err().message, "unsupported source scheme: s3");
        assert!(file_path(None, "source").unwrap_err().message.starts_with("--source is required"));
        assert!(file_path(Some("file://"), "source").is_err());
    }

    #[test]
    fn values_and_expiries_display_as_micro() {
        assert_eq!(display_value(b"val1"), "val1");
        assert_eq!(display_value(&[0xff, 0x00, 0x01]), "0xff0001");
        let r = |expiry, expires_at| Record { expiry, expires_at, ..Default::default() };
        assert_eq!(display_expiry(&r(0, 0), 0), "None");
        assert_eq!(display_expiry(&r(0, 5_000), 0), "in 5 seconds");
        assert_eq!(display_expiry(&r(0, 4_001), 0), "in 5 seconds");
        assert_eq!(display_expiry(&r(0, 61_000), 0), "in 1 minute");
        assert_eq!(display_expiry(&r(7200, 0), 0), "in 2 hours");
    }

    #[test]
    fn snapshot_lines_round_trip_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("m".to_string(), Field { r#type: "string".into(), value: "v".into() });
        let record = Record { key: "k".into(), value: vec![0, 1, 255], expiry: 0, metadata, expires_at: 99 };
        let header = SnapshotHeader {
            format: SNAPSHOT_FORMAT.into(),
            version: 1,
            database: "micro".into(),
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        let line = serde_json::to_string(&to_line("t", record.clone())).unwrap();
        assert_eq!(
            line,
            r#"{"table":"t","key":"k","value":"AAH/","metadata":{"m":{"type":"string","value":"v"}},"expires_at":99}"#
        );
        let good = format!("{}\n{line}\n{{\"end\":true,\"records\":1}}\n", serde_json::to_string(&header).unwrap());
        std::fs::write(&path, &good).unwrap();
        let mut seen = Vec::new();
        let (h, n) = read_snapshot(&path, |t, r| {
            seen.push((t, r));
            Ok(())
        })
        .unwrap();
        assert_eq!((h.database.as_str(), n), ("micro", 1));
        assert_eq!(seen, vec![("t".to_string(), record)]);

        let refuse = |text: &str, why: &str| {
            std::fs::write(&path, text).unwrap();
            let e = read_snapshot(&path, |_, _| Ok(())).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        };
        refuse(&good.replace("\"records\":1", "\"records\":2"), "counts 2 records");
        refuse(&good[..good.find("{\"end\"").unwrap()], "end line is missing");
        refuse(&good.replace("\"version\":1", "\"version\":2"), "format version 2");
        refuse("{\"hello\":1}\n", "not a micro store snapshot");
        refuse(&good.replace("AAH/", "!!"), "line 2");
    }
}
