//! CLI settings, resolved once per command: flag > environment > config file > default.
//!
//! The config file (`config.json` in the user's config dir) holds the envs: named proxy addresses, with `local`
//! (`127.0.0.1:8081`) built in, and which one is current; the namespace chosen per env (`micro user namespace
//! set`); and the user's own settings (`micro user config`).
//!
//! Commands that call the server connect through [`Settings::connect_authed`], which attaches the token saved by
//! `micro login` (refreshing it when it is about to expire) or the one in `MICRO_AUTH_TOKEN`.
//!
//! TLS ([`Settings::tls`]) resolves the same way: `--ca-cert`/`MICRO_CA_CERT` over the CA stored with the env, and
//! `--client-cert`/`--client-key` (`MICRO_CLIENT_CERT`/`MICRO_CLIENT_KEY`) over the env's client certificate. An
//! env stores the *contents* of these files in `config.json` (mode 0600), so it keeps working when the files move.
//! A password or token is never sent in plaintext to a non-loopback address, unless the env was added with
//! `--plaintext` ([`Settings::check_secrets_may_go`]).

use crate::exit::CliError;
use micro_client::Connection;
use micro_client::tls::{ClientTls, Target};
use micro_client::tokens::{StoredToken, TokenStore, TokenStoreError};
use micro_core::env;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

/// The built-in env.
pub const LOCAL_ENV: &str = "local";
/// The built-in env's proxy address.
pub const LOCAL_PROXY: &str = "127.0.0.1:8081";

/// One env: a named micro server.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvEntry {
    /// Its proxy address.
    pub proxy_address: String,
    /// A description.
    #[serde(default)]
    pub description: String,
    /// A CA (PEM) trusted for this env's `https://` address, besides the compiled-in roots (`--ca-cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// A client certificate chain (PEM) presented to this env's server (`--client-cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The private key (PEM) of [`EnvEntry::client_cert`] (`--client-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Whether passwords and tokens may be sent to this env's address in plaintext although it is not loopback
    /// (`micro env add … --plaintext`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

impl EnvEntry {
    /// An env at `address`, without TLS settings.
    pub fn new(address: impl Into<String>, description: impl Into<String>) -> Self {
        Self { proxy_address: address.into(), description: description.into(), ..Default::default() }
    }

    /// The env's own TLS settings: its CA and client certificate.
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca_cert.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
            skip_verify: false,
        }
    }

    /// How the env is reached, in a few words: `TLS`, `TLS (own CA)`, `TLS (own CA, client cert)`, `plaintext` or
    /// `plaintext (allowed)` (`--plaintext`).
    pub fn security(&self) -> String {
        match Target::parse(&self.proxy_address) {
            Ok(t) if t.tls => {
                let extras: Vec<&str> =
                    [self.ca_cert.as_ref().map(|_| "own CA"), self.client_cert.as_ref().map(|_| "client cert")]
                        .into_iter()
                        .flatten()
                        .collect();
                if extras.is_empty() { "TLS".into() } else { format!("TLS ({})", extras.join(", ")) }
            }
            Ok(_) if self.plaintext => "plaintext (allowed)".into(),
            _ => "plaintext".into(),
        }
    }
}

/// The CLI config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The current env.
    #[serde(default)]
    pub env: Option<String>,
    /// User-added envs.
    #[serde(default)]
    pub envs: BTreeMap<String, EnvEntry>,
    /// The current namespace of each env (`micro user namespace set`); `micro` when absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, String>,
    /// The user's own settings (`micro user config set KEY VALUE`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_config: BTreeMap<String, String>,
}

impl ConfigFile {
    /// Every env, the built-in `local` included, sorted by name.
    pub fn all_envs(&self) -> BTreeMap<String, EnvEntry> {
        let mut all = self.envs.clone();
        all.entry(LOCAL_ENV.into()).or_insert_with(|| EnvEntry::new(LOCAL_PROXY, "Local running micro server"));
        all
    }

