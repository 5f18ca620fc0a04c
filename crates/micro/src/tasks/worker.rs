//! The worker server type: lease tasks of given names from the queue, run a Rust handler for each, acknowledge.
//!
//! ```no_run
//! use micro::tasks::{TaskContext, TaskError, Worker};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let worker = Worker::new().handle("resize", |task: TaskContext| async move {
//!     let size: u32 = task.payload()?;
//!     if size == 0 {
//!         return Err(TaskError::msg("size 0")); // `Fail`: retried after a backoff, then dead
//!     }
//!     Ok(serde_json::json!({ "resized": size })) // `Ack` with this result
//! });
//! let client = micro::client::Client::from_env()?;
//! worker.run(client, micro::shutdown_signal()).await;
//! # Ok(()) }
//! ```
//!
//! Each of the worker's `concurrency` slots long-polls `Tasks.Lease` for the handled names, runs the handler in its
//! own tokio task (so a panic fails the task, not the worker), extends the lease every third of its length while the
//! handler runs, then acknowledges the handler's JSON result or reports its error. On shutdown the worker stops
//! leasing and lets running handlers finish for a grace period; a handler still running after it is dropped, and its
//! lease expiring returns the task to the queue.

use super::{Backoff, Tasks, pb, tasks_client};
use crate::client::Client;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tonic::Code;

/// Why a handler failed: its message becomes the task's `error` (`Tasks.Fail`).
///
/// Any `std::error::Error` converts into it, so handlers can use `?`; [`TaskError::msg`] makes one from text.
pub struct TaskError(String);

impl TaskError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self(message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({:?})", self.0)
    }
}

/// A leased task, as its handler sees it.
#[derive(Clone, Debug)]
pub struct TaskContext {
    task: pb::Task,
    client: Client,
}

impl TaskContext {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.task.id
    }

    /// The task's name (what the handler was registered for).
    pub fn name(&self) -> &str {
        &self.task.name
    }

    /// The attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempts.max(1)
    }

    /// The payload decoded from JSON (an empty payload reads as `{}`).
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_json::from_str(self.payload_json())
            .map_err(|e| TaskError::msg(format!("the payload of task {} is not the JSON expected: {e}", self.task.id)))
    }

    /// The payload as JSON text (`{}` when empty).
    pub fn payload_json(&self) -> &str {
        if self.task.payload.trim().is_empty() { "{}" } else { &self.task.payload }
    }

    /// The whole task, as the queue gave it.
    pub fn task(&self) -> &pb::Task {
        &self.task
    }

    /// A client of the platform as the worker's account (to reach the store, other services…).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(TaskContext) -> BoxFuture + Send + Sync>;

/// What a worker did so far (shared: read it while the worker runs).
#[derive(Debug, Default)]
pub struct WorkerStats {
    leased: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    running: AtomicU64,
}

impl WorkerStats {
    /// Tasks leased (handlers started).
    pub fn leased(&self) -> u64 {
        self.leased.load(Ordering::Relaxed)
    }

    /// Handlers that returned `Ok` (their tasks acknowledged, unless the lease was lost).
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
    }

    /// Handlers that returned an error or panicked.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Handlers running now.
    pub fn running(&self) -> u64 {
        self.running.load(Ordering::Relaxed)
    }
}

/// A worker: the handlers of task names, and how many tasks run at once. See the [module docs](self).
pub struct Worker {
    handlers: BTreeMap<String, Handler>,
    concurrency: usize,
    lease: Duration,
    wait: Duration,
    grace: Duration,
    id: Option<String>,
    stats: Arc<WorkerStats>,
}

impl Default for Worker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("names", &self.names())
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .field("id", &self.id)
            .finish()
    }
}

impl Worker {
    /// The default number of tasks a worker runs at once.
    pub const DEFAULT_CONCURRENCY: usize = 4;

    /// A worker with no handlers yet, running 4 tasks at once, with 30 s leases.
    pub fn new() -> Self {
        Self {
            handlers: BTreeMap::new(),
            concurrency: Self::DEFAULT_CONCURRENCY,
            lease: Duration::from_secs(30),
            wait: Duration::from_secs(10),
            grace: Duration::from_secs(10),
            id: None,
            stats: Arc::default(),
        }
    }

