//! A fake `tasks` service in memory, served in-process, for the worker's and the scheduler's unit tests: a FIFO
//! queue with `Enqueue` (deduplicated by name and key among queued tasks), `Lease`, `Extend`, `Ack` and `Fail`.

use super::pb::{self, tasks_server};
use crate::client::Client;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// What the fake saw.
#[derive(Debug, Default)]
pub struct State {
    /// Tasks waiting to be leased.
    pub queue: VecDeque<pb::Task>,
    /// Every enqueued task (after deduplication), in order.
    pub enqueued: Vec<pb::Task>,
    /// Acks: task id and result.
    pub acked: Vec<(String, String)>,
    /// Fails: task id and error.
    pub failed: Vec<(String, String)>,
    /// Extends: task id.
    pub extended: Vec<String>,
    next: u64,
}

/// The fake service.
#[derive(Clone, Debug, Default)]
pub struct Fake(pub Arc<Mutex<State>>);

impl Fake {
    /// Serves the fake on a free port and returns it with a client of it (the route headers are ignored).
    pub async fn start() -> (Fake, Client) {
        Self::start_at("127.0.0.1:0").await
    }

    /// Serves the fake on `addr`.
    pub async fn start_at(addr: &str) -> (Fake, Client) {
        let fake = Fake::default();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tasks_server::TasksServer::new(fake.clone());
        tokio::spawn(crate::serve::serve_grpc(server, incoming, None, std::future::pending(), async {}));
        (fake, Client::new(&addr.to_string(), "micro").unwrap())
    }

    /// Queues a task with this name and payload.
    pub fn push(&self, name: &str, payload: &str) -> String {
        let mut s = self.0.lock().unwrap();
        s.next += 1;
        let id = format!("t{}", s.next);
        s.queue.push_back(pb::Task {
            id: id.clone(),
            name: name.into(),
            payload: payload.into(),
            ..Default::default()
        });
        id
    }

    /// A look at the state.
    pub fn state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.0.lock().unwrap())
    }

    /// Waits (at most 10 s) until `f` holds.
    pub async fn until(&self, what: &str, f: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.state(&f) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tonic::async_trait]
impl tasks_server::Tasks for Fake {
    async fn schedule(&self, _: Request<pb::ScheduleRequest>) -> Result<Response<pb::ScheduleResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn unschedule(&self, _: Request<pb::UnscheduleRequest>) -> Result<Response<pb::UnscheduleResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn schedules(&self, _: Request<pb::SchedulesRequest>) -> Result<Response<pb::SchedulesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn run(&self, _: Request<pb::RunRequest>) -> Result<Response<pb::RunResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn enqueue(&self, req: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
        let req = req.into_inner();
        let mut s = self.0.lock().unwrap();
        if !req.key.is_empty()
            && let Some(t) = s.queue.iter().find(|t| t.name == req.name && t.worker == req.key)
        {
            return Ok(Response::new(pb::EnqueueResponse { task: Some(t.clone()) }));
        }
        s.next += 1;
        // The fake keeps the key in `worker`, which it does not otherwise use for queued tasks.
        let task = pb::Task {
            id: format!("t{}", s.next),
            name: req.name,
            payload: req.payload,
            worker: req.key,
            ..Default::default()
        };
        s.queue.push_back(task.clone());
        s.enqueued.push(task.clone());
        Ok(Response::new(pb::EnqueueResponse { task: Some(task) }))
    }
    async fn list(&self, _: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn retry(&self, _: Request<pb::RetryRequest>) -> Result<Response<pb::RetryResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseResponse>, Status> {
        let req = req.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms);
        loop {
            {
                let mut s = self.0.lock().unwrap();
                if let Some(i) = s.queue.iter().position(|t| req.names.contains(&t.name)) {
                    let mut task = s.queue.remove(i).unwrap();
                    task.attempts += 1;
                    task.worker = req.worker.clone();
                    let lease = format!("lease-{}", task.id);
                    return Ok(Response::new(pb::LeaseResponse { task: Some(task), lease }));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(pb::LeaseResponse { task: None, lease: String::new() }));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn extend(&self, req: Request<pb::ExtendRequest>) -> Result<Response<pb::ExtendResponse>, Status> {
        self.0.lock().unwrap().extended.push(req.into_inner().id);
        Ok(Response::new(pb::ExtendResponse {}))
    }
    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let req = req.into_inner();
        assert_eq!(req.lease, format!("lease-{}", req.id), "the lease given back");
        self.0.lock().unwrap().acked.push((req.id, req.result));
        Ok(Response::new(pb::AckResponse {}))
    }
    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailResponse>, Status> {
        let req = req.into_inner();
        self.0.lock().unwrap().failed.push((req.id, req.error));
        Ok(Response::new(pb::FailResponse { task: None }))
    }
}
