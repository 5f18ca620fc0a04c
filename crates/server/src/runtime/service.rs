//! The runtime's gRPC face: `runtime.Runtime` (Create, Read, Update, Delete, Logs) and `runtime.Source` (Upload).
//!
//! Requests come through the proxy, which verified the caller. Reading services needs an account of the namespace;
//! creating, updating, deleting, uploading and reading logs need an administrator of it (as in Micro). The
//! server's own log needs an administrator of `micro`.

use super::deploy::Deploy;
use super::logs::{self, DEFAULT_TAIL, FOLLOW_INTERVAL, Follower, Line, TailOptions};
use super::manager::{self, Fetch, Runtime};
use super::records::Program;
use super::source::{GitSource, MAX_UPLOAD, UPLOAD_SCHEME};
use crate::auth::Caller;
use micro_core::proto::runtime::{
    CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, LogRecord, LogsRequest, ReadRequest, ReadResponse,
    UpdateRequest, UpdateResponse, UploadRequest, UploadResponse, runtime_server::Runtime as RuntimeApi,
    source_server::Source as SourceApi,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The most instances a service may ask for.
pub const MAX_INSTANCES: i32 = 64;

/// Serves `runtime.Runtime` and `runtime.Source` over a [`Runtime`].
#[derive(Clone)]
pub struct RuntimeService {
    rt: Arc<Runtime>,
}

impl RuntimeService {
    /// The service over `rt`.
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

/// The namespace of a request: the option when given, else the caller's (`micro` by default); INVALID_ARGUMENT
/// unless it is a valid namespace ([`micro_core::namespace::validate`]: it becomes part of paths).
fn namespace(caller: &Caller, option: &str) -> Result<String, Status> {
    let ns = if option.is_empty() { caller.namespace.as_str() } else { option };
    let ns = if ns.is_empty() { micro_core::DEFAULT_NAMESPACE } else { ns };
    micro_core::namespace::validate(ns)?;
    Ok(ns.to_string())
}

fn version_or_latest(v: &str) -> String {
    if v.is_empty() { "latest".into() } else { v.to_string() }
}

/// INVALID_ARGUMENT, naming `what`, unless `name` is a valid service name or version ([`manager::valid_name`]).
fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if manager::valid_name(name) {
        Ok(())
    } else {
        let shown: String = name.chars().take(80).collect();
        Err(Status::invalid_argument(format!(
            "invalid {what} {shown:?}: use 1 to {} letters, digits, '-', '_' and '.' (not first, and no '..')",
            manager::MAX_NAME
        )))
    }
}

/// Checks the service of a request that names an existing one: its name, and its version when given.
fn check_service(name: &str, version: &str) -> Result<(), Status> {
    check_name("service name", name)?;
    if !version.is_empty() {
        check_name("version", version)?;
    }
    Ok(())
}

fn check_env(pairs: &[String]) -> Result<(), Status> {
    for kv in pairs {
        match kv.split_once('=') {
            Some((k, _)) if valid_env_name(k) => {}
            _ => {
                return Err(Status::invalid_argument(format!(
                    "invalid environment variable {kv:?}: must be of form KEY=VALUE"
                )));
            }
        }
    }
    Ok(())
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_entrypoint(entrypoint: &str) -> Result<(), Status> {
    let path = std::path::Path::new(entrypoint);
    if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Status::invalid_argument(format!(
            "invalid entrypoint {entrypoint:?}: must be a folder inside the source"
        )));
    }
    Ok(())
}

