//! Every environment variable micro reads, declared once with what it means.
//!
//! Settings resolve as flag > environment > file > default. micro never sets environment variables of its own
//! process; child processes get theirs through `Command::env`.

/// Name of the env (from `micro env`) to use for one command.
pub const MICRO_ENV: &str = "MICRO_ENV";
/// Address of the micro proxy (`host:port`). For the CLI it overrides the env's address; for services it is the
/// address they register and call through (default `127.0.0.1:8081`).
pub const MICRO_PROXY: &str = "MICRO_PROXY";
/// Namespace to use (default `micro`).
pub const MICRO_NAMESPACE: &str = "MICRO_NAMESPACE";
/// Output format of the CLI: `json`, `yaml`, `table` or `raw`.
pub const MICRO_OUTPUT: &str = "MICRO_OUTPUT";
/// Directory for the CLI's configuration (envs); default: the platform's config dir for micro.
pub const MICRO_CONFIG_DIR: &str = "MICRO_CONFIG_DIR";
/// Directory for the CLI's caches (schemas); default: the platform's cache dir for micro.
pub const MICRO_CACHE_DIR: &str = "MICRO_CACHE_DIR";
/// `micro cli`: the file that keeps the lines typed at its prompt across sessions (Up, Ctrl-R); default: `history` in
/// the platform's state dir for micro (`~/.local/state/micro/history` on Linux), else in its local data dir.
pub const MICRO_HISTORY_FILE: &str = "MICRO_HISTORY_FILE";
/// CLI: an access token to send with every request of one command, instead of the token saved by `micro login`
/// (which is then neither read nor refreshed). `micro user token` prints one.
pub const MICRO_AUTH_TOKEN: &str = "MICRO_AUTH_TOKEN";
/// CLI: the account id or name `micro login` logs in with when `--username` is not given.
pub const MICRO_USERNAME: &str = "MICRO_USERNAME";
/// CLI: the password `micro login` uses when neither `--password` nor `--password-stdin` is given. Prefer
/// `--password-stdin`: the environment of a process can be read by others of the same user.
pub const MICRO_PASSWORD: &str = "MICRO_PASSWORD";
/// CLI: the HTTP API gateway the commands of `--print curl` call, `http(s)://HOST:PORT` (or `HOST:PORT`, reached
/// over TLS when the proxy is); default: the proxy's host on port 8080.
pub const MICRO_API: &str = "MICRO_API";
/// Log filter for the server and services (`info`, `debug`, `micro=trace`…), as `tracing_subscriber::EnvFilter`.
pub const MICRO_LOG_LEVEL: &str = "MICRO_LOG_LEVEL";

/// `micro server`: the gRPC proxy's listen address (default `127.0.0.1:8081`).
pub const MICRO_PROXY_ADDRESS: &str = "MICRO_PROXY_ADDRESS";
/// `micro server`: the HTTP API gateway's listen address (default `127.0.0.1:8080`).
pub const MICRO_API_ADDRESS: &str = "MICRO_API_ADDRESS";
/// `micro server`: the web dashboard's listen address (default `127.0.0.1:8082`, Micro's web port).
pub const MICRO_WEB_ADDRESS: &str = "MICRO_WEB_ADDRESS";
/// `micro server`: web origins whose pages may call the API gateway with credentials (CORS with credentials, and
/// the `micro-token` cookie), comma-separated; `*` lets any origin read answers without credentials (default: none).
pub const MICRO_API_CORS_ORIGINS: &str = "MICRO_API_CORS_ORIGINS";
/// `micro server`: where the server keeps its data (default: the platform's data dir for micro).
pub const MICRO_DATA_DIR: &str = "MICRO_DATA_DIR";
/// `micro server`: where the store keeps its records: `redb` (the embedded default) or a `postgres://` URL (needs a
/// build with the `postgres` feature).
pub const MICRO_STORE: &str = "MICRO_STORE";
/// `micro server`: where the broker's messages travel: `memory` (the default) or a `nats://` URL (needs a build
/// with the `nats` feature).
pub const MICRO_BROKER: &str = "MICRO_BROKER";
/// `micro server`: whether the registry is shared with other servers: `memory` (the default, this server only) or
/// an `etcd://` URL (needs a build with the `etcd` feature).
pub const MICRO_REGISTRY: &str = "MICRO_REGISTRY";
/// `micro server`: how often expired registrations are pruned, as a duration (`1s` by default).
pub const MICRO_REGISTRY_PRUNE_INTERVAL: &str = "MICRO_REGISTRY_PRUNE_INTERVAL";
/// `micro server`: how many tasks with stages the server runs at once (`4` by default).
pub const MICRO_TASKS_CONCURRENCY: &str = "MICRO_TASKS_CONCURRENCY";
/// `micro server`: how long succeeded and dead tasks are kept, as a duration (`7d` by default).
pub const MICRO_TASKS_RETENTION: &str = "MICRO_TASKS_RETENTION";

