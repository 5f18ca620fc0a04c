//! The embedded engine of the tasks service: `tasks.redb` in the data dir. redb has one writer at a time and
//! commits durably, so each operation is one write transaction and is atomic and crash safe.
//!
//! Tables (string keys, numbers as fixed-width hex so that keys sort by time):
//! - `tasks`: id → [`Record`] (ids are UUIDv7, so they sort by creation time);
//! - `queue`: `s\0{due}\0{id}` for tasks with stages, `w\0{namespace}\0{name}\0{due}\0{id}` for workers' tasks,
//!   for every queued (pending or failed) task;
//! - `leases`: `{lease_until}\0{id}` for every running task;
//! - `finished`: `{finished_ms}\0{id}` for every succeeded or dead task (for the retention);
//! - `dedup`: `{namespace}\0{name}\0{key}` → id, for unfinished tasks queued with a key;
//! - `schedules`: `{namespace}\0{name}` → [`Schedule`].

use super::store::{self, Claim, Outcome, Pick, Record, TaskError, TaskStore};
use micro_core::proto::tasks::{Schedule, State, Task};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use std::path::Path;

type Def = TableDefinition<'static, &'static str, &'static [u8]>;
const TASKS: Def = TableDefinition::new("tasks");
const QUEUE: Def = TableDefinition::new("queue");
const LEASES: Def = TableDefinition::new("leases");
const FINISHED: Def = TableDefinition::new("finished");
const DEDUP: Def = TableDefinition::new("dedup");
const SCHEDULES: Def = TableDefinition::new("schedules");
/// The most finished tasks one purge deletes (the sweeper comes back for more).
const PURGE_BATCH: usize = 1000;

/// The tasks in a redb file.
pub struct RedbTasks {
    db: Database,
}

fn error(e: impl Into<redb::Error>) -> TaskError {
    match e.into() {
        redb::Error::Corrupted(m) => TaskError::Storage(format!("the database file is corrupt: {m}")),
        redb::Error::Io(io) if matches!(io.raw_os_error(), Some(28) | Some(122)) => {
            TaskError::Storage(format!("the disk is full; nothing was written: {io}"))
        }
        other => TaskError::Storage(other.to_string()),
    }
}

fn hex(n: i64) -> String {
    format!("{:016x}", n.max(0) as u64)
}

fn queue_key(r: &Record) -> Option<String> {
    if !r.queued() {
        return None;
    }
    let t = r.task();
    Some(if r.staged() {
        format!("s\0{}\0{}", hex(t.due_ms), t.id)
    } else {
        format!("w\0{}\0{}\0{}\0{}", t.namespace, t.name, hex(t.due_ms), t.id)
    })
}

fn lease_key(r: &Record) -> Option<String> {
    (r.state() == State::Running).then(|| format!("{}\0{}", hex(r.lease_until), r.task().id))
}

fn finished_key(r: &Record) -> Option<String> {
    r.finished().then(|| format!("{}\0{}", hex(r.task().finished_ms), r.task().id))
}

fn dedup_key(r: &Record) -> Option<String> {
    (!r.key.is_empty()).then(|| format!("{}\0{}\0{}", r.task().namespace, r.task().name, r.key))
}

fn schedule_key(namespace: &str, name: &str) -> String {
    format!("{namespace}\0{name}")
}

