//! The PostgreSQL engine of the tasks service (cargo feature `postgres`), used when the server's store is in
//! PostgreSQL: every server that shares the database shares the schedules and the queue.
//!
//! ```sql
//! CREATE TABLE micro_tasks (id text PRIMARY KEY, namespace text, name text, state integer, staged boolean,
//!                           due_ms bigint, lease_until bigint, finished_ms bigint, dedup text, record bytea);
//! CREATE TABLE micro_schedules (namespace text, name text, next_ms bigint, record bytea,
//!                               PRIMARY KEY (namespace, name));
//! ```
//!
//! `record` is the encoded [`Record`] (or [`Schedule`]); the other columns repeat what queries select by. Each
//! operation is one transaction: a lease takes the first due row with `FOR UPDATE SKIP LOCKED`, so two servers
//! never lease one task; a firing locks the schedule's row (`FOR UPDATE`), checks that its `next_ms` is still the
//! one that was due, moves it on and queues the task in the same transaction, so a firing happens once whichever
//! servers try it. The state transitions themselves are [`super::store`]'s.
//!
//! A transaction that queues a task or changes a schedule ends with `NOTIFY micro_state, 'tasks'`: every server
//! that shares the database wakes its runners, waiting leases and scheduler at once (they also look every second,
//! in case a notification was missed).

use super::store::{self, Claim, Outcome, Pick, Record, TaskError, TaskStore};
use crate::state::pg::{Conn, pg_message};
use micro_core::proto::tasks::{Schedule, State, Task};
use prost::Message;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// The schema, created when missing, under a transaction-scoped advisory lock (see the store's).
const SCHEMA: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(7283041962);
CREATE TABLE IF NOT EXISTS micro_tasks (
    id text COLLATE "C" PRIMARY KEY,
    namespace text NOT NULL,
    name text NOT NULL,
    state integer NOT NULL,
    staged boolean NOT NULL,
    due_ms bigint NOT NULL,
    lease_until bigint NOT NULL,
    finished_ms bigint NOT NULL,
    dedup text NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS micro_tasks_queue ON micro_tasks (staged, namespace, name, due_ms) WHERE state IN (1, 4);
CREATE INDEX IF NOT EXISTS micro_tasks_leases ON micro_tasks (lease_until) WHERE state = 2;
CREATE INDEX IF NOT EXISTS micro_tasks_finished ON micro_tasks (finished_ms) WHERE state IN (3, 5);
CREATE INDEX IF NOT EXISTS micro_tasks_list ON micro_tasks (namespace, id);
CREATE TABLE IF NOT EXISTS micro_schedules (
    namespace text NOT NULL,
    name text NOT NULL,
    next_ms bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (namespace, name)
);
COMMIT;
"#;

/// The payload of the notifications on `micro_state` that announce tasks changes (see [`crate::state::listen`]).
pub const ANNOUNCE_AREA: &str = "tasks";

/// The most rows one sweep or purge changes (the sweeper comes back for more).
const BATCH: i64 = 1000;

/// The tasks in PostgreSQL.
pub struct PgTasks {
    conn: Conn,
}

fn failed(e: tokio_postgres::Error) -> TaskError {
    TaskError::Storage(pg_message(&e))
}

/// Queries inside one transaction, blocking on the connection's runtime.
struct Q<'a> {
    c: &'a Client,
    rt: &'a tokio::runtime::Handle,
}

