//! `micro-bench`: side-by-side figures for micro's proxy and CLI, against the targets of requirement 11.
//!
//! In one run it starts a `micro server` and the helloworld service in-process on loopback ports, then measures
//! (1) sequential unary latency, p50 and p99, directly against helloworld, through a bare reference forwarder and
//! through the proxy; (2) throughput with 64 calls in flight against the same three; and (3) the wall time of a
//! whole `micro helloworld call --name=x` process against a minimal compiled tonic client (`hello-client`). It
//! ends with a table of the targets, the measured values and PASS/MISS. It is a benchmark, not a test: it exits 0
//! on a MISS, and non-zero only when it cannot measure. Run it with `bench/run.sh` (or `cargo build --release
//! --workspace` and then `cargo run --release -p micro-bench`); `--help` lists the knobs. See docs/benchmarks.md.

mod cpu;
mod forwarder;
mod grpc;
#[allow(dead_code)] // the other benchmarks use the rest of this module
mod inprocess;
mod platform;
mod process;
mod stats;

use anyhow::{Context, bail};
use platform::{Layout, Platform};
use stats::{ms, thousands, us};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Target: proxy p50 at most direct p50 + this.
const LATENCY_BUDGET_US: f64 = 200.0;
/// Target: proxy throughput at least this × direct.
const THROUGHPUT_RATIO: f64 = 0.45;
/// Target: `micro helloworld call` at most this × the minimal client's process time.
const CLI_RATIO: f64 = 2.0;

const USAGE: &str = "\
micro-bench: direct vs proxied gRPC latency and throughput, and CLI process time

usage: micro-bench [OPTIONS]

  --calls N          measured sequential calls per target (default 2000)
  --warmup N         unmeasured sequential calls per target first (default 200)
  --in-flight N      calls outstanding during the throughput runs (default 64)
  --duration SECS    measured throughput time per target, split over the rounds (default 3)
  --rounds N         alternating direct/proxy throughput rounds (default 6)
  --connections N    HTTP/2 connections the load is spread over (default 1)
  --cli-runs N       timed runs of each process (default 30)
  --runtimes MODE    separate (server, service, client each on its own runtime; default) or shared
  --workers N        worker threads per runtime (default: the number of CPUs)
  -h, --help         this help
";

/// The knobs, with their defaults.
#[derive(Clone, Debug)]
struct Options {
    calls: usize,
    warmup: usize,
    in_flight: usize,
    duration: Duration,
    rounds: usize,
    connections: usize,
    cli_runs: usize,
    layout: Layout,
    workers: usize,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Self>> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut o = Options {
            calls: 2000,
            warmup: 200,
            in_flight: 64,
            duration: Duration::from_secs(3),
            rounds: 6,
            connections: 1,
            cli_runs: 30,
            layout: Layout::Separate,
            workers: cpus,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().with_context(|| format!("{flag} needs a value (see --help)"))?,
            };
            let number = |max: usize| -> anyhow::Result<usize> {
                match value.parse::<usize>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => bail!("{flag} takes a whole number from 1 to {max}, got {value:?}"),
                }
            };
            match flag.as_str() {
                "--calls" => o.calls = number(1_000_000)?,
                "--warmup" => o.warmup = number(1_000_000)?,
                "--in-flight" => o.in_flight = number(10_000)?,
                "--duration" => {
                    let secs: f64 =
                        value.parse().ok().filter(|s: &f64| *s > 0.0 && *s <= 600.0).with_context(|| {
                            format!("--duration takes seconds (greater than 0, at most 600), got {value:?}")
                        })?;
                    o.duration = Duration::from_secs_f64(secs);
                }
                "--rounds" => o.rounds = number(100)?,
                "--connections" => o.connections = number(64)?,
                "--cli-runs" => o.cli_runs = number(10_000)?,
                "--workers" => o.workers = number(256)?,
                "--runtimes" => {
                    o.layout = match value.as_str() {
                        "separate" => Layout::Separate,
                        "shared" => Layout::Shared,
                        _ => bail!("--runtimes is separate or shared, got {value:?}"),
                    }
                }
                _ => bail!("unknown option {flag:?} (see --help)"),
            }
        }
        Ok(Some(o))
    }
}

