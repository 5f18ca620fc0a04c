//! `micro run` and `micro update`: build and start a service from a source, or rebuild and restart it.
//!
//! A local directory is packed (its cargo workspace, for a Rust package: without `target/`, `.git/` and what
//! `.gitignore` leaves out) and uploaded to the server with `Source.Upload`, so the same command works against a
//! remote server; a git source (`host/owner/repo[/folder][@ref]`) is cloned by the server. Then `Runtime.Create`
//! (or `Runtime.Update`) starts a deployment, and the CLI follows it (`Runtime.Logs{build}`): cargo's progress
//! drives a progress bar on a terminal, and the command returns once the service runs, or fails with the
//! compiler's errors or the reason it did not start. As in Micro, success prints nothing (`-o json` prints the
//! service).

use super::output::Printer;
use crate::exit::{CliError, RpcContext};
use crate::settings::{Output, Settings};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use micro_core::proto::runtime::{
    CreateOptions, CreateRequest, LogsOptions, LogsRequest, ReadOptions, ReadRequest, Service, UpdateOptions,
    UpdateRequest, UploadRequest, runtime_client::RuntimeClient, source_client::SourceClient,
};
use micro_server::runtime::deploy::cargo_status;
use micro_server::runtime::source::{GitSource, MAX_UPLOAD};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags shared by `micro run` and `micro update`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunFlags {
    /// The service's name [default: the folder's (or repository's) name].
    #[arg(long)]
    pub name: Option<String>,
    /// The command that starts the service, run by /bin/sh in the source folder instead of building a Rust
    /// package (e.g. "python3 server.py").
    #[arg(long)]
    pub command: Option<String>,
    /// Arguments for the service, separated by spaces.
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// The service's type (kept in its metadata).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Environment variables for the service, KEY=VALUE (comma separated, or the flag repeated).
    #[arg(long = "env_vars", visible_alias = "env-vars", value_name = "KEY=VALUE")]
    pub env_vars: Vec<String>,
    /// How many processes to run.
    #[arg(short = 'i', long, value_name = "N")]
    pub instances: Option<i32>,
    /// Metadata of the service, KEY=VALUE (the flag repeated).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Replace the service if it already exists.
    #[arg(long)]
    pub force: bool,
    /// An environment variable through which the service learns the port to listen on. The runtime picks a free
    /// port, and registers the gRPC services the process serves (found with gRPC server reflection), so that
    /// `micro <name> <endpoint>` works for a service written in any language.
    #[arg(long = "port-env", visible_alias = "port_env", value_name = "VAR")]
    pub port_env: Option<String>,
}

/// Flags of `micro run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro run ./greeter\n  micro run examples/helloworld\n  \
    micro run --name pysvc --command \"python3 server.py\" --port-env PORT ./pysvc\n  \
    micro run --watch ./greeter\n  \
    micro run github.com/owner/repo/folder@v1.0")]
pub struct Args {
    /// What to run: a local directory (a Rust package; anything else with --command), or a git repository
    /// `host/owner/repo[/folder][@ref]`. With --command, the current directory by default.
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// Flags.
    #[command(flatten)]
    pub flags: RunFlags,
    /// Keep watching the local directory: each saved change rebuilds the service and replaces the running process,
    /// as `micro update` does (the new build must start before the old process stops; a failed build keeps the old
    /// one serving). Ctrl-C stops watching; the service keeps running.
    #[arg(long, short = 'w')]
    pub watch: bool,
}

/// Flags of `micro update`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  micro update greeter\n  \
    micro update ./greeter\n  \
    micro update greeter --instances 3")]
pub struct UpdateArgs {
    /// The new source (a local directory or a git URL), or the name of a running service to update from the source
    /// it was run from.
    #[arg(value_name = "SOURCE|NAME")]
    #[arg(add = clap_complete::ArgValueCompleter::new(super::completion::source_or_service_candidates))]
    pub source: Option<String>,
    /// The service's name [default: the folder's name].
    #[arg(long)]
    pub name: Option<String>,
    /// How many processes to run [default: as before].
    #[arg(short = 'i', long, value_name = "N")]
    pub instances: Option<i32>,
    /// Metadata to add, KEY=VALUE (the flag repeated).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
}