    /// The saved current env, `local` by default.
    pub fn current(&self) -> &str {
        self.env.as_deref().unwrap_or(LOCAL_ENV)
    }

    /// The namespace saved for `env`, if any.
    pub fn namespace(&self, env: &str) -> Option<&str> {
        self.namespaces.get(env).map(String::as_str).filter(|ns| !ns.is_empty())
    }
}

/// Where the CLI keeps its files.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// Config (envs).
    pub config: PathBuf,
    /// Caches (schemas).
    pub cache: PathBuf,
}

impl Dirs {
    /// `MICRO_CONFIG_DIR` / `MICRO_CACHE_DIR`, else the platform's dirs for micro.
    pub fn resolve() -> Result<Self, CliError> {
        let project = directories::ProjectDirs::from("dev", "micro", "micro");
        let pick = |var: &str, default: Option<PathBuf>| {
            env::var(var).map(PathBuf::from).or(default).ok_or_else(|| {
                CliError::failure(format!("cannot find a home directory; set {var} to a directory micro may use"))
            })
        };
        Ok(Self {
            config: pick(env::MICRO_CONFIG_DIR, project.as_ref().map(|p| p.config_dir().to_path_buf()))?,
            cache: pick(env::MICRO_CACHE_DIR, project.as_ref().map(|p| p.cache_dir().to_path_buf()))?,
        })
    }