/// One line of the summary.
struct Verdict {
    target: String,
    measured: String,
    pass: bool,
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("micro-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("micro-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    // Before anything slow: the binaries of the process measurement must exist.
    let bins = process::Binaries::locate()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("micro-bench: {cpus} CPUs; runtimes: {} ({} worker threads each)", o.layout, o.workers);
    println!("  micro:        {}", bins.micro.display());
    println!("  hello-client: {}", bins.hello_client.display());

    let platform = Platform::start(o.layout, o.workers)?;
    println!("  proxy {} · helloworld {} (registered)", platform.proxy, platform.direct);
    let measured = measure(o, &platform, &bins);
    let stopped = platform.stop();
    let verdicts = measured?;
    if let Err(e) = stopped {
        eprintln!("warning: shutdown was not clean: {e:#}");
    }

    println!("\nSummary (targets of requirement 11)");
    let width = verdicts.iter().map(|v| v.target.chars().count()).max().unwrap_or(0);
    let mwidth = verdicts.iter().map(|v| v.measured.chars().count()).max().unwrap_or(0);
    println!("  {:<width$}   {:<mwidth$}   result", "target", "measured");
    for v in &verdicts {
        let result = if v.pass { "PASS" } else { "MISS" };
        println!("  {:<width$}   {:<mwidth$}   {result}", v.target, v.measured);
    }
    let missed = verdicts.iter().filter(|v| !v.pass).count();
    if missed == 0 {
        println!("\nAll {} targets met (total run time {:.1} s).", verdicts.len(), started.elapsed().as_secs_f64());
    } else {
        println!(
            "\n{missed} of {} targets MISSED (total run time {:.1} s). A benchmark, not a test: exit status 0.",
            verdicts.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn measure(o: &Options, platform: &Platform, bins: &process::Binaries) -> anyhow::Result<Vec<Verdict>> {
    let mut verdicts = Vec::new();
    let bearer = grpc::Bearer::new(&platform.token)?;
    let names = ["direct", "forwarder", "proxy"];
    let targets = platform.block_on(async {
        let mut targets = Vec::new();
        for address in [platform.direct, platform.forwarder, platform.proxy] {
            targets.push(grpc::Target::connect(address, o.connections, &bearer).await?);
        }
        anyhow::Ok(targets)
    })?;

    // 1. Unary latency.
    println!(
        "\nUnary latency: {} sequential calls per target after {} warm-up calls, alternating in blocks of 100",
        o.calls, o.warmup
    );
    let cpu = cpu::Snapshot::now();
    // On a worker of the client runtime, like a task of a real client (not on the main thread, which would add a
    // thread hop to every response).
    let latency = grpc::latency(targets.clone(), o.warmup, o.calls, 100);
    let samples = platform.block_on(async { tokio::spawn(latency).await })??;
    println!("  {:<10} {:>10} {:>10} {:>10} {:>10} {:>10}", "", "p50", "p99", "mean", "min", "max");
    for (name, s) in names.iter().zip(&samples) {
        println!(
            "  {:<10} {:>7.1} µs {:>7.1} µs {:>7.1} µs {:>7.1} µs {:>7.1} µs",
            name,
            us(s.median()),
            us(s.percentile(99.0)),
            us(s.mean()),
            us(s.min()),
            us(s.max())
        );
    }
    let (d, f, p) = (&samples[0], &samples[1], &samples[2]);
    let added = us(p.median()) - us(d.median());
    println!(
        "  proxy − direct: p50 {:+.1} µs, p99 {:+.1} µs; p50 ratio {:.2}×",
        added,
        us(p.percentile(99.0)) - us(d.percentile(99.0)),
        us(p.median()) / us(d.median())
    );
    println!(
        "  (reference: forwarder − direct p50 {:+.1} µs; proxy − forwarder p50 {:+.1} µs)",
        us(f.median()) - us(d.median()),
        us(p.median()) - us(f.median())
    );
    cpu::report(cpu);
    verdicts.push(Verdict {
        target: format!("proxy p50 ≤ direct p50 + {LATENCY_BUDGET_US:.0} µs"),
        measured: format!("{added:+.1} µs ({:.1} → {:.1} µs)", us(d.median()), us(p.median())),
        pass: added <= LATENCY_BUDGET_US,
    });

    // 2. Throughput.
    let window = o.duration / o.rounds as u32;
    let warmup = Duration::from_millis(500);
    println!(
        "\nThroughput: {} calls in flight over {} connection(s); {:.1} s of warm-up per target, then {} rounds of \
         {:.2} s per target in turn",
        o.in_flight,
        o.connections,
        warmup.as_secs_f64(),
        o.rounds,
        window.as_secs_f64(),
    );
    let cpu = cpu::Snapshot::now();
    let (sums, rounds) = platform.block_on(grpc::throughput(&targets, o.in_flight, o.rounds, warmup, window))?;
    let direct_rate = sums[0].rate();
    let ratio_of = |t: &grpc::Throughput| if direct_rate > 0.0 { t.rate() / direct_rate } else { 0.0 };
    for (k, (name, t)) in names.iter().zip(&sums).enumerate() {
        let failed = if t.failed > 0 { format!(", {} failed", t.failed) } else { String::new() };
        let spread = if k == 0 {
            String::new()
        } else {
            let per_round = rounds.iter().map(|r| format!("{:.2}", r[k])).collect::<Vec<_>>().join(" ");
            format!("  {:.3} × direct (rounds: {per_round})", ratio_of(t))
        };
        println!(
            "  {:<10} {:>9} req/s  ({} calls in {:.1} s{failed}){spread}",
            name,
            thousands(t.rate()),
            t.completed,
            t.elapsed.as_secs_f64()
        );
    }
    let ratio = ratio_of(&sums[2]);
    println!("  proxy / direct: {ratio:.3}; proxy / forwarder: {:.3}", sums[2].rate() / sums[1].rate().max(1e-9));
    cpu::report(cpu);
    verdicts.push(Verdict {
        target: format!("proxy throughput ≥ {THROUGHPUT_RATIO:.2} × direct"),
        measured: format!("{ratio:.3} × ({} → {} req/s)", thousands(direct_rate), thousands(sums[2].rate())),
        pass: ratio >= THROUGHPUT_RATIO,
    });
    drop(targets);

    // 3. Whole-process time of one call.
    println!(
        "\nProcess time of one call through the proxy: {} runs each, alternating, logged in, warm schema cache",
        o.cli_runs
    );
    let cpu = cpu::Snapshot::now();
    let home = tempfile::Builder::new().prefix("micro-bench-home").tempdir()?;
    let (m, c) = process::time_calls(bins, platform, o.cli_runs, home.path())?;
    println!("  {:<32} {:>9} {:>9} {:>9} {:>9}", "", "mean", "median", "min", "max");
    for (name, s) in [("micro helloworld call --name=x", &m), ("hello-client (tonic, minimal)", &c)] {
        println!(
            "  {:<32} {:>6.2} ms {:>6.2} ms {:>6.2} ms {:>6.2} ms",
            name,
            ms(s.mean()),
            ms(s.median()),
            ms(s.min()),
            ms(s.max())
        );
    }
    let mean_ratio = ms(m.mean()) / ms(c.mean());
    let median_ratio = ms(m.median()) / ms(c.median());
    println!(
        "  micro / hello-client: mean {mean_ratio:.2}×, median {median_ratio:.2}× (the target is judged on the median)"
    );
    cpu::report(cpu);
    verdicts.push(Verdict {
        target: format!("micro helloworld call ≤ {CLI_RATIO:.0} × minimal client"),
        measured: format!("{median_ratio:.2} × (median {:.2} → {:.2} ms)", ms(c.median()), ms(m.median())),
        pass: median_ratio <= CLI_RATIO,
    });
    Ok(verdicts)
}
