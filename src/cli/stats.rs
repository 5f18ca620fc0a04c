//! `micro stats NAME…`: the process statistics of each node of the services (`Debug.Stats`, through the proxy,
//! pinned to the node): when it started, uptime, resident memory and threads. `--all builtin` asks the core
//! services (which `micro server` answers for itself) and `--all custom` every other service.

use super::output::Printer;
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{Output, Settings};
use micro_client::connection::node_failure;
use micro_core::proto::debug::{StatsRequest, debug_client::DebugClient};
use micro_server::CORE_NAMES;
use std::time::{Duration, UNIX_EPOCH};

/// Which services `--all` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum All {
    /// The core services of `micro server`.
    Builtin,
    /// Every other service.
    Custom,
}

/// Arguments of `micro stats`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro stats helloworld\n  \
    micro stats --all builtin\n  \
    micro stats helloworld -o json --jq '.[].memory'")]
pub struct Args {
    /// The services.
    #[arg(required_unless_present = "all", value_name = "NAME")]
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub names: Vec<String>,
    /// All core services (`builtin`) or all others (`custom`) instead of names.
    #[arg(long, value_enum, conflicts_with = "names")]
    pub all: Option<All>,
}

/// Runs `micro stats`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let ctx = RpcContext { address: settings.proxy.clone(), endpoint: "Debug.Stats".into() };
    let names: Vec<String> = match args.all {
        None => args.names,
        Some(all) => {
            let mut names: Vec<String> = conn
                .list_services()
                .await
                .map_err(|s| from_status(&s, &ctx))?
                .into_iter()
                .map(|s| s.name)
                .filter(|n| CORE_NAMES.contains(&n.as_str()) == (all == All::Builtin))
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                let which = if all == All::Builtin { "builtin" } else { "custom" };
                return Err(CliError::new(ExitStatus::NotFound, format!("no {which} service(s) found")).into());
            }
            names
        }
    };

    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let services = conn.get_service(name).await.map_err(|s| from_status(&s, &ctx))?;
        for service in &services {
            for node in &service.nodes {
                let req = conn.node_request(StatsRequest { service: name.clone() }, name, &node.id);
                match DebugClient::new(conn.channel()).stats(req).await {
                    Ok(rsp) => {
                        let s = rsp.into_inner();
                        let started = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s.started));
                        rows.push(vec![
                            name.clone(),
                            service.version.clone(),
                            node.id.clone(),
                            node.address.clone(),
                            started.to_string(),
                            humantime::format_duration(Duration::from_secs(s.uptime)).to_string(),
                            format!("{:.2}mb", s.memory as f64 / (1024.0 * 1024.0)),
                            s.threads.to_string(),
                        ]);
                        json.push(serde_json::json!({
                            "service": name, "version": service.version, "node": node.id, "address": node.address,
                            "started": s.started, "uptime": s.uptime, "memory": s.memory, "threads": s.threads,
                            "gc": s.gc, "requests": s.requests, "errors": s.errors,
                        }));
                    }
                    Err(e) if !node_failure(&e) => return Err(from_status(&e, &ctx).into()),
                    Err(e) => failures.push(format!("{name} node {}: {}", node.id, e.message())),
                }
            }
        }
    }
    let printer = Printer::new(settings.output, Output::Table);
    printer.table(
        &["SERVICE", "VERSION", "NODE", "ADDRESS", "STARTED", "UPTIME", "MEMORY", "THREADS"],
        &rows,
        || serde_json::Value::Array(json),
    )?;
    if !failures.is_empty() {
        return Err(CliError::new(
            ExitStatus::ServiceError,
            format!("no stats from {} node(s):\n{}", failures.len(), failures.join("\n")),
        )
        .into());
    }
    Ok(())
}
