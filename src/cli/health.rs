//! `micro health NAME`: checks each node of a service with the standard gRPC health protocol, through the proxy.

use super::output::Printer;
use crate::exit::{CliError, ExitStatus, RpcContext, from_status};
use crate::settings::{Output, Settings};
use micro_client::connection::node_failure;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Arguments of `micro health`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro health helloworld\n  \
    micro health helloworld -o json --jq '.[] | select(.status != \"ok\")'")]
pub struct Args {
    /// The service name.
    #[arg(add = clap_complete::ArgValueCandidates::new(super::completion::service_candidates))]
    pub name: String,
}

/// Runs `micro health`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let conn = settings.connect_authed().await?;
    let ctx = RpcContext { address: settings.proxy.clone(), endpoint: "Health.Check".into() };
    let services = conn.get_service(&args.name).await.map_err(|s| from_status(&s, &ctx))?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut failed = 0;
    let mut total = 0;
    for service in &services {
        for node in &service.nodes {
            total += 1;
            let req = conn.node_request(HealthCheckRequest { service: String::new() }, &service.name, &node.id);
            let status = match HealthClient::new(conn.channel()).check(req).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => "ok".to_string(),
                Ok(r) => format!("{:?}", r.get_ref().status()),
                Err(s) if !node_failure(&s) => return Err(from_status(&s, &ctx).into()),
                Err(s) => s.message().to_string(),
            };
            if status != "ok" {
                failed += 1;
            }
            rows.push(vec![service.version.clone(), node.id.clone(), node.address.clone(), status.clone()]);
            json.push(serde_json::json!({
                "service": service.name, "version": service.version, "node": node.id,
                "address": node.address, "status": status,
            }));
        }
    }
    let printer = Printer::new(settings.output, Output::Table);
    if printer.format() == Output::Table {
        printer.line(format!("service  {}\n", args.name))?;
    }
    printer.table(&["VERSION", "NODE", "ADDRESS", "STATUS"], &rows, || serde_json::Value::Array(json))?;
    if failed > 0 {
        return Err(
            CliError::new(ExitStatus::ServiceError, format!("{failed} of {total} nodes are not healthy")).into()
        );
    }
    Ok(())
}