/// Parses `--metadata` pairs as Micro does; `source` is reserved.
pub fn parse_metadata(pairs: &[String]) -> Result<HashMap<String, String>, CliError> {
    let mut out = HashMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let k = k.trim();
                if k == "source" {
                    return Err(CliError::input("invalid metadata string, 'source' is a reserved key"));
                }
                out.insert(k.to_string(), v.trim().to_string());
            }
            _ => return Err(CliError::input(format!("invalid metadata string, must be of form foo=bar {pair}"))),
        }
    }
    Ok(out)
}

/// Parses `--env_vars`: each value comma separated and trimmed, each entry `KEY=VALUE`.
pub fn parse_env(values: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for entry in values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((k, _))
                if !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push(entry.to_string())
            }
            _ => {
                return Err(CliError::input(format!(
                    "invalid environment variable {entry:?}: must be of form KEY=VALUE"
                )));
            }
        }
    }
    Ok(out)
}

/// Splits `NAME[@VERSION]`.
pub fn split_version(text: &str) -> (String, String) {
    match text.split_once('@') {
        Some((n, v)) => (n.to_string(), v.to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// Maps a runtime RPC error: a service the runtime does not know is not found (exit 6) with a hint; the rest as
/// every built-in's ([`from_core_status`]: a refused value is 128, another error of the runtime 1).
pub fn runtime_error(settings: &Settings, status: &tonic::Status, endpoint: &str) -> CliError {
    if status.code() == tonic::Code::NotFound && status.message().contains("not run by the runtime") {
        return CliError::missing(format!(
            "{}. See `micro status` for the services it runs",
            capitalize(status.message())
        ));
    }
    crate::exit::from_core_status(
        status,
        &RpcContext { address: settings.proxy.clone(), endpoint: endpoint.into() },
        "",
    )
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A runtime client over the settings' connection.
pub async fn client(
    settings: &Settings,
) -> Result<(RuntimeClient<tonic::transport::Channel>, micro_client::Connection), CliError> {
    let conn = settings.connect_authed().await?;
    Ok((RuntimeClient::new(conn.channel()), conn))
}

/// What `micro run` was given.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A local directory: the tree to upload, and the folder to run inside it.
    Local {
        /// The directory as given, made absolute.
        dir: PathBuf,
        /// The root of what is uploaded (the cargo workspace, or `dir`).
        root: PathBuf,
        /// `dir` relative to `root`.
        entrypoint: String,
    },
    /// A git repository.
    Git(GitSource, String),
}

/// The cargo workspace root of the package in `dir`: `cargo locate-project --workspace`, else the nearest
/// ancestor whose Cargo.toml has a `[workspace]`, else `dir`.
fn workspace_root(dir: &Path) -> PathBuf {
    let located = std::process::Command::new("cargo")
        .args(["locate-project", "--workspace", "--message-format", "plain", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(out) = located
        && out.status.success()
        && let Some(root) = Path::new(String::from_utf8_lossy(&out.stdout).trim()).parent()
        && dir.starts_with(root)
    {
        return root.to_path_buf();
    }
    dir.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("[workspace")))
        })
        .unwrap_or(dir)
        .to_path_buf()
}

fn resolve(source: &str, command: bool) -> Result<Target, CliError> {
    let path = Path::new(source);
    if path.exists() {
        let dir = std::fs::canonicalize(path)
            .map_err(|e| CliError::failure(format!("cannot resolve the path {source}: {e}")))?;
        if !dir.is_dir() {
            return Err(CliError::input(format!("{source} is not a directory")));
        }
        if command {
            return Ok(Target::Local { root: dir.clone(), dir, entrypoint: String::new() });
        }
        if !dir.join("Cargo.toml").is_file() {
            return Err(CliError::input(format!(
                "{source} has no Cargo.toml: micro run builds a Rust package; to run anything else, give the command \
                 that starts it, e.g. --command \"python3 server.py\""
            )));
        }
        let root = workspace_root(&dir);
        let entrypoint = dir.strip_prefix(&root).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        return Ok(Target::Local { dir, root, entrypoint });
    }
    match GitSource::parse(source) {
        Some(git) => Ok(Target::Git(git, source.to_string())),
        None => Err(CliError::input(format!(
            "{source}: no such directory. SOURCE is a local directory or a git repository \
             host/owner/repo[/folder][@ref]"
        ))),
    }
}

impl Target {
    fn default_name(&self) -> String {
        match self {
            Target::Local { dir, .. } => dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            Target::Git(git, _) => git.name(),
        }
    }

    fn version(&self) -> String {
        match self {
            Target::Local { .. } => "latest".into(),
            Target::Git(git, _) => git.reference.clone(),
        }
    }
}

/// The files of `root` that are uploaded: every file, without `.git/`, the cargo target dir and what
/// `.gitignore` (and `.ignore`) files leave out; sorted by name.
fn walk(root: &Path) -> ignore::Walk {
    ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(true)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|e| {
            let dir = e.file_type().is_some_and(|t| t.is_dir());
            !(dir
                && (e.file_name() == ".git"
                    || (e.depth() == 1 && e.file_name() == "target")
                    || e.path().join("CACHEDIR.TAG").is_file()))
        })
        .build()
}

