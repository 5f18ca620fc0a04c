//! `micro status`: a table of the services the runtime manages.
//!
//! `NAME VERSION SOURCE STATUS BUILD UPDATED METADATA`, sorted by name, as Micro's (without its glued columns):
//! UPDATED is the time since the status last changed (`4s ago`), and METADATA holds the owner and group, the
//! restarts when there were any, and the error when the status is error. `-o json` prints the services instead.
//! When nothing runs, a one-line note goes to stderr (exit 0).

use super::output::Printer;
use super::run::{client, runtime_error, split_version};
use crate::exit::CliError;
use crate::settings::{Output, Settings};
use micro_core::proto::runtime::{ReadOptions, ReadRequest, Service};
use micro_server::runtime::records::Status;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// Flags of `micro status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro status\n  \
    micro status greeter\n  \
    micro status -o json --jq '.[] | select(.status == \"error\") | .name'")]
pub struct Args {
    /// Only this service (NAME or NAME@VERSION).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Only this version.
    #[arg(value_name = "VERSION")]
    pub version: Option<String>,
}

/// A duration as Micro prints it: `15s`, `1m0s`, `1h15m32s`, `1d0h0m0s`.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h{minutes}m{seconds}s")
    } else if s >= 3600 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if s >= 60 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

fn ago(service: &Service, now: SystemTime) -> String {
    let at = service
        .metadata
        .get("updated")
        .or_else(|| service.metadata.get("started"))
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
    match at {
        Some(t) => format!("{} ago", fmt_duration(now.duration_since(t).unwrap_or_default())),
        None => "unknown".into(),
    }
}

fn or_na(s: Option<&String>) -> String {
    s.filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "n/a".into())
}

/// The METADATA cell: `owner=…, group=…`, then `restarts=N` when there were restarts, and `error=…` in error.
pub fn metadata_cell(service: &Service) -> String {
    let m = &service.metadata;
    let mut cell = format!("owner={}, group={}", or_na(m.get("owner")), or_na(m.get("group")));
    if let Some(r) = m.get("restarts").filter(|r| r.as_str() != "0") {
        cell.push_str(&format!(", restarts={r}"));
    }
    if Status::from_code(service.status) == Status::Error || m.get("error").is_some_and(|e| !e.is_empty()) {
        cell.push_str(&format!(", error={}", or_na(m.get("error")).lines().next().unwrap_or_default()));
    }
    cell
}

/// The STATUS cell: the status, and the deployment in progress with its time so far: `building 12s` for a first
/// build, `running, building 3s` while an update builds (the previous version serves until the new one does).
pub fn status_cell(service: &Service) -> String {
    let word = Status::from_code(service.status).word();
    let m = &service.metadata;
    let Some(stage) = m.get("deploy") else { return word.to_string() };
    let elapsed = m.get("deploy_elapsed_ms").and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0);
    let elapsed = fmt_duration(Duration::from_millis(elapsed));
    if word == stage { format!("{word} {elapsed}") } else { format!("{word}, {stage} {elapsed}") }
}

/// One row of the table.
pub fn row(service: &Service, now: SystemTime) -> Vec<String> {
    let version = if service.version.is_empty() { "n/a".to_string() } else { service.version.clone() };
    let source = or_na(service.metadata.get("source").or(Some(&service.source)));
    let build: String = or_na(service.metadata.get("build")).chars().take(7).collect();
    vec![service.name.clone(), version, source, status_cell(service), build, ago(service, now), metadata_cell(service)]
}

/// A service as JSON.
pub fn service_json(service: &Service) -> Value {
    let metadata: std::collections::BTreeMap<&String, &String> = service.metadata.iter().collect();
    json!({
        "name": service.name,
        "version": service.version,
        "source": service.metadata.get("source").unwrap_or(&service.source),
        "status": Status::from_code(service.status).word(),
        "build": service.metadata.get("build").cloned().unwrap_or_default(),
        "updated": service.metadata.get("updated").cloned().unwrap_or_default(),
        "restarts": service.metadata.get("restarts").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0),
        "error": service.metadata.get("error").cloned().unwrap_or_default(),
        "deploy": service.metadata.get("deploy").map(|stage| json!({
            "stage": stage,
            "elapsed_ms": service.metadata.get("deploy_elapsed_ms").and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0),
        })),
        "metadata": metadata,
    })
}

