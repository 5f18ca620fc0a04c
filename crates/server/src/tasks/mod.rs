//! The tasks service: schedules, and a durable task queue with at-least-once delivery (SpaceONE's scheduler and
//! worker servers, with acks, retries and a dead state). The wire contract is `proto/micro/tasks/tasks.proto`.
//!
//! State lives behind [`store::TaskStore`]: `tasks.redb` in the data dir ([`redb`]), or PostgreSQL when the
//! server's store is there ([`postgres`], cargo feature `postgres`), so that servers sharing a database share
//! schedules and the queue.
//!
//! Three kinds of background work run on the server (see [`start`]):
//! - the **scheduler** sleeps until the earliest `next_ms` of the schedules (woken early when a schedule changes;
//!   with a shared database also when another server announces a change, and every second), and fires each due
//!   schedule: its `next_ms` moves on and its task is queued in one transaction that checks `next_ms` was not
//!   moved already, so with several servers a firing happens once. Firings missed while no server ran are not
//!   replayed: a late schedule fires once, and its timetable continues from then;
//! - **stage runners** (`--tasks-concurrency`, default 4) lease the tasks that have stages and call each stage
//!   through the proxy as the task's owner (a short-lived access token of the owner's account), in order; the
//!   first failure ends the attempt. Each stage's result is kept, its response cut at [`MAX_RESPONSE`];
//! - a **sweeper** returns tasks whose lease expired to the queue (the attempt counts; a task out of retries is
//!   dead with the error `lease expired`), and deletes finished tasks older than the retention
//!   (`--tasks-retention`, default 7 days).
//!
//! A failed attempt is retried after `backoff_ms · 2^(attempts-1)`, up to `retries` times; then the task is dead
//! and keeps its last error. On the embedded store the server is the only runner of its stage tasks, so at
//! start it queues again at once the ones it was running when it stopped (on PostgreSQL, another server may be
//! running them: their leases expire instead). Workers' tasks always come back when their lease expires.
//!
//! A schedule's `retries` and `backoff_ms` of 0 mean the defaults (3 and 1 s), as the contract says (`micro tasks
//! schedule` asks for at least one retry); `Enqueue` takes an explicit 0 retries.

#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redb;
pub mod service;
pub mod store;
pub mod timetable;

