//! `micro server`: runs the local server until SIGINT or SIGTERM.

use crate::exit::CliError;
use micro_core::env;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `micro server`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro server\n  \
    micro server --proxy-address 0.0.0.0:8081 --tls self-signed\n  \
    micro server --store postgres://micro@db/micro --broker nats://nats:4222\n  \
    MICRO_LOG_LEVEL=debug micro server --data-dir /var/lib/micro")]
pub struct Args {
    /// Address of the gRPC proxy, through which every service is reached.
    #[arg(long, env = env::MICRO_PROXY_ADDRESS, default_value = "127.0.0.1:8081", value_name = "HOST:PORT")]
    pub proxy_address: String,
    /// Address of the HTTP API gateway.
    #[arg(long, env = env::MICRO_API_ADDRESS, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub api_address: String,
    /// Address of the web dashboard (log in, browse and call services, follow logs).
    #[arg(long, env = env::MICRO_WEB_ADDRESS, default_value = "127.0.0.1:8082", value_name = "HOST:PORT")]
    pub web_address: String,
    /// Where the server keeps its data [default: the platform's data dir for micro].
    #[arg(long, env = env::MICRO_DATA_DIR, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How often expired registrations are pruned.
    #[arg(long, env = env::MICRO_REGISTRY_PRUNE_INTERVAL, default_value = "1s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub prune_interval: Duration,
    /// Password of the default `admin` account, used when it is first created [default: micro].
    #[arg(long, env = env::MICRO_AUTH_ADMIN_PASSWORD, value_name = "PASSWORD", hide_env_values = true)]
    pub auth_admin_password: Option<String>,
    /// Web origins whose pages may call the API gateway with the browser's credentials (comma list, e.g.
    /// `https://app.example.com`): they get CORS headers with credentials, and their `micro-token` cookie is accepted.
    /// `*` lets any origin read answers, without credentials. Empty (the default): no cross-origin access.
    #[arg(long, env = env::MICRO_API_CORS_ORIGINS, value_delimiter = ',', value_name = "ORIGIN")]
    pub api_cors_origins: Vec<String>,
    /// Where the store keeps its records, and auth, config and events their state: `redb` (embedded, in the data
    /// dir) or a `postgres://user:password@host/db` URL (in a build with the `postgres` feature; servers that share
    /// the database share accounts, config and events, and must hold the same auth.key and config.key).
    #[arg(long, env = env::MICRO_STORE, default_value = "redb", value_parser = micro_server::store::StoreBackend::parse, value_name = "redb|URL", hide_env_values = true)]
    pub store: micro_server::store::StoreBackend,
    /// Where the broker's messages travel: `memory` (in this server) or a `nats://host:port` URL (in a build with
    /// the `nats` feature), so that several servers share topics.
    #[arg(long, env = env::MICRO_BROKER, default_value = "memory", value_parser = micro_server::broker::BrokerBackend::parse, value_name = "memory|URL")]
    pub broker: micro_server::broker::BrokerBackend,
    /// Whether the registry is shared with other servers: `memory` (this server only) or an `etcd://host:port`
    /// URL (in a build with the `etcd` feature).
    #[arg(long, env = env::MICRO_REGISTRY, default_value = "memory", value_parser = micro_server::registry::Sharing::parse, value_name = "memory|URL")]
    pub registry: micro_server::registry::Sharing,
    /// Serve the proxy and the API gateway over TLS with this certificate chain (PEM, the server's certificate
    /// first, e.g. Let's Encrypt's fullchain.pem), with --tls-key. Re-read when it changes, without a restart.
    #[arg(long, env = env::MICRO_TLS_CERT, value_name = "FILE", requires = "tls_key", conflicts_with = "tls")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = env::MICRO_TLS_KEY, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// `self-signed`: serve TLS with a CA and a server certificate made and kept in `<data dir>/tls/`; clients
    /// trust `<data dir>/tls/ca.pem` (its path and fingerprint are logged at start).
    #[arg(long, env = env::MICRO_TLS, value_name = "self-signed", value_parser = ["self-signed"])]
    pub tls: Option<String>,
    /// Require clients to present a certificate issued by a CA of this PEM file (mTLS); needs --tls-cert or --tls.
    #[arg(long, env = env::MICRO_TLS_CLIENT_CA, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Trust the CAs of this PEM file (besides the Mozilla roots) when the proxy dials a service that serves TLS
    /// (one started with MICRO_TLS_CERT and MICRO_TLS_KEY, registered with `tls=true`): such a service is never
    /// dialed in plaintext, and its certificate must name its host.
    #[arg(long, env = env::MICRO_TLS_UPSTREAM_CA, value_name = "FILE")]
    pub tls_upstream_ca: Option<PathBuf>,
    /// How many tasks with stages (`micro tasks schedule … --call`) the server runs at once.
    #[arg(long, env = env::MICRO_TASKS_CONCURRENCY, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub tasks_concurrency: u16,
    /// How long succeeded and dead tasks are kept before they are deleted.
    #[arg(long, env = env::MICRO_TASKS_RETENTION, default_value = "7d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub tasks_retention: Duration,
}

