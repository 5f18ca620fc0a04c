//! The development-loop benchmark: how long a developer waits between saving a change and calling the new code,
//! with `micro new`, `micro run`, `micro update` and `micro run --watch`, against plain `cargo build`.
//!
//! Everything is the real thing, each in its own process: the release `micro` found next to this executable, a
//! `micro server` on loopback ports, and cargo. Every run is isolated in a fresh temporary directory: `home`
//! (HOME), the server's data dir, micro's service library (`MICRO_LIBRARY_DIR=<tmp>/lib`), the build dir shared by
//! every runtime build (`MICRO_BUILD_DIR=<tmp>/build`), the CLI's config and cache dirs; cargo keeps the user's
//! toolchain and registry (`RUSTUP_HOME`, `CARGO_HOME`), and builds offline from it. The runtime builds with the
//! `release` profile, in its own target dir under the data dir. Measured, each step timed with the wall clock:
//!
//! 0. **warm-up**: `micro new <tmp>/warm --build`, what `./install.sh` does once (it compiles the service
//!    library's dependencies into the shared build dir).
//! 1. **cold**: `micro new greeter`, `micro run greeter`, until `micro greeter call --name=Ann` answers
//!    "Hello Ann"; against a plain `cargo build --release --offline` of a copy of the package in a fresh target
//!    dir (no shared build dir). Targets: at most 90 s, and at most 1.3 × plain.
//! 2. **update** of that `micro new` service: an edit of the greeting in `src/handler.rs`, then `micro update`,
//!    until the call answers the new greeting; against an incremental `cargo build --release --offline` of the
//!    same edit in the copy. Median of `--rounds` rounds. Targets: at most 10 s, and at most 1.5 × cargo + 5 s.
//! 3. **update of a workspace member with path dependencies**: a copy of this checkout (the files git lists,
//!    tracked and untracked-but-not-ignored), `micro run examples/helloworld` (the first run, reported), then
//!    edits of its greeting and `micro update`; against incremental `cargo build --release --offline -p helloworld`
//!    in the copy. Same targets as 2. Also one `micro update` with no change: a few seconds (at most 5 s), and
//!    `micro` itself must not be compiled again (cargo's `Compiling` lines of the deployment are checked).
//! 4. **watch**: `micro run --watch` of a new service; from the write of an edit until the call answers the new
//!    greeting. Median of the rounds; target at most 10 s.
//! 5. **figures**: the packages helloworld links (`cargo tree`), the size of `micro` as `./install.sh` installs it
//!    (the `dist` profile when built, `objcopy --strip-all`; target at most 25 MB) and as built, and, median of 5 starts of a fresh `micro server`: the time from spawn
//!    to its "listening" line, to the first successful `micro services`, and its resident memory (VmRSS) 3 s
//!    after (goal: at most 30 MB, 1 MB = 10^6 bytes).
//!
//! Progress goes to stderr as it happens; the summary table (with the targets, PASS or MISS) to stdout.
//!
//! Build first, then run: `cargo build --release --workspace && cargo run --release -p micro-bench --bin devloop`.
//! Flags: `--rounds N` (default 3), `--skip-plain` (no plain cargo builds: they need a cold build of every
//! dependency, minutes; the targets relative to cargo are then skipped), `--keep` (keep the temporary dir).

use anyhow::{Context, bail};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The longest wait for a build (`micro new --build`, `micro run`, `micro update`, `cargo build`).
const BUILD_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// The longest wait for the expected answer once a build is done.
const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// The longest one CLI process (a call, `micro services`, …) may take.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// The longest wait for a server to listen and answer.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// The time between two calls while waiting for an answer.
const POLL: Duration = Duration::from_millis(100);
/// How many lines of a server's or watcher's stderr an error shows.
const TAIL: usize = 25;
/// How many fresh servers the start-up figures are the median of.
const SERVER_STARTS: usize = 5;
/// The greetings the edits cycle through (the template's is "Hello").
const GREETINGS: [&str; 3] = ["Howdy", "Hi", "Hey"];
/// The admin's password of a fresh server.
const ADMIN_PASSWORD: &str = "micro";

/// The command line's options.
#[derive(Debug)]
struct Options {
    /// How many edits each update step times.
    rounds: usize,
    /// Leave out the plain cargo builds.
    skip_plain: bool,
    /// Keep the temporary directory.
    keep: bool,
}

