//! The `debug.Debug` gRPC service: the statistics of the process that serves it (start time, uptime, resident
//! memory, threads), which `micro stats` shows per node. Every service built with [`super::Service`] serves it,
//! and so does `micro server` for its core services.

use micro_core::proto::debug::{StatsRequest, StatsResponse, debug_server};
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Answers `Debug.Stats` for this process.
#[derive(Clone)]
pub struct DebugService {
    started: SystemTime,
    counters: Option<Counters>,
}

/// Reads the process's request and error counts for `Debug.Stats`.
pub type Counters = std::sync::Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

impl std::fmt::Debug for DebugService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugService").field("started", &self.started).finish_non_exhaustive()
    }
}

impl Default for DebugService {
    fn default() -> Self {
        Self::new()
    }
}

impl DebugService {
    /// A service whose process counts as started now.
    pub fn new() -> Self {
        Self { started: SystemTime::now(), counters: None }
    }

    /// Reports `requests` and `errors` from `counters` (a worker's tasks run and failed, for example).
    pub fn counters(mut self, counters: Counters) -> Self {
        self.counters = Some(counters);
        self
    }

    /// The gRPC server of this service.
    pub fn server(self) -> debug_server::DebugServer<Self> {
        debug_server::DebugServer::new(self)
    }

    /// The stats now.
    pub fn stats(&self) -> StatsResponse {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let now = SystemTime::now();
        let (memory, threads) = process_status();
        let (requests, errors) = self.counters.as_ref().map(|c| c()).unwrap_or_default();
        StatsResponse {
            timestamp: secs(now),
            started: secs(self.started),
            uptime: now.duration_since(self.started).map(|d| d.as_secs()).unwrap_or_default(),
            memory,
            threads,
            requests,
            errors,
            ..Default::default()
        }
    }
}

/// Resident memory in bytes and the thread count, from `/proc/self/status` (zeros where there is none).
fn process_status() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_status(&text)
}

fn parse_status(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_default()
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

#[tonic::async_trait]
impl debug_server::Debug for DebugService {
    async fn stats(&self, _req: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        Ok(Response::new(DebugService::stats(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text = "Name:\tmicro\nVmRSS:\t   2048 kB\nThreads:\t7\n";
        assert_eq!(parse_status(text), (2048 * 1024, 7));
        assert_eq!(parse_status(""), (0, 0));
    }

    #[test]
    fn counters_are_the_requests_and_errors() {
        assert_eq!((DebugService::new().stats().requests, DebugService::new().stats().errors), (0, 0));
        let stats = DebugService::new().counters(std::sync::Arc::new(|| (7, 2))).stats();
        assert_eq!((stats.requests, stats.errors), (7, 2));
    }

    #[test]
    fn stats_describe_this_process() {
        let stats = DebugService::new().stats();
        assert!(stats.timestamp >= stats.started);
        if cfg!(target_os = "linux") {
            assert!(stats.memory > 0 && stats.threads > 0, "{stats:?}");
        }
    }
}