impl Args {
    /// The TLS settings of the flags: `None` for plaintext.
    fn tls_settings(&self) -> Result<Option<micro_server::tls::TlsSettings>, CliError> {
        use micro_server::tls::{CertSource, TlsSettings};
        let source = match (&self.tls_cert, &self.tls_key, self.tls.as_deref()) {
            (Some(cert), Some(key), None) => CertSource::Files { cert: cert.clone(), key: key.clone() },
            (None, None, Some("self-signed")) => CertSource::SelfSigned,
            (None, None, None) if self.tls_client_ca.is_some() => {
                return Err(CliError::input(
                    "--tls-client-ca needs TLS: give --tls-cert and --tls-key, or --tls self-signed",
                ));
            }
            (None, None, None) => return Ok(None),
            _ => {
                return Err(CliError::input(
                    "give either --tls-cert with --tls-key, or --tls self-signed (MICRO_TLS_CERT, MICRO_TLS_KEY, \
                     MICRO_TLS)",
                ));
            }
        };
        Ok(Some(TlsSettings { source, client_ca: self.tls_client_ca.clone() }))
    }
}

pub use micro::logging::init_logging;
use micro::logging::log_filter;

/// Sets up the server's logging: to stderr, and to `logs/server.log` in `data_dir` (rotated by size), which
/// `micro logs server` reads.
pub fn init_server_logging(data_dir: &std::path::Path) {
    use micro_server::runtime::logs::{LOG_MAX_BYTES, LogFile, LogWriter, server_log_path};
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let file = LogWriter(std::sync::Arc::new(LogFile::new(server_log_path(data_dir), LOG_MAX_BYTES)));
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let file = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(file);
    let _ = tracing_subscriber::registry().with(log_filter()).with(stderr).with(file).try_init();
}

/// Runs the server.
pub async fn exec(args: Args) -> anyhow::Result<()> {
    let tls = args.tls_settings()?;
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => directories::ProjectDirs::from("dev", "micro", "micro")
            .map(|p| p.data_dir().to_path_buf())
            .ok_or_else(|| CliError::failure("cannot find a home directory; pass --data-dir"))?,
    };
    init_server_logging(&data_dir);
    let listener = tokio::net::TcpListener::bind(&args.proxy_address).await.map_err(|e| {
        CliError::failure(format!(
            "cannot listen on {} ({e}); is another micro server running? Choose another address with --proxy-address",
            args.proxy_address
        ))
    })?;
    let api_listener = tokio::net::TcpListener::bind(&args.api_address).await.map_err(|e| {
        CliError::failure(format!(
            "cannot listen on {} for the API gateway ({e}); choose another address with --api-address",
            args.api_address
        ))
    })?;
    let web_listener = tokio::net::TcpListener::bind(&args.web_address).await.map_err(|e| {
        CliError::failure(format!(
            "cannot listen on {} for the web dashboard ({e}); choose another address with --web-address",
            args.web_address
        ))
    })?;
    let config = micro_server::ServerConfig {
        data_dir,
        prune_interval: args.prune_interval,
        admin_password: args.auth_admin_password,
        cors_origins: args.api_cors_origins,
        store: args.store,
        broker: args.broker,
        registry: args.registry,
        tls,
        tls_upstream_ca: args.tls_upstream_ca,
        tasks: micro_server::tasks::TasksConfig {
            concurrency: usize::from(args.tasks_concurrency),
            retention: args.tasks_retention,
        },
    };
    let listeners = micro_server::Listeners { proxy: listener, api: Some(api_listener), web: Some(web_listener) };
    micro_server::serve_with(listeners, config, micro::shutdown_signal()).await.map_err(|e| match e {
        // A TLS file that cannot be used is a bad value of its flag (the message names the file).
        micro_server::ServerError::Tls(e) => anyhow::Error::new(CliError::input(e.to_string())),
        e => anyhow::Error::new(e).context("micro server failed"),
    })?;
    Ok(())
}
