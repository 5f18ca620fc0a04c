//! The tasks service's persistence: one [`TaskStore`] trait, an embedded engine ([`super::redb`]) and a PostgreSQL
//! one ([`super::postgres`], cargo feature `postgres`).
//!
//! A task is kept as a [`Record`]: the wire [`Task`] plus what only the server sees (the current lease, its expiry
//! and the deduplication key). What happens to a task at each step (leased, acknowledged, failed, its lease expired,
//! retried) is decided here, by pure functions that every engine applies inside its own transaction, so that the
//! engines only differ in how they find and lock records.
//!
//! Every method blocks: callers run them off the async workers (`spawn_blocking`).

use micro_core::proto::tasks::{Schedule, StageResult, State, Task};

/// The longest delay between two attempts, whatever the backoff and the attempts.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;

/// What went wrong with a tasks operation.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task or schedule.
    #[error("{0}")]
    NotFound(String),
    /// The caller does not hold the task's lease (it expired, and maybe another worker has it now).
    #[error("the lease of task {0} is not held: it expired or the task was already completed")]
    LeaseLost(String),
    /// The task is not in a state that allows the operation.
    #[error("{0}")]
    State(String),
    /// Storage failed.
    #[error("tasks storage: {0}")]
    Storage(String),
}

/// A stored task: the wire task and the server's bookkeeping.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// The task as clients see it.
    #[prost(message, optional, tag = "1")]
    pub task: Option<Task>,
    /// The current lease (empty when not running).
    #[prost(string, tag = "2")]
    pub lease: String,
    /// When the current lease expires (Unix milliseconds).
    #[prost(int64, tag = "3")]
    pub lease_until: i64,
    /// The deduplication key given to `Enqueue`.
    #[prost(string, tag = "4")]
    pub key: String,
}

impl Record {
    /// A record of `task`, deduplicated by `key`.
    pub fn new(task: Task, key: String) -> Self {
        Self { task: Some(task), lease: String::new(), lease_until: 0, key }
    }

    /// The task (a record always has one).
    pub fn task(&self) -> &Task {
        self.task.as_ref().expect("a record holds a task")
    }

    /// The task, to change.
    pub fn task_mut(&mut self) -> &mut Task {
        self.task.get_or_insert_with(Default::default)
    }

    /// The task's state.
    pub fn state(&self) -> State {
        State::try_from(self.task().state).unwrap_or(State::Pending)
    }

    /// Whether the task waits in the queue (pending, or failed and waiting for its retry).
    pub fn queued(&self) -> bool {
        matches!(self.state(), State::Pending | State::Failed)
    }

    /// Whether the task reached a final state.
    pub fn finished(&self) -> bool {
        matches!(self.state(), State::Succeeded | State::Dead)
    }

    /// Whether the server runs the task (it has stages) rather than a worker.
    pub fn staged(&self) -> bool {
        !self.task().stages.is_empty()
    }

    /// Encodes the record.
    pub fn encode_vec(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }

    /// Decodes a record.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, TaskError> {
        let record: Record =
            prost::Message::decode(bytes).map_err(|e| TaskError::Storage(format!("a task record is corrupt: {e}")))?;
        if record.task.is_none() {
            return Err(TaskError::Storage("a task record holds no task".into()));
        }
        Ok(record)
    }
}

/// Which queued tasks a lease may take.
#[derive(Clone, Debug)]
pub enum Pick {
    /// Tasks with stages, of any namespace: the server's stage runner.
    Stages,
    /// Worker tasks of `namespace` with one of `names`.
    Named {
        /// The namespace.
        namespace: String,
        /// The task names.
        names: Vec<String>,
    },
}

impl Pick {
    /// Whether `record` (queued) may be taken.
    pub fn matches(&self, record: &Record) -> bool {
        match self {
            Pick::Stages => record.staged(),
            Pick::Named { namespace, names } => {
                !record.staged() && record.task().namespace == *namespace && names.contains(&record.task().name)
            }
        }
    }
}

