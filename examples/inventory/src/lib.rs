//! The inventory service: micro's example of the scheduler and worker server types (SpaceONE's inventory
//! collector, in a few lines).
//!
//! - **scheduler**: every [`PERIOD`] (2 s), queues one `collect` task per region of [`REGIONS`];
//! - **worker**: runs the `collect` tasks: it "collects" the region's hosts (a fake inventory: fixed hosts with a
//!   counter and a timestamp) and writes each as the JSON record `host/<name>` of the store's table
//!   [`TABLE`]; a region it does not know fails the task, which the queue retries and then marks dead;
//! - **gRPC**: `Inventory.List` and `Inventory.Get` read what was collected; `Inventory.Collect` queues a
//!   collection now.
//!
//! The gRPC interface runs behind SpaceONE's handler chain ([`micro::chain`]): callers are authenticated (their
//! token checked by the platform's auth), `Inventory.Collect` needs the permission `inventory:write`, every call is
//! logged and published as events on `inventory.calls`. `Inventory.List` answers from a one-second cache
//! ([`micro::cache`]), so a burst of listings reads the store once.
//!
//! The handler is a library so tests can serve it in-process; `main.rs` runs it as a micro service.

use micro::cache::{CacheExt, MemoryCache};
use micro::chain::{Chain, Inspect};
use micro::client::Client;
use micro::proto::tasks::{EnqueueRequest, tasks_client::TasksClient};
use micro::store::{Query, Store};
use micro::tasks::{NewTask, Scheduler, TaskContext, TaskError, Worker};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Generated code and descriptors of `inventory.proto`.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("inventory");

    /// The descriptor set of `inventory.proto`, registered with the service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inventory_descriptor.bin"));
}

use pb::inventory_server::{Inventory, InventoryServer};
use pb::{CollectRequest, CollectResponse, GetRequest, GetResponse, Host, ListRequest, ListResponse};

/// The name of the tasks the scheduler creates and the worker runs.
pub const TASK: &str = "collect";
/// How often the scheduler queues a collection of every region.
pub const PERIOD: Duration = Duration::from_secs(2);
/// The regions the scheduler collects, with their hosts' count.
pub const REGIONS: &[(&str, u32)] = &[("eu", 3), ("us", 2)];
/// Regions the worker knows beyond the scheduled ones (collected on demand only).
const OTHER_REGIONS: &[(&str, u32)] = &[("ap", 1)];
/// The store table of the collected hosts.
pub const TABLE: &str = "inventory";
/// The permission `Inventory.Collect` needs (`admin` and `*` scopes have it).
pub const COLLECT_PERMISSION: &str = "inventory:write";
/// How long a listing is cached.
const LIST_TTL: Duration = Duration::from_secs(1);

/// A `collect` task's payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Collect {
    /// The region to collect.
    pub region: String,
}

/// A host as stored: the JSON value of record `host/<name>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    name: String,
    region: String,
    cpus: u32,
    memory_mb: u64,
    collections: u64,
    collected_ms: i64,
    task: String,
}

impl From<Stored> for Host {
    fn from(s: Stored) -> Self {
        Host {
            name: s.name,
            region: s.region,
            cpus: s.cpus,
            memory_mb: s.memory_mb,
            collections: s.collections,
            collected_ms: s.collected_ms,
            task: s.task,
        }
    }
}