/// Runs `micro status`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let (name, mut version) = args.name.as_deref().map(split_version).unwrap_or_default();
    if let Some(v) = args.version {
        version = v;
    }
    let (mut client, conn) = client(settings).await?;
    let req = ReadRequest {
        options: Some(ReadOptions {
            service: name.clone(),
            version: version.clone(),
            namespace: settings.namespace.clone(),
            ..Default::default()
        }),
    };
    let mut services = client
        .read(conn.request(req))
        .await
        .map_err(|s| runtime_error(settings, &s, "Runtime.Read"))?
        .into_inner()
        .services;
    services.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    let printer = Printer::new(settings.output, Output::Table);
    if services.is_empty() && !name.is_empty() {
        let what = if version.is_empty() { name } else { format!("{name}@{version}") };
        return Err(CliError::missing(format!(
            "Service {what} is not run by the runtime. See `micro status` for the services it runs"
        ))
        .into());
    }
    if services.is_empty() && printer.format() == Output::Table {
        printer.message(format!(
            "No services are running in namespace {}. Start one with `micro run <dir>`.",
            settings.namespace
        ));
        return Ok(());
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = services.iter().map(|s| row(s, now)).collect();
    printer.table(&["NAME", "VERSION", "SOURCE", "STATUS", "BUILD", "UPDATED", "METADATA"], &rows, || {
        Value::Array(services.iter().map(service_json).collect())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_micro() {
        assert_eq!(fmt_duration(Duration::from_secs(15)), "15s");
        assert_eq!(fmt_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(fmt_duration(Duration::from_secs(3600 + 15 * 60 + 32)), "1h15m32s");
        assert_eq!(fmt_duration(Duration::from_secs(86_400)), "1d0h0m0s");
    }

    #[test]
    fn rows() {
        let now = SystemTime::now();
        let mut s = Service { name: "greeter".into(), version: "latest".into(), status: 7, ..Default::default() };
        s.metadata.insert("owner".into(), "admin".into());
        s.metadata.insert("group".into(), "micro".into());
        s.metadata.insert("source".into(), "/src/greeter".into());
        s.metadata.insert("build".into(), "0123456789".into());
        s.metadata.insert("restarts".into(), "2".into());
        s.metadata.insert("error".into(), "exited with code 1\nmore".into());
        s.metadata
            .insert("updated".into(), humantime::format_rfc3339_seconds(now - Duration::from_secs(4)).to_string());
        assert_eq!(
            row(&s, now),
            [
                "greeter",
                "latest",
                "/src/greeter",
                "error",
                "0123456",
                "4s ago",
                "owner=admin, group=micro, restarts=2, error=exited with code 1"
            ]
        );
        s.status = 4;
        s.metadata.clear();
        assert_eq!(row(&s, now)[4..], ["n/a", "unknown", "owner=n/a, group=n/a"]);
    }

    #[test]
    fn deployments_in_progress_show_their_stage_and_time() {
        let building = Status::Building.code();
        let running = Status::Running.code();
        let mut s = Service { name: "greeter".into(), status: building, ..Default::default() };
        assert_eq!(status_cell(&s), "building");
        s.metadata.insert("deploy".into(), "building".into());
        s.metadata.insert("deploy_elapsed_ms".into(), "12400".into());
        assert_eq!(status_cell(&s), "building 12s");
        s.status = running;
        assert_eq!(status_cell(&s), "running, building 12s");
        s.metadata.insert("error".into(), "update failed: build failed: error[E0308]: mismatched types".into());
        assert!(metadata_cell(&s).ends_with("error=update failed: build failed: error[E0308]: mismatched types"));
        assert_eq!(service_json(&s)["deploy"], json!({"stage": "building", "elapsed_ms": 12400}));
    }
}