    /// The config file's path.
    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.json")
    }

    /// Reads the config file; a missing file is the default config.
    pub fn load(&self) -> Result<ConfigFile, CliError> {
        let path = self.config_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CliError::failure(format!("{} is not valid micro config ({e}); fix or delete it", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(CliError::failure(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes the config file atomically, readable by its owner only (it may hold an env's client key).
    pub fn save(&self, config: &ConfigFile) -> Result<(), CliError> {
        let path = self.config_file();
        let io = |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", path.display()));
        micro_core::fs::create_private_dir(&self.config).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(config).map_err(|e| CliError::failure(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut file, (text + "\n").as_bytes()).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// A saved access token is refreshed when it expires within this many seconds.
pub const REFRESH_MARGIN_SECS: i64 = 60;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Whether a failed `Auth.Token` call means the server refused the credentials, as opposed to not answering.
fn refused(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(code, Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound)
}

/// A token store error as the user sees it (the message names the file, never a token).
pub fn store_error(e: TokenStoreError) -> CliError {
    CliError::failure(e.to_string())
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Indented JSON.
    Json,
    /// YAML.
    Yaml,
    /// A table.
    Table,
    /// Compact, one document per line.
    Raw,
}

/// The settings of one command, resolved once.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Directories.
    pub dirs: Dirs,
    /// The env's name.
    pub env: String,
    /// The proxy address.
    pub proxy: String,
    /// The namespace: `--namespace`/`MICRO_NAMESPACE`, else the one saved for the env, else `micro`.
    pub namespace: String,
    /// The namespace saved for the env (else `micro`), whatever `--namespace` says: when no token was saved for
    /// [`Settings::namespace`], the token of this one is used.
    pub home_namespace: String,
    /// The output format, if one was asked for.
    pub output: Option<Output>,
    /// Whether stdin is a terminal (prompts allowed).
    pub stdin_tty: bool,
    /// Whether stderr is a terminal (progress shown).
    pub stderr_tty: bool,
    /// TLS for an `https://` proxy: `--ca-cert`/`MICRO_CA_CERT` else the env's CA, `--client-cert`/`--client-key`
    /// else the env's, and `--insecure-skip-verify`. Unused for plaintext addresses.
    pub tls: ClientTls,
    /// What the TLS flags (and their variables) alone gave, without the env's: what `micro env add` stores.
    pub tls_flags: ClientTls,
    /// Whether the env was added with `--plaintext` and the proxy is still its address: passwords and tokens may
    /// then go to it in plaintext although it is not loopback.
    pub plaintext_allowed: bool,
}

/// What the user passed that bears on settings: the global options, under their own heading in every help.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = crate::cli::GLOBAL)]
pub struct GlobalArgs {
    /// The env to use for this command (see `micro env`).
    #[arg(short = 'e', long = "env", global = true, env = env::MICRO_ENV, value_name = "NAME")]
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::cli::completion::env_candidates))]
    pub env: Option<String>,
    /// The namespace to use.
    #[arg(long, global = true, env = env::MICRO_NAMESPACE, value_name = "NS")]
    pub namespace: Option<String>,
    /// The proxy address to use instead of the env's.
    ///
    /// `host:port` (plaintext) or `https://host:port` (TLS).
    #[arg(long, global = true, env = env::MICRO_PROXY, value_name = "HOST:PORT", hide_env_values = true)]
    pub proxy: Option<String>,
    /// A CA certificate (PEM file) to trust for an https:// proxy, besides the system's roots; with `env add`, stored
    /// with the env.
    #[arg(long, global = true, env = env::MICRO_CA_CERT, value_name = "FILE", hide_env_values = true, hide_short_help = true)]
    pub ca_cert: Option<PathBuf>,
    /// A client certificate (PEM file) for a proxy that requires one (mTLS); with `env add`, stored with the env.
    #[arg(long, global = true, env = env::MICRO_CLIENT_CERT, value_name = "FILE", hide_env_values = true, hide_short_help = true)]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM file) of --client-cert; with `env add`, stored with the env.
    #[arg(long, global = true, env = env::MICRO_CLIENT_KEY, value_name = "FILE", hide_env_values = true, hide_short_help = true)]
    pub client_key: Option<PathBuf>,
    /// Accept any certificate from an https:// proxy. Insecure: anyone on the network path can pose as the server.
    #[arg(
        long,
        global = true,
        env = env::MICRO_INSECURE_SKIP_VERIFY,
        value_parser = clap::builder::FalseyValueParser::new(),
        hide_env_values = true,
        hide_short_help = true
    )]
    pub insecure_skip_verify: bool,
}

impl GlobalArgs {
    /// The TLS settings given by flags or their variables alone: the CA and the client certificate with its key,
    /// read and checked, and `--insecure-skip-verify`. A client certificate without its key (or the reverse) is
    /// invalid input.
    pub fn tls_flags(&self) -> Result<ClientTls, CliError> {
        use micro_client::tls::{read_certificates, read_private_key};
        let ca =
            self.ca_cert.as_deref().map(|p| read_certificates(p, "--ca-cert")).transpose().map_err(CliError::input)?;
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_certificates(cert, "--client-cert").map_err(CliError::input)?,
                read_private_key(key, "--client-key").map_err(CliError::input)?,
            )),
            _ => return Err(CliError::input("--client-cert and --client-key go together: give both or neither")),
        };
        Ok(ClientTls { ca_pem: ca, identity, skip_verify: self.insecure_skip_verify })
    }
}