fn store(client: &Client) -> Store {
    Store::from_client(client).table(TABLE)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// The scheduler: a `collect` task per region of [`REGIONS`] every [`PERIOD`].
pub fn scheduler() -> Scheduler {
    Scheduler::every(PERIOD, |_tick| async move {
        REGIONS.iter().map(|(region, _)| NewTask::new(TASK).payload(&Collect { region: region.to_string() })).collect()
    })
}

/// The worker: collects a region's hosts into the store.
pub fn worker() -> Worker {
    Worker::new().handle(TASK, collect)
}

/// Runs one `collect` task: every host of the region, its counter incremented, written to the store.
async fn collect(task: TaskContext) -> Result<serde_json::Value, TaskError> {
    let Collect { region } = task.payload()?;
    let count = REGIONS
        .iter()
        .chain(OTHER_REGIONS)
        .find(|(r, _)| *r == region)
        .map(|(_, n)| *n)
        .ok_or_else(|| TaskError::msg(format!("unknown region {region:?}")))?;
    let store = store(task.client());
    for i in 1..=count {
        let name = format!("{region}-{i}");
        let key = format!("host/{name}");
        let previous: Option<Stored> = store.read_json(&key).await?;
        let host = Stored {
            name,
            region: region.clone(),
            cpus: 2 << (i % 3),
            memory_mb: 4096 * u64::from(i),
            collections: previous.map_or(0, |p| p.collections) + 1,
            collected_ms: now_ms(),
            task: task.id().to_string(),
        };
        store.write_json(&key, &host).await?;
    }
    Ok(serde_json::json!({ "region": region, "hosts": count }))
}

/// The gRPC handler, over the store and the tasks service.
#[derive(Clone, Debug)]
pub struct Handler {
    client: Client,
    /// Listings by region, for [`LIST_TTL`].
    listings: MemoryCache,
}

/// A building block failed: an internal error of inventory, whose message says which and why.
fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Handler {
    /// A handler that uses the platform through `client`.
    pub fn new(client: &Client) -> Self {
        Self { client: client.clone(), listings: MemoryCache::new(64) }
    }
}

#[tonic::async_trait]
impl Inventory for Handler {
    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let region = req.into_inner().region;
        let key = format!("list/{region}");
        // One store read per region and second, however many callers list at once.
        let stored: Vec<Stored> = self
            .listings
            .get_or_compute(&key, LIST_TTL, || async {
                let records = store(&self.client).read_many(Query::prefix("host/")).await.map_err(internal)?;
                let mut hosts = Vec::new();
                for record in records {
                    let host: Stored = record.json().map_err(internal)?;
                    if region.is_empty() || host.region == region {
                        hosts.push(host);
                    }
                }
                Ok::<_, Status>(hosts)
            })
            .await?;
        Ok(Response::new(ListResponse { hosts: stored.into_iter().map(Host::from).collect() }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let name = req.into_inner().name;
        let host: Option<Stored> = store(&self.client).read_json(&format!("host/{name}")).await.map_err(internal)?;
        let host = host.ok_or_else(|| Status::not_found(format!("host {name:?} not collected (yet)")))?;
        Ok(Response::new(GetResponse { host: Some(host.into()) }))
    }

    async fn collect(&self, req: Request<CollectRequest>) -> Result<Response<CollectResponse>, Status> {
        let region = req.into_inner().region;
        if region.trim().is_empty() {
            return Err(Status::invalid_argument("a collection needs a region"));
        }
        let payload = serde_json::to_string(&Collect { region }).map_err(internal)?;
        let mut tasks = TasksClient::new(self.client.service(micro::tasks::SERVICE));
        let req = EnqueueRequest { name: TASK.into(), payload, ..Default::default() };
        let task = tasks.enqueue(req).await.map_err(internal)?.into_inner().task.unwrap_or_default();
        Ok(Response::new(CollectResponse { id: task.id }))
    }
}

/// The handler chain of the gRPC interface: authentication by the platform, `inventory:write` for
/// `Inventory.Collect`, a log line and events on the broker per call.
pub fn chain(client: &Client) -> Chain {
    Chain::new()
        .authenticate(Inspect::new(client))
        .authorize("Inventory.Collect", COLLECT_PERMISSION)
        .log()
        .events(micro::broker::Broker::from_client(client))
}

/// The micro service: its scheduler, its worker, and its gRPC interface behind [`chain`], all calling as
/// `client`'s account.
pub fn service(client: &Client) -> micro::Service {
    micro::Service::new("inventory")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        .scheduler(scheduler())
        .worker(worker())
        .add_service(InventoryServer::new(Handler::new(client)).max_decoding_message_size(micro::MAX_MESSAGE_SIZE))
        .layer(chain(client))
}
