//! The manager: the services the runtime runs, their deployments, and their durable records.
//!
//! A deployment (create, update, or restore after a server restart) fetches the source into a fresh tree, builds it
//! when it is a Rust package, and starts a new [`Generation`] of processes. A create makes the new generation
//! current at once. An update keeps the old generation serving until every new instance is ready, then stops it,
//! so calls never find the service missing; if the new version fails to start, it is stopped and the old one keeps
//! running. Only one deployment of a service runs at a time.

use super::builder::{self, BuildSettings};
use super::contain::Containment;
use super::deploy::Deploy;
use super::logs::{LOG_MAX_BYTES, LogFile};
use super::process::{self, Event, Generation, Launch, RunSpec};
use super::records::{self, Group, Program, Record, Records, Status};
use super::source::{self, GitSource, Upload, Uploads};
use crate::CoreContext;
use micro_core::env;
use micro_core::proto::runtime::Service as ServiceMsg;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status as RpcStatus;

/// How many past deployments of a service keep their output.
const KEEP_DEPLOYS: usize = 4;

/// The runtime's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the runtime keeps trees, binaries, uploads and logs (`<data dir>/runtime`).
    pub root: PathBuf,
    /// The durable records (`<data dir>/runtime.redb`).
    pub records: PathBuf,
    /// How builds run.
    pub build: BuildSettings,
    /// How long a stopped process gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Whether each process runs in a cgroup of its own, when the server can create cgroups (see
    /// [`super::contain`]).
    pub cgroups: bool,
}

/// One managed service.
pub struct Managed {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its record (persisted on every change).
    pub record: Mutex<Record>,
    /// Its log file.
    pub log: Arc<LogFile>,
    /// Cancelled when the service is deleted (or the server stops): ends its deployments, processes and log
    /// followers.
    pub removed: CancellationToken,
    /// Held by the deployment in progress.
    ops: tokio::sync::Mutex<()>,
    deploys: Mutex<VecDeque<Arc<Deploy>>>,
    current: Mutex<Option<Arc<Generation>>>,
    generations: Mutex<Vec<Arc<Generation>>>,
    deleted: AtomicBool,
    /// How many units its last build counted (0: none yet since the server started), the next build's total.
    last_units: AtomicU64,
}

impl Managed {
    /// A deployment by id, or the latest one.
    pub fn deploy(&self, id: &str) -> Option<Arc<Deploy>> {
        let deploys = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
        if id.is_empty() { deploys.back().cloned() } else { deploys.iter().find(|d| d.id == id).cloned() }
    }

    fn add_deploy(&self, deploy: Arc<Deploy>) {
        let mut deploys = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
        deploys.push_back(deploy);
        while deploys.len() > KEEP_DEPLOYS {
            deploys.pop_front();
        }
    }

    /// Whether a version of it runs (or crash-loops): false before its first start, or after its build failed.
    pub fn running(&self) -> bool {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn is_current(&self, generation: &Generation) -> bool {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|g| g.id == generation.id)
    }