/// `micro server`: the password of the default `admin` account when it is first created (default `micro`).
pub const MICRO_AUTH_ADMIN_PASSWORD: &str = "MICRO_AUTH_ADMIN_PASSWORD";
/// Services: the id of the service account to authenticate with (set by the runtime).
pub const MICRO_AUTH_ID: &str = "MICRO_AUTH_ID";
/// Services: the secret of the service account (set by the runtime).
pub const MICRO_AUTH_SECRET: &str = "MICRO_AUTH_SECRET";

/// Services: the service's name (overrides the name given in code).
pub const MICRO_SERVICE_NAME: &str = "MICRO_SERVICE_NAME";
/// Services: the service's version (default `latest`).
pub const MICRO_SERVICE_VERSION: &str = "MICRO_SERVICE_VERSION";
/// Services: the address to listen on (default `127.0.0.1:0`).
pub const MICRO_SERVICE_ADDRESS: &str = "MICRO_SERVICE_ADDRESS";
/// Services: registration TTL, as a duration (default `90s`).
pub const MICRO_REGISTER_TTL: &str = "MICRO_REGISTER_TTL";
/// Services: how often to re-register, as a duration (default `30s`).
pub const MICRO_REGISTER_INTERVAL: &str = "MICRO_REGISTER_INTERVAL";

/// `micro server`: the cargo profile the runtime builds Rust services with (default `release`; `dev` builds much
/// faster and is what the tests use).
pub const MICRO_RUNTIME_CARGO_PROFILE: &str = "MICRO_RUNTIME_CARGO_PROFILE";
/// `micro server`: the cargo target dir every runtime build shares, so that dependencies compile once (default
/// `<data dir>/runtime/target`).
pub const MICRO_RUNTIME_TARGET_DIR: &str = "MICRO_RUNTIME_TARGET_DIR";
/// `micro server`: how long a stopped service gets between SIGTERM and SIGKILL, as a duration (default `5s`).
pub const MICRO_RUNTIME_KILL_GRACE: &str = "MICRO_RUNTIME_KILL_GRACE";
/// `micro server`: whether the runtime puts each service process in a cgroup v2 of its own: `auto` (the default: when
/// the server can create cgroups under its own) or `off` (the fallback only: process groups, environment markers and
/// the subreaper). See `server/runtime/contain.rs`.
pub const MICRO_RUNTIME_CGROUPS: &str = "MICRO_RUNTIME_CGROUPS";
/// Services: a marker the runtime gives every process it starts (`<data dir key>-<server run>-<n>`), inherited by
/// their children, so that the runtime finds and stops them all, also after a crash of the server. Set by the
/// runtime; the server removes it from the environment of what it starts.
pub const MICRO_RUNTIME_INSTANCE: &str = "MICRO_RUNTIME_INSTANCE";
/// `micro new`: a checkout of micro whose service library (`crates/micro`) new services depend on, instead of the
/// library embedded in the `micro` binary (for developing micro itself). Unset: the embedded library.
pub const MICRO_SOURCE: &str = "MICRO_SOURCE";
/// `micro new`: where the embedded service library is laid out, one directory per version
/// (`<dir>/<version>-<id>`), for new services to depend on. Default: `lib` in the platform's data dir for micro
/// (`~/.local/share/micro/lib` on Linux).
pub const MICRO_LIBRARY_DIR: &str = "MICRO_LIBRARY_DIR";
/// The cargo build dir (`build.build-dir`: intermediate artifacts) of the runtime's builds and of
/// `micro new --build`, shared by every service and every server of the user, so that the service library's
/// dependencies compile once. Default: `build` in the platform's cache dir for micro (`~/.cache/micro/build`).
pub const MICRO_BUILD_DIR: &str = "MICRO_BUILD_DIR";