impl Q<'_> {
    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, TaskError> {
        self.rt.block_on(self.c.query(sql, params)).map_err(failed)
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, TaskError> {
        self.rt.block_on(self.c.execute(sql, params)).map_err(failed)
    }

    /// Tells every server that shares the database (at commit) that tasks were queued or schedules changed
    /// (`NOTIFY micro_state, 'tasks'`), so that their runners, waiting leases and schedulers look again.
    fn announce(&self) -> Result<(), TaskError> {
        self.execute("SELECT pg_notify('micro_state', $1)", &[&ANNOUNCE_AREA]).map(|_| ())
    }

    fn batch(&self, sql: &str) -> Result<(), TaskError> {
        self.rt.block_on(self.c.batch_execute(sql)).map_err(failed)
    }

    fn records(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Record>, TaskError> {
        self.query(sql, params)?.iter().map(|r| Record::decode_bytes(r.get::<_, &[u8]>(0))).collect()
    }

    fn record(&self, id: &str) -> Result<Option<Record>, TaskError> {
        Ok(self.records("SELECT record FROM micro_tasks WHERE id = $1 FOR UPDATE", &[&id])?.pop())
    }

    fn put(&self, r: &Record) -> Result<(), TaskError> {
        let t = r.task();
        for text in [&t.id, &t.namespace, &t.name, &r.key] {
            crate::state::pg::check_text("task name or key", text).map_err(TaskError::Storage)?;
        }
        self.execute(
            "INSERT INTO micro_tasks (id, namespace, name, state, staged, due_ms, lease_until, finished_ms, dedup, \
             record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET \
             state = excluded.state, due_ms = excluded.due_ms, lease_until = excluded.lease_until, \
             finished_ms = excluded.finished_ms, record = excluded.record",
            &[
                &t.id,
                &t.namespace,
                &t.name,
                &t.state,
                &r.staged(),
                &t.due_ms,
                &r.lease_until,
                &t.finished_ms,
                &r.key,
                &r.encode_vec(),
            ],
        )?;
        Ok(())
    }
}

impl PgTasks {
    /// Connects and creates the schema when missing. Call it inside a tokio runtime but off its workers.
    pub fn open(url: &str) -> Result<Self, TaskError> {
        let conn = Conn::open(url, "tasks").map_err(|e| TaskError::Storage(e.to_string()))?;
        {
            let mut guard = conn.lock().map_err(|e| TaskError::Storage(e.to_string()))?;
            let c = guard.as_mut().expect("lock connects");
            conn.runtime.block_on(c.batch_execute(SCHEMA)).map_err(failed)?;
        }
        Ok(Self { conn })
    }

    /// Runs `f` in one transaction: committed when it succeeds, rolled back otherwise.
    fn tx<T>(&self, f: impl FnOnce(&Q<'_>) -> Result<T, TaskError>) -> Result<T, TaskError> {
        let guard = self.conn.lock().map_err(|e| TaskError::Storage(e.to_string()))?;
        let c = guard.as_ref().expect("lock connects");
        let q = Q { c, rt: &self.conn.runtime };
        q.batch("BEGIN")?;
        match f(&q).and_then(|v| q.batch("COMMIT").map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = q.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Changes one held lease's task with `f`.
    fn with_lease(&self, id: &str, lease: &str, f: impl FnOnce(&mut Record)) -> Result<Record, TaskError> {
        self.tx(|q| {
            let mut r = q.record(id)?.ok_or_else(|| TaskError::NotFound(format!("task {id} not found")))?;
            if r.state() != State::Running || r.lease != lease || lease.is_empty() {
                return Err(TaskError::LeaseLost(id.to_string()));
            }
            f(&mut r);
            q.put(&r)?;
            Ok(r)
        })
    }

    fn expire_where(&self, filter: &str, now: i64) -> Result<usize, TaskError> {
        self.tx(|q| {
            let sql = format!(
                "SELECT record FROM micro_tasks WHERE state = 2 AND {filter} ORDER BY lease_until LIMIT {BATCH} \
                 FOR UPDATE SKIP LOCKED"
            );
            let records = q.records(&sql, &[&now])?;
            for mut r in records.iter().cloned() {
                store::expire(&mut r, now);
                q.put(&r)?;
            }
            if !records.is_empty() {
                q.announce()?;
            }
            Ok(records.len())
        })
    }
}

fn decode_schedule(bytes: &[u8]) -> Result<Schedule, TaskError> {
    Schedule::decode(bytes).map_err(|e| TaskError::Storage(format!("a schedule record is corrupt: {e}")))
}

const QUEUED_STAGES: &str = "state IN (1, 4) AND staged";
const QUEUED_NAMED: &str = "state IN (1, 4) AND NOT staged AND namespace = $2 AND name = ANY($3)";

impl TaskStore for PgTasks {
    fn put_schedule(&self, schedule: &Schedule) -> Result<(), TaskError> {
        crate::state::pg::check_text("schedule name", &schedule.name).map_err(TaskError::Storage)?;
        self.tx(|q| {
            q.execute(
                "INSERT INTO micro_schedules (namespace, name, next_ms, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (namespace, name) DO UPDATE SET next_ms = excluded.next_ms, record = excluded.record",
                &[&schedule.namespace, &schedule.name, &schedule.next_ms, &schedule.encode_to_vec()],
            )?;
            q.announce()
        })
    }

    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool, TaskError> {
        self.tx(|q| {
            let deleted =
                q.execute("DELETE FROM micro_schedules WHERE namespace = $1 AND name = $2", &[&namespace, &name])?;
            q.announce()?;
            Ok(deleted > 0)
        })
    }

    fn schedule(&self, namespace: &str, name: &str) -> Result<Option<Schedule>, TaskError> {
        self.tx(|q| {
            q.query("SELECT record FROM micro_schedules WHERE namespace = $1 AND name = $2", &[&namespace, &name])?
                .first()
                .map(|r| decode_schedule(r.get(0)))
                .transpose()
        })
    }

    fn schedules(&self, namespace: Option<&str>) -> Result<Vec<Schedule>, TaskError> {
        self.tx(|q| {
            let rows = match namespace {
                Some(ns) => q.query(
                    "SELECT record FROM micro_schedules WHERE namespace = $1 ORDER BY name COLLATE \"C\"",
                    &[&ns],
                )?,
                None => q.query("SELECT record FROM micro_schedules ORDER BY namespace, name COLLATE \"C\"", &[])?,
            };
            rows.iter().map(|r| decode_schedule(r.get(0))).collect()
        })
    }

    fn fire(&self, namespace: &str, name: &str, due: i64, next: i64, now: i64, task: &Task) -> Result<bool, TaskError> {
        self.tx(|q| {
            let rows = q.query(
                "SELECT record FROM micro_schedules WHERE namespace = $1 AND name = $2 FOR UPDATE",
                &[&namespace, &name],
            )?;
            let Some(row) = rows.first() else { return Ok(false) };
            let mut schedule = decode_schedule(row.get(0))?;
            if schedule.next_ms != due {
                return Ok(false);
            }
            schedule.next_ms = next;
            schedule.last_ms = now;
            q.execute(
                "UPDATE micro_schedules SET next_ms = $3, record = $4 WHERE namespace = $1 AND name = $2",
                &[&namespace, &name, &next, &schedule.encode_to_vec()],
            )?;
            q.put(&Record::new(task.clone(), String::new()))?;
            q.announce()?;
            Ok(true)
        })
    }

    fn enqueue(&self, task: &Task, key: &str) -> Result<Task, TaskError> {
        self.tx(|q| {
            if !key.is_empty() {
                q.execute(
                    "SELECT pg_advisory_xact_lock(728304199, hashtext($1 || '/' || $2 || '/' || $3))",
                    &[&task.namespace, &task.name, &key],
                )?;
                let existing = q.records(
                    "SELECT record FROM micro_tasks WHERE namespace = $1 AND name = $2 AND dedup = $3 \
                     AND state NOT IN (3, 5) LIMIT 1",
                    &[&task.namespace, &task.name, &key],
                )?;
                if let Some(r) = existing.first() {
                    return Ok(r.task().clone());
                }
            }
            q.put(&Record::new(task.clone(), key.to_string()))?;
            q.announce()?;
            Ok(task.clone())
        })
    }

    fn lease(&self, pick: &Pick, claim: &Claim) -> Result<Option<Task>, TaskError> {
        self.tx(|q| {
            let found = match pick {
                Pick::Stages => q.records(
                    &format!(
                        "SELECT record FROM micro_tasks WHERE {QUEUED_STAGES} AND due_ms <= $1 ORDER BY due_ms \
                         LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&claim.now],
                )?,
                Pick::Named { namespace, names } => q.records(
                    &format!(
                        "SELECT record FROM micro_tasks WHERE {QUEUED_NAMED} AND due_ms <= $1 ORDER BY due_ms \
                         LIMIT 1 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&claim.now, namespace, names],
                )?,
            };
            let Some(mut r) = found.into_iter().next() else { return Ok(None) };
            store::claim(&mut r, claim);
            q.put(&r)?;
            Ok(Some(r.task().clone()))
        })
    }

    fn next_due(&self, pick: &Pick) -> Result<Option<i64>, TaskError> {
        self.tx(|q| {
            let rows = match pick {
                Pick::Stages => {
                    q.query(&format!("SELECT min(due_ms) FROM micro_tasks WHERE {QUEUED_STAGES} AND $1"), &[&true])?
                }
                Pick::Named { namespace, names } => q.query(
                    &format!("SELECT min(due_ms) FROM micro_tasks WHERE {QUEUED_NAMED} AND $1"),
                    &[&true, namespace, names],
                )?,
            };
            Ok(rows.first().and_then(|r| r.get::<_, Option<i64>>(0)))
        })
    }

    fn extend(&self, id: &str, lease: &str, until: i64) -> Result<(), TaskError> {
        self.with_lease(id, lease, |r| r.lease_until = until).map(|_| ())
    }

    fn complete(&self, id: &str, lease: &str, outcome: Outcome, now: i64) -> Result<Task, TaskError> {
        self.with_lease(id, lease, |r| store::finish(r, outcome, now)).map(|r| r.task().clone())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, TaskError> {
        self.tx(|q| {
            Ok(q.records("SELECT record FROM micro_tasks WHERE id = $1", &[&id])?.pop().map(|r| r.task().clone()))
        })
    }

    fn list(&self, namespace: &str, state: State, name: &str, limit: usize) -> Result<Vec<Task>, TaskError> {
        let (state, limit) = (state as i32, limit as i64);
        self.tx(|q| {
            let records = q.records(
                "SELECT record FROM micro_tasks WHERE namespace = $1 AND ($2 = 0 OR state = $2) \
                 AND ($3 = '' OR name = $3) ORDER BY id DESC LIMIT $4",
                &[&namespace, &state, &name, &limit],
            )?;
            Ok(records.into_iter().map(|r| r.task().clone()).collect())
        })
    }

    fn retry(&self, namespace: &str, id: &str, now: i64) -> Result<Task, TaskError> {
        self.tx(|q| {
            let mut r = q
                .record(id)?
                .filter(|r| r.task().namespace == namespace)
                .ok_or_else(|| TaskError::NotFound(format!("task {id} not found")))?;
            store::requeue(&mut r, now)?;
            q.put(&r)?;
            q.announce()?;
            Ok(r.task().clone())
        })
    }

    fn expire_leases(&self, now: i64) -> Result<usize, TaskError> {
        self.expire_where("lease_until <= $1", now)
    }

    fn release_stages(&self, now: i64) -> Result<usize, TaskError> {
        self.expire_where("staged AND $1 = $1", now)
    }

    fn purge(&self, before: i64) -> Result<usize, TaskError> {
        self.tx(|q| {
            q.execute(
                &format!(
                    "DELETE FROM micro_tasks WHERE id IN (SELECT id FROM micro_tasks WHERE state IN (3, 5) \
                     AND finished_ms < $1 LIMIT {BATCH})"
                ),
                &[&before],
            )
            .map(|n| n as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's contract, in the database of `MICRO_TEST_POSTGRES_URL` (skipped when unset, except in CI).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_engine_keeps_the_contract() {
        let Some(url) = micro_core::testing::backend_url("MICRO_TEST_POSTGRES_URL", "postgres") else { return };
        let run = format!("test-{}", uuid::Uuid::new_v4());
        tokio::task::spawn_blocking(move || {
            let db = PgTasks::open(&url).unwrap();
            super::super::store::conformance(std::sync::Arc::new(db), &run);
        })
        .await
        .unwrap();
    }
}