/// The first key of `table` from `prefix` on that still starts with it.
fn first_under(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Option<String>, TaskError> {
    let mut range = table.range(prefix..).map_err(error)?;
    match range.next() {
        Some(entry) => {
            let (k, _) = entry.map_err(error)?;
            let k = k.value();
            Ok(k.starts_with(prefix).then(|| k.to_string()))
        }
        None => Ok(None),
    }
}

/// The due time of a queue key (the field before the id).
fn due_of(key: &str) -> i64 {
    let mut fields = key.rsplit('\0');
    fields.next();
    fields.next().and_then(|h| u64::from_str_radix(h, 16).ok()).map_or(i64::MAX, |d| d as i64)
}

fn id_of(key: &str) -> &str {
    key.rsplit('\0').next().unwrap_or_default()
}

struct Tx<'t> {
    tasks: Table<'t, &'static str, &'static [u8]>,
    queue: Table<'t, &'static str, &'static [u8]>,
    leases: Table<'t, &'static str, &'static [u8]>,
    finished: Table<'t, &'static str, &'static [u8]>,
    dedup: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tx<'t> {
    fn open(tx: &'t WriteTransaction) -> Result<Self, TaskError> {
        Ok(Self {
            tasks: tx.open_table(TASKS).map_err(error)?,
            queue: tx.open_table(QUEUE).map_err(error)?,
            leases: tx.open_table(LEASES).map_err(error)?,
            finished: tx.open_table(FINISHED).map_err(error)?,
            dedup: tx.open_table(DEDUP).map_err(error)?,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Record>, TaskError> {
        match self.tasks.get(id).map_err(error)? {
            Some(v) => Record::decode_bytes(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `new` in place of `old`, keeping every index in step.
    fn put(&mut self, old: Option<&Record>, new: &Record) -> Result<(), TaskError> {
        if let Some(old) = old {
            self.unindex(old)?;
        }
        let id = new.task().id.clone();
        self.tasks.insert(id.as_str(), new.encode_vec().as_slice()).map_err(error)?;
        if let Some(k) = queue_key(new) {
            self.queue.insert(k.as_str(), [].as_slice()).map_err(error)?;
        }
        if let Some(k) = lease_key(new) {
            self.leases.insert(k.as_str(), [].as_slice()).map_err(error)?;
        }
        if let Some(k) = finished_key(new) {
            self.finished.insert(k.as_str(), [].as_slice()).map_err(error)?;
        }
        if let Some(k) = dedup_key(new).filter(|_| !new.finished()) {
            self.dedup.insert(k.as_str(), id.as_bytes()).map_err(error)?;
        }
        Ok(())
    }

    fn unindex(&mut self, old: &Record) -> Result<(), TaskError> {
        for (table, key) in [
            (&mut self.queue, queue_key(old)),
            (&mut self.leases, lease_key(old)),
            (&mut self.finished, finished_key(old)),
            (&mut self.dedup, dedup_key(old)),
        ] {
            if let Some(k) = key {
                table.remove(k.as_str()).map_err(error)?;
            }
        }
        Ok(())
    }

    fn delete(&mut self, old: &Record) -> Result<(), TaskError> {
        self.unindex(old)?;
        self.tasks.remove(old.task().id.as_str()).map_err(error)?;
        Ok(())
    }

    /// The queue key of the first task due by `now` that `pick` allows.
    fn first_due(&self, pick: &Pick, now: i64) -> Result<Option<String>, TaskError> {
        let prefixes: Vec<String> = match pick {
            Pick::Stages => vec!["s\0".into()],
            Pick::Named { namespace, names } => names.iter().map(|n| format!("w\0{namespace}\0{n}\0")).collect(),
        };
        let mut best: Option<String> = None;
        for prefix in prefixes {
            if let Some(k) = first_under(&self.queue, &prefix)?
                && due_of(&k) <= now
                && best.as_ref().is_none_or(|b| due_of(&k) < due_of(b))
            {
                best = Some(k);
            }
        }
        Ok(best)
    }
}

impl RedbTasks {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> Result<Self, TaskError> {
        let db = Database::create(path)
            .map_err(|e| TaskError::Storage(format!("cannot open {}: {}", path.display(), error(e))))?;
        let tx = db.begin_write().map_err(error)?;
        for def in [TASKS, QUEUE, LEASES, FINISHED, DEDUP, SCHEDULES] {
            tx.open_table(def).map_err(error)?;
        }
        tx.commit().map_err(error)?;
        Ok(Self { db })
    }

    fn write<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, TaskError>) -> Result<T, TaskError> {
        let tx = self.db.begin_write().map_err(error)?;
        let out = {
            let mut t = Tx::open(&tx)?;
            f(&mut t)?
        };
        tx.commit().map_err(error)?;
        Ok(out)
    }

    /// Changes one held lease's task with `f`.
    fn with_lease<T>(&self, id: &str, lease: &str, f: impl FnOnce(&mut Record) -> T) -> Result<(T, Record), TaskError> {
        self.write(|t| {
            let old = t.get(id)?.ok_or_else(|| TaskError::NotFound(format!("task {id} not found")))?;
            if old.state() != State::Running || old.lease != lease || lease.is_empty() {
                return Err(TaskError::LeaseLost(id.to_string()));
            }
            let mut new = old.clone();
            let out = f(&mut new);
            t.put(Some(&old), &new)?;
            Ok((out, new))
        })
    }
}

impl TaskStore for RedbTasks {
    fn put_schedule(&self, schedule: &Schedule) -> Result<(), TaskError> {
        let tx = self.db.begin_write().map_err(error)?;
        {
            let mut t = tx.open_table(SCHEDULES).map_err(error)?;
            let key = schedule_key(&schedule.namespace, &schedule.name);
            t.insert(key.as_str(), schedule.encode_to_vec().as_slice()).map_err(error)?;
        }
        tx.commit().map_err(error)
    }

    fn delete_schedule(&self, namespace: &str, name: &str) -> Result<bool, TaskError> {
        let tx = self.db.begin_write().map_err(error)?;
        let found = {
            let mut t = tx.open_table(SCHEDULES).map_err(error)?;
            t.remove(schedule_key(namespace, name).as_str()).map_err(error)?.is_some()
        };
        tx.commit().map_err(error)?;
        Ok(found)
    }

    fn schedule(&self, namespace: &str, name: &str) -> Result<Option<Schedule>, TaskError> {
        let tx = self.db.begin_read().map_err(error)?;
        let t = tx.open_table(SCHEDULES).map_err(error)?;
        match t.get(schedule_key(namespace, name).as_str()).map_err(error)? {
            Some(v) => Ok(Some(decode_schedule(v.value())?)),
            None => Ok(None),
        }
    }

    fn schedules(&self, namespace: Option<&str>) -> Result<Vec<Schedule>, TaskError> {
        let tx = self.db.begin_read().map_err(error)?;
        let t = tx.open_table(SCHEDULES).map_err(error)?;
        let prefix = namespace.map(|ns| format!("{ns}\0")).unwrap_or_default();
        let mut out = Vec::new();
        for entry in t.range(prefix.as_str()..).map_err(error)? {
            let (k, v) = entry.map_err(error)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode_schedule(v.value())?);
        }
        Ok(out)
    }

    fn fire(&self, namespace: &str, name: &str, due: i64, next: i64, now: i64, task: &Task) -> Result<bool, TaskError> {
        let tx = self.db.begin_write().map_err(error)?;
        {
            let mut schedules = tx.open_table(SCHEDULES).map_err(error)?;
            let key = schedule_key(namespace, name);
            let current = match schedules.get(key.as_str()).map_err(error)? {
                Some(v) => decode_schedule(v.value())?,
                None => return Ok(false),
            };
            if current.next_ms != due {
                return Ok(false);
            }
            let mut updated = current;
            updated.next_ms = next;
            updated.last_ms = now;
            schedules.insert(key.as_str(), updated.encode_to_vec().as_slice()).map_err(error)?;
            let mut t = Tx::open(&tx)?;
            t.put(None, &Record::new(task.clone(), String::new()))?;
        }
        tx.commit().map_err(error)?;
        Ok(true)
    }

    fn enqueue(&self, task: &Task, key: &str) -> Result<Task, TaskError> {
        self.write(|t| {
            let record = Record::new(task.clone(), key.to_string());
            if let Some(k) = dedup_key(&record)
                && let Some(id) =
                    t.dedup.get(k.as_str()).map_err(error)?.map(|v| String::from_utf8_lossy(v.value()).to_string())
                && let Some(existing) = t.get(&id)?
                && !existing.finished()
            {
                return Ok(existing.task().clone());
            }
            t.put(None, &record)?;
            Ok(task.clone())
        })
    }

    fn lease(&self, pick: &Pick, claim: &Claim) -> Result<Option<Task>, TaskError> {
        self.write(|t| {
            let Some(k) = t.first_due(pick, claim.now)? else { return Ok(None) };
            let id = id_of(&k).to_string();
            let Some(old) = t.get(&id)? else {
                t.queue.remove(k.as_str()).map_err(error)?;
                return Ok(None);
            };
            let mut new = old.clone();
            store::claim(&mut new, claim);
            t.put(Some(&old), &new)?;
            Ok(Some(new.task().clone()))
        })
    }

    fn next_due(&self, pick: &Pick) -> Result<Option<i64>, TaskError> {
        let tx = self.db.begin_read().map_err(error)?;
        let queue = tx.open_table(QUEUE).map_err(error)?;
        let prefixes: Vec<String> = match pick {
            Pick::Stages => vec!["s\0".into()],
            Pick::Named { namespace, names } => names.iter().map(|n| format!("w\0{namespace}\0{n}\0")).collect(),
        };
        let mut best: Option<i64> = None;
        for prefix in prefixes {
            if let Some(k) = first_under(&queue, &prefix)? {
                let due = due_of(&k);
                best = Some(best.map_or(due, |b| b.min(due)));
            }
        }
        Ok(best)
    }

    fn extend(&self, id: &str, lease: &str, until: i64) -> Result<(), TaskError> {
        self.with_lease(id, lease, |r| r.lease_until = until).map(|_| ())
    }

    fn complete(&self, id: &str, lease: &str, outcome: Outcome, now: i64) -> Result<Task, TaskError> {
        self.with_lease(id, lease, |r| store::finish(r, outcome, now)).map(|(_, r)| r.task().clone())
    }

    fn get(&self, id: &str) -> Result<Option<Task>, TaskError> {
        let tx = self.db.begin_read().map_err(error)?;
        let t = tx.open_table(TASKS).map_err(error)?;
        match t.get(id).map_err(error)? {
            Some(v) => Ok(Some(Record::decode_bytes(v.value())?.task().clone())),
            None => Ok(None),
        }
    }

    fn list(&self, namespace: &str, state: State, name: &str, limit: usize) -> Result<Vec<Task>, TaskError> {
        let tx = self.db.begin_read().map_err(error)?;
        let t = tx.open_table(TASKS).map_err(error)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(error)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry.map_err(error)?;
            let record = Record::decode_bytes(v.value())?;
            if store::listed(record.task(), namespace, state, name) {
                out.push(record.task().clone());
            }
        }
        Ok(out)
    }

    fn retry(&self, namespace: &str, id: &str, now: i64) -> Result<Task, TaskError> {
        self.write(|t| {
            let old = t
                .get(id)?
                .filter(|r| r.task().namespace == namespace)
                .ok_or_else(|| TaskError::NotFound(format!("task {id} not found")))?;
            let mut new = old.clone();
            store::requeue(&mut new, now)?;
            t.put(Some(&old), &new)?;
            Ok(new.task().clone())
        })
    }

    fn expire_leases(&self, now: i64) -> Result<usize, TaskError> {
        self.write(|t| {
            let end = format!("{}\x01", hex(now));
            let mut expired = Vec::new();
            for entry in t.leases.range(..end.as_str()).map_err(error)? {
                let (k, _) = entry.map_err(error)?;
                expired.push(id_of(k.value()).to_string());
            }
            for id in &expired {
                if let Some(old) = t.get(id)? {
                    let mut new = old.clone();
                    store::expire(&mut new, now);
                    t.put(Some(&old), &new)?;
                }
            }
            Ok(expired.len())
        })
    }

    fn release_stages(&self, now: i64) -> Result<usize, TaskError> {
        self.write(|t| {
            let mut ids = Vec::new();
            for entry in t.leases.iter().map_err(error)? {
                let (k, _) = entry.map_err(error)?;
                ids.push(id_of(k.value()).to_string());
            }
            let mut released = 0;
            for id in &ids {
                if let Some(old) = t.get(id)?
                    && old.staged()
                {
                    let mut new = old.clone();
                    store::expire(&mut new, now);
                    t.put(Some(&old), &new)?;
                    released += 1;
                }
            }
            Ok(released)
        })
    }

    fn purge(&self, before: i64) -> Result<usize, TaskError> {
        self.write(|t| {
            let end = hex(before);
            let mut ids = Vec::new();
            for entry in t.finished.range(..end.as_str()).map_err(error)? {
                if ids.len() >= PURGE_BATCH {
                    break;
                }
                let (k, _) = entry.map_err(error)?;
                ids.push(id_of(k.value()).to_string());
            }
            for id in &ids {
                if let Some(old) = t.get(id)? {
                    t.delete(&old)?;
                }
            }
            Ok(ids.len())
        })
    }
}

fn decode_schedule(bytes: &[u8]) -> Result<Schedule, TaskError> {
    Schedule::decode(bytes).map_err(|e| TaskError::Storage(format!("a schedule record is corrupt: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn task(id: &str, name: &str, due: i64, stages: bool) -> Task {
        Task {
            id: id.into(),
            name: name.into(),
            namespace: "micro".into(),
            state: State::Pending as i32,
            retries: 1,
            backoff_ms: 100,
            due_ms: due,
            stages: if stages { vec![Default::default()] } else { vec![] },
            ..Default::default()
        }
    }

    fn claim(worker: &str, now: i64) -> Claim {
        Claim { worker: worker.into(), lease: format!("lease-{worker}"), now, until: now + 1000 }
    }

    fn open() -> (tempfile::TempDir, RedbTasks) {
        let dir = tempfile::tempdir().unwrap();
        let db = RedbTasks::open(&dir.path().join("tasks.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn the_engine_keeps_the_contract() {
        let (_dir, db) = open();
        store::conformance(Arc::new(db), "micro");
    }

    #[test]
    fn stage_tasks_are_leased_by_the_runners_only() {
        let (_dir, db) = open();
        db.enqueue(&task("1", "s", 0, true), "").unwrap();
        let named = Pick::Named { namespace: "micro".into(), names: vec!["s".into()] };
        assert!(db.lease(&named, &claim("w", 0)).unwrap().is_none());
        assert_eq!(db.next_due(&Pick::Stages).unwrap(), Some(0));
        assert_eq!(db.lease(&Pick::Stages, &claim("r", 0)).unwrap().unwrap().id, "1");
    }

    #[test]
    fn a_restarted_server_releases_the_stage_tasks_it_was_running_but_not_workers_tasks() {
        let (dir, db) = open();
        db.enqueue(&task("1", "s", 0, true), "").unwrap();
        db.enqueue(&task("2", "a", 0, false), "").unwrap();
        db.lease(&Pick::Stages, &claim("runner", 0)).unwrap().unwrap();
        let named = Pick::Named { namespace: "micro".into(), names: vec!["a".into()] };
        db.lease(&named, &claim("w", 0)).unwrap().unwrap();
        drop(db);
        let db = RedbTasks::open(&dir.path().join("tasks.redb")).unwrap();
        assert_eq!(db.release_stages(10).unwrap(), 1);
        let again = db.lease(&Pick::Stages, &claim("runner", 10)).unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), ("1", 2));
        assert!(db.lease(&named, &claim("v", 10)).unwrap().is_none(), "the worker's lease holds until it expires");
    }
}
