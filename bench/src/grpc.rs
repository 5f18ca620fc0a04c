//! gRPC load against helloworld: sequential unary latency and throughput with a fixed number of calls in flight.
//!
//! Both measurements run the same code against each address (helloworld's own, the reference forwarder's and the
//! proxy's) with the plain generated `HelloworldClient`; the proxy routes by the gRPC path
//! `/helloworld.Helloworld/Call`. Every call carries the same `authorization: Bearer …` header on every path (the
//! proxy requires an account for service calls; helloworld ignores the header), so the requests are byte for byte
//! alike. The work against the targets is interleaved (blocks of calls, rounds of load) so that a change in
//! background load on the machine skews them alike.

use crate::stats::Samples;
use anyhow::{Context, bail, ensure};
use helloworld::pb::{CallRequest, helloworld_client::HelloworldClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer TOKEN` to every request.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// The header value for `token`.
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(format!("Bearer {token}").parse().context("the token is not valid ASCII metadata")?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Client = HelloworldClient<InterceptedService<Channel, Bearer>>;

/// A generated client over `connections` HTTP/2 connections to one address.
#[derive(Clone)]
pub struct Target {
    clients: Vec<Client>,
}

impl Target {
    /// Connects `connections` channels to `address` and checks that a call answers `Hello x`.
    pub async fn connect(address: SocketAddr, connections: usize, bearer: &Bearer) -> anyhow::Result<Self> {
        Self::connect_endpoint(Endpoint::from_shared(format!("http://{address}"))?, connections, bearer).await
    }

    /// Connects `connections` channels to `endpoint` (TLS or not, as it is configured) and checks that a call
    /// answers `Hello x`.
    pub async fn connect_endpoint(endpoint: Endpoint, connections: usize, bearer: &Bearer) -> anyhow::Result<Self> {
        let address = endpoint.uri().to_string();
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            let channel = endpoint
                .clone()
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .with_context(|| format!("cannot connect to {address}"))?;
            clients.push(HelloworldClient::with_interceptor(channel, bearer.clone()));
        }
        let target = Self { clients };
        let reply = target.client(0).call(request()).await.with_context(|| format!("calling {address}"))?;
        ensure!(reply.get_ref().msg == "Hello x", "unexpected reply from {address}: {:?}", reply.get_ref().msg);
        Ok(target)
    }

    fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }
}

fn request() -> CallRequest {
    CallRequest { name: "x".into() }
}

/// Sequential calls against each target: `warmup` unmeasured calls each, then `calls` measured calls each,
/// alternating between the targets in blocks of `block` calls. Returns the samples in the order of `targets`.
pub async fn latency(targets: Vec<Target>, warmup: usize, calls: usize, block: usize) -> anyhow::Result<Vec<Samples>> {
    let mut clients: Vec<Client> = targets.iter().map(|t| t.client(0)).collect();
    for _ in 0..warmup {
        for client in &mut clients {
            client.call(request()).await?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = clients.iter().map(|_| Vec::with_capacity(calls)).collect();
    let block = block.max(1);
    let mut done = 0;
    while done < calls {
        let n = block.min(calls - done);
        for (client, out) in clients.iter_mut().zip(samples.iter_mut()) {
            for _ in 0..n {
                let start = Instant::now();
                client.call(request()).await?;
                out.push(start.elapsed());
            }
        }
        done += n;
    }
    Ok(samples.into_iter().map(Samples::new).collect())
}

/// The outcome of one throughput measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    /// Calls that completed successfully inside the measured windows.
    pub completed: u64,
    /// Calls that failed inside the measured windows.
    pub failed: u64,
    /// Total length of the measured windows.
    pub elapsed: Duration,
}

impl Throughput {
    /// Completed calls per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed.is_zero() { 0.0 } else { self.completed as f64 / self.elapsed.as_secs_f64() }
    }
}

/// Keeps `in_flight` calls outstanding against `target` for `warmup` (unmeasured), then for `window`, counting
/// the calls that complete inside the window.
async fn load(target: &Target, in_flight: usize, warmup: Duration, window: Duration) -> anyhow::Result<Throughput> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + window;
    let mut tasks = Vec::with_capacity(in_flight);
    for i in 0..in_flight {
        let mut client = target.client(i);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            // Bounded by the deadline: every iteration awaits one call, and the loop ends at `until`.
            while Instant::now() < until {
                let result = client.call(request()).await;
                let now = Instant::now();
                let counted = now >= measure_from && now < until;
                match result {
                    Ok(_) if counted => ok += 1,
                    Ok(_) => {}
                    Err(status) => {
                        if counted {
                            failed += 1;
                        }
                        first_error.get_or_insert(status);
                    }
                }
            }
            (ok, failed, first_error)
        }));
    }
    let mut total = Throughput { elapsed: window, ..Default::default() };
    if window.is_zero() {
        // A warm-up only: nothing is counted.
        for task in tasks {
            task.await?;
        }
        return Ok(total);
    }
    let mut first_error = None;
    for task in tasks {
        let (ok, failed, error) = task.await?;
        total.completed += ok;
        total.failed += failed;
        if first_error.is_none() {
            first_error = error;
        }
    }
    if let Some(status) = first_error {
        if total.completed == 0 {
            bail!("every call failed: {status}");
        }
        eprintln!("warning: {} calls failed, the first with: {status}", total.failed);
    }
    Ok(total)
}

/// Throughput of each target at `in_flight` calls outstanding.
///
/// Each target first gets `warmup` of unmeasured load; then `rounds` rounds, each visiting every target in turn,
/// measure `window` per target (after a short unmeasured ramp). Returns the sums over the rounds in the order of
/// `targets`, and for each round the rate of every target relative to the first.
pub async fn throughput(
    targets: &[Target],
    in_flight: usize,
    rounds: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(Vec<Throughput>, Vec<Vec<f64>>)> {
    for target in targets {
        load(target, in_flight, warmup, Duration::ZERO).await?;
    }
    let ramp = Duration::from_millis(100);
    let mut sums = vec![Throughput::default(); targets.len()];
    let mut relative = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let mut rates = Vec::with_capacity(targets.len());
        for (target, sum) in targets.iter().zip(sums.iter_mut()) {
            let t = load(target, in_flight, ramp, window).await?;
            rates.push(t.rate());
            sum.completed += t.completed;
            sum.failed += t.failed;
            sum.elapsed += t.elapsed;
        }
        let base = rates[0];
        relative.push(rates.iter().map(|r| if base > 0.0 { r / base } else { 0.0 }).collect());
    }
    Ok((sums, relative))
}