impl RuntimeService {
    fn fetch(&self, source: &str, namespace: &str) -> Result<Fetch, Status> {
        if source.starts_with(UPLOAD_SCHEME) {
            return self.rt.uploads.take(source, namespace).map(Fetch::Upload).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "unknown upload {source}: upload the source again (uploads are used once, and forgotten when the \
                     server restarts)"
                ))
            });
        }
        match GitSource::parse(source) {
            Some(git) => Ok(Fetch::Git(git)),
            None => Err(Status::invalid_argument(format!(
                "invalid source {source:?}: use an upload (source://…, from Source.Upload) or a git URL \
                 host/owner/repo[/folder][@ref]"
            ))),
        }
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogRecord, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeApi for RuntimeService {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let options = req.options.unwrap_or_default();
        let ns = namespace(&caller, &options.namespace)?;
        let account = caller.require_admin(&ns)?.clone();
        let service = req.service.ok_or_else(|| Status::invalid_argument("the service is missing"))?;
        check_name("service name", &service.name)?;
        let version = version_or_latest(&service.version);
        check_name("version", &version)?;
        check_env(&options.env)?;
        check_entrypoint(&options.entrypoint)?;
        if !options.port_env.is_empty() && !valid_env_name(&options.port_env) {
            return Err(Status::invalid_argument(format!("invalid port variable {:?}", options.port_env)));
        }
        if !(0..=MAX_INSTANCES).contains(&options.instances) {
            return Err(Status::invalid_argument(format!("instances must be between 1 and {MAX_INSTANCES}")));
        }
        let fetch = self.fetch(&service.source, &ns)?;
        let mut record = manager::new_record(&ns, &service.name, &version);
        record.source = service.source.clone();
        record.metadata = service.metadata.into_iter().collect();
        record
            .metadata
            .insert("owner".into(), if account.name.is_empty() { account.id.clone() } else { account.name.clone() });
        record.metadata.insert("group".into(), account.issuer.clone());
        if !options.r#type.is_empty() {
            record.metadata.insert("type".into(), options.r#type.clone());
        }
        let command = options.command.join(" ");
        record.program = if command.trim().is_empty() { Program::Cargo } else { Program::Shell(command) };
        record.args = options.args;
        record.env = options.env;
        record.secrets = options.secrets.into_iter().collect();
        record.entrypoint = options.entrypoint.clone();
        if let Fetch::Git(git) = &fetch
            && record.entrypoint.is_empty()
        {
            record.entrypoint = git.folder.clone();
        }
        record.instances = options.instances.max(1) as u32;
        record.port_env = options.port_env;
        tracing::info!(service = %record.name, version = %record.version, source = %record.source, namespace = %ns, "creating a service");
        let build = self.rt.create(record, fetch, options.force).await?;
        Ok(Response::new(CreateResponse { build }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let caller = Caller::of(&request);
        let options = request.into_inner().options.unwrap_or_default();
        let ns = namespace(&caller, &options.namespace)?;
        caller.require_member(&ns)?;
        let mut services: Vec<_> = self
            .rt
            .list(&ns)
            .iter()
            .filter(|s| options.service.is_empty() || s.name == options.service)
            .filter(|s| options.version.is_empty() || s.version == options.version)
            .map(|s| self.rt.message(s))
            .filter(|s| options.r#type.is_empty() || s.metadata.get("type") == Some(&options.r#type))
            .collect();
        services.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(Response::new(ReadResponse { services }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = namespace(&caller, &req.options.unwrap_or_default().namespace)?;
        caller.require_admin(&ns)?;
        let service = req.service.ok_or_else(|| Status::invalid_argument("the service is missing"))?;
        check_service(&service.name, &service.version)?;
        let svc = self.rt.find(&ns, &service.name, &service.version)?;
        tracing::info!(service = %svc.name, version = %svc.version, namespace = %ns, "deleting a service");
        self.rt.delete(&svc).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let options = req.options.unwrap_or_default();
        let ns = namespace(&caller, &options.namespace)?;
        caller.require_admin(&ns)?;
        let service = req.service.ok_or_else(|| Status::invalid_argument("the service is missing"))?;
        check_service(&service.name, &service.version)?;
        let svc = self.rt.find(&ns, &service.name, &service.version)?;
        check_entrypoint(&options.entrypoint)?;
        if !(0..=MAX_INSTANCES).contains(&options.instances) {
            return Err(Status::invalid_argument(format!("instances must be between 1 and {MAX_INSTANCES}")));
        }
        let recorded = svc.record.lock().unwrap_or_else(|e| e.into_inner()).source.clone();
        let fetch = if !service.source.is_empty() {
            self.fetch(&service.source, &ns)?
        } else if let Some(git) = GitSource::parse(&recorded).filter(|_| !recorded.starts_with(UPLOAD_SCHEME)) {
            Fetch::Git(git)
        } else {
            Fetch::Recorded
        };
        let source = service.source.clone();
        let metadata = service.metadata;
        tracing::info!(service = %svc.name, version = %svc.version, namespace = %ns, "updating a service");
        let build = self.rt.update(svc, fetch, move |r| {
            if !source.is_empty() {
                r.source = source;
            }
            for (k, v) in metadata {
                if k != "owner" && k != "group" {
                    r.metadata.insert(k, v);
                }
            }
            if options.instances > 0 {
                r.instances = options.instances as u32;
            }
            if !options.entrypoint.is_empty() {
                r.entrypoint = options.entrypoint;
            }
        });
        Ok(Response::new(UpdateResponse { build }))
    }

    type LogsStream = LogStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = namespace(&caller, &req.options.clone().unwrap_or_default().namespace)?;
        if req.service.is_empty() {
            return Err(Status::invalid_argument("the service is missing"));
        }
        check_service(&req.service, &req.version)?;
        if req.build {
            caller.require_admin(&ns)?;
            let svc = self.rt.find(&ns, &req.service, &req.version)?;
            let deploy = svc
                .deploy(&req.build_id)
                .ok_or_else(|| Status::not_found(format!("{} has no deployment {}", req.service, req.build_id)))?;
            return Ok(Response::new(follow_deploy(deploy, self.rt.ctx.cancel.clone())));
        }
        // Who may read logs is checked before whether they exist: a caller of another namespace learns nothing
        // of this one's services (PERMISSION_DENIED, never NOT_FOUND).
        if server_log_name(&req.service) {
            caller.require_admin(micro_core::DEFAULT_NAMESPACE)?;
        } else {
            caller.require_admin(&ns)?;
        }
        let (path, parse, keep, end): (PathBuf, fn(&str) -> Line, Filter, CancellationToken) =
            match self.rt.find(&ns, &req.service, &req.version) {
                Ok(svc) => {
                    caller.require_admin(&ns)?;
                    (svc.log.path().to_path_buf(), logs::parse_service_line, Filter::All, svc.removed.clone())
                }
                Err(e) if e.code() == tonic::Code::NotFound && server_log_name(&req.service) => {
                    caller.require_admin(micro_core::DEFAULT_NAMESPACE)?;
                    let keep = if req.service == "server" {
                        Filter::All
                    } else {
                        Filter::Target(format!(" micro_server::{}", req.service))
                    };
                    (
                        logs::server_log_path(&self.rt.ctx.data_dir),
                        logs::parse_server_line,
                        keep,
                        self.rt.ctx.cancel.clone(),
                    )
                }
                Err(e) => return Err(e),
            };
        let count = match req.count {
            n if n < 0 => Some(0),
            0 if req.since > 0 => None,
            0 => Some(DEFAULT_TAIL),
            n => Some(n.min(1_000_000) as usize),
        };
        let since = (req.since > 0).then(|| UNIX_EPOCH.checked_add(Duration::from_secs(req.since as u64))).flatten();
        let options = TailOptions { count, since };
        let (tx, rx) = mpsc::channel::<Result<LogRecord, Status>>(256);
        let follow = req.stream;
        let shutdown = self.rt.ctx.cancel.clone();
        self.rt.ctx.tasks.spawn(async move {
            let tail_path = path.clone();
            let tail_keep = keep.clone();
            let tailed =
                tokio::task::spawn_blocking(move || logs::tail(&tail_path, options, &|l| tail_keep.keeps(l))).await;
            let (lines, position) = match tailed {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(Status::internal(format!("cannot read the log: {e}")))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                    return;
                }
            };
            for line in lines {
                if tx.send(Ok(record(parse(&line)))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let mut follower = Some(Follower::new(path, position.offset));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                    _ = end.cancelled() => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                }
                let Some(mut f) = follower.take() else { return };
                let polled = tokio::task::spawn_blocking(move || {
                    let lines = f.poll();
                    (f, lines)
                })
                .await;
                let Ok((f, lines)) = polled else { return };
                follower = Some(f);
                match lines {
                    Ok(lines) => {
                        for line in lines.iter().filter(|l| keep.keeps(l)) {
                            if tx.send(Ok(record(parse(line)))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("cannot read the log: {e}")))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Which lines of a log a read returns.
#[derive(Clone, Debug)]
enum Filter {
    All,
    /// Lines of the server's log from one of its modules (` micro_server::registry`).
    Target(String),
}

impl Filter {
    fn keeps(&self, line: &str) -> bool {
        match self {
            Filter::All => true,
            Filter::Target(t) => line.contains(t.as_str()),
        }
    }
}

/// Names whose logs are the server's: `server`, the core services, the proxy and the gateway.
fn server_log_name(name: &str) -> bool {
    name == "server" || name == "proxy" || name == "gateway" || crate::CORE_NAMES.contains(&name)
}

fn record(line: Line) -> LogRecord {
    let mut metadata = HashMap::new();
    if !line.stream.is_empty() {
        metadata.insert("stream".to_string(), line.stream.clone());
    }
    if let Some(t) = line.time {
        metadata.insert("time".to_string(), humantime::format_rfc3339_micros(t).to_string());
    }
    LogRecord { timestamp: line.unix(), metadata, message: line.text }
}

/// Streams a deployment's records until it ends.
fn follow_deploy(deploy: Arc<Deploy>, shutdown: CancellationToken) -> LogStream {
    let (tx, rx) = mpsc::channel::<Result<LogRecord, Status>>(256);
    tokio::spawn(async move {
        let mut changed = deploy.subscribe();
        let mut next = 0;
        loop {
            let (records, upto, done) = deploy.read(next);
            next = upto;
            for r in records {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::select! {
                c = changed.changed() => if c.is_err() { return },
                _ = shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("the server is stopping"))).await;
                    return;
                }
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl SourceApi for RuntimeService {
    async fn upload(&self, request: Request<Streaming<UploadRequest>>) -> Result<Response<UploadResponse>, Status> {
        let caller = Caller::of(&request);
        let ns = namespace(&caller, "")?;
        caller.require_admin(&ns)?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("the upload is empty"))?;
        let service = first
            .service
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first message of an upload must name the service"))?;
        check_name("service name", &service.name)?;
        let version = version_or_latest(&service.version);
        check_name("version", &version)?;
        let path = self.rt.uploads.new_path().map_err(|e| Status::internal(format!("cannot store the upload: {e}")))?;
        let received = async {
            let mut file = tokio::fs::File::create(&path).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut chunk = Some(first);
            while let Some(message) = chunk {
                size += message.data.len() as u64;
                if size > MAX_UPLOAD {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::FileTooLarge,
                        format!("the source is larger than {} MiB", MAX_UPLOAD >> 20),
                    ));
                }
                hasher.update(&message.data);
                file.write_all(&message.data).await?;
                chunk = stream.message().await.map_err(|s| std::io::Error::other(s.message().to_string()))?;
            }
            file.sync_all().await?;
            Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
        let sha = match received.await {
            Ok(sha) => sha,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(if e.kind() == std::io::ErrorKind::FileTooLarge {
                    Status::resource_exhausted(e.to_string())
                } else {
                    Status::internal(format!("upload failed: {e}"))
                });
            }
        };
        let id = self.rt.uploads.add(&service.name, &version, &ns, path, sha);
        Ok(Response::new(UploadResponse { id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_checks() {
        assert!(check_name("name", "hello-world_1.2").is_ok());
        for bad in ["", ".x", "a/b", "a b", "../x", "a..b", "..", "a\0b", "a\\b", &"a".repeat(129)] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
        assert!(check_name("name", &"a".repeat(128)).is_ok());
        let e = check_name("service name", "../x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("invalid service name \"../x\""), "{}", e.message());
        assert!(check_service("x", "").is_ok() && check_service("x", "v1.2").is_ok());
        assert!(check_service("x", "../v").is_err() && check_service("x/y", "").is_err());
        assert!(check_env(&["A=1".into(), "B_2=x=y".into(), "C=".into()]).is_ok());
        for bad in ["A", "=1", "1A=2", "A-B=1"] {
            assert!(check_env(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(check_entrypoint("a/b").is_ok());
        assert!(check_entrypoint("../a").is_err());
        assert!(check_entrypoint("/a").is_err());
        assert!(server_log_name("server") && server_log_name("registry") && !server_log_name("helloworld"));
    }

    #[test]
    fn namespaces_that_are_not_names_are_refused() {
        let caller = |ns: &str| Caller { namespace: ns.into(), ..Caller::default() };
        assert_eq!(namespace(&caller(""), "").unwrap(), "micro");
        assert_eq!(namespace(&caller("team-1"), "").unwrap(), "team-1");
        assert_eq!(namespace(&caller("team-1"), "other").unwrap(), "other");
        for (from_caller, option) in
            [("../../x", ""), ("", "../../../../x"), ("micro", "/etc"), ("micro", "a/b"), ("x", ".")]
        {
            let e = namespace(&caller(from_caller), option).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{from_caller:?} {option:?}");
            assert!(e.message().starts_with("invalid namespace"), "{}", e.message());
        }
    }
}