/// What `--watch` compares: each uploaded file's size and modification time.
type Snapshot = std::collections::BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)>;

fn snapshot(root: &Path) -> Snapshot {
    walk(root)
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_some_and(|t| !t.is_dir()))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let rel = e.path().strip_prefix(root).ok()?.to_path_buf();
            Some((rel, (meta.len(), meta.modified().ok())))
        })
        .collect()
}

/// The files that differ between two snapshots (changed, added or removed), sorted.
fn changed(before: &Snapshot, after: &Snapshot) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        after.iter().filter(|(p, v)| before.get(*p) != Some(v)).map(|(p, _)| p.clone()).collect();
    out.extend(before.keys().filter(|p| !after.contains_key(*p)).cloned());
    out.sort();
    out
}

/// Packs `root` into a gzipped tar: every file, without `.git/`, the cargo target dir and what `.gitignore` (and
/// `.ignore`) files leave out.
pub fn pack(root: &Path) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut size = 0u64;
    for entry in walk(root) {
        let entry = entry.map_err(|e| std::io::Error::other(e.to_string()))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry.path().strip_prefix(root).map_err(std::io::Error::other)?;
        let kind = entry.file_type();
        if kind.is_some_and(|t| t.is_dir()) {
            tar.append_dir(rel, entry.path())?;
        } else {
            size += entry.metadata().map(|m| m.len()).unwrap_or(0);
            if size > MAX_UPLOAD {
                return Err(std::io::Error::other(format!(
                    "{} holds more than {} MiB of files to upload; leave large files out with a .gitignore",
                    root.display(),
                    MAX_UPLOAD >> 20
                )));
            }
            tar.append_path_with_name(entry.path(), rel)?;
        }
    }
    tar.into_inner()?.finish()
}

/// Uploads an archive with `Source.Upload` (in 64 KiB messages, the first naming the service); returns its id.
async fn upload(
    settings: &Settings,
    conn: &micro_client::Connection,
    name: &str,
    version: &str,
    archive: Vec<u8>,
) -> Result<String, CliError> {
    let service = Service { name: name.into(), version: version.into(), ..Default::default() };
    let mut messages: Vec<UploadRequest> =
        archive.chunks(64 * 1024).map(|c| UploadRequest { service: None, data: c.to_vec() }).collect();
    if messages.is_empty() {
        messages.push(UploadRequest::default());
    }
    messages[0].service = Some(service);
    let mut client = SourceClient::new(conn.channel());
    let reply = client
        .upload(conn.request(tokio_stream::iter(messages)))
        .await
        .map_err(|s| runtime_error(settings, &s, "Source.Upload"))?;
    Ok(reply.into_inner().id)
}

/// Packs the tree `root` (off the async threads) and uploads it for `name@version`; returns the upload's id.
async fn pack_and_upload(
    settings: &Settings,
    conn: &micro_client::Connection,
    name: &str,
    version: &str,
    root: &Path,
) -> Result<String, CliError> {
    let tree = root.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || pack(&tree))
        .await
        .map_err(|e| CliError::failure(e.to_string()))?
        .map_err(|e| CliError::failure(format!("cannot pack {}: {e}", root.display())))?;
    upload(settings, conn, name, version, archive).await
}

