//! Durable records of the services the runtime manages: one JSON record per service in `runtime.redb` in the data
//! dir, so that services come back when the server restarts.
//!
//! A record holds what the service was asked to be (source, command, environment, instances) and what it became
//! (status, error, restarts, the build it runs, the processes it started and how to find theirs). Writes are small,
//! each in its own durable transaction; callers run them off the async workers.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The one table: `<namespace>/<name>/<version>` → JSON of a [`Record`].
const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("services");

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("runtime records: {0}")]
pub struct RecordsError(String);

fn err(e: impl std::fmt::Display) -> RecordsError {
    RecordsError(e.to_string())
}

/// Where a service is in its life, as Micro numbers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not known.
    #[default]
    Unknown,
    /// Recorded; nothing happened yet.
    Pending,
    /// Its source is fetched and built.
    Building,
    /// Its process started and is not ready yet.
    Starting,
    /// Ready: registered, or alive long enough.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
    /// Failed: see the record's error.
    Error,
}

impl Status {
    /// Micro's number for the status (`Service.status`).
    pub fn code(self) -> i32 {
        match self {
            Status::Unknown => 0,
            Status::Pending => 1,
            Status::Building => 2,
            Status::Starting => 3,
            Status::Running => 4,
            Status::Stopping => 5,
            Status::Stopped => 6,
            Status::Error => 7,
        }
    }

    /// The word `micro status` shows.
    pub fn word(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Pending => "pending",
            Status::Building => "building",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Error => "error",
        }
    }

    /// The status of a number (unknown for anything else).
    pub fn from_code(code: i32) -> Status {
        match code {
            1 => Status::Pending,
            2 => Status::Building,
            3 => Status::Starting,
            4 => Status::Running,
            5 => Status::Stopping,
            6 => Status::Stopped,
            7 => Status::Error,
            _ => Status::Unknown,
        }
    }
}

/// What to run once the source is there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// Build the Rust package in the entrypoint folder and run its binary.
    Cargo,
    /// Run this command with `/bin/sh` in the entrypoint folder.
    Shell(String),
}

/// One managed service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The namespace it runs in.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Where its source comes from: an upload id (`source://…`) or a git URL.
    pub source: String,
    /// Metadata: the user's, plus `source`, `owner`, `group`, `type`.
    pub metadata: BTreeMap<String, String>,
    /// What to run.
    pub program: Program,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment variables, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Secrets, passed as environment variables.
    pub secrets: BTreeMap<String, String>,
    /// The folder inside the source to run.
    pub entrypoint: String,
    /// How many processes to run.
    pub instances: u32,
    /// The variable that tells each process its port (empty: none).
    pub port_env: String,
    /// Its status.
    pub status: Status,
    /// Why it is in error.
    pub error: String,
    /// How many times its processes were restarted since it was deployed.
    pub restarts: u32,
    /// When it was created (Unix milliseconds).
    pub created_ms: i64,
    /// When its current version started (Unix milliseconds).
    pub started_ms: i64,
    /// When its status last changed (Unix milliseconds).
    pub updated_ms: i64,
    /// The id of the deployment it runs (a hash of its source).
    pub build: String,
    /// The fetched source tree of the deployment it runs.
    pub tree: Option<PathBuf>,
    /// Where its processes run.
    pub workdir: Option<PathBuf>,
    /// The built binary (for a Rust package).
    pub binary: Option<PathBuf>,
    /// The service account its processes authenticate with.
    pub account_id: String,
    /// That account's secret.
    pub account_secret: String,
    /// Processes it started that may still be alive, with what finds their descendants (see [`Group`]).
    pub groups: Vec<Group>,
}

/// A process the runtime started (an instance), and what finds every process it started in turn, to stop them all
/// after a server crash (see [`super::contain`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GroupRepr")]
pub struct Group {
    /// Its process group (its pid: it leads the group).
    pub pgid: i32,
    /// Its start time, in clock ticks since boot, to tell it from a later process with the same id.
    pub started: u64,
    /// The value of `MICRO_RUNTIME_INSTANCE` in its environment (empty in records of older servers).
    pub marker: String,
    /// The cgroup it runs in, when the runtime uses cgroups.
    pub cgroup: Option<PathBuf>,
}

/// A [`Group`] as records store it: the current form, or the `[pgid, started]` pair of older servers.
#[derive(Deserialize)]
#[serde(untagged)]
enum GroupRepr {
    /// `[pgid, started]`.
    Pair(i32, u64),
    /// The fields of a [`Group`].
    Full {
        pgid: i32,
        started: u64,
        #[serde(default)]
        marker: String,
        #[serde(default)]
        cgroup: Option<PathBuf>,
    },
}

impl From<GroupRepr> for Group {
    fn from(repr: GroupRepr) -> Self {
        match repr {
            GroupRepr::Pair(pgid, started) => Group { pgid, started, marker: String::new(), cgroup: None },
            GroupRepr::Full { pgid, started, marker, cgroup } => Group { pgid, started, marker, cgroup },
        }
    }
}

impl Record {
    /// The key of the record.
    pub fn key(&self) -> String {
        key(&self.namespace, &self.name, &self.version)
    }
}

/// The key of a service's record.
pub fn key(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}/{name}/{version}")
}

/// The runtime's database.
pub struct Records {
    db: Database,
}

impl Records {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, RecordsError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Every record; unreadable ones are skipped with a warning.
    pub fn all(&self) -> Result<Vec<Record>, RecordsError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            match serde_json::from_slice(v.value()) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(key = %k.value(), error = %e, "skipping an unreadable runtime record"),
            }
        }
        Ok(out)
    }

    /// Writes a record.
    pub fn put(&self, record: &Record) -> Result<(), RecordsError> {
        let bytes = serde_json::to_vec(record).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            table.insert(record.key().as_str(), bytes.as_slice()).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Deletes a record.
    pub fn delete(&self, key: &str) -> Result<(), RecordsError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            table.remove(key).map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(name: &str) -> Record {
        Record {
            namespace: "micro".into(),
            name: name.into(),
            version: "latest".into(),
            source: "source://x".into(),
            metadata: BTreeMap::new(),
            program: Program::Shell("sleep 100".into()),
            args: vec![],
            env: vec![],
            secrets: BTreeMap::new(),
            entrypoint: String::new(),
            instances: 1,
            port_env: String::new(),
            status: Status::Running,
            error: String::new(),
            restarts: 2,
            created_ms: 1,
            started_ms: 2,
            updated_ms: 3,
            build: "abc".into(),
            tree: None,
            workdir: Some("/tmp".into()),
            binary: None,
            account_id: "x-latest".into(),
            account_secret: "s".into(),
            groups: vec![Group {
                pgid: 12,
                started: 34,
                marker: "k-r-1".into(),
                cgroup: Some("/sys/fs/cgroup/x".into()),
            }],
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.redb");
        {
            let records = Records::open(&path).unwrap();
            records.put(&record("a")).unwrap();
            records.put(&record("b")).unwrap();
            records.delete(&record("a").key()).unwrap();
        }
        let records = Records::open(&path).unwrap();
        assert_eq!(records.all().unwrap(), vec![record("b")]);
    }

    #[test]
    fn groups_of_older_records_still_read() {
        let old: Group = serde_json::from_str("[12, 34]").unwrap();
        assert_eq!(old, Group { pgid: 12, started: 34, marker: String::new(), cgroup: None });
        let new = record("a").groups[0].clone();
        let again: Group = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(again, new);
    }

    #[test]
    fn status_codes_round_trip() {
        for code in 0..8 {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::Error.word(), "error");
    }
}