/// Reads a variable, treating an empty value as unset.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads a duration variable (`5s`, `250ms`), with a default when unset.
///
/// An unparsable value is an error that names the variable and the expected format.
pub fn duration(name: &str, default: std::time::Duration) -> Result<std::time::Duration, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => humantime::parse_duration(&v)
            .map_err(|e| format!("{name}={v:?} is not a duration ({e}); use a value like 5s or 250ms")),
    }
}

/// `micro server` and services: how long a new connection to the gRPC proxy, the API gateway or a service may take
/// to send its first byte, and on the gateway how long a request's head may take once it has begun, as a duration
/// (default `10s`). See `server/conn.rs`.
pub const MICRO_HANDSHAKE_TIMEOUT: &str = "MICRO_HANDSHAKE_TIMEOUT";
/// `micro server` and services: how long a connection may stay idle before it is closed, as a duration (default
/// `60s`): on gRPC listeners, reading nothing (live peers answer the server's HTTP/2 pings, sent every third of it,
/// 20 s at most); on the API gateway, with no request in flight. Also how long a write may make no progress.
pub const MICRO_IDLE_TIMEOUT: &str = "MICRO_IDLE_TIMEOUT";
/// `micro server` and services: the most connections each listener serves at once (default 4096); connections
/// beyond it are closed as they arrive.
pub const MICRO_MAX_CONNECTIONS: &str = "MICRO_MAX_CONNECTIONS";

/// CLI and services: a CA certificate (a PEM file, one or more certificates) trusted for `https://` proxy addresses,
/// besides the compiled-in Mozilla roots. The CLI's `--ca-cert` flag; it wins over the CA stored with the env
/// (`micro env add … --ca-cert`). Ignored for plaintext addresses.
pub const MICRO_CA_CERT: &str = "MICRO_CA_CERT";
/// CLI and services: a client certificate (PEM) to present to a proxy that requires one (mTLS); needs
/// `MICRO_CLIENT_KEY`. The CLI's `--client-cert` flag.
pub const MICRO_CLIENT_CERT: &str = "MICRO_CLIENT_CERT";
/// CLI and services: the private key (PEM) of `MICRO_CLIENT_CERT`. The CLI's `--client-key` flag.
pub const MICRO_CLIENT_KEY: &str = "MICRO_CLIENT_KEY";
/// CLI and services: `true` accepts any server certificate on `https://` addresses (encrypted, but anyone on the
/// path can pose as the server). The CLI's `--insecure-skip-verify`; it warns on every run.
pub const MICRO_INSECURE_SKIP_VERIFY: &str = "MICRO_INSECURE_SKIP_VERIFY";

/// `micro server`: the PEM file of the certificate chain (the server's certificate first) that the gRPC proxy and
/// the API gateway serve over TLS, with [`MICRO_TLS_KEY`]. Re-read when it changes. See `server/tls.rs`.
pub const MICRO_TLS_CERT: &str = "MICRO_TLS_CERT";
/// `micro server`: the PEM file of the private key of [`MICRO_TLS_CERT`].
pub const MICRO_TLS_KEY: &str = "MICRO_TLS_KEY";
/// `micro server`: `self-signed` serves TLS with a CA and a server certificate that the server makes and keeps in
/// `<data dir>/tls/` (instead of [`MICRO_TLS_CERT`] and [`MICRO_TLS_KEY`]).
pub const MICRO_TLS: &str = "MICRO_TLS";
/// `micro server`: a PEM file of CA certificates; when set, every client must present a certificate issued by one of
/// them (mTLS), or its TLS handshake fails.
pub const MICRO_TLS_CLIENT_CA: &str = "MICRO_TLS_CLIENT_CA";
/// `micro server`: a PEM file of CA certificates that the proxy trusts, besides the compiled-in Mozilla roots, when
/// it dials a service node that serves TLS (one registered with the node metadata `tls=true`, which the service
/// library sets when the service is given [`MICRO_TLS_CERT`] and [`MICRO_TLS_KEY`]). The certificate must name the
/// node's host. The `--tls-upstream-ca` flag.
pub const MICRO_TLS_UPSTREAM_CA: &str = "MICRO_TLS_UPSTREAM_CA";
