//! The output of one deployment (a create or an update): what the CLI follows with `Logs{build: true}` to draw its
//! progress bar and learn whether the service started.
//!
//! A [`Deploy`] keeps its records in memory (up to [`MAX_RECORDS`]; the first and the last are kept when there are
//! more) and wakes followers when one is added. It ends with one record whose metadata says how it ended.
//!
//! **Progress.** While cargo builds, records carry `progress` (units built) and `total` (units to build: the count
//! of the service's last build when there was one, else an estimate from `cargo metadata`) and `compiling` (the
//! crates rustc is compiling now). The bar never shows full while a unit is still compiling: when the count
//! reaches the total before the end, the total grows by one.

use micro_core::proto::runtime::LogRecord;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};
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
    /// The crates being compiled now, in the order they started.
    compiling: Vec<String>,
    /// What the deployment is doing (`stage` of its records): `build`, then `start`.
    stage: &'static str,
}

/// One deployment's output.
pub struct Deploy {
    /// Its id.
    pub id: String,
    /// When it began.
    pub began: Instant,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

impl Deploy {
    /// A new deployment with no output.
    pub fn new(id: String) -> Self {
        let inner = Inner { stage: "build", ..Default::default() };
        Self { id, began: Instant::now(), inner: Mutex::new(inner), changed: watch::channel(0).0 }
    }

    fn push(&self, mut metadata: HashMap<String, String>, message: String) {
        let now = SystemTime::now();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            metadata.insert("stream".into(), "build".into());
            metadata.insert("time".into(), humantime::format_rfc3339_micros(now).to_string());
            metadata.entry("stage".into()).or_insert_with(|| inner.stage.into());
            if inner.total > 0 {
                metadata.insert("progress".into(), inner.progress.min(inner.total).to_string());
                metadata.insert("total".into(), inner.total.to_string());
            }
            if !inner.compiling.is_empty() {
                metadata.insert("compiling".into(), inner.compiling.join(", "));
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

    /// Sets the number of units to build (the last build's count, or an estimate).
    pub fn set_total(&self, total: u64) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total = total;
    }

    /// The units counted so far.
    pub fn units(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).progress
    }

    /// Notes that rustc started compiling `krate`.
    pub fn compiling(&self, krate: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.compiling.iter().any(|c| c == krate) {
            inner.compiling.push(krate.to_string());
        }
    }

    /// Counts one more unit built (of the crate `krate`, which is then no longer compiling, unless `more` of its
    /// units are to come), and adds `message` when given.
    pub fn progress(&self, krate: Option<&str>, message: Option<String>) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.progress += 1;
            if let Some(krate) = krate {
                inner.compiling.retain(|c| c != krate);
            }
            // Never full while the build runs: the last unit is still to come.
            if inner.total > 0 && inner.progress >= inner.total {
                inner.total = inner.progress + 1;
            }
        }
        match message {
            Some(m) => self.line(m),
            None => self.changed.send_modify(|n| *n += 1),
        }
    }

    /// Marks the build as over (its records stop carrying progress) and the start as begun.
    pub fn starting(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.stage = "start";
        inner.total = 0;
        inner.compiling.clear();
    }

    /// What the deployment is doing while it runs: `build` or `start`; `None` once it ended.
    pub fn stage(&self) -> Option<&'static str> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.outcome.is_some() { None } else { Some(inner.stage) }
    }

    /// The lines of cargo's output that are not its status lines (`Compiling …`, `Finished …`): the compiler's
    /// warnings and errors, rendered.
    pub fn diagnostics(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .records
            .iter()
            .filter(|r| r.metadata.get("from").is_some_and(|f| f == "cargo") && !cargo_status(&r.message))
            .map(|r| r.message.clone())
            .collect()
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

/// Whether `line` is one of cargo's status lines (its first word is a status such as `Compiling`).
pub fn cargo_status(line: &str) -> bool {
    const WORDS: &[&str] = &[
        "Compiling",
        "Checking",
        "Fresh",
        "Finished",
        "Blocking",
        "Downloaded",
        "Downloading",
        "Locking",
        "Updating",
        "Adding",
        "Running",
        "Building",
        "Packaging",
        "Documenting",
    ];
    let word = line.split_whitespace().next().unwrap_or_default();
    WORDS.contains(&word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_then_the_outcome() {
        let d = Deploy::new("x".into());
        d.set_total(2);
        d.progress(None, Some("Compiling a".into()));
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

    #[test]
    fn the_bar_is_never_full_while_building_and_names_what_compiles() {
        let d = Deploy::new("x".into());
        d.set_total(2);
        d.compiling("a");
        d.compiling("b");
        d.line("one");
        let (records, _, _) = d.read(0);
        assert_eq!(records[0].metadata["compiling"], "a, b");
        d.progress(Some("a"), None);
        d.progress(Some("b"), None);
        d.line("two");
        let (records, _, _) = d.read(1);
        // Two units of an estimated two are built, but the build goes on: the total grows.
        assert_eq!((records[0].metadata["progress"].as_str(), records[0].metadata["total"].as_str()), ("2", "3"));
        assert!(!records[0].metadata.contains_key("compiling"));
        assert_eq!(d.stage(), Some("build"));
        d.starting();
        d.line("starting");
        let (records, _, _) = d.read(2);
        assert_eq!(records[0].metadata["stage"], "start");
        assert!(!records[0].metadata.contains_key("total"));
        d.cargo_line("   Compiling c v1");
        d.cargo_line("error[E0308]: mismatched types");
        assert_eq!(d.diagnostics(), ["error[E0308]: mismatched types"]);
        d.finish(Ok(()));
        assert_eq!(d.stage(), None);
    }
}
