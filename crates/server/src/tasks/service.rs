//! The gRPC face of the tasks service (`tasks.Tasks`): checks the caller and the input, then asks the core.
//!
//! Every call needs an account of the caller's namespace (`micro-namespace`); schedules and tasks are the
//! namespace's. The account that schedules or queues a task is its owner: its stages run as that account.

use super::store::{Claim, Outcome, Pick, TaskError, state_name};
use super::timetable::Timetable;
use super::{DEFAULT_BACKOFF_MS, DEFAULT_RETRIES, Tasks, new_id, now_ms, task_of};
use crate::auth::Caller;
use micro_core::proto::tasks::{
    AckRequest, AckResponse, EnqueueRequest, EnqueueResponse, ExtendRequest, ExtendResponse, FailRequest, FailResponse,
    GetRequest, GetResponse, LeaseRequest, LeaseResponse, ListRequest, ListResponse, RetryRequest, RetryResponse,
    RunRequest, RunResponse, ScheduleRequest, ScheduleResponse, SchedulesRequest, SchedulesResponse, Stage, State,
    Task, UnscheduleRequest, UnscheduleResponse,
    tasks_server::{Tasks as TasksRpc, TasksServer},
};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The longest schedule or task name, in bytes.
pub const MAX_NAME: usize = 256;
/// The most stages a task may have.
pub const MAX_STAGES: usize = 64;
/// The most retries a task may have.
pub const MAX_RETRIES: u32 = 100;
/// The shortest first backoff.
pub const MIN_BACKOFF_MS: u64 = 10;
/// The largest payload or stage request (1 MiB).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Tasks a List returns unless it asks for a number.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The most tasks one List returns.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// A worker's lease unless it asks for another length.
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// The longest lease.
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// The longest a Lease waits for a task.
pub const MAX_WAIT_MS: u64 = 30_000;

/// `tasks.Tasks` over the core.
#[derive(Clone)]
pub struct TasksService {
    tasks: Arc<Tasks>,
}

impl TasksService {
    /// The service over `tasks`.
    pub fn new(tasks: Arc<Tasks>) -> Self {
        Self { tasks }
    }

    /// The tonic server.
    pub fn server(self) -> TasksServer<TasksService> {
        TasksServer::new(self)
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(_) => Status::not_found(e.to_string()),
            TaskError::LeaseLost(_) | TaskError::State(_) => Status::failed_precondition(e.to_string()),
            TaskError::Storage(_) => Status::internal(e.to_string()),
        }
    }
}

/// The caller's namespace and account id, for an account of that namespace.
fn member<T>(req: &Request<T>) -> Result<(String, String), Status> {
    let caller = Caller::of(req);
    let account = caller.require_member(&caller.namespace)?;
    Ok((caller.namespace.clone(), account.id.clone()))
}

/// Checks a schedule or task name.
pub fn check_name(what: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("missing {what} name")));
    }
    if name.len() > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{what} name is {} bytes long; at most {MAX_NAME} bytes are allowed",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!("{what} name {name:?} contains control characters")));
    }
    Ok(())
}

fn check_json(what: &str, text: &str) -> Result<(), Status> {
    if text.len() > MAX_PAYLOAD {
        return Err(Status::invalid_argument(format!("the {what} is {} bytes; at most 1 MiB is allowed", text.len())));
    }
    if !text.trim().is_empty() {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| Status::invalid_argument(format!("the {what} is not valid JSON: {e}")))?;
    }
    Ok(())
}

fn check_retries(retries: u32, backoff_ms: u64) -> Result<(), Status> {
    if retries > MAX_RETRIES {
        return Err(Status::invalid_argument(format!("{retries} retries is too many: at most {MAX_RETRIES}")));
    }
    if backoff_ms < MIN_BACKOFF_MS {
        return Err(Status::invalid_argument(format!(
            "backoff {backoff_ms}ms is too short: at least {MIN_BACKOFF_MS}ms"
        )));
    }
    if backoff_ms > super::store::MAX_BACKOFF_MS {
        return Err(Status::invalid_argument(format!("backoff {backoff_ms}ms is too long: at most 1h")));
    }
    Ok(())
}

