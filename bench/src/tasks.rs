//! The tasks benchmark of issue 16: the durable task queue of `micro server` (embedded store) with the service
//! library's workers, and the delay of a schedule's firings. One micro server runs in this process (a release
//! build, with the `micro` binary's allocator) on a free port, with a temporary data dir; every call goes through
//! its proxy as the admin.
//!
//! 1. **Throughput**: 64 tasks are queued (`Tasks.Enqueue`), then 4 [`micro::tasks::Worker`]s (one task at a time
//!    each) lease, run (a trivial handler that returns its payload) and acknowledge them. The time from starting
//!    the workers until the queue lists the 64 as succeeded gives tasks completed per second; the median of a few
//!    rounds is reported.
//! 2. **Schedule delay**: a schedule `--every 200ms` with one stage (a call of `Registry.ListServices` through the
//!    proxy, made by the server) fires for a while; for each of its tasks, the delay is `started_ms - due_ms`, from
//!    the time the task was due to its stage runner starting it (p50, p99; the target is p99 ≤ 50 ms on the
//!    embedded store). The spread of the firings themselves (the gaps between consecutive `due_ms`, against
//!    200 ms) is reported too.
//!
//! `cargo build --release --locked -p micro-bench --bin tasks && target/release/tasks` (under a minute).

mod cpu;
#[allow(dead_code)] // the other benchmarks use the rest of this module
mod inprocess;
#[allow(dead_code)] // the other benchmarks use the rest of this module
mod stats;

/// The allocator of the `micro` binary, so the in-process server allocates as it does in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, bail, ensure};
use inprocess::ADMIN_PASSWORD;
use micro::client::Client;
use micro::tasks::{TaskContext, Worker};
use micro_core::proto::tasks::{
    EnqueueRequest, ListRequest, Schedule, ScheduleRequest, Stage, State, UnscheduleRequest, schedule::When,
    tasks_client::TasksClient,
};
use stats::{Samples, ms};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Tasks queued per throughput round, and the workers that run them.
const TASKS: usize = 64;
const WORKERS: usize = 4;
const ROUNDS: usize = 5;
/// The schedule's period, and how many of its firings are measured (after the first few, skipped as warm-up).
const EVERY: Duration = Duration::from_millis(200);
const FIRINGS: usize = 75;
const SKIPPED_FIRINGS: usize = 3;
/// The most one round or the schedule may take before the benchmark gives up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The target for the schedule's p99 delay.
const TARGET_P99: Duration = Duration::from_millis(50);

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let data = tempfile::Builder::new().prefix("micro-bench-tasks").tempdir()?;
    let (proxy, client) = start(data.path()).await.context("starting the server")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("micro-bench tasks: {cpus} CPUs; micro server in-process on {proxy}, embedded store");

    // 1. Throughput.
    println!(
        "\nThroughput: {TASKS} tasks queued, then {WORKERS} workers (one task at a time each) lease, run a trivial \
         handler and ack them; {ROUNDS} rounds"
    );
    let cpu = cpu::Snapshot::now();
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let (took, enqueue) = throughput_round(&client, round).await.with_context(|| format!("round {round}"))?;
        let rate = TASKS as f64 / took.as_secs_f64();
        println!(
            "  round {round}: {TASKS} tasks done in {:>6.1} ms: {rate:>7.0} tasks/s (queueing them took {:.1} ms)",
            ms(took),
            ms(enqueue)
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!("  median: {median:.0} tasks/s ({:.2} ms per task)", 1000.0 / median);
    cpu::report(cpu);

    // 2. A schedule's delay.
    println!(
        "\nSchedule delay: `--every {}ms` with one stage (Registry.ListServices through the proxy), {FIRINGS} \
         firings after {SKIPPED_FIRINGS} skipped",
        EVERY.as_millis()
    );
    let cpu = cpu::Snapshot::now();
    let (delays, gaps) = schedule_delay(&client).await.context("the schedule")?;
    println!("  {:<40} {:>9} {:>9} {:>9} {:>9}", "", "p50", "p99", "max", "min");
    let row = |label: &str, s: &Samples| {
        println!(
            "  {label:<40} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>6.1} ms",
            ms(s.median()),
            ms(s.percentile(99.0)),
            ms(s.max()),
            ms(s.min())
        );
    };
    row("due → started (started_ms - due_ms)", &delays);
    row(&format!("gap between firings (due_ms, {} ms)", EVERY.as_millis()), &gaps);
    let p99 = delays.percentile(99.0);
    println!("  target p99 ≤ {} ms: {}", TARGET_P99.as_millis(), if p99 <= TARGET_P99 { "PASS" } else { "MISS" });
    cpu::report(cpu);
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts a micro server in this process and logs in as the admin.
async fn start(dir: &std::path::Path) -> anyhow::Result<(SocketAddr, Client)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let config = micro_server::ServerConfig {
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..micro_server::ServerConfig::new(dir.join("server"))
    };
    let mut server = tokio::spawn(micro_server::serve(listener, config, std::future::pending()));
    let conn = micro_client::Connection::new(&proxy.to_string(), micro_core::DEFAULT_NAMESPACE)?;
    let token = inprocess::admin_token(&conn, &mut server).await?;
    let client = Client::new(&proxy.to_string(), micro_core::DEFAULT_NAMESPACE)?.with_token(&token);
    Ok((proxy, client))
}