/// Parses the options; `--help` prints the usage and exits.
fn options() -> anyhow::Result<Options> {
    let mut opts = Options { rounds: 3, skip_plain: false, keep: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let rounds = match arg.as_str() {
            "--rounds" => Some(args.next().context("--rounds needs a number")?),
            "--skip-plain" => {
                opts.skip_plain = true;
                None
            }
            "--keep" => {
                opts.keep = true;
                None
            }
            "-h" | "--help" => {
                println!(
                    "devloop: the development-loop benchmark of micro (new, run, update, run --watch)\n\n\
                     Usage: devloop [--rounds N] [--skip-plain] [--keep]\n\n  \
                     --rounds N    edits timed per update step (default 3)\n  \
                     --skip-plain  no plain cargo builds to compare with (a quick run)\n  \
                     --keep        keep the temporary directory"
                );
                std::process::exit(0);
            }
            other => match other.strip_prefix("--rounds=") {
                Some(n) => Some(n.to_string()),
                None => bail!("unknown argument {other:?} (try --help)"),
            },
        };
        if let Some(n) = rounds {
            opts.rounds = n.parse().ok().filter(|n| *n > 0).with_context(|| format!("--rounds {n:?}: not a count"))?;
        }
    }
    Ok(opts)
}

/// Prints a progress line on stderr.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("devloop: {}", format_args!($($arg)*)) };
}

/// The last lines a process wrote, shared with the thread that reads them.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    /// Keeps `line`, forgetting the oldest beyond a few hundred.
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= 500 {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, one a line.
    fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether a kept line contains `text`.
    fn contains(&self, text: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|l| l.contains(text))
    }

    /// Reads `pipe` line by line into the log on a thread of its own; each line is also offered to `each`.
    fn follow(&self, pipe: impl Read + Send + 'static, mut each: impl FnMut(&str) + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                each(&line);
                log.push(line);
            }
        });
    }
}

/// What a finished process printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to its end (fed `input`, its output collected), killing it after `limit`; `what` names it in errors,
/// which end with `context()`.
fn run(
    mut cmd: Command,
    input: Option<&str>,
    limit: Duration,
    what: &str,
    context: &dyn Fn() -> String,
) -> anyhow::Result<Finished> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot start {what}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).with_context(|| format!("cannot write to {what}"))?;
    }
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {}\n{}", secs(limit), context());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Finished { status, stdout, stderr })
}

/// Like [`run`], but a failure of the process is an error too, with the end of its stderr.
fn run_ok(
    cmd: Command,
    input: Option<&str>,
    limit: Duration,
    what: &str,
    context: &dyn Fn() -> String,
) -> anyhow::Result<Finished> {
    let done = run(cmd, input, limit, what, context)?;
    if !done.status.success() {
        bail!("{what} failed ({}):\n{}\n{}", done.status, last_lines(&done.stderr, 40), context());
    }
    Ok(done)
}

/// The fresh temporary directory of a run, and the environment of every process started in it.
struct Sandbox {
    /// The temporary directory (removed on drop unless kept).
    dir: tempfile::TempDir,
    /// The release `micro` binary.
    micro: PathBuf,
    /// The checkout of micro this benchmark belongs to.
    repo: PathBuf,
    /// The variables every process gets.
    vars: Vec<(String, std::ffi::OsString)>,
}