/// The progress shown while a deployment runs: a spinner, then a bar once cargo's total is known. Hidden when
/// stderr is not a terminal.
struct Progress {
    bar: ProgressBar,
    counting: bool,
}

impl Progress {
    fn new(settings: &Settings, message: String) -> Self {
        let bar = if settings.stderr_tty {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(100));
        Self { bar, counting: false }
    }

    fn update(&mut self, record: &micro_core::proto::runtime::LogRecord) {
        let number = |k: &str| record.metadata.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(progress), Some(total)) = (number("progress"), number("total")) {
            if !self.counting {
                self.counting = true;
                let style = ProgressStyle::with_template("{spinner:.cyan} [{bar:30.cyan/blue}] {pos}/{len} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                self.bar.set_style(style);
            }
            self.bar.set_length(total.max(progress));
            self.bar.set_position(progress);
        }
        let line = record.message.trim();
        let from_cargo = record.metadata.get("from").is_some_and(|f| f == "cargo");
        if let Some(crates) = record.metadata.get("compiling") {
            // What rustc compiles now (several crates at once on several cores).
            self.bar.set_message(format!("Compiling {crates}"));
        } else if !from_cargo {
            if !line.is_empty() {
                self.bar.set_message(line.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("Compiling ") {
            self.bar.set_message(format!("Compiling {}", rest.split(" (").next().unwrap_or(rest)));
        }
    }

    fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// Follows a deployment to its end: Ok once the service runs; otherwise cargo's errors go to stderr and the
/// reason is the error.
async fn follow(
    settings: &Settings,
    conn: &micro_client::Connection,
    name: &str,
    version: &str,
    build: &str,
    mut progress: Progress,
) -> Result<(), CliError> {
    let mut client = RuntimeClient::new(conn.channel());
    let req = LogsRequest {
        service: name.into(),
        version: version.into(),
        build: true,
        build_id: build.into(),
        options: Some(LogsOptions { namespace: settings.namespace.clone() }),
        ..Default::default()
    };
    let mut stream = match client.logs(conn.request(req)).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            progress.clear();
            return Err(runtime_error(settings, &e, "Runtime.Logs"));
        }
    };
    let mut cargo_output: Vec<String> = Vec::new();
    loop {
        let record = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                progress.clear();
                return Err(runtime_error(settings, &e, "Runtime.Logs"));
            }
        };
        if record.metadata.get("stage").is_some_and(|s| s == "done") {
            progress.clear();
            if record.metadata.get("status").is_some_and(|s| s == "running") {
                return Ok(());
            }
            let shown: Vec<&String> = cargo_output.iter().filter(|l| !cargo_status(l.trim())).collect();
            for line in shown {
                eprintln!("{line}");
            }
            let error = record.metadata.get("error").cloned().unwrap_or_else(|| record.message.clone());
            return Err(CliError::failure(format!("{name}: {error}")));
        }
        if record.metadata.get("from").is_some_and(|f| f == "cargo") {
            cargo_output.push(record.message.clone());
        }
        progress.update(&record);
    }
    progress.clear();
    Err(CliError::failure(format!(
        "the server ended the deployment of {name} without saying how it went; see `micro status {name}`"
    )))
}

fn print_result(settings: &Settings, name: &str, version: &str, build: &str) -> anyhow::Result<()> {
    let printer = Printer::new(settings.output, Output::Table);
    match printer.format() {
        Output::Table => {
            if settings.stderr_tty {
                printer.message(format!("{name} is running; see `micro status` and `micro logs {name}`"));
            }
        }
        _ => {
            printer.json(&serde_json::json!({"name": name, "version": version, "build": build, "status": "running"}))?
        }
    }
    Ok(())
}

