//! The scheduler server type: code that decides, at each tick, which tasks to queue (SpaceONE's `create_task`).
//!
//! ```no_run
//! use micro::tasks::{NewTask, Scheduler};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let scheduler = Scheduler::every(Duration::from_secs(3600), |tick| async move {
//!     ["eu", "us"]
//!         .into_iter()
//!         .map(|region| NewTask::new("collect").payload(&serde_json::json!({ "region": region, "tick": tick.ms() })))
//!         .collect()
//! })
//! .name("inventory-collect");
//! let client = micro::client::Client::from_env()?;
//! scheduler.run(client, micro::shutdown_signal()).await;
//! # Ok(()) }
//! ```
//!
//! Ticks are aligned on the clock (an `every(1 min)` scheduler ticks at every whole minute since the Unix epoch, an
//! `hourly_at(15)` one at a quarter past every hour, a [`Scheduler::cron`] one when its expression says, in UTC), so
//! replicas of a scheduler tick at the same instants. Each task is queued with `Tasks.Enqueue` and a deduplication
//! key made of the scheduler's name, the task's name, the tick's time and the task's position in the tick's list
//! (unless the task sets its own), so replicas that tick together create it once: the queue returns the pending or
//! running task of the same name and key instead of a second one (a replica that ticks after the task finished
//! would create it again). A tick missed while the callback or the server was slow is skipped, not caught up.

use super::{Backoff, Tasks, pb, tasks_client, unix_ms};
use crate::client::Client;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A task for a scheduler to queue.
#[derive(Clone, Debug)]
pub struct NewTask {
    name: String,
    payload: Result<String, String>,
    stages: Vec<pb::Stage>,
    retries: Option<u32>,
    backoff: Option<Duration>,
    key: Option<String>,
    due: Option<SystemTime>,
}