impl Sandbox {
    /// Makes the temporary directory and works out the environment.
    fn new() -> anyhow::Result<Sandbox> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let bin = exe.parent().context("the benchmark executable has no directory")?;
        let micro = bin.join("micro");
        if !micro.is_file() {
            bail!(
                "{} is missing: build first with `cargo build --release --workspace` (or -p micro-cli)",
                micro.display()
            );
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
        let dir = tempfile::Builder::new().prefix("micro-devloop-").tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home)?;
        // Cargo must keep working under the new HOME: its toolchain and registry stay the user's.
        let original_home = std::env::var_os("HOME").map(PathBuf::from);
        let mut vars: Vec<(String, std::ffi::OsString)> = Vec::new();
        for (var, default) in [("RUSTUP_HOME", ".rustup"), ("CARGO_HOME", ".cargo")] {
            match (std::env::var_os(var), &original_home) {
                (Some(value), _) => vars.push((var.into(), value)),
                (None, Some(home)) => vars.push((var.into(), home.join(default).into())),
                (None, None) => bail!("neither {var} nor HOME is set: cannot find cargo's files"),
            }
        }
        vars.push(("HOME".into(), home.into()));
        for (var, sub) in [
            ("MICRO_LIBRARY_DIR", "lib"),
            ("MICRO_BUILD_DIR", "build"),
            ("MICRO_CONFIG_DIR", "config"),
            ("MICRO_CACHE_DIR", "cache"),
        ] {
            vars.push((var.into(), dir.path().join(sub).into()));
        }
        vars.push(("MICRO_RUNTIME_CARGO_PROFILE".into(), "release".into()));
        Ok(Sandbox { dir, micro, repo, vars })
    }

    /// `<tmp>/<rel>`.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `program` with the sandbox's environment: the user's MICRO_* settings, XDG dirs and cargo target/build
    /// dirs removed, the sandbox's variables set.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("MICRO_")
                || (key.starts_with("XDG_") && key.ends_with("_HOME"))
                || ["CARGO_TARGET_DIR", "CARGO_BUILD_BUILD_DIR", "CARGO_BUILD_TARGET_DIR"].contains(&key.as_ref())
            {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A `micro server` of the benchmark, stopped on drop.
struct Server {
    /// The server process.
    child: Child,
    /// Its proxy address.
    proxy: String,
    /// Its stderr.
    log: Log,
    /// The CLI's config dir for this server.
    config: PathBuf,
    /// The CLI's cache dir for this server.
    cache: PathBuf,
    /// The time from the spawn to the "listening" line.
    listening: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so that the server stops the services it runs.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `micro server` with the data dir `data` (created by the server), on loopback ports; returns once it
    /// printed the address of its proxy. The CLI talks to it with the config and cache dirs `cli` (`config`,
    /// `cache` in it).
    fn start(sb: &Sandbox, data: &Path, cli: &Path) -> anyhow::Result<Server> {
        let mut cmd = sb.command(&sb.micro);
        cmd.args(["server", "--proxy-address", "127.0.0.1:0", "--api-address", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().context("cannot start micro server")?;
        let stderr = child.stderr.take().context("the server has no stderr")?;
        let (tx, rx) = mpsc::channel();
        let log = Log::default();
        log.follow(stderr, move |line| {
            if let Some(rest) = line.split("micro server listening").nth(1)
                && let Some(addr) = rest.split_whitespace().find_map(|kv| kv.strip_prefix("proxy="))
            {
                let _ = tx.send((addr.to_string(), spawned.elapsed()));
            }
        });
        let (config, cache) = (cli.join("config"), cli.join("cache"));
        match rx.recv_timeout(START_DEADLINE) {
            Ok((proxy, listening)) => Ok(Server { child, proxy, log, config, cache, listening }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "micro server did not print its proxy address within {}; its stderr ended with:\n{}",
                    secs(START_DEADLINE),
                    log.tail(TAIL)
                )
            }
        }
    }

    /// The end of the server's stderr, for an error.
    fn context(&self) -> String {
        format!("the server's stderr ended with:\n{}", self.log.tail(TAIL))
    }

    /// `micro ARGS` against this server.
    fn cli(&self, sb: &Sandbox, args: &[&str]) -> Command {
        let mut cmd = sb.command(&sb.micro);
        cmd.args(args)
            .env("MICRO_PROXY", &self.proxy)
            .env("MICRO_CONFIG_DIR", &self.config)
            .env("MICRO_CACHE_DIR", &self.cache);
        cmd
    }

    /// Logs the CLI in as the admin (the runtime and service calls need an account).
    fn login(&self, sb: &Sandbox) -> anyhow::Result<()> {
        let cmd = self.cli(sb, &["login", "--username", "admin", "--password-stdin"]);
        run_ok(cmd, Some(ADMIN_PASSWORD), CLI_DEADLINE, "`micro login`", &|| self.context())?;
        Ok(())
    }
}

/// A `micro run --watch` process, killed on drop.
struct Watcher {
    /// The `micro run --watch` process.
    child: Child,
    /// Its stderr, where it reports.
    log: Log,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a measured figure compares with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The target is met.
    Pass,
    /// The target is missed.
    Miss,
    /// Not measured in this run.
    Skipped,
    /// A figure without a target.
    Info,
}

impl Verdict {
    /// Pass when `ok`, else miss.
    fn of(ok: bool) -> Verdict {
        if ok { Verdict::Pass } else { Verdict::Miss }
    }

    /// The word the summary shows.
    fn text(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Skipped => "skipped",
            Verdict::Info => "",
        }
    }
}

/// A line of the summary.
struct Row {
    /// What was measured.
    what: String,
    /// The figure.
    measured: String,
    /// The target ("" for none).
    target: String,
    /// How the figure compares with the target.
    verdict: Verdict,
}

/// The benchmark: its sandbox, server and the summary so far. The server is declared first, so that it stops
/// (and with it the services it runs) before the temporary directory is removed.
struct Devloop {
    /// The server every step uses.
    server: Server,
    /// The temporary directory and environment.
    sb: Sandbox,
    /// The options.
    opts: Options,
    /// The summary so far.
    rows: Vec<Row>,
}

impl Devloop {
    /// Adds a line to the summary.
    fn row(&mut self, what: impl Into<String>, measured: impl Into<String>, target: &str, verdict: Verdict) {
        self.rows.push(Row { what: what.into(), measured: measured.into(), target: target.into(), verdict });
    }

    /// `micro ARGS` against the server, which must succeed within `limit`; its stdout.
    fn micro(&self, args: &[&str], limit: Duration) -> anyhow::Result<String> {
        let what = format!("`micro {}`", args.join(" "));
        Ok(run_ok(self.server.cli(&self.sb, args), None, limit, &what, &|| self.server.context())?.stdout)
    }

    /// Calls `service` until it answers `want` (the `msg` of `micro <service> call --name=Ann`), for at most
    /// `limit`; `context()` is added to the error (with the server's stderr).
    fn wait_answer(
        &self,
        service: &str,
        want: &str,
        limit: Duration,
        context: &dyn Fn() -> String,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let args = [service, "call", "--name=Ann"];
        let what = format!("`micro {}`", args.join(" "));
        let full_context = || format!("{}\n{}", context(), self.server.context());
        loop {
            let done = run(self.server.cli(&self.sb, &args), None, CLI_DEADLINE, &what, &full_context)?;
            let last = if done.status.success() {
                match json_string_field(&done.stdout, "msg") {
                    Some(msg) if msg == want => return Ok(()),
                    Some(msg) => format!("it answered {msg:?}"),
                    None => format!("it printed {:?}", done.stdout.trim()),
                }
            } else {
                format!("it failed ({}): {}", done.status, last_lines(&done.stderr, 5))
            };
            if Instant::now() >= deadline {
                bail!("{what} did not answer {want:?} within {}; last, {last}\n{}", secs(limit), full_context());
            }
            std::thread::sleep(POLL);
        }
    }

    /// The crates cargo compiled in the latest deployment of `service` (its `Compiling` lines).
    fn compiled(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let log = self.micro(&["logs", "--build", service], CLI_DEADLINE)?;
        Ok(log
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("Compiling "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// `cargo build --release --offline ARGS` in `dir` with the target dir `target` (and no shared build dir):
    /// its time.
    fn cargo_build(&self, dir: &Path, target: &Path, args: &[&str]) -> anyhow::Result<Duration> {
        let mut cmd = self.sb.command("cargo");
        cmd.args(["build", "--release", "--offline"]).args(args).current_dir(dir).env("CARGO_TARGET_DIR", target);
        let what = format!("`cargo build --release --offline {}` in {}", args.join(" "), dir.display());
        let start = Instant::now();
        run_ok(cmd, None, BUILD_DEADLINE, &what, &String::new)?;
        Ok(start.elapsed())
    }

    /// `micro update DIR` and the wait for `service` to answer `want`: (time of the command, time to the answer).
    fn update(&self, dir: &Path, service: &str, want: &str) -> anyhow::Result<(Duration, Duration)> {
        let dir = dir.to_string_lossy();
        let start = Instant::now();
        self.micro(&["update", &dir], BUILD_DEADLINE)?;
        let returned = start.elapsed();
        self.wait_answer(service, want, CALL_DEADLINE, &String::new)?;
        Ok((returned, start.elapsed()))
    }

    /// Step 0: `micro new --build`, as `./install.sh` warms the build cache.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        say!("0. warm-up: micro new <tmp>/warm --build (compiles the library's dependencies into MICRO_BUILD_DIR)");
        let warm = self.sb.path("warm");
        let start = Instant::now();
        let cmd = self.server.cli(&self.sb, &["new", &warm.to_string_lossy(), "--build"]);
        run_ok(cmd, None, BUILD_DEADLINE, "`micro new --build`", &String::new)?;
        let took = start.elapsed();
        say!("   warm-up took {}", secs(took));
        self.row("0. warm-up: micro new --build", secs(took), "", Verdict::Info);
        Ok(())
    }

    /// Step 1: a new service to its first answer, against a plain cold cargo build.
    fn cold(&mut self) -> anyhow::Result<()> {
        say!("1. cold: micro new greeter, micro run greeter, until it answers");
        let greeter = self.sb.path("greeter");
        let text = greeter.to_string_lossy().to_string();
        let start = Instant::now();
        self.micro(&["new", &text], CLI_DEADLINE)?;
        let created = start.elapsed();
        self.micro(&["run", &text], BUILD_DEADLINE)?;
        let ran = start.elapsed();
        self.wait_answer("greeter", "Hello Ann", CALL_DEADLINE, &String::new)?;
        let cold = start.elapsed();
        let compiled = self.compiled("greeter")?;
        say!(
            "   cold: {} (new {}, run returned at {}); the runtime compiled {}: {}",
            secs(cold),
            secs(created),
            secs(ran),
            count_crates(&compiled),
            list_crates(&compiled)
        );
        self.row(
            "1. cold: new + run + first answer",
            format!("{} ({} compiled)", secs(cold), count_crates(&compiled)),
            "<= 90 s",
            Verdict::of(cold <= Duration::from_secs(90)),
        );

        let plain = self.sb.path("plain");
        copy_tree(&greeter, &plain, &|rel: &Path| rel == Path::new("target"))?;
        if self.opts.skip_plain {
            say!("   plain cold cargo build: skipped (--skip-plain)");
            self.row("   plain cargo build --release (cold)", "-", "", Verdict::Skipped);
            self.row("   cold vs plain", "-", "<= 1.3 x plain", Verdict::Skipped);
            return Ok(());
        }
        say!("   plain: cargo build --release --offline of a copy, fresh target dir (minutes)");
        let took = self.cargo_build(&plain, &self.sb.path("plain-target"), &[])?;
        say!("   plain cold build: {}", secs(took));
        self.row("   plain cargo build --release (cold)", secs(took), "", Verdict::Info);
        self.row(
            "   cold vs plain",
            format!("{} vs {} ({:.2} x)", secs(cold), secs(took), cold.as_secs_f64() / took.as_secs_f64()),
            "<= 1.3 x plain",
            Verdict::of(cold.as_secs_f64() <= 1.3 * took.as_secs_f64()),
        );
        Ok(())
    }

    /// Step 2: edits of the new service, `micro update` against incremental cargo builds.
    fn update_new(&mut self) -> anyhow::Result<()> {
        say!("2. update of the micro new service: edit src/handler.rs, micro update, until the new answer");
        let greeter = self.sb.path("greeter");
        let plain = self.sb.path("plain");
        let plain_target = self.sb.path("plain-target");
        let (mut updates, mut builds) = (Vec::new(), Vec::new());
        let mut current = "Hello";
        for round in 0..self.opts.rounds {
            let next = GREETINGS[round % GREETINGS.len()];
            set_greeting(&greeter.join("src/handler.rs"), current, next)?;
            let (returned, answered) = self.update(&greeter, "greeter", &format!("{next} Ann"))?;
            let compiled = self.compiled("greeter")?;
            updates.push(answered);
            let mut line = format!(
                "   round {}: micro update {} (returned at {}; compiled: {})",
                round + 1,
                secs(answered),
                secs(returned),
                list_crates(&compiled)
            );
            if !self.opts.skip_plain {
                set_greeting(&plain.join("src/handler.rs"), current, next)?;
                let took = self.cargo_build(&plain, &plain_target, &[])?;
                builds.push(took);
                line += &format!("; cargo build {}", secs(took));
            }
            say!("{line}");
            current = next;
        }
        self.compare("2. update (micro new service)", &updates, &builds);
        Ok(())
    }

    /// Step 3: the helloworld example in a copy of the workspace, `micro update` against incremental cargo builds,
    /// and one update without a change.
    fn update_workspace(&mut self) -> anyhow::Result<()> {
        say!("3. update of examples/helloworld in a copy of the workspace (path dependency on crates/micro)");
        let ws = self.sb.path("ws");
        let files = copy_checkout(&self.sb.repo, &ws)?;
        say!("   copied {files} files of {} to {}", self.sb.repo.display(), ws.display());
        let example = ws.join("examples/helloworld");
        let source = example.join("src/lib.rs");
        let ws_target = self.sb.path("ws-target");
        let start = Instant::now();
        self.micro(&["run", &example.to_string_lossy()], BUILD_DEADLINE)?;
        self.wait_answer("helloworld", "Hello Ann", CALL_DEADLINE, &String::new)?;
        let first = start.elapsed();
        let compiled = self.compiled("helloworld")?;
        say!("   first run: {} ({} compiled)", secs(first), count_crates(&compiled));
        self.row(
            "3. first micro run of examples/helloworld",
            format!("{} ({} compiled)", secs(first), count_crates(&compiled)),
            "",
            Verdict::Info,
        );
        if !self.opts.skip_plain {
            say!("   cargo build --release --offline -p helloworld in the copy, fresh target dir (untimed, minutes)");
            let took = self.cargo_build(&ws, &ws_target, &["-p", "helloworld"])?;
            say!("   full cargo build of helloworld: {}", secs(took));
        }
        let (mut updates, mut builds) = (Vec::new(), Vec::new());
        let mut current = "Hello";
        for round in 0..self.opts.rounds {
            let next = GREETINGS[round % GREETINGS.len()];
            set_greeting(&source, current, next)?;
            let (returned, answered) = self.update(&example, "helloworld", &format!("{next} Ann"))?;
            let compiled = self.compiled("helloworld")?;
            updates.push(answered);
            let mut line = format!(
                "   round {}: micro update {} (returned at {}; compiled: {})",
                round + 1,
                secs(answered),
                secs(returned),
                list_crates(&compiled)
            );
            if !self.opts.skip_plain {
                let took = self.cargo_build(&ws, &ws_target, &["-p", "helloworld"])?;
                builds.push(took);
                line += &format!("; cargo build {}", secs(took));
            }
            say!("{line}");
            current = next;
        }
        self.compare("3. update (workspace member)", &updates, &builds);

        let (_, unchanged) = self.update(&example, "helloworld", &format!("{current} Ann"))?;
        let compiled = self.compiled("helloworld")?;
        let micro_again = compiled.iter().any(|c| c == "micro");
        say!("   micro update without a change: {} (compiled: {})", secs(unchanged), list_crates(&compiled));
        self.row(
            "   micro update, no change",
            format!("{}, compiled: {}", secs(unchanged), list_crates(&compiled)),
            "<= 5 s, micro not compiled",
            Verdict::of(unchanged <= Duration::from_secs(5) && !micro_again),
        );
        Ok(())
    }

    /// Adds the rows of an update step: the median of `updates`, absolute and against the median of `builds`.
    fn compare(&mut self, what: &str, updates: &[Duration], builds: &[Duration]) {
        let update = median(updates);
        self.row(
            what,
            format!("{} median of {}", secs(update), updates.len()),
            "<= 10 s",
            Verdict::of(update <= Duration::from_secs(10)),
        );
        if builds.is_empty() {
            self.row("   vs incremental cargo build", "-", "<= 1.5 x cargo + 5 s", Verdict::Skipped);
            return;
        }
        let build = median(builds);
        let limit = 1.5 * build.as_secs_f64() + 5.0;
        self.row(
            "   vs incremental cargo build",
            format!("{} vs cargo {} (limit {:.1} s)", secs(update), secs(build), limit),
            "<= 1.5 x cargo + 5 s",
            Verdict::of(update.as_secs_f64() <= limit),
        );
    }

    /// Step 4: `micro run --watch`, from the write of an edit to the new answer.
    fn watch(&mut self) -> anyhow::Result<()> {
        say!("4. watch: micro run --watch <tmp>/watched, edits of src/handler.rs");
        let dir = self.sb.path("watched");
        let text = dir.to_string_lossy().to_string();
        self.micro(&["new", &text], CLI_DEADLINE)?;
        let mut cmd = self.server.cli(&self.sb, &["run", "--watch", &text]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().context("cannot start micro run --watch")?;
        let log = Log::default();
        log.follow(child.stderr.take().context("the watcher has no stderr")?, |_| {});
        let mut watcher = Watcher { child, log };
        let said = |w: &Watcher| format!("the watcher's stderr ended with:\n{}", w.log.tail(TAIL));
        self.wait_answer("watched", "Hello Ann", BUILD_DEADLINE, &|| said(&watcher))?;
        let first = start.elapsed();
        let deadline = Instant::now() + CALL_DEADLINE;
        while !watcher.log.contains("Watching ") {
            if Instant::now() >= deadline {
                bail!(
                    "micro run --watch did not say it is watching within {}\n{}",
                    secs(CALL_DEADLINE),
                    said(&watcher)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // It says so just before it looks at the files for the first time: an edit must come after that look.
        std::thread::sleep(Duration::from_secs(1));
        say!("   first build and answer after {}; watching", secs(first));
        self.row("4. micro run --watch, first answer", secs(first), "", Verdict::Info);
        let handler = dir.join("src/handler.rs");
        let mut current = "Hello";
        let mut times = Vec::new();
        for round in 0..self.opts.rounds {
            let next = GREETINGS[round % GREETINGS.len()];
            let start = Instant::now();
            set_greeting(&handler, current, next)?;
            self.wait_answer("watched", &format!("{next} Ann"), BUILD_DEADLINE, &|| said(&watcher))?;
            let took = start.elapsed();
            if let Some(status) = watcher.child.try_wait()? {
                bail!("micro run --watch ended ({status})\n{}", said(&watcher));
            }
            say!("   round {}: from the write to the new answer {}", round + 1, secs(took));
            times.push(took);
            current = next;
        }
        let took = median(&times);
        self.row(
            "   watch: save to new answer",
            format!("{} median of {}", secs(took), times.len()),
            "<= 10 s",
            Verdict::of(took <= Duration::from_secs(10)),
        );
        drop(watcher);
        Ok(())
    }

    /// Step 5: dependencies, binary size, and the start-up and memory of a fresh server.
    fn figures(&mut self) -> anyhow::Result<()> {
        say!("5. figures");
        let mut cmd = Command::new("cargo");
        cmd.args(["tree", "--offline", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", "helloworld"])
            .current_dir(&self.sb.repo);
        let tree = run_ok(cmd, None, CALL_DEADLINE, "`cargo tree -p helloworld`", &String::new)?;
        let mut packages: Vec<&str> = tree.stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
        packages.sort_unstable();
        packages.dedup();
        say!("   helloworld links {} packages", packages.len());
        self.row("5. packages helloworld links", packages.len().to_string(), "", Verdict::Info);

        // The binary ./install.sh installs: the `dist` profile (release with LTO) when it was built, else release,
        // stripped with `objcopy --strip-all` (the symbols and debug info go to a file beside it).
        let dist = self.sb.micro.parent().and_then(Path::parent).map(|t| t.join("dist/micro"));
        let (source, profile) = match dist.filter(|d| d.is_file()) {
            Some(d) => (d, "dist"),
            None => (self.sb.micro.clone(), "release (build the dist profile for the installed size)"),
        };
        let built = std::fs::metadata(&source)?.len();
        let stripped = self.sb.path("micro-installed");
        let mut cmd = Command::new("objcopy");
        cmd.arg("--strip-all").arg(&source).arg(&stripped);
        match run(cmd, None, CALL_DEADLINE, "objcopy", &String::new) {
            Ok(done) if done.status.success() => {
                let size = std::fs::metadata(&stripped)?.len();
                say!("   micro ({profile}): {} installed (stripped), {} as built", mb(size), mb(built));
                let verdict = if size <= 25_000_000 { Verdict::Pass } else { Verdict::Miss };
                self.row(
                    format!("   micro binary, installed ({})", profile.split(' ').next().unwrap_or(profile)),
                    mb(size),
                    "<= 25 MB",
                    verdict,
                );
            }
            Ok(done) => say!("   objcopy failed: {}", last_lines(&done.stderr, 5)),
            Err(e) => say!("   objcopy did not run: {e:#}"),
        }
        self.row("   micro binary, as built", mb(built), "", Verdict::Info);

        let (mut listening, mut ready, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..SERVER_STARTS {
            let base = self.sb.path(&format!("figures/{i}"));
            std::fs::create_dir_all(&base)?;
            let spawned = Instant::now();
            let server = Server::start(&self.sb, &base.join("data"), &base)?;
            let deadline = spawned + START_DEADLINE;
            loop {
                let cmd = server.cli(&self.sb, &["services"]);
                let done = run(cmd, None, CLI_DEADLINE, "`micro services`", &|| server.context())?;
                if done.status.success() {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "`micro services` did not succeed within {} of the server's start: {}\n{}",
                        secs(START_DEADLINE),
                        last_lines(&done.stderr, 5),
                        server.context()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let answered = spawned.elapsed();
            std::thread::sleep(Duration::from_secs(3));
            let kb = vm_rss_kb(server.child.id())?;
            say!(
                "   server start {}: listening after {}, micro services OK after {}, VmRSS {} after 3 s idle",
                i + 1,
                ms(server.listening),
                ms(answered),
                mb(kb * 1024)
            );
            listening.push(server.listening);
            ready.push(answered);
            rss.push(kb * 1024);
        }
        self.row(
            "   server: spawn to listening line",
            format!("{} median of {SERVER_STARTS}", ms(median(&listening))),
            "",
            Verdict::Info,
        );
        self.row(
            "   server: spawn to micro services OK",
            format!("{} median of {SERVER_STARTS}", ms(median(&ready))),
            "",
            Verdict::Info,
        );
        rss.sort_unstable();
        let idle = rss[rss.len() / 2];
        self.row(
            "   server: idle RSS",
            format!("{} median of {SERVER_STARTS}", mb(idle)),
            "<= 30 MB",
            Verdict::of(idle <= 30_000_000),
        );
        Ok(())
    }

    /// Prints the summary table on stdout.
    fn summary(&self) {
        let head = ["step", "measured", "target", "result"];
        let cells: Vec<[&str; 4]> =
            self.rows.iter().map(|r| [r.what.as_str(), &r.measured, &r.target, r.verdict.text()]).collect();
        let mut widths = head.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[&str; 4]| {
            let padded: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("| {} |", padded.join(" | "));
        };
        println!();
        line(&head);
        println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
        for row in &cells {
            line(row);
        }
        let missed = self.rows.iter().filter(|r| r.verdict == Verdict::Miss).count();
        let passed = self.rows.iter().filter(|r| r.verdict == Verdict::Pass).count();
        println!("\n{passed} targets met, {missed} missed");
    }
}

/// Replaces the greeting `format!("{from} …` with `format!("{to} …` in `file`, which must hold it exactly once.
fn set_greeting(file: &Path, from: &str, to: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let old = format!("format!(\"{from} ");
    let count = text.matches(&old).count();
    if count != 1 {
        bail!("{} holds `{old}` {count} times, not once: the greeting to edit is not where it was", file.display());
    }
    std::fs::write(file, text.replace(&old, &format!("format!(\"{to} ")))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Copies the tree `from` to `to`, leaving out the paths (relative to `from`) for which `skip` is true.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> anyhow::Result<()> {
    fn walk(root: &Path, dir: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let rel = entry.path().strip_prefix(root)?.to_path_buf();
            if skip(&rel) {
                continue;
            }
            let dest = to.join(&rel);
            if entry.file_type()?.is_dir() {
                std::fs::create_dir_all(&dest)?;
                walk(root, &entry.path(), to, skip)?;
            } else {
                std::fs::copy(entry.path(), &dest)
                    .with_context(|| format!("cannot copy {} to {}", entry.path().display(), dest.display()))?;
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(to)?;
    walk(from, from, to, skip)
}

/// Copies the files of the checkout `repo` that git lists (tracked, and untracked but not ignored: the working
/// tree as it builds) into `to`; the number of files.
fn copy_checkout(repo: &Path, to: &Path) -> anyhow::Result<usize> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
    let listed = run_ok(cmd, None, CALL_DEADLINE, "`git ls-files`", &String::new)?;
    let mut paths: Vec<&str> = listed.stdout.split('\0').filter(|p| !p.is_empty()).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut copied = 0;
    for rel in paths {
        let from = repo.join(rel);
        // A file deleted (or renamed) in the working tree is still in git's index: the working tree counts.
        if !from.is_file() {
            continue;
        }
        let dest = to.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &dest).with_context(|| format!("cannot copy {}", from.display()))?;
        copied += 1;
    }
    Ok(copied)
}

/// The string value of the first `"field": "…"` in the JSON `text`, unescaped.
fn json_string_field(text: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let rest = text[text.find(&key)? + key.len()..].trim_start().strip_prefix(':')?.trim_start();
    let mut chars = rest.strip_prefix('"')?.chars();
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

/// The resident memory of process `pid` in kB (VmRSS in /proc).
fn vm_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `1 crate`, `161 crates`.
fn count_crates(crates: &[String]) -> String {
    format!("{} crate{}", crates.len(), if crates.len() == 1 { "" } else { "s" })
}

/// The crates separated by spaces, or `nothing`.
fn list_crates(crates: &[String]) -> String {
    if crates.is_empty() { "nothing".into() } else { crates.join(" ") }
}

/// The median (the mean of the middle two for an even count); zero for none.
fn median(values: &[Duration]) -> Duration {
    let mut v = values.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// `12.34 s`.
fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `123.4 ms`.
fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Bytes in MB (10^6 bytes).
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Runs every step in a fresh sandbox and prints the summary, also after a failed step (what was measured).
fn main() -> anyhow::Result<()> {
    let opts = options()?;
    let sb = Sandbox::new()?;
    let mut cmd = sb.command(&sb.micro);
    cmd.arg("--version");
    let version = run_ok(cmd, None, CLI_DEADLINE, "`micro --version`", &String::new)?.stdout.trim().to_string();
    let mut cmd = sb.command("cargo");
    cmd.arg("--version");
    let cargo = run_ok(cmd, None, CLI_DEADLINE, "`cargo --version`", &String::new)
        .context("cargo does not work in the sandbox's environment")?
        .stdout;
    say!("{version} ({}), {}; in {}", sb.micro.display(), cargo.trim(), sb.dir.path().display());
    let server = Server::start(&sb, &sb.path("data"), sb.dir.path())?;
    server.login(&sb)?;
    say!("micro server listening on {}", server.proxy);
    let mut bench = Devloop { server, sb, opts, rows: Vec::new() };
    let result = (|| {
        bench.warm_up()?;
        bench.cold()?;
        bench.update_new()?;
        bench.update_workspace()?;
        bench.watch()?;
        bench.figures()
    })();
    if let Err(e) = &result {
        say!("failed: {e:#}");
    }
    if !bench.rows.is_empty() {
        println!(
            "devloop: {version}, {}; rounds {}{}",
            cargo.trim(),
            bench.opts.rounds,
            if bench.opts.skip_plain { ", --skip-plain" } else { "" }
        );
        bench.summary();
    }
    if bench.opts.keep {
        let Devloop { server, sb, .. } = bench;
        drop(server);
        let kept = sb.dir.keep();
        say!("kept {}", kept.display());
    }
    result
}
