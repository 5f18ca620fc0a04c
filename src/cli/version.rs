//! `micro version`: the client's version, commit and build date, and the server's version when it answers.
//!
//! The commit and date are embedded at build time (build.rs: `git rev-parse` of the checkout, `unknown` without
//! one; the date from `SOURCE_DATE_EPOCH` or the build's day). The server's version is the version its core
//! services register with (`Registry.GetService("registry")` in the `micro` namespace, anonymous), asked with a
//! short deadline: an unreachable server is shown as such and is not an error, since the client's half still
//! answers the question.

use super::output::Printer;
use crate::settings::{Output, Settings};
use serde_json::{Value, json};
use std::time::Duration;

/// The client's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the client was built from (12 hex digits), or `unknown`.
pub const COMMIT: &str = env!("MICRO_BUILD_COMMIT");
/// The day the client was built, `YYYY-MM-DD`.
pub const BUILD_DATE: &str = env!("MICRO_BUILD_DATE");
/// `micro --version`: the version with its commit and build date.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MICRO_BUILD_COMMIT"),
    ", built ",
    env!("MICRO_BUILD_DATE"),
    ")"
);

/// How long `micro version` waits for the server.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Arguments of `micro version`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro version\n  micro version -o json\n  micro version --jq .server.version\n  \
    micro -e prod version")]
pub struct Args {}

/// What the server said about its version.
enum Server {
    /// It answered with this version.
    Version(String),
    /// It did not answer: why.
    Unreachable(String),
}

/// Asks the server at the settings' proxy for its version.
async fn server_version(settings: &Settings) -> Server {
    let ask = async {
        let conn = micro_client::Connection::with_tls(&settings.proxy, micro_core::DEFAULT_NAMESPACE, &settings.tls)
            .map_err(|e| e.to_string())?;
        let services = conn.get_service("registry").await.map_err(|status| {
            let ctx =
                crate::exit::RpcContext { address: settings.proxy.clone(), endpoint: "Registry.GetService".into() };
            crate::exit::from_status(&status, &ctx).message
        })?;
        services.into_iter().map(|s| s.version).find(|v| !v.is_empty()).ok_or_else(|| "it told no version".to_string())
    };
    match tokio::time::timeout(SERVER_TIMEOUT, ask).await {
        Ok(Ok(version)) => Server::Version(version),
        Ok(Err(why)) => Server::Unreachable(why),
        Err(_) => Server::Unreachable(format!("no answer from {} within {SERVER_TIMEOUT:?}", settings.proxy)),
    }
}

/// The document `micro version -o json` prints.
fn document(proxy: &str, server: &Server) -> Value {
    let server = match server {
        Server::Version(version) => json!({ "address": proxy, "version": version }),
        Server::Unreachable(why) => json!({ "address": proxy, "version": null, "error": why }),
    };
    json!({
        "client": { "version": VERSION, "commit": COMMIT, "build_date": BUILD_DATE },
        "server": server,
    })
}

/// Runs `micro version`.
pub async fn exec(settings: &Settings, _args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    let server = server_version(settings).await;
    if printer.format() != Output::Table {
        printer.json(&document(&settings.proxy, &server))?;
        return Ok(());
    }
    printer.line(format!("client  micro {VERSION} (commit {COMMIT}, built {BUILD_DATE})"))?;
    match &server {
        Server::Version(version) => printer.line(format!("server  micro {version} at {}", settings.proxy))?,
        Server::Unreachable(_) => printer.line(format!("server  not reachable at {}", settings.proxy))?,
    }
    if let Server::Unreachable(why) = server {
        printer.message(why);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_identified() {
        assert!(
            COMMIT == "unknown" || (COMMIT.len() == 12 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        let date = BUILD_DATE.as_bytes();
        assert!(date.len() == 10 && date[4] == b'-' && date[7] == b'-', "{BUILD_DATE}");
        assert!(LONG_VERSION.starts_with(VERSION) && LONG_VERSION.contains(COMMIT));
        let doc = document("127.0.0.1:1", &Server::Unreachable("down".into()));
        assert_eq!(doc["server"], json!({"address": "127.0.0.1:1", "version": null, "error": "down"}));
        assert_eq!(doc["client"]["commit"], COMMIT);
    }
}