    /// Runs `handler` for the tasks named `name`. Its `Ok` value is the task's result (any `Serialize`, stored as
    /// JSON); its error (or a panic) fails the attempt.
    pub fn handle<F, Fut, R>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
        R: Serialize + 'static,
    {
        let handler: Handler = Arc::new(move |ctx| {
            let fut = handler(ctx);
            Box::pin(async move {
                let out = fut.await?;
                serde_json::to_value(out).map_err(|e| TaskError::msg(format!("the result is not JSON: {e}")))
            })
        });
        self.handlers.insert(name.into(), handler);
        self
    }

    /// How many tasks run at once (default 4, at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a lease lasts before it must be extended (default 30 s; the worker extends it every third of that
    /// while the handler runs). A worker that dies loses its tasks' leases after this long, and they run again.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self
    }

    /// How long one `Lease` call waits for a task when none is due (default 10 s, at most 30 s).
    pub fn poll(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_secs(30));
        self
    }

    /// How long running handlers may take to finish once shutdown begins (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The worker's id, shown as a running task's `worker` (default: the service's name, or `worker`, and a
    /// random suffix).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The task names this worker handles.
    pub fn names(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// The worker's counters, updated while it runs.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Sets the id from the service's name unless one was given.
    pub(crate) fn default_id(mut self, prefix: &str) -> Self {
        if self.id.is_none() {
            self.id = Some(random_id(prefix));
        }
        self
    }

    /// Leases and runs tasks through `client` until `shutdown` resolves, then lets running handlers finish for
    /// the grace period. Returns at once if no handler was registered.
    pub async fn run(self, client: Client, shutdown: impl Future<Output = ()> + Send) {
        if self.handlers.is_empty() {
            tracing::warn!("a worker without handlers has nothing to lease");
            return;
        }
        let names = self.names();
        let id = self.id.clone().unwrap_or_else(|| random_id("worker"));
        tracing::info!(worker = %id, names = ?names, concurrency = self.concurrency, "worker leasing tasks");
        let shared = Arc::new(Shared {
            tasks: tasks_client(&client),
            client,
            handlers: self.handlers,
            request: pb::LeaseRequest {
                names,
                worker: id.clone(),
                lease_ms: self.lease.as_millis() as u64,
                wait_ms: self.wait.as_millis() as u64,
            },
            lease: self.lease,
            stats: self.stats,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            slots.spawn(shared.clone().slot(stop_rx.clone()));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        let running = shared.stats.running();
        if running > 0 {
            tracing::info!(worker = %id, running, grace = ?self.grace, "worker stopping; letting running tasks finish");
        }
        let drained = tokio::time::timeout(self.grace, async { while slots.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                worker = %id, running = shared.stats.running(),
                "tasks still running after the grace period; dropping them (their leases expire and they run again)"
            );
            slots.abort_all();
        }
        tracing::info!(worker = %id, "worker stopped");
    }
}

fn random_id(prefix: &str) -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &uuid[..8])
}

/// What the worker's slots share.
struct Shared {
    tasks: Tasks,
    client: Client,
    handlers: BTreeMap<String, Handler>,
    request: pb::LeaseRequest,
    lease: Duration,
    stats: Arc<WorkerStats>,
}

