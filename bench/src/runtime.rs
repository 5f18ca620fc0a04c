//! The runtime benchmark (issue 4): time from `micro run` of an already built service to its first successful
//! call, and `micro logs` on a 100 MB log (the tail must not read the whole file: at most 50 ms).
//!
//! Everything is the real thing, each in its own process: `micro server` (release build, temporary data dir,
//! loopback ports), and the `micro` CLI. Measured:
//!
//! 1. `micro run --command <prebuilt helloworld>`: wall time of `micro run` (it returns once the service is
//!    registered), and until the first `micro helloworld call` succeeds; several rounds, each ended with `micro kill`.
//! 2. `micro run examples/helloworld` (upload of the workspace, `cargo build` in the server's release profile with
//!    the workspace's target dir, so nothing needs compiling when the release build is current), to its first call.
//! 3. `micro logs NAME` (15 lines) and `micro logs -n 1000 NAME` on a service whose log is 100 MB, against reading
//!    the whole file once.
//!
//! Build first: `cargo build --release --workspace`, then `cargo run --release -p micro-bench --bin runtime`.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const LOG_BYTES: u64 = 100 * 1024 * 1024;
const TAIL_RUNS: usize = 20;

struct Bench {
    micro: PathBuf,
    helloworld: PathBuf,
    target_dir: PathBuf,
    data: tempfile::TempDir,
    home: tempfile::TempDir,
    server: Option<Child>,
    proxy: String,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Bench {
    fn start() -> anyhow::Result<Bench> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let dir = exe.parent().context("the benchmark executable has no directory")?.to_path_buf();
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if !path.is_file() {
                bail!("{} is missing: build first with `cargo build --release --workspace`", path.display());
            }
            Ok(path)
        };
        let micro = find("micro")?;
        let helloworld = find("helloworld")?;
        let target_dir = dir.parent().context("the binary dir has no parent")?.to_path_buf();
        let data = tempfile::Builder::new().prefix("micro-bench-runtime-").tempdir()?;
        let home = tempfile::Builder::new().prefix("micro-bench-home-").tempdir()?;
        let mut cmd = Command::new(&micro);
        cmd.args(["server", "--proxy-address", "127.0.0.1:0", "--api-address", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .env("MICRO_RUNTIME_CARGO_PROFILE", "release")
            .env("MICRO_RUNTIME_TARGET_DIR", &target_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().to_string();
            if key.starts_with("MICRO_") && !key.starts_with("MICRO_RUNTIME_") {
                cmd.env_remove(key);
            }
        }
        let mut server = cmd.spawn().context("cannot start micro server")?;
        let stderr = server.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("micro server listening").nth(1)
                    && let Some(addr) = rest.split_whitespace().find_map(|kv| kv.strip_prefix("proxy="))
                {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let proxy = rx.recv_timeout(Duration::from_secs(60)).context("micro server did not start")?;
        let bench = Bench { micro, helloworld, target_dir, data, home, server: Some(server), proxy };
        let mut login = bench
            .cli(&["login", "--username", "admin", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        login.stdin.take().context("no stdin")?.write_all(b"micro")?;
        if !login.wait()?.success() {
            bail!("micro login failed");
        }
        Ok(bench)
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.micro);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("MICRO_CONFIG_DIR", self.home.path().join("config"))
            .env("MICRO_CACHE_DIR", self.home.path().join("cache"))
            .env("MICRO_PROXY", &self.proxy)
            .stdin(Stdio::null());
        for var in ["MICRO_ENV", "MICRO_OUTPUT", "MICRO_NAMESPACE", "MICRO_AUTH_TOKEN"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs the CLI; fails with its stderr unless it succeeds.
    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args).output()?;
        if !out.status.success() {
            bail!("`micro {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `micro run ARGS`, then calls `name` until one succeeds: (time of run, time to the first call).
    fn run_to_first_call(&self, name: &str, args: &[&str]) -> anyhow::Result<(Duration, Duration)> {
        let start = Instant::now();
        self.ok(args)?;
        let ran = start.elapsed();
        loop {
            let out = self.cli(&[name, "call", "--name=bench"]).output()?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Hello bench") {
                return Ok((ran, start.elapsed()));
            }
            // Not found (4) is expected until it registers; anything else is a failure.
            if out.status.code() != Some(4) || start.elapsed() > Duration::from_secs(600) {
                bail!("{name} did not answer: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn write_log(path: &Path, bytes: u64) -> anyhow::Result<u64> {
    let mut file = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?);
    let mut written = 0u64;
    let mut i = 0u64;
    while written < bytes {
        let line = format!(
            "2024-05-01T10:00:00.{:06}Z stdout 2024-05-01T10:00:00Z  INFO bench: request {i} handled in 42us \
             path=/helloworld.Helloworld/Call status=ok\n",
            i % 1_000_000
        );
        file.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    file.flush()?;
    Ok(i)
}

fn main() -> anyhow::Result<()> {
    let bench = Bench::start()?;
    println!("runtime benchmark: micro server and CLI (release) on {}", bench.proxy);

    // 1. micro run of a prebuilt binary to its first call.
    let empty = bench.data.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let hello = bench.helloworld.to_string_lossy().to_string();
    let empty_text = empty.to_string_lossy().to_string();
    let (mut runs, mut firsts) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (ran, first) = bench
            .run_to_first_call("helloworld", &["run", "--name", "helloworld", "--command", &hello, &empty_text])?;
        runs.push(ran);
        firsts.push(first);
        bench.ok(&["kill", "helloworld"])?;
    }
    println!(
        "micro run --command <built helloworld>: run returned after {} (median of {ROUNDS}; min {}, max {}); first \
         successful call after {} (median; min {}, max {})",
        ms(median(runs.clone())),
        ms(*runs.iter().min().unwrap_or(&Duration::ZERO)),
        ms(*runs.iter().max().unwrap_or(&Duration::ZERO)),
        ms(median(firsts.clone())),
        ms(*firsts.iter().min().unwrap_or(&Duration::ZERO)),
        ms(*firsts.iter().max().unwrap_or(&Duration::ZERO)),
    );

    // 2. micro run of the example's source, built by the runtime (release, the workspace's target dir).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/helloworld");
    let example = example.canonicalize()?.to_string_lossy().to_string();
    let (ran, first) = bench.run_to_first_call("helloworld", &["run", &example])?;
    let build = bench.ok(&["logs", "--build", "helloworld"])?;
    let compiled = build.lines().filter(|l| l.trim_start().starts_with("Compiling")).count();
    println!(
        "micro run examples/helloworld (upload + cargo build --release in {}; {compiled} crates compiled): run \
         returned after {}, first successful call after {}",
        bench.target_dir.display(),
        ms(ran),
        ms(first)
    );
    bench.ok(&["kill", "helloworld"])?;

    // 3. micro logs on a 100 MB log.
    bench.ok(&["run", "--name", "biglog", "--command", "sleep 100000", &empty_text])?;
    let log = bench.data.path().join("runtime/logs/micro/biglog.log");
    let lines = write_log(&log, LOG_BYTES)?;
    let size = std::fs::metadata(&log)?.len();
    let read_start = Instant::now();
    let whole = std::fs::read(&log)?.iter().filter(|&&b| b == b'\n').count();
    let whole_time = read_start.elapsed();
    let time_logs = |args: &[&str], expect: usize| -> anyhow::Result<Vec<Duration>> {
        // One untimed run first: the CLI binary and its token file come into the page cache.
        bench.ok(args)?;
        let mut times = Vec::new();
        for _ in 0..TAIL_RUNS {
            let start = Instant::now();
            let out = bench.ok(args)?;
            times.push(start.elapsed());
            if out.lines().count() != expect {
                bail!("`micro {}` printed {} lines, not {expect}", args.join(" "), out.lines().count());
            }
        }
        Ok(times)
    };
    let tail = time_logs(&["logs", "biglog"], 15)?;
    let tail_1000 = time_logs(&["logs", "-n", "1000", "biglog"], 1000)?;
    let worst = *tail.iter().max().unwrap_or(&Duration::ZERO);
    let mut sorted = tail.clone();
    sorted.sort();
    let p90 = sorted[sorted.len() * 9 / 10 - 1];
    println!(
        "micro logs biglog on a {:.0} MB log ({lines} lines), whole CLI process: {} median, {} p90, {} max of \
         {TAIL_RUNS} runs (target: at most 50 ms) {}",
        size as f64 / 1e6,
        ms(median(tail)),
        ms(p90),
        ms(worst),
        if worst <= Duration::from_millis(50) { "OK" } else { "OVER" }
    );
    println!("micro logs -n 1000 biglog: {} median of {TAIL_RUNS} runs", ms(median(tail_1000)));
    println!("for scale: reading the whole file once ({whole} lines) takes {}", ms(whole_time));
    bench.ok(&["kill", "biglog"])?;
    Ok(())
}