impl TasksService {
    /// Checks stages: present, known services and endpoints, unary, requests that convert.
    fn check_stages(&self, namespace: &str, stages: &[Stage]) -> Result<(), Status> {
        if stages.len() > MAX_STAGES {
            return Err(Status::invalid_argument(format!("{} stages is too many: at most {MAX_STAGES}", stages.len())));
        }
        for stage in stages {
            if stage.service.is_empty() || stage.endpoint.is_empty() {
                return Err(Status::invalid_argument(
                    "a stage needs a service and an endpoint: --call SERVICE ENDPOINT [JSON]",
                ));
            }
            check_json(&format!("request of {} {}", stage.service, stage.endpoint), &stage.request)?;
            let method = self.tasks.resolve(namespace, stage)?;
            if method.is_client_streaming() || method.is_server_streaming() {
                return Err(Status::invalid_argument(format!(
                    "{} {} is a streaming endpoint; stages call unary endpoints only",
                    stage.service, stage.endpoint
                )));
            }
            super::request_message(&method, stage)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl TasksRpc for TasksService {
    async fn schedule(&self, req: Request<ScheduleRequest>) -> Result<Response<ScheduleResponse>, Status> {
        let (ns, owner) = member(&req)?;
        let Some(mut schedule) = req.into_inner().schedule else {
            return Err(Status::invalid_argument("missing schedule"));
        };
        check_name("schedule", &schedule.name)?;
        let timetable = Timetable::parse(schedule.when.as_ref()).map_err(Status::invalid_argument)?;
        if schedule.stages.is_empty() {
            return Err(Status::invalid_argument(
                "a schedule needs at least one stage: --call SERVICE ENDPOINT [JSON]",
            ));
        }
        self.check_stages(&ns, &schedule.stages)?;
        if schedule.retries == 0 {
            schedule.retries = DEFAULT_RETRIES;
        }
        if schedule.backoff_ms == 0 {
            schedule.backoff_ms = DEFAULT_BACKOFF_MS;
        }
        check_retries(schedule.retries, schedule.backoff_ms)?;
        let now = now_ms();
        schedule.owner = owner;
        schedule.namespace = ns.clone();
        schedule.created_ms = now;
        schedule.next_ms =
            timetable.next_after(now).ok_or_else(|| Status::invalid_argument("the schedule never fires"))?;
        let (ns2, name) = (ns.clone(), schedule.name.clone());
        let previous = self.tasks.run(move |s| s.schedule(&ns2, &name)).await?;
        schedule.last_ms = previous.map_or(0, |p| p.last_ms);
        let stored = schedule.clone();
        self.tasks.run(move |s| s.put_schedule(&stored)).await?;
        self.tasks.wake_scheduler();
        Ok(Response::new(ScheduleResponse { schedule: Some(schedule) }))
    }

    async fn unschedule(&self, req: Request<UnscheduleRequest>) -> Result<Response<UnscheduleResponse>, Status> {
        let (ns, _) = member(&req)?;
        let name = req.into_inner().name;
        check_name("schedule", &name)?;
        let n = name.clone();
        if !self.tasks.run(move |s| s.delete_schedule(&ns, &n)).await? {
            return Err(Status::not_found(format!("schedule {name:?} not found")));
        }
        self.tasks.wake_scheduler();
        Ok(Response::new(UnscheduleResponse {}))
    }

    async fn schedules(&self, req: Request<SchedulesRequest>) -> Result<Response<SchedulesResponse>, Status> {
        let (ns, _) = member(&req)?;
        let schedules = self.tasks.run(move |s| s.schedules(Some(&ns))).await?;
        Ok(Response::new(SchedulesResponse { schedules }))
    }

    async fn run(&self, req: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let (ns, _) = member(&req)?;
        let name = req.into_inner().name;
        check_name("schedule", &name)?;
        let n = name.clone();
        let Some(schedule) = self.tasks.run(move |s| s.schedule(&ns, &n)).await? else {
            return Err(Status::not_found(format!("schedule {name:?} not found")));
        };
        let now = now_ms();
        let task = task_of(&schedule, now, now);
        let task = self.tasks.run(move |s| s.enqueue(&task, "")).await?;
        self.tasks.wake_queue();
        Ok(Response::new(RunResponse { task: Some(task) }))
    }

    async fn enqueue(&self, req: Request<EnqueueRequest>) -> Result<Response<EnqueueResponse>, Status> {
        let (ns, owner) = member(&req)?;
        let req = req.into_inner();
        check_name("task", &req.name)?;
        check_json("payload", &req.payload)?;
        self.check_stages(&ns, &req.stages)?;
        if req.key.len() > MAX_NAME {
            return Err(Status::invalid_argument(format!("the key is longer than {MAX_NAME} bytes")));
        }
        let retries = req.retries.unwrap_or(DEFAULT_RETRIES);
        let backoff_ms = req.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
        check_retries(retries, backoff_ms)?;
        if req.due_ms < 0 {
            return Err(Status::invalid_argument("due_ms must not be negative (Unix milliseconds)"));
        }
        let now = now_ms();
        let task = Task {
            id: new_id(),
            name: req.name,
            state: State::Pending as i32,
            retries,
            backoff_ms,
            stages: req.stages,
            payload: req.payload,
            created_ms: now,
            due_ms: if req.due_ms == 0 { now } else { req.due_ms },
            owner,
            namespace: ns,
            ..Default::default()
        };
        let key = req.key;
        let task = self.tasks.run(move |s| s.enqueue(&task, &key)).await?;
        self.tasks.wake_queue();
        Ok(Response::new(EnqueueResponse { task: Some(task) }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (ns, _) = member(&req)?;
        let req = req.into_inner();
        let state = State::try_from(req.state).map_err(|_| Status::invalid_argument("unknown state"))?;
        let limit = if req.limit == 0 { DEFAULT_LIST_LIMIT } else { req.limit.min(MAX_LIST_LIMIT) } as usize;
        let tasks = self.tasks.run(move |s| s.list(&ns, state, &req.name, limit)).await?;
        Ok(Response::new(ListResponse { tasks }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (ns, _) = member(&req)?;
        let id = req.into_inner().id;
        let i = id.clone();
        match self.tasks.run(move |s| s.get(&i)).await? {
            Some(task) if task.namespace == ns => Ok(Response::new(GetResponse { task: Some(task) })),
            _ => Err(Status::not_found(format!("task {id} not found"))),
        }
    }

    async fn retry(&self, req: Request<RetryRequest>) -> Result<Response<RetryResponse>, Status> {
        let (ns, _) = member(&req)?;
        let id = req.into_inner().id;
        let task = self.tasks.run(move |s| s.retry(&ns, &id, now_ms())).await?;
        self.tasks.wake_queue();
        Ok(Response::new(RetryResponse { task: Some(task) }))
    }

    async fn lease(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseResponse>, Status> {
        let (ns, account) = member(&req)?;
        let req = req.into_inner();
        if req.names.is_empty() {
            return Err(Status::invalid_argument("a lease needs the names of the tasks the worker runs"));
        }
        for name in &req.names {
            check_name("task", name)?;
        }
        let lease_ms = if req.lease_ms == 0 { DEFAULT_LEASE_MS } else { req.lease_ms.min(MAX_LEASE_MS) };
        let wait = Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS));
        let deadline = tokio::time::Instant::now() + wait;
        let worker = if req.worker.is_empty() { account } else { req.worker };
        let pick = Pick::Named { namespace: ns, names: req.names };
        let mut changes = self.tasks.queue_changes();
        loop {
            changes.borrow_and_update();
            let claim = Claim::fresh(&worker, lease_ms as i64);
            let lease = claim.lease.clone();
            let p = pick.clone();
            if let Some(task) = self.tasks.run(move |s| s.lease(&p, &claim)).await? {
                return Ok(Response::new(LeaseResponse { task: Some(task), lease }));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Response::new(LeaseResponse { task: None, lease: String::new() }));
            }
            let p = pick.clone();
            let next = self.tasks.run(move |s| s.next_due(&p)).await?;
            let mut sleep = left.min(self.tasks.poll().min(Duration::from_millis(250)));
            if let Some(next) = next {
                sleep = sleep.min(Duration::from_millis((next - now_ms()).max(0) as u64));
            }
            tokio::select! {
                _ = self.tasks.cancel.cancelled() => return Err(Status::unavailable("the server is shutting down")),
                _ = tokio::time::sleep(sleep) => {}
                _ = changes.changed() => {}
            }
        }
    }

    async fn extend(&self, req: Request<ExtendRequest>) -> Result<Response<ExtendResponse>, Status> {
        member(&req)?;
        let req = req.into_inner();
        let lease_ms = if req.lease_ms == 0 { DEFAULT_LEASE_MS } else { req.lease_ms.min(MAX_LEASE_MS) };
        let until = now_ms() + lease_ms as i64;
        self.tasks.run(move |s| s.extend(&req.id, &req.lease, until)).await?;
        Ok(Response::new(ExtendResponse {}))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        member(&req)?;
        let req = req.into_inner();
        check_json("result", &req.result)?;
        let outcome = Outcome::Succeeded { result: req.result, results: Vec::new() };
        self.tasks.run(move |s| s.complete(&req.id, &req.lease, outcome, now_ms())).await?;
        Ok(Response::new(AckResponse {}))
    }

    async fn fail(&self, req: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        member(&req)?;
        let req = req.into_inner();
        let error = if req.error.is_empty() { "failed".to_string() } else { req.error };
        let outcome = Outcome::Failed { error, results: Vec::new() };
        let task = self.tasks.run(move |s| s.complete(&req.id, &req.lease, outcome, now_ms())).await?;
        if task.state == State::Failed as i32 {
            self.tasks.wake_queue();
        }
        tracing::debug!(task = %task.id, state = state_name(State::try_from(task.state).unwrap_or_default()), "a worker failed a task");
        Ok(Response::new(FailResponse { task: Some(task) }))
    }
}