/// A lease request: who takes it and until when.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The worker's id.
    pub worker: String,
    /// The new lease.
    pub lease: String,
    /// Now (Unix milliseconds).
    pub now: i64,
    /// When the lease expires.
    pub until: i64,
}

impl Claim {
    /// A fresh lease for `worker` from now, for `lease_ms`.
    pub fn fresh(worker: &str, lease_ms: i64) -> Self {
        let now = super::now_ms();
        Claim { worker: worker.to_string(), lease: uuid::Uuid::new_v4().to_string(), now, until: now + lease_ms }
    }
}

/// How a leased attempt ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// It succeeded, with a worker's result (JSON) and the stages' results.
    Succeeded {
        /// A worker's result.
        result: String,
        /// The stages' results.
        results: Vec<StageResult>,
    },
    /// It failed with an error.
    Failed {
        /// What went wrong.
        error: String,
        /// The stages' results.
        results: Vec<StageResult>,
    },
}

/// The durable state of schedules and tasks. Each method is atomic; the ones that change a task check its state
/// (and lease) inside the same transaction.
pub trait TaskStore: Send + Sync {
    /// Creates or replaces a schedule (by namespace and name).
    fn put_schedule(&self, schedule: &Schedule) -> Result<(), TaskError>;
    /// Deletes a schedule; false when there was none.
    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool, TaskError>;
    /// One schedule.
    fn schedule(&self, namespace: &str, name: &str) -> Result<Option<Schedule>, TaskError>;
    /// The schedules of a namespace (every namespace when `None`), by name.
    fn schedules(&self, namespace: Option<&str>) -> Result<Vec<Schedule>, TaskError>;
    /// Fires a schedule that is due: if its `next_ms` is still `due` (no other server fired it), sets it to `next`,
    /// its `last_ms` to `now`, and queues `task`, all at once. Returns whether it fired.
    fn fire(&self, namespace: &str, name: &str, due: i64, next: i64, now: i64, task: &Task) -> Result<bool, TaskError>;
    /// Queues a task; with a non-empty `key`, a task of the same namespace, name and key that is not finished is
    /// returned instead.
    fn enqueue(&self, task: &Task, key: &str) -> Result<Task, TaskError>;
    /// Leases the queued task due first (at `claim.now`) that `pick` allows, if any.
    fn lease(&self, pick: &Pick, claim: &Claim) -> Result<Option<Task>, TaskError>;
    /// When the first queued task that `pick` allows is due, if any (a hint: it may be taken already).
    fn next_due(&self, pick: &Pick) -> Result<Option<i64>, TaskError>;
    /// Extends a held lease until `until`.
    fn extend(&self, id: &str, lease: &str, until: i64) -> Result<(), TaskError>;
    /// Ends a held lease with `outcome` at `now`; returns the task after it.
    fn complete(&self, id: &str, lease: &str, outcome: Outcome, now: i64) -> Result<Task, TaskError>;
    /// One task.
    fn get(&self, id: &str) -> Result<Option<Task>, TaskError>;
    /// Tasks of a namespace, newest first, filtered by state (unspecified: any) and name (empty: any).
    fn list(&self, namespace: &str, state: State, name: &str, limit: usize) -> Result<Vec<Task>, TaskError>;
    /// Queues a dead or failed task of `namespace` again, its attempts reset.
    fn retry(&self, namespace: &str, id: &str, now: i64) -> Result<Task, TaskError>;
    /// Ends the leases that expired by `now` (see [`expire`]); returns how many.
    fn expire_leases(&self, now: i64) -> Result<usize, TaskError>;
    /// Ends the leases of every running task with stages, expired or not (see [`expire`]): for a server that is
    /// the only runner of its stage tasks, at start. Returns how many.
    fn release_stages(&self, now: i64) -> Result<usize, TaskError>;
    /// Deletes finished tasks that finished before `before`; returns how many.
    fn purge(&self, before: i64) -> Result<usize, TaskError>;
}