impl NewTask {
    /// A task named `name` (what workers lease by) with an empty payload.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            payload: Ok(String::new()),
            stages: Vec::new(),
            retries: None,
            backoff: None,
            key: None,
            due: None,
        }
    }

    /// The payload, serialized as JSON (a value that cannot be is reported when the task is queued, and skipped).
    pub fn payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Self {
        self.payload = serde_json::to_string(payload).map_err(|e| e.to_string());
        self
    }

    /// Adds a stage: a call the server makes through the proxy as the service's account, instead of a worker
    /// running the task (`request` is the request as JSON).
    pub fn stage(
        mut self,
        service: impl Into<String>,
        endpoint: impl Into<String>,
        request: impl Into<String>,
    ) -> Self {
        self.stages.push(pb::Stage { service: service.into(), endpoint: endpoint.into(), request: request.into() });
        self
    }

    /// How many times a failure is retried before the task is dead (default: the server's, 3).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// The first retry's delay, doubling after each failure (default: the server's, 1 s).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The deduplication key (default: the scheduler's name, the task's name, the tick's time and the task's
    /// position in the tick's list).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// When the task is due (default: now).
    pub fn due(mut self, due: SystemTime) -> Self {
        self.due = Some(due);
        self
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Enqueue` request, with `default_key` unless the task has its own.
    fn request(&self, default_key: String) -> Result<pb::EnqueueRequest, String> {
        Ok(pb::EnqueueRequest {
            name: self.name.clone(),
            payload: self.payload.clone().map_err(|e| format!("the payload is not JSON: {e}"))?,
            stages: self.stages.clone(),
            retries: self.retries,
            backoff_ms: self.backoff.map(|b| b.as_millis() as u64),
            due_ms: self.due.map(unix_ms).unwrap_or_default(),
            key: self.key.clone().unwrap_or(default_key),
        })
    }
}

/// One tick of a scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    at: SystemTime,
    count: u64,
}

impl Tick {
    /// The tick's time on the clock (the same in every replica).
    pub fn at(&self) -> SystemTime {
        self.at
    }

    /// The tick's time in Unix milliseconds.
    pub fn ms(&self) -> i64 {
        unix_ms(self.at)
    }

    /// How many ticks this scheduler ran before this one (since it started).
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What a scheduler did so far (shared: read it while the scheduler runs).
#[derive(Debug, Default)]
pub struct SchedulerStats {
    ticks: AtomicU64,
    queued: AtomicU64,
    errors: AtomicU64,
}

impl SchedulerStats {
    /// Ticks run.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Tasks queued (or found already queued under their key).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Tasks that could not be queued.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// A cron expression a scheduler cannot use.
#[derive(Debug, thiserror::Error)]
#[error("cron expression {expression:?}: {reason}")]
pub struct CronError {
    expression: String,
    reason: String,
}

/// When a scheduler ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum When {
    /// At every multiple of this period since the Unix epoch.
    Every(Duration),
    /// Every hour at this minute.
    HourlyAt(u32),
    /// By a cron expression with seconds, in UTC.
    Cron(Box<cron::Schedule>),
}

impl When {
    /// The first tick strictly after `now` (`None` when a cron expression never fires again).
    fn next_after(&self, now: SystemTime) -> Option<SystemTime> {
        let now_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let (period, offset) = match self {
            When::Every(d) => (d.as_millis().max(1) as u64, 0),
            When::HourlyAt(m) => (3_600_000, u64::from(*m) * 60_000),
            When::Cron(schedule) => {
                let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms as i64)?;
                let next = schedule.after(&now).next()?.timestamp_millis();
                return Some(UNIX_EPOCH + Duration::from_millis(next.max(0) as u64));
            }
        };
        let next = if now_ms < offset { offset } else { ((now_ms - offset) / period + 1) * period + offset };
        Some(UNIX_EPOCH + Duration::from_millis(next))
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Vec<NewTask>> + Send>>;
type Create = Arc<dyn Fn(Tick) -> BoxFuture + Send + Sync>;

/// A scheduler: when it ticks, and the code that returns the tasks to queue at each tick. See the
/// [module docs](self).
pub struct Scheduler {
    name: Option<String>,
    when: When,
    create: Create,
    stats: Arc<SchedulerStats>,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler").field("name", &self.name).field("when", &self.when).finish()
    }
}

impl Scheduler {
    fn with(when: When, create: Create) -> Self {
        Self { name: None, when, create, stats: Arc::default() }
    }

    /// Ticks at every multiple of `period` (at least 1 ms) since the Unix epoch, calling `create` for the tasks to
    /// queue.
    pub fn every<F, Fut>(period: Duration, create: F) -> Self
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<NewTask>> + Send + 'static,
    {
        let period = period.max(Duration::from_millis(1));
        Self::with(When::Every(period), Arc::new(move |tick| Box::pin(create(tick))))
    }

    /// Ticks every hour at `minute` (taken modulo 60), calling `create` for the tasks to queue.
    pub fn hourly_at<F, Fut>(minute: u32, create: F) -> Self
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<NewTask>> + Send + 'static,
    {
        Self::with(When::HourlyAt(minute % 60), Arc::new(move |tick| Box::pin(create(tick))))
    }

    /// Ticks by a cron expression with seconds, in UTC: six or seven fields, `sec min hour day-of-month month
    /// day-of-week [year]` (`"0 */5 * * * *"`: every 5 minutes), as `micro tasks schedule --cron` takes.
    pub fn cron<F, Fut>(expression: &str, create: F) -> Result<Self, CronError>
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<NewTask>> + Send + 'static,
    {
        let error = |reason: String| CronError { expression: expression.to_string(), reason };
        let fields = expression.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(error(format!(
                "{fields} fields; give 6 or 7, seconds first: sec min hour day-of-month month day-of-week [year]"
            )));
        }
        let schedule: cron::Schedule = expression.trim().parse().map_err(|e: cron::error::Error| {
            error(e.to_string().lines().last().unwrap_or_default().trim().to_string())
        })?;
        let when = When::Cron(Box::new(schedule));
        if when.next_after(SystemTime::now()).is_none() {
            return Err(error("it never fires again".into()));
        }
        Ok(Self::with(when, Arc::new(move |tick| Box::pin(create(tick)))))
    }

    /// The scheduler's name, part of its tasks' deduplication keys (default: the service's name, or `scheduler`).
    /// Replicas must share it to create each task once.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The scheduler's counters, updated while it runs.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.stats.clone()
    }

    /// Sets the name from the service's unless one was given.
    pub(crate) fn default_name(mut self, name: &str) -> Self {
        if self.name.is_none() {
            self.name = Some(name.to_string());
        }
        self
    }

    /// Ticks and queues the tasks through `client` until `shutdown` resolves.
    pub async fn run(self, client: Client, shutdown: impl Future<Output = ()> + Send) {
        let name = self.name.clone().unwrap_or_else(|| "scheduler".into());
        tracing::info!(scheduler = %name, when = ?self.when, "scheduler ticking");
        let tasks = tasks_client(&client);
        tokio::select! {
            _ = self.ticks(&name, tasks) => {}
            _ = shutdown => {}
        }
        tracing::info!(scheduler = %name, "scheduler stopped");
    }

    async fn ticks(&self, name: &str, tasks: Tasks) {
        let mut count = 0;
        loop {
            let Some(at) = self.when.next_after(SystemTime::now()) else {
                tracing::info!(scheduler = %name, "the cron expression fires no more");
                return std::future::pending().await;
            };
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            let tick = Tick { at, count };
            count += 1;
            self.stats.ticks.fetch_add(1, Ordering::Relaxed);
            let new = (self.create)(tick).await;
            // Queue this tick's tasks, retrying while the server is unreachable, until the next tick is due.
            let next = self.when.next_after(at).unwrap_or(at + Duration::from_secs(3600));
            for (i, task) in new.into_iter().enumerate() {
                let key = format!("{name}:{}:{}:{i}", task.name, tick.ms());
                let req = match task.request(key) {
                    Ok(r) => r,
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(scheduler = %name, task = %task.name, error = %e, "cannot queue the task");
                        continue;
                    }
                };
                if enqueue(&tasks, req, next).await {
                    self.stats.queued.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(scheduler = %name, task = %task.name, tick = tick.ms(), "task not queued");
                }
            }
        }
    }
}

