//! The output of one deployment (a create or an update): what the CLI follows with `Logs{build: true}` to draw its
//! progress bar and learn whether the service started.
//!
//! A [`Deploy`] keeps its records in memory (up to [`MAX_RECORDS`]; the first and the last are kept when there are
//! more) and wakes followers when one is added. It ends with one record whose metadata says how it ended.

use crate::proto::runtime::LogRecord;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::watch;

/// The most records a deployment keeps.
pub const MAX_RECORDS: usize = 20_000;

#[derive(Default)]
struct Inner {
    records: Vec<LogRecord>,
    /// Records dropped from the middle (after the first half) when there were too many.
    dropped: usize,
    outcome: Option<Result<(), String>>,
    progress: u64,
    total: u64,
}

/// One deployment's output.
pub struct Deploy {
    /// Its id.
    pub id: String,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Deploy {
    /// A new deployment with no output.
    pub fn new(id: String) -> Self {
        Self { id, inner: Mutex::new(Inner::default()), changed: watch::channel(0).0 }
    }

    fn push(&self, mut metadata: HashMap<String, String>, message: String) {
        let now = SystemTime::now();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            metadata.insert("stream".into(), "build".into());
            metadata.insert("time".into(), humantime::format_rfc3339_micros(now).to_string());
            metadata.entry("stage".into()).or_insert_with(|| "build".into());
            if inner.total > 0 {
                metadata.insert("progress".into(), inner.progress.min(inner.total).to_string());
                metadata.insert("total".into(), inner.total.to_string());
            }
            let timestamp = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if inner.records.len() >= MAX_RECORDS {
                let middle = MAX_RECORDS / 2;
                inner.records.remove(middle);
                inner.dropped += 1;
            }
            inner.records.push(LogRecord { timestamp, metadata, message });
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Adds a line of output.
    pub fn line(&self, message: impl Into<String>) {
        self.push(HashMap::new(), message.into());
    }

    /// Adds a line of cargo's output (marked `from: cargo`, so that the CLI can show the compiler's errors).
    pub fn cargo_line(&self, message: impl Into<String>) {
        self.push(HashMap::from([("from".to_string(), "cargo".to_string())]), message.into());
    }

    /// Sets the estimated number of units to build.
    pub fn set_total(&self, total: u64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total = total;
    }

    /// Counts one more unit built, and adds `message` (e.g. `Compiling tokio v1.48.0`) when given.
    pub fn progress(&self, message: Option<String>) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.progress += 1;
        }
        match message {
            Some(m) => self.line(m),
            None => self.changed.send_modify(|n| *n += 1),
        }
    }

    /// Ends the deployment: `Ok` when the service runs, or the error. Only the first outcome counts.
    pub fn finish(&self, outcome: Result<(), String>) {
        let mut metadata = HashMap::new();
        metadata.insert("stage".to_string(), "done".to_string());
        let message = match &outcome {
            Ok(()) => {
                metadata.insert("status".into(), "running".into());
                String::new()
            }
            Err(e) => {
                metadata.insert("status".into(), "error".into());
                metadata.insert("error".into(), e.clone());
                e.clone()
            }
        };
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.outcome.is_some() {
                return;
            }
            inner.outcome = Some(outcome);
            inner.progress = inner.total;
        }
        self.push(metadata, message);
    }

    /// The outcome, once it ended.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).outcome.clone()
    }

    /// Records from index `from` on, and whether the deployment has ended (its last record is among them then).
    pub fn read(&self, from: usize) -> (Vec<LogRecord>, usize, bool) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let from = from.min(inner.records.len());
        (inner.records[from..].to_vec(), inner.records.len(), inner.outcome.is_some())
    }

    /// A receiver that changes whenever a record is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_then_the_outcome() {
        let d = Deploy::new("x".into());
        d.set_total(2);
        d.progress(Some("Compiling a".into()));
        d.line("warning: unused");
        d.finish(Err("build failed".into()));
        d.finish(Ok(()));
        let (records, next, done) = d.read(0);
        assert!(done);
        assert_eq!(next, 3);
        assert_eq!(records[0].message, "Compiling a");
        assert_eq!(records[0].metadata["progress"], "1");
        assert_eq!(records[0].metadata["total"], "2");
        assert_eq!(records[2].metadata["status"], "error");
        assert_eq!(records[2].metadata["stage"], "done");
        assert_eq!(d.outcome(), Some(Err("build failed".into())));
        assert!(d.read(3).0.is_empty());
    }
}
