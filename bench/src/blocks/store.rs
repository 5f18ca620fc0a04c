//! The store section of the building-blocks benchmark.
//!
//! 1. The baseline: raw redb writes, one durable commit per write, sequential, in the scratch dir (what a store
//!    without group commit could do at best).
//! 2. `Store.Write` per second through the proxy with 1 and with 64 concurrent clients (8 HTTP/2 connections of
//!    8 clients each), every write acknowledged only once durable. Group commit lets concurrent writers share
//!    commits; the target is at 64 clients at least 1 × the raw single-commit rate.
//! 3. `Store.Read` per second with 64 concurrent clients, reading keys written before.

use crate::Bench;
use crate::stats::thousands;
use micro_core::proto::store::{
    ReadOptions, ReadRequest, Record, WriteOptions, WriteRequest, store_client::StoreClient,
};
use redb::{Database, TableDefinition};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long each throughput measurement runs.
const DURATION: Duration = Duration::from_secs(3);
/// Value size, in bytes.
const VALUE: usize = 128;
/// Clients per HTTP/2 connection.
const PER_CONNECTION: usize = 8;

/// Raw redb: one write transaction and one durable commit per write, sequential. Returns writes per second.
fn raw_single_commit(dir: &std::path::Path) -> anyhow::Result<f64> {
    const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("bench");
    let db = Database::create(dir.join("raw.redb"))?;
    let value = vec![b'x'; VALUE];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < DURATION {
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(format!("key-{n:08}").as_str(), value.as_slice())?;
        }
        tx.commit()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `clients` concurrent loops of `op` for [`DURATION`]; returns operations per second.
async fn throughput<F, Fut>(bench: &Bench, clients: usize, op: F) -> anyhow::Result<f64>
where
    F: Fn(StoreClient<tonic::transport::Channel>, micro_client::Connection, usize, u64) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for _ in 0..clients.div_ceil(PER_CONNECTION) {
        connections.push(bench.connection()?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let conn = connections[c / PER_CONNECTION].clone();
        let (done, op) = (done.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let client = micro_cli::cli::store::client(&conn);
            let mut i = 0u64;
            while start.elapsed() < DURATION {
                op(client.clone(), conn.clone(), c, i).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The store backend alone (no gRPC): `tasks` concurrent writers for [`DURATION`]. Returns writes per second and
/// writes per commit.
async fn backend(dir: &std::path::Path, tasks: usize) -> anyhow::Result<(f64, f64)> {
    use micro_server::store::backend::{Location, Record as BackendRecord, RedbStore, Store};
    let (store, _closed) = RedbStore::open(&dir.join(format!("backend-{tasks}.redb")))?;
    let store = Arc::new(store);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, done) = (store.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let location = Location::new("bench", "bench")?;
            let mut i = 0u64;
            while start.elapsed() < DURATION {
                let record =
                    BackendRecord { key: format!("t{t:02}-{i:08}"), value: vec![b'x'; VALUE], ..Default::default() };
                store.write(&location, vec![record]).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<(), micro_server::store::backend::StoreError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let writes = done.load(Ordering::Relaxed) as f64;
    Ok((writes / start.elapsed().as_secs_f64(), writes / store.commits().max(1) as f64))
}

async fn write(
    mut client: StoreClient<tonic::transport::Channel>,
    conn: micro_client::Connection,
    table: &'static str,
    key: String,
) -> Result<(), tonic::Status> {
    let req = conn.request(WriteRequest {
        record: Some(Record { key, value: vec![b'x'; VALUE], ..Default::default() }),
        options: Some(WriteOptions { table: table.into(), ..Default::default() }),
    });
    client.write(req).await.map(|_| ())
}

/// Runs the store measurements and prints their figures.
pub async fn run(bench: &Bench) -> anyhow::Result<()> {
    println!();
    println!("store: durable writes of {VALUE}-byte values, {} s per measurement", DURATION.as_secs());
    let dir = bench.scratch.clone();
    let raw = tokio::task::spawn_blocking(move || raw_single_commit(&dir)).await??;
    println!("  raw redb, one durable commit per write (sequential)   {:>10} writes/s", thousands(raw));

    for tasks in [1, 64] {
        let (rate, per_commit) = backend(&bench.scratch, tasks).await?;
        println!(
            "  the store backend alone (no gRPC), {tasks:>2} writers         {:>10} writes/s   {:.2} × raw   ({per_commit:.1} writes per commit)",
            thousands(rate),
            rate / raw
        );
    }
    let one = throughput(bench, 1, |client, conn, c, i| write(client, conn, "w1", format!("c{c:02}-{i:08}"))).await?;
    println!(
        "  Store.Write through the proxy,  1 client             {:>10} writes/s   {:.2} × raw",
        thousands(one),
        one / raw
    );
    let many =
        throughput(bench, 64, |client, conn, c, i| write(client, conn, "w64", format!("c{c:02}-{i:08}"))).await?;
    println!(
        "  Store.Write through the proxy, 64 clients (group commit) {:>8} writes/s   {:.2} × raw   (target ≥ 1 ×: {})",
        thousands(many),
        many / raw,
        if many >= raw { "met" } else { "NOT met" }
    );

    // Reads: each client cycles over 16 keys of its own, written first.
    let conn = bench.connection()?;
    let mut writes = Vec::new();
    for k in 0..64 * 16 {
        writes.push(tokio::spawn(write(micro_cli::cli::store::client(&conn), conn.clone(), "r", format!("r-{k:04}"))));
    }
    for w in writes {
        w.await??;
    }
    let reads = throughput(bench, 64, |mut client, conn, c, i| async move {
        let req = conn.request(ReadRequest {
            key: format!("r-{:04}", c as u64 * 16 + i % 16),
            options: Some(ReadOptions { table: "r".into(), ..Default::default() }),
        });
        client.read(req).await.map(|_| ())
    })
    .await?;
    println!(
        "  Store.Read through the proxy,  64 clients             {:>10} reads/s    {:.2} × raw writes",
        thousands(reads),
        reads / raw
    );
    Ok(())
}
