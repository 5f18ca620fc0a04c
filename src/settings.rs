//! CLI settings, resolved once per command: flag > environment > config file > default.
//!
//! The config file (`config.json` in the user's config dir) holds the envs: named proxy addresses, with `local`
//! (`127.0.0.1:8081`) built in, and which one is current.

use crate::env;
use crate::exit::CliError;
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
}

impl ConfigFile {
    /// Every env, the built-in `local` included, sorted by name.
    pub fn all_envs(&self) -> BTreeMap<String, EnvEntry> {
        let mut all = self.envs.clone();
        all.entry(LOCAL_ENV.into()).or_insert_with(|| EnvEntry {
            proxy_address: LOCAL_PROXY.into(),
            description: "Local running micro server".into(),
        });
        all
    }

    /// The saved current env, `local` by default.
    pub fn current(&self) -> &str {
        self.env.as_deref().unwrap_or(LOCAL_ENV)
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

    /// Writes the config file atomically.
    pub fn save(&self, config: &ConfigFile) -> Result<(), CliError> {
        let path = self.config_file();
        let io = |e: std::io::Error| CliError::failure(format!("cannot write {}: {e}", path.display()));
        crate::server::create_private_dir(&self.config).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(config).map_err(|e| CliError::failure(e.to_string()))?;
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
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
    /// The namespace.
    pub namespace: String,
    /// The output format, if one was asked for.
    pub output: Option<Output>,
    /// Whether stdin is a terminal (prompts allowed).
    pub stdin_tty: bool,
    /// Whether stderr is a terminal (progress shown).
    pub stderr_tty: bool,
}

/// What the user passed that bears on settings.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct GlobalArgs {
    /// The env to use for this command (see `micro env`).
    #[arg(short = 'e', long = "env", global = true, env = env::MICRO_ENV, value_name = "NAME")]
    pub env: Option<String>,
    /// The namespace to use.
    #[arg(long, global = true, env = env::MICRO_NAMESPACE, value_name = "NS")]
    pub namespace: Option<String>,
    /// Proxy address to use instead of the env's.
    #[arg(long, global = true, env = env::MICRO_PROXY, value_name = "HOST:PORT", hide_env_values = true)]
    pub proxy: Option<String>,
}

impl Settings {
    /// Resolves the settings from flags (which clap already merged with the environment), the config file and
    /// defaults.
    pub fn resolve(args: &GlobalArgs, output: Option<Output>) -> Result<Self, CliError> {
        let dirs = Dirs::resolve()?;
        let config = dirs.load()?;
        let env = args.env.clone().unwrap_or_else(|| config.current().to_string());
        let envs = config.all_envs();
        let proxy = match (&args.proxy, envs.get(&env)) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => e.proxy_address.clone(),
            (None, None) => {
                return Err(CliError::input(format!(
                    "Env \"{env}\" not found. See `micro env` for available environments."
                )));
            }
        };
        Ok(Self {
            dirs,
            env,
            proxy,
            namespace: args.namespace.clone().unwrap_or_else(|| crate::DEFAULT_NAMESPACE.to_string()),
            output,
            stdin_tty: std::io::stdin().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
        })
    }

    /// A connection to the env's proxy.
    pub fn connect(&self) -> Result<crate::client::Connection, CliError> {
        crate::client::Connection::new(&self.proxy, &self.namespace).map_err(|e| CliError::input(e.to_string()))
    }

    /// The schema cache of this env and namespace.
    pub fn schema_cache(&self) -> crate::client::schema_cache::SchemaCache {
        crate::client::schema_cache::SchemaCache::new(&self.dirs.cache.join("schemas"), &self.env, &self.namespace)
    }

    /// The cache root, for completion.
    pub fn cache_root(dirs: &Dirs) -> PathBuf {
        dirs.cache.join("schemas")
    }
}