    fn snapshot(&self) -> Record {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The runtime: every managed service, and what they share.
pub struct Runtime {
    /// The server's context.
    pub ctx: CoreContext,
    /// Settings.
    pub settings: Settings,
    /// Uploads waiting for a create or update.
    pub uploads: Uploads,
    /// How the processes of services are contained and stopped.
    pub contain: Arc<Containment>,
    records: Arc<Records>,
    write: Arc<Mutex<()>>,
    services: Mutex<BTreeMap<String, Arc<Managed>>>,
    build_lock: tokio::sync::Mutex<()>,
    /// Held while a service is created (or replaced), so that two creates of one name do not race.
    create_lock: tokio::sync::Mutex<()>,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// RFC 3339 of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What a new deployment starts from.
pub enum Fetch {
    /// An uploaded archive.
    Upload(Upload),
    /// A git repository.
    Git(GitSource),
    /// The tree (and binary) the record names: a restore after a server restart.
    Recorded,
}

/// The longest service or version name.
pub const MAX_NAME: usize = 128;

/// A valid service or version name (both become parts of paths): 1 to [`MAX_NAME`] letters, digits, `-`, `_` and
/// `.`, not starting with a dot and without `..`; so no `/`, no NUL.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `path` with `.` and `..` resolved lexically (a `..` at the top stays where it is).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `root` joined with `parts`, each of which must be one plain path component (no `/`, not `.` or `..`, no NUL);
/// an error unless the normalised result is strictly inside the normalised `root`.
pub fn inside(root: &Path, parts: &[&str]) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for part in parts {
        if part.is_empty() || *part == "." || *part == ".." || part.contains(['/', '\0']) {
            return Err(format!("{part:?} cannot be part of a path in the runtime's directory"));
        }
        path.push(part);
    }
    if within(root, &path) { Ok(path) } else { Err(format!("{} is outside {}", path.display(), root.display())) }
}

/// Whether `path`, normalised, is strictly inside `root`, normalised.
pub fn within(root: &Path, path: &Path) -> bool {
    let (root, path) = (normalise(root), normalise(path));
    path != root && path.starts_with(&root) && !path.components().any(|c| c == Component::ParentDir)
}

/// Removes a directory of the runtime (a tree, or binaries) after checking that it is inside `root`; one outside
/// is left alone, with a warning.
fn remove_inside(root: &Path, dir: &Path) {
    if within(root, dir) {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        tracing::warn!(path = %dir.display(), "not removing a directory outside the runtime's");
    }
}

/// Checks that a record (perhaps written by an older server, which did not validate) names a valid namespace, name
/// and version.
fn check_record(record: &Record) -> Result<(), String> {
    micro_core::namespace::validate(&record.namespace).map_err(|e| e.to_string())?;
    for (what, value) in [("service name", &record.name), ("version", &record.version)] {
        if !valid_name(value) {
            return Err(format!("invalid {what} {value:?}"));
        }
    }
    Ok(())
}

impl Runtime {
    /// Opens the runtime's records and returns the runtime (no service started yet: see [`Runtime::restore`]).
    pub async fn open(ctx: CoreContext, settings: Settings) -> Result<Arc<Self>, String> {
        let path = settings.records.clone();
        let records = tokio::task::spawn_blocking(move || Records::open(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let uploads = Uploads::new(settings.root.join("uploads"));
        let contain = Arc::new(Containment::new(&settings.root, settings.cgroups).await);
        tracing::info!(containment = %contain.describe(), "the runtime contains each service's processes");
        ctx.tasks.spawn(contain.clone().reap_orphans(ctx.cancel.clone()));
        Ok(Arc::new(Self {
            ctx,
            settings,
            uploads,
            contain,
            records: Arc::new(records),
            write: Arc::new(Mutex::new(())),
            services: Mutex::new(BTreeMap::new()),
            build_lock: tokio::sync::Mutex::new(()),
            create_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn log_path(&self, namespace: &str, name: &str) -> Result<PathBuf, RpcStatus> {
        inside(&self.settings.root, &["logs", namespace, &format!("{name}.log")]).map_err(RpcStatus::invalid_argument)
    }

    fn managed(&self, record: Record) -> Result<Arc<Managed>, RpcStatus> {
        let log = self.log_path(&record.namespace, &record.name)?;
        Ok(Arc::new(Managed {
            namespace: record.namespace.clone(),
            name: record.name.clone(),
            version: record.version.clone(),
            log: Arc::new(LogFile::new(log, LOG_MAX_BYTES)),
            record: Mutex::new(record),
            removed: self.ctx.cancel.child_token(),
            ops: tokio::sync::Mutex::new(()),
            deploys: Mutex::new(VecDeque::new()),
            current: Mutex::new(None),
            generations: Mutex::new(Vec::new()),
            deleted: AtomicBool::new(false),
            last_units: AtomicU64::new(0),
        }))
    }

    /// Brings back every recorded service (after a server restart): stops what previous servers left running (from
    /// the records, and every process and cgroup this data dir's previous servers marked, see
    /// [`Containment::sweep`]), then starts each service from its recorded build. A service whose last build failed
    /// stays in error. A record with an invalid namespace, name or version (from an older server) is dropped.
    pub async fn restore(self: &Arc<Self>) -> Result<(), String> {
        let records = self.records.clone();
        let all = tokio::task::spawn_blocking(move || records.all())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let leftovers: Vec<Group> = all.iter().flat_map(|r| r.groups.iter().cloned()).collect();
        let mut restored = Vec::new();
        for record in all {
            let managed =
                check_record(&record).map_err(RpcStatus::invalid_argument).and_then(|()| self.managed(record.clone()));
            match managed {
                Ok(svc) => {
                    self.services.lock().unwrap_or_else(|e| e.into_inner()).insert(record.key(), svc.clone());
                    restored.push((record, svc));
                }
                Err(e) => {
                    tracing::warn!(key = %record.key(), error = %e.message(), "dropping an invalid runtime record");
                    let (records, key) = (self.records.clone(), record.key());
                    let _ = tokio::task::spawn_blocking(move || records.delete(&key)).await;
                }
            }
        }
        let rt = self.clone();
        self.ctx.tasks.spawn(async move {
            rt.contain.sweep(&leftovers, rt.settings.grace).await;
            for (record, svc) in restored {
                svc.record.lock().unwrap_or_else(|e| e.into_inner()).groups.clear();
                let failed_build = record.program == Program::Cargo
                    && record.status == Status::Error
                    && record.binary.is_none()
                    && record.tree.is_some();
                if record.tree.is_none() || failed_build {
                    if record.tree.is_none() {
                        rt.set_error(&svc, "its source was not kept when the server stopped: run it again".into());
                    }
                    continue;
                }
                let deploy = Arc::new(Deploy::new(record.build.clone()));
                svc.add_deploy(deploy.clone());
                let deploying = rt.clone();
                rt.ctx.tasks.spawn(async move { deploying.deploy(svc, deploy, Fetch::Recorded, false).await });
            }
        });
        Ok(())
    }

    /// Writes a service's record (its latest state) durably, in the background. Nothing is written once the server
    /// is stopping: what stops then must come back on the next start.
    pub fn persist(&self, svc: &Arc<Managed>) {
        if self.ctx.cancel.is_cancelled() {
            return;
        }
        let (records, write, svc) = (self.records.clone(), self.write.clone(), svc.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = write.lock().unwrap_or_else(|e| e.into_inner());
            if svc.deleted.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = records.put(&svc.snapshot()) {
                tracing::error!(service = %svc.name, error = %e, "cannot save a runtime record");
            }
        });
    }

    fn update_record(&self, svc: &Arc<Managed>, change: impl FnOnce(&mut Record)) {
        {
            let mut record = svc.record.lock().unwrap_or_else(|e| e.into_inner());
            let before = (record.status, record.error.clone());
            change(&mut record);
            if (record.status, &record.error) != (before.0, &before.1) {
                record.updated_ms = now_ms();
            }
        }
        self.persist(svc);
    }

    fn set_status(&self, svc: &Arc<Managed>, status: Status) {
        self.update_record(svc, |r| {
            r.status = status;
            r.error.clear();
        });
    }

    fn set_error(&self, svc: &Arc<Managed>, error: String) {
        self.update_record(svc, |r| {
            r.status = Status::Error;
            r.error = error;
        });
    }

    /// Recomputes a service's status from its current generation (other generations do not count).
    pub fn refresh(&self, svc: &Arc<Managed>, generation: &Generation) {
        if !svc.is_current(generation) || self.ctx.cancel.is_cancelled() {
            return;
        }
        let (status, error) = generation.status();
        let changed = {
            let r = svc.record.lock().unwrap_or_else(|e| e.into_inner());
            r.status != status || r.error != error
        };
        if changed {
            self.update_record(svc, |r| {
                r.status = status;
                r.error = error;
            });
        }
    }

    /// Counts a restart of a process of the current generation.
    pub fn restarted(&self, svc: &Arc<Managed>, generation: &Generation) {
        if svc.is_current(generation) {
            self.update_record(svc, |r| r.restarts += 1);
        }
    }

    /// Remembers a process and what finds its descendants, to stop them after a server crash.
    pub fn add_group(&self, svc: &Arc<Managed>, group: Group) {
        self.update_record(svc, |r| r.groups.push(group));
    }

    /// Forgets a process whose descendants are all gone.
    pub fn remove_group(&self, svc: &Arc<Managed>, group: &Group) {
        self.update_record(svc, |r| r.groups.retain(|g| g != group));
    }

    /// The services of a namespace.
    pub fn list(&self, namespace: &str) -> Vec<Arc<Managed>> {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.values().filter(|s| s.namespace == namespace).cloned().collect()
    }

    /// A service by name and version (empty: the only version, else `latest`).
    pub fn find(&self, namespace: &str, name: &str, version: &str) -> Result<Arc<Managed>, RpcStatus> {
        let matching: Vec<Arc<Managed>> = self
            .list(namespace)
            .into_iter()
            .filter(|s| s.name == name && (version.is_empty() || s.version == version))
            .collect();
        match matching.len() {
            0 => Err(not_found(name, version)),
            1 => Ok(matching[0].clone()),
            _ => matching.iter().find(|s| s.version == "latest").cloned().ok_or_else(|| {
                let versions: Vec<&str> = matching.iter().map(|s| s.version.as_str()).collect();
                RpcStatus::invalid_argument(format!(
                    "{name} runs in several versions ({}): name one as {name}@<version>",
                    versions.join(", ")
                ))
            }),
        }
    }

    /// Records a new service and starts its deployment; returns the deployment's id.
    pub async fn create(self: &Arc<Self>, mut record: Record, fetch: Fetch, force: bool) -> Result<String, RpcStatus> {
        let _one_at_a_time = self.create_lock.lock().await;
        if let Ok(existing) = self.find(&record.namespace, &record.name, &record.version)
            && existing.version == record.version
        {
            // A service that never started (its build failed) is simply replaced: running it again is the fix.
            let idle = !existing.running() && existing.deploy("").is_none_or(|d| d.outcome().is_some());
            if !force && !idle {
                return Err(RpcStatus::already_exists(format!(
                    "service {} ({}) already exists: update it with `micro update`, or replace it with --force",
                    record.name, record.version
                )));
            }
            self.delete(&existing).await?;
        }
        let account = self.service_account(&record.namespace, &record.name, &record.version).await?;
        record.account_id = account.0;
        record.account_secret = account.1;
        let svc = self.managed(record.clone())?;
        {
            let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
            if services.contains_key(&record.key()) {
                return Err(RpcStatus::already_exists(format!("service {} is being created", record.name)));
            }
            services.insert(record.key(), svc.clone());
        }
        self.persist(&svc);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let deploy = Arc::new(Deploy::new(id.clone()));
        svc.add_deploy(deploy.clone());
        svc.log.line("runtime", &format!("creating {} ({}) from {}", record.name, record.version, record.source));
        let rt = self.clone();
        self.ctx.tasks.spawn(async move { rt.deploy(svc, deploy, fetch, false).await });
        Ok(id)
    }

    /// Starts an update of `svc` from `fetch`; returns the deployment's id.
    pub fn update(self: &Arc<Self>, svc: Arc<Managed>, fetch: Fetch, change: impl FnOnce(&mut Record)) -> String {
        self.update_record(&svc, change);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let deploy = Arc::new(Deploy::new(id.clone()));
        svc.add_deploy(deploy.clone());
        svc.log.line("runtime", &format!("updating {} ({})", svc.name, svc.version));
        let rt = self.clone();
        self.ctx.tasks.spawn(async move { rt.deploy(svc, deploy, fetch, true).await });
        id
    }

    /// Stops a service's processes, deletes its record, account, trees and binaries. Its log is kept.
    pub async fn delete(&self, svc: &Arc<Managed>) -> Result<(), RpcStatus> {
        svc.removed.cancel();
        svc.log.line("runtime", &format!("deleting {} ({})", svc.name, svc.version));
        // Wait for the deployment in progress to give up, and for every process to stop.
        let _op = svc.ops.lock().await;
        let generations: Vec<Arc<Generation>> =
            std::mem::take(&mut *svc.generations.lock().unwrap_or_else(|e| e.into_inner()));
        for generation in generations {
            generation.stop().await;
        }
        self.services.lock().unwrap_or_else(|e| e.into_inner()).remove(&svc.snapshot().key());
        let record = svc.snapshot();
        let (records, write, auth, svc2) =
            (self.records.clone(), self.write.clone(), self.ctx.auth.clone(), svc.clone());
        let dirs = [self.tree_root(&record)?, self.bin_root(&record)?, self.src_root(&record)?];
        let root = self.settings.root.clone();
        tokio::task::spawn_blocking(move || {
            {
                let _guard = write.lock().unwrap_or_else(|e| e.into_inner());
                svc2.deleted.store(true, Ordering::Release);
                records.delete(&record.key()).map_err(|e| RpcStatus::internal(e.to_string()))?;
            }
            if !record.account_id.is_empty() {
                let _ = auth.delete_account(&record.namespace, &record.account_id);
            }
            for dir in dirs {
                remove_inside(&root, &dir);
            }
            Ok::<(), RpcStatus>(())
        })
        .await
        .map_err(|e| RpcStatus::internal(e.to_string()))??;
        svc.log.line("runtime", "deleted");
        Ok(())
    }

    /// Where the trees of a service's deployments go: `trees/<namespace>/<name>@<version>`, checked to be inside
    /// the runtime's directory.
    fn tree_root(&self, r: &Record) -> Result<PathBuf, RpcStatus> {
        inside(&self.settings.root, &["trees", &r.namespace, &format!("{}@{}", r.name, r.version)])
            .map_err(RpcStatus::invalid_argument)
    }

    /// The stable source directory the service is built in: `src/<namespace>/<name>@<version>` (see
    /// [`super::mirror`]), checked likewise.
    fn src_root(&self, r: &Record) -> Result<PathBuf, RpcStatus> {
        inside(&self.settings.root, &["src", &r.namespace, &format!("{}@{}", r.name, r.version)])
            .map_err(RpcStatus::invalid_argument)
    }

    /// Where the binaries of a service's deployments go: `bin/<namespace>/<name>@<version>`, checked likewise.
    fn bin_root(&self, r: &Record) -> Result<PathBuf, RpcStatus> {
        inside(&self.settings.root, &["bin", &r.namespace, &format!("{}@{}", r.name, r.version)])
            .map_err(RpcStatus::invalid_argument)
    }

    /// Creates the service account of a service (`<name>-<version>`, type `service`, scope `service:<name>`, issued by the
    /// namespace), replacing one left from an earlier run; returns its id and secret. When other servers share the
    /// accounts, the id gets a random suffix, so that a server running the same service never replaces the
    /// account (and so the credentials) of another server's copy.
    async fn service_account(&self, namespace: &str, name: &str, version: &str) -> Result<(String, String), RpcStatus> {
        let auth = self.ctx.auth.clone();
        let id = if auth.is_shared() {
            format!("{name}-{version}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            format!("{name}-{version}")
        };
        let namespace = namespace.to_string();
        let scope = format!("service:{name}");
        tokio::task::spawn_blocking(move || {
            if let Some(existing) = auth.account(&namespace, &id) {
                if existing.r#type != "service" {
                    return Err(RpcStatus::already_exists(format!(
                        "the account {id} exists and is not a service account: delete it, or give the service another name"
                    )));
                }
                auth.delete_account(&namespace, &id)?;
            }
            let mut metadata = HashMap::new();
            metadata.insert("runtime".to_string(), "true".to_string());
            // Rights for its own service only (registering it, and what any account of the namespace may do),
            // not the `service` scope, which administers the whole namespace.
            let account =
                auth.create_account(&namespace, &id, &id, "service", vec![scope], metadata, "")?;
            Ok((account.id, account.secret))
        })
        .await
        .map_err(|e| RpcStatus::internal(e.to_string()))?
    }

    /// Runs a deployment to its end and records its outcome in `deploy`.
    async fn deploy(self: Arc<Self>, svc: Arc<Managed>, deploy: Arc<Deploy>, fetch: Fetch, update: bool) {
        let _op = svc.ops.lock().await;
        if svc.removed.is_cancelled() {
            deploy.finish(Err("the service was deleted".into()));
            return;
        }
        let outcome = tokio::select! {
            outcome = self.clone().deploy_inner(&svc, &deploy, fetch, update) => outcome,
            _ = svc.removed.cancelled() => Err(if self.ctx.cancel.is_cancelled() {
                "the server is stopping".to_string()
            } else {
                "the service was deleted".to_string()
            }),
        };
        match &outcome {
            Ok(()) => svc.log.line("runtime", &format!("{} is running", svc.name)),
            Err(e) => {
                // The compiler's warnings and errors go to the service's log (`micro logs`), as the build saw them.
                for line in deploy.diagnostics() {
                    svc.log.line("build", &line);
                }
                svc.log.line("runtime", e.lines().next().unwrap_or_default());
                if !update && !svc.removed.is_cancelled() && !svc.running() {
                    self.set_error(&svc, e.clone());
                } else if update && !svc.removed.is_cancelled() {
                    // The previous version keeps serving; `micro status` says why the new one is not.
                    self.update_record(&svc, |r| r.error = format!("update failed: {e}"));
                }
            }
        }
        deploy.finish(outcome);
    }

    async fn deploy_inner(
        self: Arc<Self>,
        svc: &Arc<Managed>,
        deploy: &Arc<Deploy>,
        fetch: Fetch,
        update: bool,
    ) -> Result<(), String> {
        let record = svc.snapshot();
        let restore = matches!(fetch, Fetch::Recorded);
        let (tree, build_id) = match fetch {
            Fetch::Recorded => {
                let tree = record.tree.clone().ok_or("its source was not kept")?;
                let tree = std::path::absolute(&tree).unwrap_or(tree);
                if !within(&self.settings.root, &tree) {
                    return Err(format!("its recorded tree {} is outside the runtime's directory", tree.display()));
                }
                (tree, record.build.clone())
            }
            Fetch::Upload(upload) => {
                deploy.line(format!("Unpacking the source of {}", svc.name));
                let tree = self.tree_root(&record).map_err(|e| e.message().to_string())?.join(&deploy.id);
                let (archive, dest) = (upload.path.clone(), tree.clone());
                tokio::task::spawn_blocking(move || {
                    let unpacked = source::unpack(&archive, &dest);
                    let _ = std::fs::remove_file(&archive);
                    unpacked
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot unpack the source: {e}"))?;
                (tree, upload.sha.chars().take(12).collect())
            }
            Fetch::Git(git) => {
                deploy.line(format!("Cloning {}", git.url()));
                let tree = self.tree_root(&record).map_err(|e| e.message().to_string())?.join(&deploy.id);
                if let Some(parent) = tree.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                let commit = source::clone(&git, &tree).await?;
                deploy.line(format!("Cloned {} at {commit}", git.url()));
                (tree, commit.chars().take(12).collect())
            }
        };
        if !update && !restore {
            self.update_record(svc, |r| {
                r.tree = Some(tree.clone());
                r.build = build_id.clone();
            });
        }
        let cleanup_new = |rt: &Runtime| {
            if !restore {
                remove_inside(&rt.settings.root, &tree);
                if let Ok(bin) = rt.bin_root(&record) {
                    remove_inside(&rt.settings.root, &bin.join(&deploy.id));
                }
            }
        };
        let entry = if record.entrypoint.is_empty() { tree.clone() } else { tree.join(&record.entrypoint) };
        if !entry.is_dir() {
            if update {
                cleanup_new(&self);
            }
            return Err(format!("the source has no folder {}", record.entrypoint));
        }
        // The entrypoint has no `..` (checked by the service), but a symlink of the source could lead elsewhere.
        let inside_tree = match (entry.canonicalize(), tree.canonicalize()) {
            (Ok(entry), Ok(tree)) => entry.starts_with(tree),
            _ => false,
        };
        if !inside_tree {
            if update {
                cleanup_new(&self);
            }
            return Err(format!("the folder {} leads outside the source", record.entrypoint));
        }
        let (launch, registers) = match &record.program {
            Program::Shell(line) => (Launch::Shell(line.clone()), false),
            Program::Cargo => {
                let recorded = record.binary.clone().filter(|b| restore && b.is_file());
                let binary = match recorded {
                    Some(b) => b,
                    None => match self.build(svc, deploy, &tree, &entry, &record, update).await {
                        Ok(b) => b,
                        Err(e) => {
                            if update {
                                cleanup_new(&self);
                            }
                            return Err(e);
                        }
                    },
                };
                (Launch::Binary(binary), true)
            }
        };
        let binary = match &launch {
            Launch::Binary(b) => Some(b.clone()),
            Launch::Shell(_) => None,
        };
        if !update {
            self.update_record(svc, |r| {
                r.binary = binary.clone();
                r.workdir = Some(entry.clone());
                r.status = Status::Starting;
                r.error.clear();
                if !restore {
                    r.started_ms = now_ms();
                    r.restarts = 0;
                }
            });
        }
        let spec = Arc::new(self.spec(&record, launch, entry.clone(), registers));
        let generation = Generation::new(deploy.id.clone(), svc.removed.child_token(), spec.instances);
        svc.generations.lock().unwrap_or_else(|e| e.into_inner()).push(generation.clone());
        if !update {
            *svc.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(generation.clone());
        }
        deploy.line(format!(
            "Starting {} ({} instance{})",
            svc.name,
            spec.instances,
            if spec.instances == 1 { "" } else { "s" }
        ));
        let (tx, mut rx) = mpsc::unbounded_channel();
        process::start(&self, svc, &generation, spec.clone(), tx);
        let mut ready = 0;
        let outcome = loop {
            match rx.recv().await {
                Some(Event::Ready(_)) => {
                    ready += 1;
                    if ready >= spec.instances.max(1) {
                        break Ok(());
                    }
                }
                Some(Event::Failed(n, e)) => {
                    let tail = self.last_lines(svc, 5);
                    let mut msg = if spec.instances > 1 { format!("instance {} {e}", n + 1) } else { e };
                    if !tail.is_empty() {
                        msg.push_str(&format!("; its last output:\n{}", tail.join("\n")));
                    }
                    break Err(msg);
                }
                None => break Err("its processes stopped".into()),
            }
        };
        if !update {
            return outcome;
        }
        match outcome {
            Ok(()) => {
                let old = svc.current.lock().unwrap_or_else(|e| e.into_inner()).replace(generation.clone());
                let (status, _) = generation.status();
                let old_record = svc.snapshot();
                self.update_record(svc, |r| {
                    r.status = status;
                    r.error.clear();
                    r.restarts = 0;
                    r.started_ms = now_ms();
                    r.updated_ms = now_ms();
                    r.build = build_id.clone();
                    r.tree = Some(tree.clone());
                    r.binary = binary.clone();
                    r.workdir = Some(entry.clone());
                });
                if let Some(old) = old {
                    deploy.line(format!("Stopping the previous version of {}", svc.name));
                    old.stop().await;
                    svc.generations.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| g.id != old.id);
                }
                // The previous tree and binary are no longer used.
                let mut unused = Vec::new();
                if let Some(t) = old_record.tree.filter(|t| *t != tree) {
                    unused.push(t);
                }
                if let Some(dir) = old_record.binary.as_deref().and_then(Path::parent)
                    && binary.as_deref().and_then(Path::parent) != Some(dir)
                {
                    unused.push(dir.to_path_buf());
                }
                let root = self.settings.root.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for dir in unused {
                        remove_inside(&root, &dir);
                    }
                })
                .await;
                Ok(())
            }
            Err(e) => {
                generation.stop().await;
                svc.generations.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| g.id != generation.id);
                cleanup_new(&self);
                Err(format!("the new version {e}; the previous version keeps running"))
            }
        }
    }

    /// Builds the Rust package in `entry` (a folder of `tree`) and keeps its binary; returns the binary's path.
    /// The build runs in the service's stable source directory, which mirrors `tree` first.
    async fn build(
        &self,
        svc: &Arc<Managed>,
        deploy: &Deploy,
        tree: &Path,
        entry: &Path,
        record: &Record,
        update: bool,
    ) -> Result<PathBuf, String> {
        if !update {
            self.set_status(svc, Status::Building);
        }
        let stable = self.src_root(record).map_err(|e| e.message().to_string())?;
        let folder = entry.strip_prefix(tree).map_err(|_| format!("{} is outside the source", entry.display()))?;
        let (from, to) = (tree.to_path_buf(), stable.clone());
        let mirrored = tokio::task::spawn_blocking(move || super::mirror::mirror(&from, &to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot copy the source to {}: {e}", stable.display()))?;
        tracing::debug!(service = %svc.name, ?mirrored, "mirrored the source for the build");
        let package = source::inspect(&stable.join(folder)).await?;
        deploy.line(format!(
            "Building {} with cargo (profile {}, target dir {})",
            package.name,
            self.settings.build.profile,
            self.settings.build.target_dir.display()
        ));
        let _one_at_a_time = self.build_lock.lock().await;
        let last = Some(svc.last_units.load(Ordering::Relaxed));
        let built = builder::build(&self.settings.build, &package, last, deploy).await;
        if built.is_ok() {
            svc.last_units.store(deploy.units(), Ordering::Relaxed);
        }
        let built = built?;
        deploy.starting();
        let bin_root = self.bin_root(record).map_err(|e| e.message().to_string())?;
        let dest = inside(&bin_root, &[&deploy.id, &package.bin])
            .map_err(|e| format!("cannot keep the binary {}: {e}", package.bin))?;
        let (from, to) = (built.clone(), dest.clone());
        tokio::task::spawn_blocking(move || builder::keep_binary(&from, &to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot keep the binary {}: {e}", built.display()))?;
        Ok(dest)
    }

    fn spec(&self, record: &Record, launch: Launch, workdir: PathBuf, registers: bool) -> RunSpec {
        // A TLS proxy's CA comes first, so that the service's own `MICRO_CA_CERT` (`--env_vars`) wins.
        let mut env: Vec<(String, String)> =
            self.ctx.proxy_ca.iter().map(|ca| (env::MICRO_CA_CERT.to_string(), ca.display().to_string())).collect();
        env.extend(record.env.iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))));
        env.extend(record.secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut proxy = self.ctx.proxy_address;
        if proxy.ip().is_unspecified() {
            proxy.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        // The proxy's scheme: a TLS proxy is reached over TLS only.
        let proxy = match self.ctx.proxy_ca {
            Some(_) => format!("https://{proxy}"),
            None => proxy.to_string(),
        };
        for (k, v) in [
            (env::MICRO_PROXY, proxy),
            (env::MICRO_SERVICE_NAME, record.name.clone()),
            (env::MICRO_SERVICE_VERSION, record.version.clone()),
            (env::MICRO_NAMESPACE, record.namespace.clone()),
            (env::MICRO_AUTH_ID, record.account_id.clone()),
            (env::MICRO_AUTH_SECRET, record.account_secret.clone()),
        ] {
            env.push((k.to_string(), v));
        }
        RunSpec {
            launch,
            args: record.args.clone(),
            workdir,
            env,
            port_env: Some(record.port_env.clone()).filter(|p| !p.is_empty()),
            instances: record.instances.max(1),
            registers,
            grace: self.settings.grace,
        }
    }

    /// The last `n` lines a service wrote (stdout and stderr), for error messages.
    fn last_lines(&self, svc: &Managed, n: usize) -> Vec<String> {
        let keep = |line: &str| {
            let parsed = super::logs::parse_service_line(line);
            parsed.stream.starts_with("stdout") || parsed.stream.starts_with("stderr")
        };
        let options = super::logs::TailOptions { count: Some(n), since: None };
        super::logs::tail(svc.log.path(), options, &keep)
            .map(|(lines, _)| lines.iter().map(|l| super::logs::parse_service_line(l).text).collect())
            .unwrap_or_default()
    }

    /// A service as the Runtime API shows it.
    pub fn message(&self, svc: &Managed) -> ServiceMsg {
        let r = svc.snapshot();
        let mut metadata: HashMap<String, String> = r.metadata.clone().into_iter().collect();
        metadata.insert("started".into(), rfc3339(r.started_ms.max(r.created_ms)));
        metadata.insert("updated".into(), rfc3339(r.updated_ms.max(r.created_ms)));
        metadata.insert("created".into(), rfc3339(r.created_ms));
        if !r.build.is_empty() {
            metadata.insert("build".into(), r.build.clone());
        }
        metadata.insert("restarts".into(), r.restarts.to_string());
        metadata.insert("instances".into(), r.instances.to_string());
        if !r.error.is_empty() && (r.status == Status::Error || r.error.starts_with("update failed")) {
            metadata.insert("error".into(), r.error.clone());
        }
        // A deployment in progress: what it does and since when (`micro status` shows `building 12s`).
        if let Some(deploy) = svc.deploy("")
            && let Some(stage) = deploy.stage()
        {
            metadata.insert("deploy".into(), if stage == "build" { "building" } else { "starting" }.into());
            metadata.insert("deploy_elapsed_ms".into(), deploy.began.elapsed().as_millis().to_string());
        }
        ServiceMsg {
            name: r.name,
            version: r.version,
            source: r.metadata.get("source").cloned().unwrap_or(r.source),
            metadata,
            status: r.status.code(),
        }
    }
}

fn not_found(name: &str, version: &str) -> RpcStatus {
    let what = if version.is_empty() { name.to_string() } else { format!("{name}@{version}") };
    RpcStatus::not_found(format!("service {what} is not run by the runtime"))
}

/// A new record, before its first deployment.
pub fn new_record(namespace: &str, name: &str, version: &str) -> Record {
    let now = now_ms();
    Record {
        namespace: namespace.into(),
        name: name.into(),
        version: version.into(),
        source: String::new(),
        metadata: BTreeMap::new(),
        program: Program::Cargo,
        args: Vec::new(),
        env: Vec::new(),
        secrets: BTreeMap::new(),
        entrypoint: String::new(),
        instances: 1,
        port_env: String::new(),
        status: Status::Pending,
        error: String::new(),
        restarts: 0,
        created_ms: now,
        started_ms: now,
        updated_ms: now,
        build: String::new(),
        tree: None,
        workdir: None,
        binary: None,
        account_id: String::new(),
        account_secret: String::new(),
        groups: Vec::new(),
    }
}

/// The key of a record (re-exported for the service).
pub fn key(namespace: &str, name: &str, version: &str) -> String {
    records::key(namespace, name, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_requests_stay_inside_the_root() {
        let root = Path::new("/data/runtime");
        assert_eq!(inside(root, &["logs", "micro", "x.log"]).unwrap(), Path::new("/data/runtime/logs/micro/x.log"));
        for bad in [&["logs", "../../x"][..], &["trees", ".."], &["a/b"], &["."], &[""], &["x\0y"], &[]] {
            assert!(inside(root, bad).is_err(), "{bad:?}");
        }
        assert!(within(root, Path::new("/data/runtime/trees/micro/x@latest/1")));
        for outside in ["/data/runtime", "/data/runtime/../x", "/data/runtime/trees/../../x", "/data", "/etc", "x"] {
            assert!(!within(root, Path::new(outside)), "{outside}");
        }
        assert!(valid_name("a.b-c_1") && !valid_name("a..b") && !valid_name(".a") && !valid_name(&"a".repeat(129)));
        let mut record = new_record("../../x", "name", "latest");
        assert!(check_record(&record).unwrap_err().contains("invalid namespace"));
        record.namespace = "micro".into();
        assert!(check_record(&record).is_ok());
        record.version = "../v".into();
        assert!(check_record(&record).unwrap_err().contains("invalid version"));
    }
}