impl Shared {
    /// One slot: lease, run, report, until told to stop.
    async fn slot(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if *stop.borrow() {
                return;
            }
            let mut tasks = self.tasks.clone();
            let leased = tokio::select! {
                r = tasks.lease(self.request.clone()) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match leased {
                Ok(rsp) => {
                    if !backoff.is_reset() {
                        tracing::info!(worker = %self.request.worker, "reached the tasks service again");
                    }
                    backoff.reset();
                    let rsp = rsp.into_inner();
                    if let Some(task) = rsp.task {
                        self.run_one(task, rsp.lease).await;
                    }
                }
                Err(status) => {
                    if backoff.is_reset() {
                        tracing::warn!(
                            worker = %self.request.worker, code = ?status.code(), error = %status.message(),
                            "cannot lease tasks; retrying with a backoff"
                        );
                    }
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// Runs one leased task's handler, extending the lease while it runs, then acks or fails the task.
    async fn run_one(&self, task: pb::Task, lease: String) {
        let id = task.id.clone();
        let name = task.name.clone();
        let Some(handler) = self.handlers.get(&task.name).cloned() else {
            let error = format!("this worker has no handler for tasks named {name:?}");
            self.report(&id, &lease, Err(error)).await;
            return;
        };
        self.stats.leased.fetch_add(1, Ordering::Relaxed);
        self.stats.running.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let ctx = TaskContext { task, client: self.client.clone() };
        let mut job = tokio::spawn(handler(ctx));
        let period = self.lease / 3;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let joined = loop {
            tokio::select! {
                joined = &mut job => break joined,
                _ = heartbeat.tick() => {
                    let req = pb::ExtendRequest {
                        id: id.clone(),
                        lease: lease.clone(),
                        lease_ms: self.lease.as_millis() as u64,
                    };
                    if let Err(status) = self.tasks.clone().extend(req).await {
                        tracing::warn!(task = %id, error = %status.message(), "cannot extend the task's lease");
                    }
                }
            }
        };
        let outcome = match joined {
            Ok(Ok(value)) => Ok(value.to_string()),
            Ok(Err(e)) => Err(e.0),
            Err(e) if e.is_panic() => Err(format!("the handler panicked: {}", panic_message(e.into_panic()))),
            Err(_) => Err("the handler was cancelled".to_string()),
        };
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        match &outcome {
            Ok(_) => {
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(task = %id, name = %name, took = ?started.elapsed(), "task succeeded");
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(task = %id, name = %name, error = %error, "task failed");
            }
        }
        self.report(&id, &lease, outcome).await;
    }

    /// `Ack` or `Fail`, retried a few times while the server is unreachable.
    async fn report(&self, id: &str, lease: &str, outcome: Result<String, String>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 1..=6 {
            let mut tasks = self.tasks.clone();
            let sent = match &outcome {
                Ok(result) => tasks
                    .ack(pb::AckRequest { id: id.into(), lease: lease.into(), result: result.clone() })
                    .await
                    .map(drop),
                Err(error) => tasks
                    .fail(pb::FailRequest { id: id.into(), lease: lease.into(), error: error.clone() })
                    .await
                    .map(drop),
            };
            match sent {
                Ok(()) => return,
                Err(status) if retryable(status.code()) && attempt < 6 => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(status) => {
                    tracing::warn!(
                        task = %id, code = ?status.code(), error = %status.message(),
                        "cannot report the task's outcome (its lease expires and it runs again)"
                    );
                    return;
                }
            }
        }
    }
}

/// Whether a failed `Ack`/`Fail` is worth sending again (the server was unreachable, not a refusal).
fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => s.to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(payload: &str) -> TaskContext {
        let task = pb::Task { id: "t1".into(), name: "collect".into(), payload: payload.into(), ..Default::default() };
        TaskContext { task, client: Client::new("127.0.0.1:1", "micro").unwrap() }
    }

    #[tokio::test]
    async fn the_payload_is_decoded_and_an_empty_one_reads_as_an_object() {
        #[derive(Debug, serde::Deserialize)]
        struct P {
            region: String,
        }
        assert_eq!(ctx(r#"{"region":"eu"}"#).payload::<P>().unwrap().region, "eu");
        assert_eq!(ctx("").payload::<Value>().unwrap(), serde_json::json!({}));
        let e = ctx("[1]").payload::<P>().unwrap_err();
        assert!(e.message().contains("payload of task t1"), "{e}");
    }

    #[tokio::test]
    async fn handlers_results_become_json_and_errors_keep_their_sources() {
        let w = Worker::new().handle("ok", |t: TaskContext| async move { Ok(vec![t.name().to_string()]) }).handle(
            "err",
            |_t: TaskContext| async move {
                let n: u32 = "x".parse()?;
                Ok(n)
            },
        );
        assert_eq!(w.names(), ["err", "ok"]);
        let ok = (w.handlers["ok"])(ctx("")).await.unwrap();
        assert_eq!(ok, serde_json::json!(["collect"]));
        let err = (w.handlers["err"])(ctx("")).await.unwrap_err();
        assert_eq!(err.message(), "invalid digit found in string");
    }

    #[test]
    fn panic_messages_are_read() {
        assert_eq!(panic_message(Box::new("boom")), "boom");
        assert_eq!(panic_message(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_message(Box::new(3)), "(no message)");
    }

    /// A worker with `ok`, `err`, `panic` and `slow` handlers; `slow` records how many run at once.
    fn worker(peak: Arc<(AtomicU64, AtomicU64)>) -> Worker {
        Worker::new()
            .poll(Duration::from_millis(50))
            .lease(Duration::from_millis(150))
            .grace(Duration::from_secs(5))
            .handle("ok", |t: TaskContext| async move {
                let n: u64 = t.payload()?;
                Ok(serde_json::json!({ "double": n * 2, "attempt": t.attempt() }))
            })
            .handle("err", |_t: TaskContext| async move { Err::<(), _>(TaskError::msg("no inventory today")) })
            .handle("panic", |_t: TaskContext| async move {
                if true {
                    panic!("boom");
                }
                Ok(())
            })
            .handle("slow", move |_t: TaskContext| {
                let peak = peak.clone();
                async move {
                    let now = peak.0.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.1.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    peak.0.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                }
            })
    }

    #[tokio::test]
    async fn a_worker_acks_results_fails_errors_and_panics_and_keeps_going() {
        let (fake, client) = super::super::fake::Fake::start().await;
        let w = worker(Arc::default());
        let stats = w.stats();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(w.run(client, async move {
            let _ = stop_rx.await;
        }));
        let ok = fake.push("ok", "21");
        let err = fake.push("err", "");
        let panicked = fake.push("panic", "");
        let unknown = fake.push("other", "");
        fake.until("three outcomes", |s| s.acked.len() + s.failed.len() == 3).await;
        // After a panic the worker still runs tasks.
        let after = fake.push("ok", "1");
        fake.until("the task after the panic", |s| s.acked.len() == 2).await;
        let (acked, mut failed, queued) = fake.state(|s| (s.acked.clone(), s.failed.clone(), s.queue.len()));
        assert_eq!(acked, [(ok, r#"{"double":42,"attempt":1}"#.into()), (after, r#"{"double":2,"attempt":1}"#.into())]);
        failed.sort();
        assert_eq!(failed, [(err, "no inventory today".into()), (panicked, "the handler panicked: boom".into())]);
        assert_eq!(queued, 1, "a task of another name is not leased: {unknown}");
        assert_eq!((stats.leased(), stats.succeeded(), stats.failed(), stats.running()), (4, 2, 2, 0));
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), run).await.expect("the worker stops").unwrap();
    }

    #[tokio::test]
    async fn a_worker_runs_its_concurrency_at_once_extends_leases_and_finishes_running_tasks_on_shutdown() {
        let (fake, client) = super::super::fake::Fake::start().await;
        let peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let w = worker(peak.clone()).concurrency(3);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(w.run(client, async move {
            let _ = stop_rx.await;
        }));
        for _ in 0..6 {
            fake.push("slow", "");
        }
        fake.until("three running", |_| peak.0.load(Ordering::SeqCst) == 3).await;
        // Shut down while three tasks run: they finish and are acknowledged, the other three stay queued.
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), run).await.expect("the worker stops").unwrap();
        let (acked, queued, extended) = fake.state(|s| (s.acked.len(), s.queue.len(), s.extended.len()));
        assert_eq!((acked, queued), (3, 3));
        assert_eq!(peak.1.load(Ordering::SeqCst), 3, "at most the concurrency at once");
        assert!(extended >= 3, "a 300 ms task with a 150 ms lease extends it every 50 ms: {extended}");
    }

    #[tokio::test]
    async fn a_worker_waits_for_the_server_and_reconnects() {
        // Nothing listens on the port yet: the worker retries with its backoff until the server comes.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let client = Client::new(&addr, "micro").unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(worker(Arc::default()).run(client, async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (fake, _) = super::super::fake::Fake::start_at(&addr).await;
        fake.push("ok", "5");
        fake.until("the task acknowledged", |s| s.acked.len() == 1).await;
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), run).await.expect("the worker stops").unwrap();
    }
}