/// `Enqueue`, retried with a backoff while the error may pass, until `until`. True when queued.
async fn enqueue(tasks: &Tasks, req: pb::EnqueueRequest, until: SystemTime) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match tasks.clone().enqueue(req.clone()).await {
            Ok(_) => return true,
            Err(status) => {
                let delay = backoff.next_delay();
                let transient = matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Unauthenticated
                );
                tracing::warn!(task = %req.name, code = ?status.code(), error = %status.message(), "enqueue failed");
                if !transient || SystemTime::now() + delay >= until {
                    return false;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn ticks_are_aligned_on_the_clock() {
        let every = When::Every(Duration::from_secs(2));
        assert_eq!(every.next_after(at(1_000)), Some(at(2_000)));
        assert_eq!(every.next_after(at(2_000)), Some(at(4_000)), "strictly after");
        assert_eq!(every.next_after(at(3_999)), Some(at(4_000)));
        let hourly = When::HourlyAt(15);
        assert_eq!(hourly.next_after(at(0)), Some(at(15 * 60_000)));
        assert_eq!(hourly.next_after(at(15 * 60_000)), Some(at(75 * 60_000)));
        assert_eq!(hourly.next_after(at(3_600_000 + 60_000)), Some(at(3_600_000 + 15 * 60_000)));
        let cron = Scheduler::cron("30 */5 * * * *", |_| async { Vec::new() }).unwrap();
        assert_eq!(cron.when.next_after(at(0)), Some(at(30_000)));
        assert_eq!(cron.when.next_after(at(30_000)), Some(at(5 * 60_000 + 30_000)));
    }

    #[test]
    fn bad_cron_expressions_are_refused_with_the_reason() {
        let e = Scheduler::cron("*/5 * * * *", |_| async { Vec::new() }).unwrap_err().to_string();
        assert!(e.contains("5 fields") && e.contains("seconds first"), "{e}");
        let e = Scheduler::cron("0 0 25 * * *", |_| async { Vec::new() }).unwrap_err().to_string();
        assert!(e.starts_with("cron expression \"0 0 25 * * *\": "), "{e}");
        let e = Scheduler::cron("0 0 0 1 1 * 2001", |_| async { Vec::new() }).unwrap_err().to_string();
        assert!(e.contains("never fires again"), "{e}");
    }

    #[test]
    fn tasks_carry_a_key_per_tick_unless_they_have_their_own() {
        let task = NewTask::new("collect").payload(&serde_json::json!({"a": 1})).retries(2);
        let req = task.request("inv:collect:2000".into()).unwrap();
        assert_eq!((req.name.as_str(), req.payload.as_str()), ("collect", r#"{"a":1}"#));
        assert_eq!((req.key.as_str(), req.retries, req.backoff_ms, req.due_ms), ("inv:collect:2000", Some(2), None, 0));
        let own = NewTask::new("collect").key("mine").request("default".into()).unwrap();
        assert_eq!(own.key, "mine");
        let mut map = std::collections::HashMap::new();
        map.insert(vec![1u8], 1);
        let bad = NewTask::new("x").payload(&map).request("k".into());
        assert!(bad.unwrap_err().contains("not JSON"));
    }

    #[tokio::test]
    async fn two_replicas_of_a_scheduler_queue_each_tick_s_task_once() {
        let (fake, client) = super::super::fake::Fake::start().await;
        let replica = || {
            Scheduler::every(Duration::from_millis(200), |tick| async move {
                vec![NewTask::new("collect").payload(&serde_json::json!({ "tick": tick.ms() }))]
            })
            .name("inventory")
        };
        let (a, b) = (replica(), replica());
        let stats = a.stats();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let runs = [
            tokio::spawn(a.run(client.clone(), stopped(stop_rx.clone()))),
            tokio::spawn(b.run(client, stopped(stop_rx))),
        ];
        fake.until("three ticks", |_| stats.ticks() >= 3).await;
        stop_tx.send(true).unwrap();
        for run in runs {
            tokio::time::timeout(Duration::from_secs(5), run).await.expect("the scheduler stops").unwrap();
        }
        let enqueued = fake.state(|s| s.enqueued.clone());
        let mut keys: Vec<&str> = enqueued.iter().map(|t| t.worker.as_str()).collect();
        let all = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), all, "one task per tick: {keys:?}");
        assert!(all >= 3, "{keys:?}");
        for t in &enqueued {
            let tick: i64 = t.worker.split(':').nth(2).unwrap().parse().unwrap();
            assert!(t.worker.ends_with(":0"), "{}", t.worker);
            assert_eq!(tick % 200, 0, "ticks are aligned: {}", t.worker);
            assert_eq!(t.payload, format!(r#"{{"tick":{tick}}}"#));
            assert!(t.worker.starts_with("inventory:collect:"), "{}", t.worker);
        }
        assert_eq!(stats.errors(), 0);
    }
}