type Tasks = TasksClient<InterceptedService<Channel, micro::client::Route>>;

fn tasks(client: &Client) -> Tasks {
    TasksClient::new(client.service(micro::tasks::SERVICE))
}

/// How many tasks of `name` are in `state`.
async fn count(client: &Client, name: &str, state: State) -> anyhow::Result<usize> {
    let req = ListRequest { state: state as i32, name: name.into(), limit: 1000 };
    Ok(tasks(client).list(req).await?.into_inner().tasks.len())
}

/// One round: queue the tasks, run the workers until the queue lists every task as succeeded. Returns the time the
/// workers took and the time queueing took.
async fn throughput_round(client: &Client, round: usize) -> anyhow::Result<(Duration, Duration)> {
    let name = format!("bench-{round}");
    let queued = Instant::now();
    let mut queue = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let (mut tasks, name) = (tasks(client), name.clone());
        queue.spawn(async move {
            tasks.enqueue(EnqueueRequest { name, payload: i.to_string(), ..Default::default() }).await.map(drop)
        });
    }
    while let Some(done) = queue.join_next().await {
        done??;
    }
    let enqueue = queued.elapsed();
    ensure!(count(client, &name, State::Pending).await? == TASKS, "the {TASKS} tasks are not all pending");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let begun = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let worker = Worker::new()
            .concurrency(1)
            .poll(Duration::from_secs(1))
            .id(format!("bench-worker-{w}"))
            .handle(name.clone(), |task: TaskContext| async move { task.payload::<u64>() });
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(worker.run(client.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let deadline = begun + ROUND_TIMEOUT;
    let took = loop {
        if count(client, &name, State::Succeeded).await? == TASKS {
            break begun.elapsed();
        }
        ensure!(Instant::now() < deadline, "the workers did not finish the {TASKS} tasks in {ROUND_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stop_tx.send(true)?;
    for w in workers {
        w.await?;
    }
    Ok((took, enqueue))
}

/// Schedules `every 200ms`, waits for the firings, unschedules, and returns the delays and the gaps.
async fn schedule_delay(client: &Client) -> anyhow::Result<(Samples, Samples)> {
    let name = "bench-every";
    let schedule = Schedule {
        name: name.into(),
        when: Some(When::EveryMs(EVERY.as_millis() as u64)),
        stages: vec![Stage {
            service: "registry".into(),
            endpoint: "Registry.ListServices".into(),
            request: "{}".into(),
        }],
        ..Default::default()
    };
    tasks(client).schedule(ScheduleRequest { schedule: Some(schedule) }).await.context("Tasks.Schedule")?;
    let wanted = FIRINGS + SKIPPED_FIRINGS;
    let deadline = Instant::now() + EVERY * wanted as u32 + ROUND_TIMEOUT;
    loop {
        let done = count(client, name, State::Succeeded).await?;
        if done >= wanted {
            break;
        }
        if Instant::now() > deadline {
            let failed = count(client, name, State::Failed).await? + count(client, name, State::Dead).await?;
            bail!("only {done} of {wanted} firings succeeded in time ({failed} failed)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tasks(client).unschedule(UnscheduleRequest { name: name.into() }).await.context("Tasks.Unschedule")?;
    let req = ListRequest { state: State::Succeeded as i32, name: name.into(), limit: 1000 };
    let mut done = tasks(client).list(req).await?.into_inner().tasks;
    done.sort_by_key(|t| t.due_ms);
    let measured: Vec<_> = done.iter().skip(SKIPPED_FIRINGS).take(FIRINGS).collect();
    ensure!(measured.iter().all(|t| t.started_ms > 0), "a succeeded task without started_ms");
    let ms_of = |d: i64| Duration::from_millis(d.max(0) as u64);
    let delays = measured.iter().map(|t| ms_of(t.started_ms - t.due_ms)).collect();
    let gaps = measured.windows(2).map(|w| ms_of(w[1].due_ms - w[0].due_ms)).collect();
    Ok((Samples::new(delays), Samples::new(gaps)))
}