/// Runs `micro run`.
pub async fn exec(settings: &Settings, args: Args) -> anyhow::Result<()> {
    let flags = args.flags;
    let mut metadata = parse_metadata(&flags.metadata)?;
    let env = parse_env(&flags.env_vars)?;
    let command = flags.command.clone().filter(|c| !c.trim().is_empty());
    let source = match args.source {
        Some(s) => s,
        None if command.is_some() => ".".to_string(),
        None => {
            return Err(CliError::input(
                "Missing SOURCE: micro run ./dir (a Rust package), a git repository host/owner/repo[/folder][@ref], \
                 or --command \"…\" to run a command in the current directory",
            )
            .into());
        }
    };
    if let Some(n) = flags.instances
        && n < 1
    {
        return Err(CliError::input(format!("--instances must be at least 1, not {n}")).into());
    }
    let target = resolve(&source, command.is_some())?;
    if args.watch && matches!(target, Target::Git(..)) {
        return Err(CliError::input(format!(
            "--watch needs a local directory to watch; {source} is a git repository (clone it, then micro run --watch DIR)"
        ))
        .into());
    }
    let name = flags.name.clone().unwrap_or_else(|| target.default_name());
    if !micro_server::runtime::manager::valid_name(&name) {
        return Err(CliError::input(format!(
            "invalid service name {name:?}: use letters, digits, '-', '_' and '.', or choose one with --name"
        ))
        .into());
    }
    let version = target.version();
    let (mut client, conn) = client(settings).await?;
    let progress = Progress::new(settings, format!("Uploading {name}"));
    let (source_id, entrypoint) = match &target {
        Target::Local { dir, root, entrypoint } => {
            metadata.insert("source".into(), dir.to_string_lossy().to_string());
            let id = pack_and_upload(settings, &conn, &name, &version, root).await.inspect_err(|_| progress.clear())?;
            (id, entrypoint.clone())
        }
        Target::Git(_, text) => {
            metadata.insert("source".into(), text.clone());
            (text.clone(), String::new())
        }
    };
    progress.bar.set_message(format!("Starting {name}"));
    let req = CreateRequest {
        service: Some(Service { name: name.clone(), version: version.clone(), source: source_id, metadata, status: 0 }),
        options: Some(CreateOptions {
            command: command.into_iter().collect(),
            args: flags.args.map(|a| a.split_whitespace().map(str::to_string).collect()).unwrap_or_default(),
            env,
            r#type: flags.kind.unwrap_or_default(),
            namespace: settings.namespace.clone(),
            entrypoint,
            instances: flags.instances.unwrap_or(0),
            force: flags.force,
            port_env: flags.port_env.unwrap_or_default(),
            ..Default::default()
        }),
    };
    let build = client
        .create(conn.request(req))
        .await
        .map_err(|s| {
            progress.clear();
            runtime_error(settings, &s, "Runtime.Create")
        })?
        .into_inner()
        .build;
    let followed = follow(settings, &conn, &name, &version, &build, progress).await;
    if !args.watch {
        followed?;
        return print_result(settings, &name, &version, &build);
    }
    // Watching: a first build that fails is reported, and the next change tries again.
    match followed {
        Ok(()) => print_result(settings, &name, &version, &build)?,
        Err(e) => Printer::new(settings.output, Output::Table).message(e.message),
    }
    watch(settings, &mut client, &conn, &name, &version, &target).await?;
    Ok(())
}

/// Runs `micro update`.
pub async fn exec_update(settings: &Settings, args: UpdateArgs) -> anyhow::Result<()> {
    let metadata = parse_metadata(&args.metadata)?;
    if let Some(n) = args.instances
        && n < 1
    {
        return Err(CliError::input(format!("--instances must be at least 1, not {n}")).into());
    }
    let given = args.source.clone().unwrap_or_else(|| ".".into());
    let (mut client, conn) = client(settings).await?;
    // A path or git URL is the new source; otherwise it names a service, updated from the source it ran from.
    let (name, version, target) = if Path::new(&given).exists() || GitSource::parse(&given).is_some() {
        let current = resolve_for_update(&given)?;
        let name = args.name.clone().unwrap_or_else(|| current.default_name());
        (name, String::new(), Some(current))
    } else {
        let (name, version) = split_version(&given);
        let name = args.name.clone().unwrap_or(name);
        let req = ReadRequest {
            options: Some(ReadOptions {
                service: name.clone(),
                version: version.clone(),
                namespace: settings.namespace.clone(),
                ..Default::default()
            }),
        };
        let services = client
            .read(conn.request(req))
            .await
            .map_err(|s| runtime_error(settings, &s, "Runtime.Read"))?
            .into_inner()
            .services;
        let Some(found) = services.into_iter().next() else {
            return Err(CliError::missing(format!(
                "Service {given} is not run by the runtime. See `micro status` for the services it runs"
            ))
            .into());
        };
        let recorded = found.metadata.get("source").cloned().unwrap_or_default();
        // A local source is uploaded again when it is here; anything else is fetched again by the server.
        let target = if !recorded.is_empty() && Path::new(&recorded).is_dir() {
            Some(resolve_for_update(&recorded)?)
        } else {
            if GitSource::parse(&recorded).is_none() {
                Printer::new(settings.output, Output::Table).message(format!(
                    "{name} was run from {recorded}, which is not here: restarting the build it runs. Give the \
                     source to update from: micro update DIR"
                ));
            }
            None
        };
        (found.name, found.version, target)
    };
    let build =
        update_from(settings, &mut client, &conn, &name, &version, target.as_ref(), metadata, args.instances).await?;
    print_result(settings, &name, if version.is_empty() { "latest" } else { &version }, &build)
}

