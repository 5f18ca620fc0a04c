//! Worker and scheduler servers: tasks that live in user code, on the durable queue of `micro server`'s `tasks`
//! service (SpaceONE's worker and scheduler server types, with acks, retries and a dead state).
//!
//! A [`Scheduler`] decides at each tick which tasks to create (SpaceONE's `create_task`) and queues them with
//! `Tasks.Enqueue`; a [`Worker`] leases the tasks of the names it handles, runs a Rust handler for each, and
//! acknowledges the result (`Ack`) or reports the error (`Fail`, after which the server retries the task with a
//! backoff, then marks it dead). Both run inside a [`Service`](crate::Service), so they register like any service
//! and show in `micro services`, `micro status` and `micro stats` (whose `requests` and `errors` count the tasks the
//! worker ran and those that failed).
//!
//! ```no_run
//! use micro::tasks::{NewTask, Scheduler, TaskContext, Worker};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), micro::ServiceError> {
//! #[derive(serde::Deserialize)]
//! struct Collect { region: String }
//!
//! let scheduler = Scheduler::every(Duration::from_secs(60), |_tick| async move {
//!     vec![NewTask::new("collect").payload(&serde_json::json!({ "region": "eu" }))]
//! });
//! let worker = Worker::new().concurrency(4).handle("collect", |task: TaskContext| async move {
//!     let collect: Collect = task.payload()?;
//!     Ok(serde_json::json!({ "region": collect.region, "hosts": 3 }))
//! });
//! micro::Service::new("inventory").scheduler(scheduler).worker(worker).run().await
//! # }
//! ```
//!
//! Delivery is at least once: a handler may run again for the same task (after a worker died holding its lease, or
//! when an `Ack` was lost), so handlers should be idempotent. The worker and the scheduler call the `tasks` service
//! through the proxy as the service's account (`MICRO_AUTH_ID`, `MICRO_AUTH_SECRET`, as `micro run` sets them), in
//! the service's namespace, and retry with a backoff while the server is unreachable.

#[cfg(test)]
mod fake;
pub mod scheduler;
pub mod worker;

pub use micro_core::proto::tasks as pb;
pub use scheduler::{CronError, NewTask, Scheduler, SchedulerStats, Tick};
pub use worker::{TaskContext, TaskError, Worker, WorkerStats};

use crate::client::{Client, Route};
use pb::tasks_client::TasksClient;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The name the `tasks` core service is reached by through the proxy.
pub const SERVICE: &str = "tasks";

/// A client of the `tasks` service through `client`'s proxy connection, as its account.
pub(crate) type Tasks = TasksClient<InterceptedService<Channel, Route>>;

/// A `tasks` client over `client`.
pub(crate) fn tasks_client(client: &Client) -> Tasks {
    TasksClient::new(client.service(SERVICE))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// An exponential backoff for reconnecting: `min`, doubling up to `max`, reset by [`Backoff::reset`].
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the shortest delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// Whether the last call was a success (nothing to wait).
    pub(crate) fn is_reset(&self) -> bool {
        self.next == self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert!(b.is_reset());
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert!(!b.is_reset());
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