use crate::auth::Auth;
use crate::gateway::{ProxyTransport, resolve};
use crate::proxy::Proxy;
use crate::registry::MemoryRegistry;
use crate::{CoreContext, ServerError};
use micro_core::proto::tasks::{Schedule, Stage, StageResult, State, Task};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::{Claim, Outcome, Pick, TaskError, TaskStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The database file in the data dir.
pub const DB_FILE: &str = "tasks.redb";
/// The longest response of a stage kept in its result (64 KiB); longer ones are cut and marked `truncated`.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// How long one stage's call may take.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The lease of a stage runner, renewed while the stages run.
const RUNNER_LEASE: Duration = Duration::from_secs(30);
/// How often the sweeper looks for expired leases.
const SWEEP: Duration = Duration::from_millis(250);
/// How often finished tasks past the retention are deleted.
const PURGE: Duration = Duration::from_secs(60);
/// With a shared database, how often the scheduler and runners look for what other servers did.
const SHARED_POLL: Duration = Duration::from_secs(1);
/// On the embedded store, the longest a loop sleeps without being woken (a safety net).
const LOCAL_POLL: Duration = Duration::from_secs(30);
/// Default retries of a task.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default first backoff.
pub const DEFAULT_BACKOFF_MS: u64 = 1000;

/// Settings of the tasks service.
#[derive(Clone, Debug)]
pub struct TasksConfig {
    /// How many stage tasks the server runs at once (`--tasks-concurrency`).
    pub concurrency: usize,
    /// How long finished tasks are kept (`--tasks-retention`).
    pub retention: Duration,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self { concurrency: 4, retention: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Starts the tasks service (its store and background work) and adds its gRPC service to `routes`. The returned
/// handle must be given the proxy ([`Tasks::set_proxy`]) before stages can run.
pub async fn start(
    ctx: &CoreContext,
    location: &crate::state::Location,
    config: &TasksConfig,
    routes: &mut tonic::service::RoutesBuilder,
) -> Result<Arc<Tasks>, ServerError> {
    let start_error = |message: String| ServerError::Start { service: "tasks", message };
    let (store, shared): (Arc<dyn TaskStore>, bool) = match location {
        crate::state::Location::DataDir => {
            let path = ctx.data_dir.join(DB_FILE);
            let db = tokio::task::spawn_blocking(move || redb::RedbTasks::open(&path))
                .await
                .map_err(|e| start_error(e.to_string()))?
                .map_err(|e| start_error(e.to_string()))?;
            (Arc::new(db), false)
        }
        #[cfg(feature = "postgres")]
        crate::state::Location::Postgres(url) => {
            let url = url.clone();
            let db = tokio::task::spawn_blocking(move || postgres::PgTasks::open(&url))
                .await
                .map_err(|e| start_error(e.to_string()))?
                .map_err(|e| start_error(e.to_string()))?;
            (Arc::new(db), true)
        }
    };
    let tasks = Tasks::new(store, shared, ctx, config.clone());
    if !shared {
        // This server was the only runner of its stage tasks: the ones it was running when it stopped run again.
        let s = tasks.store.clone();
        tokio::task::spawn_blocking(move || s.release_stages(now_ms()))
            .await
            .map_err(|e| start_error(e.to_string()))?
            .map_err(|e| start_error(e.to_string()))?;
    }
    #[cfg(feature = "postgres")]
    if shared {
        // Other servers' changes wake this one's runners, leases and scheduler.
        let weak = Arc::downgrade(&tasks);
        let changed: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(tasks) = weak.upgrade() {
                tasks.wake_queue();
                tasks.wake_scheduler();
            }
        });
        ctx.tasks.spawn(crate::state::listen(location.clone(), postgres::ANNOUNCE_AREA, changed, ctx.cancel.clone()));
    }
    tasks.spawn_background(ctx);
    routes.add_service(service::TasksService::new(tasks.clone()).server());
    Ok(tasks)
}

/// The tasks core: storage, wake-ups, and what stage runners need.
pub struct Tasks {
    store: Arc<dyn TaskStore>,
    /// Whether other servers share the store.
    shared: bool,
    /// Bumped when a task is queued or comes back (wakes runners and waiting leases).
    queued: watch::Sender<u64>,
    /// Bumped when a schedule changes (wakes the scheduler).
    scheduled: watch::Sender<u64>,
    /// The proxy that stages are called through; dropped at shutdown (it holds the core services).
    proxy: Mutex<Option<Proxy>>,
    auth: Arc<Auth>,
    registry: Arc<MemoryRegistry>,
    config: TasksConfig,
    cancel: CancellationToken,
    /// This server's id, in its runners' worker names.
    server: String,
    /// Owners' access tokens: (namespace, owner) → (token, valid until, Unix ms).
    tokens: Mutex<HashMap<(String, String), (String, i64)>>,
}

impl Tasks {
    fn new(store: Arc<dyn TaskStore>, shared: bool, ctx: &CoreContext, config: TasksConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            shared,
            queued: watch::Sender::new(0),
            scheduled: watch::Sender::new(0),
            proxy: Mutex::new(None),
            auth: ctx.auth.clone(),
            registry: ctx.registry.clone(),
            config,
            cancel: ctx.cancel.clone(),
            server: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Gives the runners the proxy to call stages through. It is dropped when the server shuts down.
    pub fn set_proxy(&self, proxy: Proxy) {
        if !self.cancel.is_cancelled() {
            *self.proxy.lock().unwrap_or_else(|e| e.into_inner()) = Some(proxy);
        }
    }

    fn poll(&self) -> Duration {
        if self.shared { SHARED_POLL } else { LOCAL_POLL }
    }

    /// Runs a store operation off the async workers.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn TaskStore) -> Result<T, TaskError> + Send + 'static,
    ) -> Result<T, TaskError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .map_err(|e| TaskError::Storage(format!("a storage thread failed: {e}")))?
    }

    /// Wakes the runners and waiting leases: a task is queued.
    pub(crate) fn wake_queue(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes the scheduler: schedules changed.
    pub(crate) fn wake_scheduler(&self) {
        self.scheduled.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver of queue wake-ups.
    pub(crate) fn queue_changes(&self) -> watch::Receiver<u64> {
        self.queued.subscribe()
    }

    fn spawn_background(self: &Arc<Self>, ctx: &CoreContext) {
        ctx.tasks.spawn(self.clone().scheduler());
        for i in 0..self.config.concurrency.max(1) {
            ctx.tasks.spawn(self.clone().runner(i));
        }
        ctx.tasks.spawn(self.clone().sweeper());
        let me = self.clone();
        ctx.tasks.spawn(async move {
            me.cancel.cancelled().await;
            me.proxy.lock().unwrap_or_else(|e| e.into_inner()).take();
        });
    }

    async fn scheduler(self: Arc<Self>) {
        let mut changes = self.scheduled.subscribe();
        loop {
            changes.borrow_and_update();
            let now = now_ms();
            let mut wake = now + self.poll().as_millis() as i64;
            match self.run(|s| s.schedules(None)).await {
                Ok(schedules) => {
                    for schedule in schedules {
                        let next = if schedule.next_ms <= now {
                            self.fire(schedule, now).await
                        } else {
                            Some(schedule.next_ms)
                        };
                        if let Some(next) = next {
                            wake = wake.min(next);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the tasks scheduler cannot read the schedules"),
            }
            let sleep = Duration::from_millis((wake - now_ms()).max(0) as u64);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Fires a due schedule (once, whichever server gets there first); returns its next firing.
    async fn fire(&self, schedule: Schedule, now: i64) -> Option<i64> {
        let timetable = match timetable::Timetable::parse(schedule.when.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "a schedule cannot fire");
                return None;
            }
        };
        let due = schedule.next_ms;
        let next = match timetable.next_after(due) {
            Some(n) if n > now => n,
            _ => timetable.next_after(now).unwrap_or(i64::MAX),
        };
        let task = task_of(&schedule, due.max(0), now);
        let (ns, name) = (schedule.namespace.clone(), schedule.name.clone());
        match self.run(move |s| s.fire(&ns, &name, due, next, now, &task)).await {
            Ok(true) => self.wake_queue(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "a schedule could not fire");
                return Some(now + 1000);
            }
        }
        Some(next)
    }

    async fn runner(self: Arc<Self>, index: usize) {
        let mut changes = self.queue_changes();
        let worker = format!("server-{}/{index}", self.server);
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            changes.borrow_and_update();
            let claim = Claim::fresh(&worker, RUNNER_LEASE.as_millis() as i64);
            let lease = claim.lease.clone();
            match self.run(move |s| s.lease(&Pick::Stages, &claim)).await {
                Ok(Some(task)) => {
                    self.run_task(task, lease).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "a tasks runner cannot lease"),
            }
            let next = self.run(|s| s.next_due(&Pick::Stages)).await.ok().flatten();
            let mut wake = now_ms() + self.poll().as_millis() as i64;
            if let Some(next) = next {
                wake = wake.min(next);
            }
            let sleep = Duration::from_millis((wake - now_ms()).max(0) as u64);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Runs a leased stage task's stages, renewing the lease meanwhile, and records the outcome.
    async fn run_task(&self, task: Task, lease: String) {
        let run = self.run_stages(&task);
        tokio::pin!(run);
        let mut renew = tokio::time::interval(RUNNER_LEASE / 3);
        renew.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                // Shutting down: the attempt is abandoned, still running. On the embedded store the next start
                // queues it again at once; on PostgreSQL its lease expires and any server takes it.
                _ = self.cancel.cancelled() => return,
                _ = renew.tick() => {
                    let (id, lease) = (task.id.clone(), lease.clone());
                    let until = now_ms() + RUNNER_LEASE.as_millis() as i64;
                    if let Err(e) = self.run(move |s| s.extend(&id, &lease, until)).await {
                        tracing::warn!(task = %task.id, error = %e, "a stage task's lease could not be renewed");
                    }
                }
            }
        };
        let (id, l) = (task.id.clone(), lease);
        match self.run(move |s| s.complete(&id, &l, outcome, now_ms())).await {
            Ok(t) if t.state == State::Failed as i32 => self.wake_queue(),
            Ok(_) => {}
            Err(e) => tracing::warn!(task = %task.id, error = %e, "a stage task's outcome could not be saved"),
        }
    }

    async fn run_stages(&self, task: &Task) -> Outcome {
        let mut results = Vec::new();
        let token = match self.owner_token(&task.namespace, &task.owner) {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Failed { error: format!("cannot run as {}: {}", task.owner, e.message()), results };
            }
        };
        for (i, stage) in task.stages.iter().enumerate() {
            let result = self.call_stage(&task.namespace, &token, stage).await;
            let failed = (!result.ok)
                .then(|| format!("stage {} ({} {}): {}", i + 1, stage.service, stage.endpoint, result.error));
            results.push(result);
            if let Some(error) = failed {
                return Outcome::Failed { error, results };
            }
        }
        Outcome::Succeeded { result: String::new(), results }
    }

    /// A token of the task's owner, reused while it has more than half its life left.
    fn owner_token(&self, namespace: &str, owner: &str) -> Result<String, tonic::Status> {
        let key = (namespace.to_string(), owner.to_string());
        let now = now_ms();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, until)) = tokens.get(&key)
            && *until > now
        {
            return Ok(token.clone());
        }
        let ttl = Duration::from_secs(600);
        let token = self.auth.access_token_for(namespace, owner, ttl)?;
        if tokens.len() > 1024 {
            tokens.clear();
        }
        tokens.insert(key, (token.clone(), now + ttl.as_millis() as i64 / 2));
        Ok(token)
    }

    /// Calls one stage through the proxy with `token`.
    async fn call_stage(&self, namespace: &str, token: &str, stage: &Stage) -> StageResult {
        let started = now_ms();
        let clock = std::time::Instant::now();
        let mut result = StageResult {
            service: stage.service.clone(),
            endpoint: stage.endpoint.clone(),
            started_ms: started,
            ..Default::default()
        };
        let answer = self.call(namespace, token, stage).await;
        result.duration_ms = clock.elapsed().as_millis() as i64;
        match answer {
            Ok(mut response) => {
                result.ok = true;
                if response.len() > MAX_RESPONSE {
                    let mut cut = MAX_RESPONSE;
                    while !response.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    response.truncate(cut);
                    result.truncated = true;
                }
                result.response = response;
            }
            Err(status) => {
                result.code = status.code() as i32;
                result.error = crate::gateway::error::ApiError::from_status(&stage.service, &status).detail;
            }
        }
        result
    }

    async fn call(&self, namespace: &str, token: &str, stage: &Stage) -> Result<String, tonic::Status> {
        use tonic::metadata::MetadataValue;
        let method = self.resolve(namespace, stage)?;
        let request = request_message(&method, stage)?;
        let Some(proxy) = self.proxy.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Err(tonic::Status::unavailable("the server is shutting down"));
        };
        let mut req = tonic::Request::new(request);
        let header = |v: &str| {
            MetadataValue::try_from(v)
                .map_err(|_| tonic::Status::invalid_argument(format!("{v:?} is not valid metadata")))
        };
        req.metadata_mut().insert("authorization", header(&format!("Bearer {token}"))?);
        req.metadata_mut().insert(micro_core::metadata::NAMESPACE_HEADER, header(namespace)?);
        req.metadata_mut().insert(micro_core::metadata::SERVICE_HEADER, header(&stage.service)?);
        req.set_timeout(STAGE_TIMEOUT);
        let path = http::uri::PathAndQuery::try_from(micro_core::schema::method_path(&method))
            .map_err(|e| tonic::Status::invalid_argument(format!("malformed method name: {e}")))?;
        let mut grpc = tonic::client::Grpc::new(ProxyTransport::new(proxy));
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = micro_client::dynamic::DynamicCodec::new(method.output());
        let response = grpc.unary(req, path, codec).await?.into_inner();
        Ok(micro_client::dynamic::message_to_json(&response).to_string())
    }

    /// The method of a stage, from the registry: errors name what is unknown.
    pub(crate) fn resolve(
        &self,
        namespace: &str,
        stage: &Stage,
    ) -> Result<prost_reflect::MethodDescriptor, tonic::Status> {
        match resolve::resolve_named(&self.registry, namespace, &stage.service, &stage.endpoint) {
            Ok(target) => Ok(target.method),
            Err(e) if e.code == 404 && e.detail.starts_with("service ") => {
                Err(tonic::Status::invalid_argument(format!(
                    "unknown service {:?}: it is not registered in namespace {namespace}; run `micro services` to see \
                 the services",
                    stage.service
                )))
            }
            Err(e) if e.code == 404 => Err(tonic::Status::invalid_argument(format!(
                "unknown endpoint {:?} of service {:?}; run `micro describe {}` to see its endpoints",
                stage.endpoint, stage.service, stage.service
            ))),
            Err(e) if e.code == 400 => Err(tonic::Status::invalid_argument(format!(
                "{}; write endpoints as Handler.Method, e.g. Helloworld.Call",
                e.detail
            ))),
            Err(e) => Err(tonic::Status::failed_precondition(e.detail)),
        }
    }

    async fn sweeper(self: Arc<Self>) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = std::time::Instant::now() - PURGE;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = sweep.tick() => {}
            }
            match self.run(|s| s.expire_leases(now_ms())).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(tasks = n, "leases expired: the tasks are queued again");
                    self.wake_queue();
                }
                Err(e) => tracing::warn!(error = %e, "the tasks sweeper cannot expire leases"),
            }
            if last_purge.elapsed() >= PURGE {
                last_purge = std::time::Instant::now();
                let before = now_ms() - self.config.retention.as_millis() as i64;
                if let Err(e) = self.run(move |s| s.purge(before)).await {
                    tracing::warn!(error = %e, "the tasks sweeper cannot delete old tasks");
                }
            }
        }
    }
}