/// Uploads `target` (when given; else the server rebuilds what it has) and updates the service `name@version` from
/// it with `Runtime.Update`, following the deployment to its end; returns the build id.
#[allow(clippy::too_many_arguments)]
async fn update_from(
    settings: &Settings,
    client: &mut RuntimeClient<tonic::transport::Channel>,
    conn: &micro_client::Connection,
    name: &str,
    version: &str,
    target: Option<&Target>,
    mut metadata: HashMap<String, String>,
    instances: Option<i32>,
) -> Result<String, CliError> {
    let progress = Progress::new(settings, format!("Uploading {name}"));
    let source_id = match target {
        Some(Target::Local { dir, root, .. }) => {
            metadata.insert("source".into(), dir.to_string_lossy().to_string());
            let upload_version = if version.is_empty() { "latest" } else { version };
            pack_and_upload(settings, conn, name, upload_version, root).await.inspect_err(|_| progress.clear())?
        }
        Some(Target::Git(_, text)) => {
            metadata.insert("source".into(), text.clone());
            text.clone()
        }
        None => String::new(),
    };
    progress.bar.set_message(format!("Updating {name}"));
    let req = UpdateRequest {
        service: Some(Service { name: name.into(), version: version.into(), source: source_id, metadata, status: 0 }),
        options: Some(UpdateOptions {
            namespace: settings.namespace.clone(),
            instances: instances.unwrap_or(0),
            ..Default::default()
        }),
    };
    let build = client
        .update(conn.request(req))
        .await
        .map_err(|s| {
            progress.clear();
            runtime_error(settings, &s, "Runtime.Update")
        })?
        .into_inner()
        .build;
    follow(settings, conn, name, version, &build, progress).await?;
    Ok(build)
}

/// How often `--watch` looks at the files, and how long they must stay the same before a build starts (an editor
/// may write a file in several steps, and a `git checkout` many files).
const WATCH_POLL: Duration = Duration::from_millis(250);

/// `micro run --watch`: rebuilds and replaces the service `name` on every change of the files of `target` (those
/// `micro run` uploads), until Ctrl-C. A failed build is reported and the previous version keeps serving.
async fn watch(
    settings: &Settings,
    client: &mut RuntimeClient<tonic::transport::Channel>,
    conn: &micro_client::Connection,
    name: &str,
    version: &str,
    target: &Target,
) -> Result<(), CliError> {
    let Target::Local { root, dir, .. } = target else {
        return Err(CliError::input("--watch needs a local directory to watch, not a git repository"));
    };
    let printer = Printer::new(settings.output, Output::Table);
    let scan =
        |root: PathBuf| async move { tokio::task::spawn_blocking(move || snapshot(&root)).await.unwrap_or_default() };
    // The first scan comes before the message, so that a change saved after the message is never missed.
    let mut seen = scan(root.clone()).await;
    printer.message(format!("Watching {} for changes (Ctrl-C stops watching; {name} keeps running)", dir.display()));
    let stop = micro::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(WATCH_POLL) => {}
        }
        let mut now = scan(root.clone()).await;
        if now == seen {
            continue;
        }
        // Wait for the files to settle.
        loop {
            tokio::time::sleep(WATCH_POLL).await;
            let again = scan(root.clone()).await;
            if again == now {
                break;
            }
            now = again;
        }
        let files = changed(&seen, &now);
        seen = now;
        let shown: Vec<String> = files.iter().take(3).map(|p| p.display().to_string()).collect();
        let more = if files.len() > 3 { format!(" and {} more", files.len() - 3) } else { String::new() };
        printer.message(format!("Changed: {}{more}; updating {name}", shown.join(", ")));
        let started = std::time::Instant::now();
        let updated = tokio::select! {
            _ = &mut stop => return Ok(()),
            updated = update_from(settings, client, conn, name, version, Some(target), HashMap::new(), None) => updated,
        };
        match updated {
            Ok(_) => printer.message(format!(
                "{name} is running the new build ({:.1}s); watching for changes",
                started.elapsed().as_secs_f64()
            )),
            Err(e) => printer.message(format!(
                "{}\n{name} keeps running its previous build. Watching for changes: fix the error and save again",
                e.message
            )),
        }
    }
}