/// Whether the `--insecure-skip-verify` warning was printed by this process.
static SKIP_VERIFY_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Settings {
    /// Resolves the settings from flags (which clap already merged with the environment), the config file and
    /// defaults.
    pub fn resolve(args: &GlobalArgs, output: Option<Output>) -> Result<Self, CliError> {
        Self::resolve_in(Dirs::resolve()?, args, output)
    }

    /// [`Settings::resolve`] with the given directories.
    pub fn resolve_in(dirs: Dirs, args: &GlobalArgs, output: Option<Output>) -> Result<Self, CliError> {
        let config = dirs.load()?;
        let env = args.env.clone().unwrap_or_else(|| config.current().to_string());
        let envs = config.all_envs();
        let entry = envs.get(&env);
        let proxy = match (&args.proxy, entry) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => e.proxy_address.clone(),
            (None, None) => {
                return Err(CliError::input(format!(
                    "Env \"{env}\" not found. See `micro env` for available environments."
                )));
            }
        };
        // The flags (and their variables) win over what the env stores; the env's consent to plaintext holds only for
        // its own address.
        let stored = entry.map(EnvEntry::tls).unwrap_or_default();
        let tls_flags = args.tls_flags()?;
        let tls = ClientTls {
            ca_pem: tls_flags.ca_pem.clone().or(stored.ca_pem),
            identity: tls_flags.identity.clone().or(stored.identity),
            skip_verify: args.insecure_skip_verify,
        };
        let plaintext_allowed = entry.is_some_and(|e| e.plaintext && e.proxy_address == proxy);
        let home_namespace = config.namespace(&env).unwrap_or(micro_core::DEFAULT_NAMESPACE).to_string();
        let namespace = args.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| home_namespace.clone());
        Ok(Self {
            dirs,
            env,
            proxy,
            namespace,
            home_namespace,
            output,
            stdin_tty: std::io::stdin().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            tls,
            tls_flags,
            plaintext_allowed,
        })
    }

    /// A connection to the env's proxy, without a token, for the calls that carry a secret in their body: a
    /// password (`micro login`), a refresh token (`micro logout`), or a token set by hand. Refused, before anything is
    /// sent, when secrets may not go to the proxy ([`Settings::check_secrets_may_go`]); everything else uses
    /// [`Settings::connect_authed`].
    pub fn connect(&self) -> Result<Connection, CliError> {
        self.check_secrets_may_go()?;
        self.connection(&self.namespace)
    }

    /// A connection to the proxy in `namespace`, with the resolved TLS settings, checking nothing. Warns (once per
    /// process) when the certificate is not verified.
    fn connection(&self, namespace: &str) -> Result<Connection, CliError> {
        let conn =
            Connection::with_tls(&self.proxy, namespace, &self.tls).map_err(|e| CliError::input(e.to_string()))?;
        if conn.is_tls() && self.tls.skip_verify && !SKIP_VERIFY_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("{}", skip_verify_warning(&self.proxy));
        }
        Ok(conn)
    }

    /// Whether a password or token may be sent to the proxy: yes over TLS, to a loopback address, or to the address
    /// of an env added with `--plaintext`. Otherwise an error (exit 1) that says why and what to do.
    pub fn check_secrets_may_go(&self) -> Result<(), CliError> {
        let target = Target::parse(&self.proxy)
            .map_err(|reason| CliError::input(format!("invalid proxy address {:?}: {reason}", self.proxy)))?;
        if target.keeps_secrets() || self.plaintext_allowed {
            return Ok(());
        }
        Err(CliError::failure(format!(
            "Refusing to send a password or token in plaintext to {}: it is not this machine, and anyone on the \
             network path could read it and act as you. Use https://{} (a server with TLS), or, on a network you \
             trust, add the env with --plaintext: micro env add {} {} --plaintext",
            self.proxy, target.authority, self.env, self.proxy
        )))
    }

    /// A connection to the env's proxy that sends the current access token (see [`Settings::access_token`]), or
    /// none when the user is not logged in: the server then answers what anonymous callers may do.
    pub async fn connect_authed(&self) -> Result<Connection, CliError> {
        let conn = self.connection(&self.namespace)?;
        let token = self.access_token().await?;
        Ok(conn.with_token(token.as_deref()))
    }

    /// The token store in the config dir.
    pub fn tokens(&self) -> TokenStore {
        TokenStore::new(&self.dirs.config)
    }

    /// The saved token of this env for [`Settings::namespace`], else for [`Settings::home_namespace`], and the
    /// namespace it was saved under.
    pub fn stored_token(&self) -> Result<Option<(String, StoredToken)>, CliError> {
        let store = self.tokens();
        let mut namespaces = vec![self.namespace.as_str()];
        if self.home_namespace != self.namespace {
            namespaces.push(&self.home_namespace);
        }
        for ns in namespaces {
            if let Some(token) = store.get(&self.env, ns).map_err(store_error)? {
                return Ok(Some((ns.to_string(), token)));
            }
        }
        Ok(None)
    }

    /// The access token to send: `MICRO_AUTH_TOKEN` if set; else the saved one ([`Settings::stored_token`]),
    /// refreshed first when it expires within a minute. A refresh token the server refuses is dropped with its
    /// access token (the user is logged out); when the server cannot be reached, the old access token is kept.
    pub async fn access_token(&self) -> Result<Option<String>, CliError> {
        if let Some(token) = env::var(env::MICRO_AUTH_TOKEN) {
            self.check_secrets_may_go()?;
            return Ok(Some(token));
        }
        let Some((ns, token)) = self.stored_token()? else { return Ok(None) };
        self.check_secrets_may_go()?;
        if !token.can_refresh() || !token.expires_within(unix_now(), REFRESH_MARGIN_SECS) {
            return Ok(Some(token.access_token));
        }
        let store = self.tokens();
        match self.refresh(&ns, &token).await {
            Ok(Some(fresh)) => {
                let access = fresh.access_token.clone();
                store.put(&self.env, &ns, fresh).map_err(store_error)?;
                Ok(Some(access))
            }
            Ok(None) => {
                // Another micro process may have rotated the refresh token just before us: use its result.
                match store.get(&self.env, &ns).map_err(store_error)? {
                    Some(current) if current.refresh_token != token.refresh_token => Ok(Some(current.access_token)),
                    Some(_) => {
                        tracing::debug!(env = %self.env, namespace = %ns, "refresh token refused; logged out");
                        store.remove(&self.env, &ns).map_err(store_error)?;
                        Ok(None)
                    }
                    None => Ok(None),
                }
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), "cannot refresh the access token; using the saved one");
                Ok(Some(token.access_token))
            }
        }
    }

    /// Exchanges `token`'s refresh token for a new pair. `Ok(None)` when the server refuses the refresh token;
    /// `Err` when the answer says nothing about it (unreachable server, timeout).
    async fn refresh(&self, namespace: &str, token: &StoredToken) -> Result<Option<StoredToken>, tonic::Status> {
        use micro_core::proto::auth::{Options, TokenRequest};
        let conn = self.connection(namespace).map_err(|e| tonic::Status::unavailable(e.message))?;
        let mut req = conn.request(TokenRequest {
            refresh_token: token.refresh_token.clone(),
            options: Some(Options { namespace: namespace.to_string() }),
            ..Default::default()
        });
        req.set_timeout(std::time::Duration::from_secs(15));
        match conn.auth().token(req).await {
            Ok(resp) => match resp.into_inner().token {
                Some(t) if !t.access_token.is_empty() => Ok(Some(StoredToken {
                    account_id: token.account_id.clone(),
                    access_token: t.access_token,
                    refresh_token: t.refresh_token,
                    created: t.created,
                    expiry: t.expiry,
                })),
                _ => Err(tonic::Status::internal("the server answered a refresh with no token")),
            },
            Err(status) if refused(status.code()) => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// The schema cache of this env, proxy address and namespace.
    pub fn schema_cache(&self) -> micro_client::schema_cache::SchemaCache {
        micro_client::schema_cache::SchemaCache::new(
            &self.dirs.cache,
            &cache_key(&self.env, &self.proxy),
            &self.namespace,
        )
    }
}

/// The warning printed on every run that skips certificate verification.
pub fn skip_verify_warning(proxy: &str) -> String {
    format!(
        "warning: --insecure-skip-verify: the certificate of {proxy} is not checked, so anyone on the network path \
         can pose as the server and read your password and tokens"
    )
}

/// The key of a schema cache: the env and the address it points at, so that `MICRO_PROXY` pointing elsewhere never
/// mixes two servers' services.
pub fn cache_key(env: &str, proxy: &str) -> String {
    format!("{env}@{proxy}")
}

impl Settings {
    /// The cache root, for completion.
    pub fn cache_root(dirs: &Dirs) -> PathBuf {
        dirs.cache.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(root: &std::path::Path) -> Dirs {
        Dirs { config: root.join("config"), cache: root.join("cache") }
    }

    #[test]
    fn namespace_resolution() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = dirs(tmp.path());
        let args = |env: Option<&str>, ns: Option<&str>| GlobalArgs {
            env: env.map(Into::into),
            namespace: ns.map(Into::into),
            proxy: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let resolve = |a: &GlobalArgs| Settings::resolve_in(dirs.clone(), a, None).unwrap();

        // Nothing saved: `micro`.
        let s = resolve(&args(None, None));
        assert_eq!((s.namespace.as_str(), s.home_namespace.as_str()), ("micro", "micro"));

        // Saved for the current env.
        let mut config = dirs.load().unwrap();
        config.namespaces.insert("local".into(), "foo".into());
        config.envs.insert("prod".into(), EnvEntry::new("p:1", ""));
        dirs.save(&config).unwrap();
        let s = resolve(&args(None, None));
        assert_eq!((s.namespace.as_str(), s.home_namespace.as_str()), ("foo", "foo"));

        // Per env: another env has its own (here none).
        let s = resolve(&args(Some("prod"), None));
        assert_eq!(s.namespace, "micro");

        // The flag (or MICRO_NAMESPACE, which clap merges into it) wins, the saved one stays home.
        let s = resolve(&args(None, Some("bar")));
        assert_eq!((s.namespace.as_str(), s.home_namespace.as_str()), ("bar", "foo"));

        // An empty flag is no flag.
        let s = resolve(&args(None, Some("")));
        assert_eq!(s.namespace, "foo");

        // Old config files without the new keys still load, and empty maps are not written.
        std::fs::write(dirs.config_file(), r#"{"env":"local","envs":{}}"#).unwrap();
        assert!(dirs.load().unwrap().namespaces.is_empty());
        dirs.save(&ConfigFile::default()).unwrap();
        let text = std::fs::read_to_string(dirs.config_file()).unwrap();
        assert!(!text.contains("namespaces") && !text.contains("user_config"), "{text}");
    }

    #[tokio::test]
    async fn stored_token_falls_back_to_the_home_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = dirs(tmp.path());
        let args = |ns: Option<&str>| GlobalArgs {
            env: None,
            namespace: ns.map(Into::into),
            proxy: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let token = |id: &str| StoredToken {
            account_id: id.into(),
            access_token: format!("{id}-access"),
            refresh_token: String::new(),
            created: 1,
            expiry: 0,
        };
        let s = Settings::resolve_in(dirs.clone(), &args(Some("foo")), None).unwrap();
        assert_eq!(s.stored_token().unwrap(), None);
        s.tokens().put("local", "micro", token("admin")).unwrap();
        assert_eq!(s.stored_token().unwrap(), Some(("micro".to_string(), token("admin"))));
        s.tokens().put("local", "foo", token("tenant")).unwrap();
        assert_eq!(s.stored_token().unwrap(), Some(("foo".to_string(), token("tenant"))));
        // A token without a refresh token is used as it is, without calling the server.
        if std::env::var_os(env::MICRO_AUTH_TOKEN).is_none() {
            assert_eq!(s.access_token().await.unwrap().as_deref(), Some("tenant-access"));
        }
    }

    #[test]
    fn tls_resolves_flag_over_env_and_plaintext_consent_holds_only_for_the_env_address() {
        use micro_client::tls::testing::Ca;
        let tmp = tempfile::tempdir().unwrap();
        let dirs = dirs(tmp.path());
        let (env_ca, flag_ca) = (Ca::new(), Ca::new());
        let mut config = ConfigFile::default();
        config.envs.insert(
            "prod".into(),
            EnvEntry { ca_cert: Some(env_ca.pem()), ..EnvEntry::new("https://micro.example.com:8443", "") },
        );
        config.envs.insert("lan".into(), EnvEntry { plaintext: true, ..EnvEntry::new("10.0.0.5:8081", "") });
        config.envs.insert("far".into(), EnvEntry::new("10.0.0.6:8081", ""));
        dirs.save(&config).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dirs.config_file()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "config.json may hold a client key");
        }
        let resolve = |a: GlobalArgs| Settings::resolve_in(dirs.clone(), &a, None);
        let env = |name: &str| GlobalArgs { env: Some(name.into()), ..Default::default() };

        // The env's CA, unless a flag (or MICRO_CA_CERT, which clap merges into it) gives another.
        let s = resolve(env("prod")).unwrap();
        assert_eq!(s.tls.ca_pem, Some(env_ca.pem()));
        assert_eq!(s.tls_flags.ca_pem, None);
        let flag_file = tmp.path().join("flag-ca.pem");
        std::fs::write(&flag_file, flag_ca.pem()).unwrap();
        let s = resolve(GlobalArgs { ca_cert: Some(flag_file.clone()), ..env("prod") }).unwrap();
        assert_eq!((&s.tls.ca_pem, &s.tls_flags.ca_pem), (&Some(flag_ca.pem()), &Some(flag_ca.pem())));
        assert!(s.check_secrets_may_go().is_ok(), "TLS keeps secrets");

        // A CA file that is not a certificate, or a client certificate without its key, is invalid input.
        let e = resolve(GlobalArgs { ca_cert: Some(tmp.path().join("nope.pem")), ..env("prod") }).unwrap_err();
        assert_eq!(e.status, crate::exit::ExitStatus::InvalidInput);
        assert!(e.message.contains("--ca-cert"), "{}", e.message);
        let e = resolve(GlobalArgs { client_cert: Some(flag_file), ..env("prod") }).unwrap_err();
        assert!(e.message.contains("--client-cert and --client-key go together"), "{}", e.message);

        // Plaintext to a non-loopback address: refused, exit 1, before anything is sent...
        let far = resolve(env("far")).unwrap();
        let e = far.check_secrets_may_go().unwrap_err();
        assert_eq!(e.status, crate::exit::ExitStatus::Failure);
        assert!(
            e.message.contains("Refusing to send a password or token in plaintext to 10.0.0.6:8081"),
            "{}",
            e.message
        );
        assert!(e.message.contains("https://10.0.0.6:8081") && e.message.contains("--plaintext"), "{}", e.message);
        assert!(far.connect().is_err(), "login's connection is refused too");
        // ...unless the env was added with --plaintext, and only for its own address.
        assert!(resolve(env("lan")).unwrap().check_secrets_may_go().is_ok());
        let moved = resolve(GlobalArgs { proxy: Some("10.0.0.7:8081".into()), ..env("lan") }).unwrap();
        assert!(!moved.plaintext_allowed && moved.check_secrets_may_go().is_err());
        // Loopback is always fine.
        assert!(resolve(env("local")).unwrap().check_secrets_may_go().is_ok());
    }

    #[tokio::test]
    async fn tokens_are_not_sent_in_plaintext_to_a_remote_address() {
        if std::env::var_os(env::MICRO_AUTH_TOKEN).is_some() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let args = GlobalArgs { proxy: Some("192.0.2.1:8081".into()), ..Default::default() };
        let s = Settings::resolve_in(dirs(tmp.path()), &args, None).unwrap();
        // Anonymous calls go anywhere.
        assert!(!s.connect_authed().await.unwrap().has_token());
        // A saved token does not, and is not refreshed there either.
        let token = StoredToken {
            account_id: "admin".into(),
            access_token: "secret-access".into(),
            refresh_token: "secret-refresh".into(),
            created: unix_now(),
            expiry: unix_now() + 10,
        };
        s.tokens().put("local", "micro", token).unwrap();
        let e = s.connect_authed().await.unwrap_err();
        assert!(e.message.starts_with("Refusing to send a password or token in plaintext"), "{}", e.message);
        assert!(s.tokens().get("local", "micro").unwrap().is_some(), "the saved token is kept");
    }

    /// An auth service that accepts one refresh token, `good`, and rotates it.
    struct MockAuth;

    #[tonic::async_trait]
    impl micro_core::proto::auth::auth_server::Auth for MockAuth {
        async fn generate(
            &self,
            _: tonic::Request<micro_core::proto::auth::GenerateRequest>,
        ) -> Result<tonic::Response<micro_core::proto::auth::GenerateResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn inspect(
            &self,
            _: tonic::Request<micro_core::proto::auth::InspectRequest>,
        ) -> Result<tonic::Response<micro_core::proto::auth::InspectResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented(""))
        }
        async fn token(
            &self,
            req: tonic::Request<micro_core::proto::auth::TokenRequest>,
        ) -> Result<tonic::Response<micro_core::proto::auth::TokenResponse>, tonic::Status> {
            let req = req.into_inner();
            if req.refresh_token != "good" || req.options.map(|o| o.namespace).as_deref() != Some("micro") {
                return Err(tonic::Status::unauthenticated("invalid token provided"));
            }
            let token = micro_core::proto::auth::Token {
                access_token: "new-access".into(),
                refresh_token: "good-2".into(),
                created: unix_now(),
                expiry: unix_now() + 900,
            };
            Ok(tonic::Response::new(micro_core::proto::auth::TokenResponse { token: Some(token) }))
        }
        async fn revoke(
            &self,
            _: tonic::Request<micro_core::proto::auth::RevokeRequest>,
        ) -> Result<tonic::Response<micro_core::proto::auth::RevokeResponse>, tonic::Status> {
            Ok(tonic::Response::new(micro_core::proto::auth::RevokeResponse {}))
        }
    }

    async fn mock_auth_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(micro_core::proto::auth::auth_server::AuthServer::new(MockAuth))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    #[tokio::test]
    async fn expiring_tokens_are_refreshed_or_dropped() {
        if std::env::var_os(env::MICRO_AUTH_TOKEN).is_some() {
            return;
        }
        let address = mock_auth_server().await;
        let tmp = tempfile::tempdir().unwrap();
        let args = GlobalArgs { proxy: Some(address), ..Default::default() };
        let s = Settings::resolve_in(dirs(tmp.path()), &args, None).unwrap();
        let expiring = |refresh: &str| StoredToken {
            account_id: "admin".into(),
            access_token: "old-access".into(),
            refresh_token: refresh.into(),
            created: unix_now() - 900,
            expiry: unix_now() + 30,
        };

        // Not expiring: used as it is.
        s.tokens().put("local", "micro", StoredToken { expiry: unix_now() + 600, ..expiring("bad") }).unwrap();
        assert_eq!(s.access_token().await.unwrap().as_deref(), Some("old-access"));

        // Expiring within a minute: refreshed, and the new pair saved.
        s.tokens().put("local", "micro", expiring("good")).unwrap();
        assert_eq!(s.access_token().await.unwrap().as_deref(), Some("new-access"));
        let saved = s.tokens().get("local", "micro").unwrap().unwrap();
        assert_eq!((saved.account_id.as_str(), saved.refresh_token.as_str()), ("admin", "good-2"));
        assert!(saved.expiry > unix_now() + 600);

        // A refused refresh token logs out.
        s.tokens().put("local", "micro", expiring("bad")).unwrap();
        assert_eq!(s.access_token().await.unwrap(), None);
        assert_eq!(s.tokens().get("local", "micro").unwrap(), None);
        let conn = s.connect_authed().await.unwrap();
        assert!(!conn.has_token());

        // An unreachable server keeps the old token.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let args = GlobalArgs { proxy: Some(closed), ..Default::default() };
        let s = Settings::resolve_in(dirs(tmp.path()), &args, None).unwrap();
        s.tokens().put("local", "micro", expiring("good")).unwrap();
        assert_eq!(s.access_token().await.unwrap().as_deref(), Some("old-access"));
        let kept = s.tokens().get("local", "micro").unwrap().unwrap();
        assert_eq!((kept.access_token.as_str(), kept.refresh_token.as_str()), ("old-access", "good"));
    }
}