/// The request message of a stage, from its JSON (empty: `{}`).
pub(crate) fn request_message(
    method: &prost_reflect::MethodDescriptor,
    stage: &Stage,
) -> Result<prost_reflect::DynamicMessage, tonic::Status> {
    let text = if stage.request.trim().is_empty() { "{}" } else { stage.request.as_str() };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        tonic::Status::invalid_argument(format!(
            "the request of {} {} is not valid JSON: {e}",
            stage.service, stage.endpoint
        ))
    })?;
    crate::gateway::request::from_json(&method.input(), value, &stage.service).map_err(|e| {
        tonic::Status::invalid_argument(format!("the request of {} {}: {}", stage.service, stage.endpoint, e.detail))
    })
}

/// A new task id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The task a schedule queues when it fires for `due`.
pub fn task_of(schedule: &Schedule, due: i64, now: i64) -> Task {
    Task {
        id: new_id(),
        name: schedule.name.clone(),
        schedule: schedule.name.clone(),
        state: State::Pending as i32,
        retries: schedule.retries,
        backoff_ms: schedule.backoff_ms,
        stages: schedule.stages.clone(),
        created_ms: now,
        due_ms: due,
        owner: schedule.owner.clone(),
        namespace: schedule.namespace.clone(),
        ..Default::default()
    }
}