/// The source of an update: like `run`'s, but a directory without Cargo.toml is fine (the service may run a
/// command; the server knows).
fn resolve_for_update(source: &str) -> Result<Target, CliError> {
    let dir = Path::new(source);
    if dir.is_dir() && !dir.join("Cargo.toml").is_file() {
        return resolve(source, true);
    }
    resolve(source, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitStatus;

    #[test]
    fn metadata_as_micro() {
        let m = parse_metadata(&["a=1".into(), "b = two".into(), "c=".into()]).unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "two");
        assert_eq!(m["c"], "");
        let e = parse_metadata(&["source=x".into()]).unwrap_err();
        assert_eq!(e.message, "invalid metadata string, 'source' is a reserved key");
        let e = parse_metadata(&["X".into()]).unwrap_err();
        assert_eq!(e.message, "invalid metadata string, must be of form foo=bar X");
        assert_eq!(e.status, ExitStatus::InvalidInput);
    }

    #[test]
    fn env_vars_split_on_commas() {
        assert_eq!(parse_env(&["A=1, B=2".into(), "C=x=y".into()]).unwrap(), ["A=1", "B=2", "C=x=y"]);
        assert!(parse_env(&["A".into()]).is_err());
        assert!(parse_env(&["1A=2".into()]).is_err());
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(split_version("a@v1"), ("a".to_string(), "v1".to_string()));
        assert_eq!(split_version("a"), ("a".to_string(), String::new()));
    }

    #[test]
    fn sources() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve(&dir.path().to_string_lossy(), false).unwrap_err();
        assert!(e.message.contains("has no Cargo.toml"), "{}", e.message);
        assert_eq!(e.status, ExitStatus::InvalidInput);
        let t = resolve(&dir.path().to_string_lossy(), true).unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        assert_eq!(t, Target::Local { dir: canonical.clone(), root: canonical, entrypoint: String::new() });
        let t = resolve("github.com/micro/services/helloworld@v1", false).unwrap();
        assert_eq!((t.default_name(), t.version()), ("helloworld".to_string(), "v1".to_string()));
        let e = resolve("nowhere-at-all", false).unwrap_err();
        assert!(e.message.contains("no such directory"), "{}", e.message);
    }

    #[test]
    fn packs_a_workspace_member_with_its_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"app\"]\n").unwrap();
        std::fs::write(root.join(".gitignore"), "/ignored.txt\n").unwrap();
        std::fs::write(root.join("ignored.txt"), "no").unwrap();
        for d in ["app/src", "target/debug", ".git", "app/target"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("app/Cargo.toml"), "[package]\nname = \"app\"\n").unwrap();
        std::fs::write(root.join("app/src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(root.join("app/target/CACHEDIR.TAG"), "x").unwrap();
        std::fs::write(root.join("target/debug/x"), "x").unwrap();
        std::fs::write(root.join(".git/HEAD"), "x").unwrap();
        let app = root.join("app");
        assert_eq!(workspace_root(&app.canonicalize().unwrap()), root.canonicalize().unwrap());
        let archive = pack(root).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive.as_slice()));
        let mut names: Vec<String> =
            tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string()).collect();
        names.sort();
        assert_eq!(names, [".gitignore", "Cargo.toml", "app", "app/Cargo.toml", "app/src", "app/src/main.rs"]);
    }
}