/// The delay before retry after `attempts` attempts: `backoff_ms` doubling from the first.
pub fn backoff(backoff_ms: u64, attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(40);
    backoff_ms.saturating_mul(1u64 << doublings).min(MAX_BACKOFF_MS)
}

/// A queued task taken by a lease: running, one more attempt.
pub fn claim(record: &mut Record, claim: &Claim) {
    record.lease = claim.lease.clone();
    record.lease_until = claim.until;
    let task = record.task_mut();
    task.state = State::Running as i32;
    task.attempts = task.attempts.saturating_add(1);
    task.started_ms = claim.now;
    task.worker = claim.worker.clone();
}

/// An attempt's end: succeeded, or failed and retried after the backoff, or dead once the retries are spent.
pub fn finish(record: &mut Record, outcome: Outcome, now: i64) {
    record.lease.clear();
    record.lease_until = 0;
    let task = record.task_mut();
    task.worker.clear();
    match outcome {
        Outcome::Succeeded { result, results } => {
            task.state = State::Succeeded as i32;
            task.result = result;
            task.results = results;
            task.error.clear();
            task.finished_ms = now;
        }
        Outcome::Failed { error, results } => {
            task.error = error;
            task.results = results;
            if task.attempts > task.retries {
                task.state = State::Dead as i32;
                task.finished_ms = now;
            } else {
                task.state = State::Failed as i32;
                task.due_ms = now.saturating_add(backoff(task.backoff_ms, task.attempts) as i64);
            }
        }
    }
}

/// A lease that expired (its worker died or hung): the attempt counts; the task is queued again at once, or is
/// dead when its retries are spent.
pub fn expire(record: &mut Record, now: i64) {
    let worker = record.task().worker.clone();
    record.lease.clear();
    record.lease_until = 0;
    let task = record.task_mut();
    task.worker.clear();
    task.error = if worker.is_empty() { "lease expired".into() } else { format!("lease expired (worker {worker})") };
    if task.attempts > task.retries {
        task.state = State::Dead as i32;
        task.finished_ms = now;
    } else {
        task.state = State::Pending as i32;
        task.due_ms = now;
    }
}

/// A dead or failed task queued again, its attempts reset.
pub fn requeue(record: &mut Record, now: i64) -> Result<(), TaskError> {
    let state = record.state();
    if !matches!(state, State::Dead | State::Failed) {
        return Err(TaskError::State(format!(
            "task {} is {}: only a dead or failed task can be retried",
            record.task().id,
            state_name(state)
        )));
    }
    let task = record.task_mut();
    task.state = State::Pending as i32;
    task.attempts = 0;
    task.due_ms = now;
    task.finished_ms = 0;
    Ok(())
}

/// A state's name, lower case: `pending`, `running`, `succeeded`, `failed`, `dead`.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Unspecified => "unspecified",
        State::Pending => "pending",
        State::Running => "running",
        State::Succeeded => "succeeded",
        State::Failed => "failed",
        State::Dead => "dead",
    }
}

/// Whether `task` passes a listing's filters.
pub fn listed(task: &Task, namespace: &str, state: State, name: &str) -> bool {
    task.namespace == namespace
        && (state == State::Unspecified || task.state == state as i32)
        && (name.is_empty() || task.name == name)
}

/// Checks that an engine keeps the [`TaskStore`] contract: each due task leased once (also under concurrent
/// leases), leases required and expiring, keys deduplicating, schedules firing once, finished tasks purged. Ids and
/// names are scoped by `run`, so a shared database may hold other runs' rows.
#[cfg(test)]
pub(crate) fn conformance(db: std::sync::Arc<dyn TaskStore>, run: &str) {
    let id = |n: u32| format!("{run}-{n}");
    let task = |n: u32, name: &str, due: i64| Task {
        id: id(n),
        name: name.into(),
        namespace: run.into(),
        state: State::Pending as i32,
        retries: 1,
        backoff_ms: 100,
        due_ms: due,
        ..Default::default()
    };
    let claim = |worker: &str, now: i64| Claim {
        worker: worker.into(),
        lease: format!("lease-{worker}"),
        now,
        until: now + 1000,
    };
    let pick =
        |names: &[&str]| Pick::Named { namespace: run.into(), names: names.iter().map(|n| n.to_string()).collect() };
    let done = || Outcome::Succeeded { result: "{}".into(), results: vec![] };

    // Due order, names, and nothing before it is due.
    db.enqueue(&task(1, "a", 20), "").unwrap();
    db.enqueue(&task(2, "a", 10), "").unwrap();
    db.enqueue(&task(3, "b", 0), "").unwrap();
    assert!(db.lease(&pick(&["a"]), &claim("w", 5)).unwrap().is_none(), "nothing of a is due at 5");
    assert_eq!(db.next_due(&pick(&["a"])).unwrap(), Some(10));
    assert_eq!(db.lease(&pick(&["a"]), &claim("w", 30)).unwrap().unwrap().id, id(2));
    assert_eq!(db.lease(&pick(&["a", "b"]), &claim("w", 30)).unwrap().unwrap().id, id(3));
    assert_eq!(db.lease(&pick(&["a"]), &claim("w", 30)).unwrap().unwrap().id, id(1));
    assert!(db.lease(&pick(&["a", "b"]), &claim("w", 30)).unwrap().is_none());

    // Concurrent leases of one task: exactly one gets it.
    db.enqueue(&task(5, "c", 0), "").unwrap();
    let got: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (db, pick) = (db.clone(), pick(&["c"]));
                s.spawn(move || db.lease(&pick, &claim(&format!("w{i}"), 100)).unwrap().is_some() as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(got, 1);

    // Acks need the lease; an expired lease comes back, the attempt counted.
    db.enqueue(&task(6, "d", 0), "").unwrap();
    db.lease(&pick(&["d"]), &claim("w", 0)).unwrap().unwrap();
    assert!(matches!(db.complete(&id(6), "wrong", done(), 1), Err(TaskError::LeaseLost(_))));
    db.extend(&id(6), "lease-w", 2000).unwrap();
    db.expire_leases(1500).unwrap();
    assert_eq!(db.get(&id(6)).unwrap().unwrap().state, State::Running as i32, "extended");
    db.expire_leases(2500).unwrap();
    assert!(matches!(db.complete(&id(6), "lease-w", done(), 1), Err(TaskError::LeaseLost(_))));
    let again = db.lease(&pick(&["d"]), &claim("v", 2600)).unwrap().unwrap();
    assert_eq!((again.attempts, again.error.as_str()), (2, "lease expired (worker w)"));
    let t = db.complete(&id(6), "lease-v", done(), 2700).unwrap();
    assert_eq!(t.state, State::Succeeded as i32);
    assert_eq!(db.list(run, State::Succeeded, "d", 10).unwrap().len(), 1);
    db.purge(2701).unwrap();
    assert!(db.get(&id(6)).unwrap().is_none(), "purged");

    // Failures: retried, then dead; retry queues again.
    db.enqueue(&task(7, "e", 0), "").unwrap();
    for now in [0, 1000] {
        db.lease(&pick(&["e"]), &claim("w", now)).unwrap().unwrap();
        db.complete(&id(7), "lease-w", Outcome::Failed { error: format!("boom {now}"), results: vec![] }, now).unwrap();
    }
    let dead = db.get(&id(7)).unwrap().unwrap();
    assert_eq!((dead.state, dead.attempts, dead.error.as_str()), (State::Dead as i32, 2, "boom 1000"));
    assert!(matches!(db.retry("elsewhere", &id(7), 2000), Err(TaskError::NotFound(_))));
    assert_eq!(db.retry(run, &id(7), 2000).unwrap().state, State::Pending as i32);

    // Keys deduplicate unfinished tasks.
    assert_eq!(db.enqueue(&task(8, "f", 0), "k").unwrap().id, id(8));
    assert_eq!(db.enqueue(&task(9, "f", 0), "k").unwrap().id, id(8));
    assert_eq!(db.enqueue(&task(10, "f", 0), "other").unwrap().id, id(10));

    // A due schedule fires once.
    let s = Schedule { name: "s".into(), namespace: run.into(), next_ms: 100, ..Default::default() };
    db.put_schedule(&s).unwrap();
    let fired: usize = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let db = db.clone();
                let t = task(20 + i, "s", 100);
                sc.spawn(move || db.fire(run, "s", 100, 200, 100, &t).unwrap() as usize)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(fired, 1);
    let s = db.schedule(run, "s").unwrap().unwrap();
    assert_eq!((s.next_ms, s.last_ms), (200, 100));
    assert_eq!(db.list(run, State::Unspecified, "s", 10).unwrap().len(), 1);
    assert_eq!(db.schedules(Some(run)).unwrap().len(), 1);
    assert!(db.delete_schedule(run, "s").unwrap());
    assert!(!db.delete_schedule(run, "s").unwrap());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(retries: u32) -> Record {
        Record::new(
            Task { id: "t".into(), state: State::Pending as i32, retries, backoff_ms: 1000, ..Default::default() },
            String::new(),
        )
    }

    fn take(r: &mut Record, now: i64) {
        claim(r, &Claim { worker: "w".into(), lease: "l".into(), now, until: now + 30_000 });
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!([1, 2, 3, 4].map(|a| backoff(1000, a)), [1000, 2000, 4000, 8000]);
        assert_eq!(backoff(1000, 60), MAX_BACKOFF_MS);
        // The defaults (3 retries from 1 s) reach dead within 1 + 2 + 4 = 7 s of the first failure.
        assert_eq!((1..=3).map(|a| backoff(1000, a)).sum::<u64>(), 7000);
    }

    #[test]
    fn failures_retry_with_backoff_then_die_keeping_the_last_error() {
        let mut r = record(2);
        for (attempt, now) in [(1, 0), (2, 10_000)] {
            take(&mut r, now);
            assert_eq!((r.state(), r.task().attempts, r.lease.as_str()), (State::Running, attempt, "l"));
            finish(&mut r, Outcome::Failed { error: format!("boom {attempt}"), results: vec![] }, now);
            assert_eq!(r.state(), State::Failed);
            assert_eq!(r.task().due_ms, now + backoff(1000, attempt) as i64);
            assert!(r.lease.is_empty() && r.queued());
        }
        take(&mut r, 20_000);
        finish(&mut r, Outcome::Failed { error: "boom 3".into(), results: vec![] }, 20_000);
        assert_eq!((r.state(), r.task().attempts, r.task().error.as_str()), (State::Dead, 3, "boom 3"));
        assert_eq!(r.task().finished_ms, 20_000);
        requeue(&mut r, 30_000).unwrap();
        assert_eq!((r.state(), r.task().attempts, r.task().due_ms), (State::Pending, 0, 30_000));
        let e = requeue(&mut r, 30_000).unwrap_err();
        assert!(e.to_string().contains("is pending: only a dead or failed task"), "{e}");
    }

    #[test]
    fn success_clears_the_error() {
        let mut r = record(3);
        take(&mut r, 0);
        finish(&mut r, Outcome::Failed { error: "once".into(), results: vec![] }, 1);
        take(&mut r, 2000);
        finish(&mut r, Outcome::Succeeded { result: "{}".into(), results: vec![] }, 2001);
        assert_eq!((r.state(), r.task().error.as_str(), r.task().attempts), (State::Succeeded, "", 2));
        assert!(r.finished());
    }

    #[test]
    fn an_expired_lease_counts_as_an_attempt() {
        let mut r = record(1);
        take(&mut r, 0);
        expire(&mut r, 40_000);
        assert_eq!((r.state(), r.task().due_ms), (State::Pending, 40_000));
        assert_eq!(r.task().error, "lease expired (worker w)");
        take(&mut r, 40_000);
        expire(&mut r, 80_000);
        assert_eq!(r.state(), State::Dead);
    }
}
