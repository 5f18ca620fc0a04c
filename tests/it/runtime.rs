//! The runtime: `micro run`, `status`, `logs`, `update` and `kill` against a real server, with real builds and
//! processes.
//!
//! Builds use the dev profile and the target dir of the `micro` binary under test, so they reuse what the test
//! build already compiled and take seconds. Services that need no build run with `--command` (a shell loop, the
//! prebuilt helloworld binary, or the Python greeter in `fixtures/pygreeter`, which needs `grpcio` and
//! `grpcio-reflection`).

use crate::support::{self, Platform};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A server whose runtime builds with the dev profile into the workspace's target dir.
fn platform() -> Platform {
    let bin_dir = support::micro_bin().parent().expect("the micro binary has a dir").to_path_buf();
    let target = bin_dir.parent().expect("the binary dir has a parent").to_path_buf();
    let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let target = target.to_string_lossy().to_string();
    Platform::start_env(&[
        ("MICRO_RUNTIME_CARGO_PROFILE", &profile),
        ("MICRO_RUNTIME_TARGET_DIR", &target),
        ("MICRO_BUILD_DIR", &target),
        ("MICRO_RUNTIME_KILL_GRACE", "3s"),
    ])
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `micro status -o json`, as a list.
fn status(p: &Platform) -> Vec<Value> {
    let run = p.micro(["status", "-o", "json"]).ok();
    if run.stdout.trim().is_empty() {
        return Vec::new();
    }
    run.json().as_array().cloned().unwrap_or_default()
}

fn service<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|s| s["name"] == name)
}

/// An empty directory to run a command in.
fn empty_dir(p: &Platform, name: &str) -> PathBuf {
    let dir = p.path(name);
    std::fs::create_dir_all(&dir).expect("create a service dir");
    dir
}

/// Process ids the runtime started for a service, from its log (`started process N`).
fn pids(p: &Platform, name: &str) -> Vec<i32> {
    let run = p.micro(["logs", "-n", "1000", name]);
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("started process "))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + support::DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn run_a_rust_package_then_status_call_logs_and_kill() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let dir = repo().join("examples/helloworld");
    // A build may wait for cargo's lock on the shared target dir longer than a CLI run may take elsewhere.
    let (code, stdout, stderr) = run_long(&p, &["run", &dir.to_string_lossy()]);
    assert_eq!((code, stdout.as_str()), (Some(0), ""), "micro run examples/helloworld:\n{stderr}");

    // Status: a table with Micro's columns, and JSON.
    let table = p.micro(["status"]).ok();
    let line =
        table.stdout.lines().find(|l| l.starts_with("helloworld")).unwrap_or_else(|| panic!("{}", table.snapshot()));
    let re = regex_like(line);
    assert!(re, "{}", table.snapshot());
    assert!(table.stdout.starts_with("NAME"), "{}", table.snapshot());
    for col in ["VERSION", "SOURCE", "STATUS", "BUILD", "UPDATED", "METADATA"] {
        assert!(table.stdout.lines().next().unwrap_or_default().contains(col), "{}", table.snapshot());
    }
    assert!(line.contains("owner=admin, group=micro"), "{}", table.snapshot());
    assert!(line.contains(" ago"), "{}", table.snapshot());
    let list = status(&p);
    let hw = service(&list, "helloworld").expect("helloworld in status");
    assert_eq!(hw["status"], "running");
    assert_eq!(hw["source"], dir.canonicalize().unwrap().to_string_lossy().as_ref());
    assert_eq!(hw["build"].as_str().map(str::len), Some(12));

    // It registered itself, and answers through the proxy.
    assert!(p.service_names().contains(&"helloworld".to_string()));
    let call = p.micro(["helloworld", "call", "--name=Ann"]).ok();
    assert_eq!(call.json()["msg"], "Hello Ann");

    // Its logs hold its start line; -o json gives one document per line.
    let logs = p.micro(["logs", "helloworld"]).ok();
    assert!(logs.stdout.contains("service listening"), "{}", logs.snapshot());
    assert!(logs.stdout.lines().count() <= 15, "{}", logs.snapshot());
    let json = p.micro(["logs", "-o", "json", "-n", "2", "helloworld"]).ok();
    let docs = json.json_docs();
    assert_eq!(docs.len(), 2, "{}", json.snapshot());
    assert!(docs[0]["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", json.snapshot());
    let build = p.micro(["logs", "--build", "helloworld"]).ok();
    assert!(build.stdout.contains("Finished"), "{}", build.snapshot());

    // Killed: gone from status and from the registry, and its process is gone.
    let started = pids(&p, "helloworld");
    assert_eq!(started.len(), 1, "{started:?}");
    let kill = p.micro(["kill", "helloworld"]).ok();
    assert_eq!(kill.stdout, "");
    assert!(service(&status(&p), "helloworld").is_none());
    assert!(!p.service_names().contains(&"helloworld".to_string()));
    assert!(!alive(started[0]), "helloworld's process {} is still alive", started[0]);
    let none = p.micro(["status"]).ok();
    assert_eq!(none.stdout, "");
    assert!(none.stderr.contains("No services are running"), "{}", none.snapshot());
}

/// `helloworld  latest  <source>  running`: the regex `NAME\s+VERSION\s+\S+\s+running` of Micro's tests.
fn regex_like(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.len() >= 4 && words[0] == "helloworld" && words[1] == "latest" && words[3] == "running"
}

#[test]
fn logs_follow_new_lines_and_crashes_restart() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let dir = empty_dir(&p, "ticker");
    let ticker = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    p.micro(["run", "--command", ticker, &dir.to_string_lossy()]).ok();

    // `logs -f` prints what is there, then lines written after it started, until it is stopped.
    let mut follow = spawn_cli(&p, &["logs", "-f", "-n", "1", "ticker"]);
    let lines = &follow.lines;
    let tick = |limit: Duration| loop {
        let line = lines.recv_timeout(limit).expect("a line in time");
        if let Some(n) = line.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok()) {
            break n;
        }
    };
    let first = tick(support::DEADLINE);
    // The ticker writes every 200 ms: the next one arrives well within a second of being written.
    let later = tick(Duration::from_secs(2));
    assert!(later > first, "{later} after {first}");
    // Killing the service ends the follow.
    p.micro(["kill", "ticker"]).ok();
    let ended = follow.wait(Duration::from_secs(10));
    assert_eq!(ended, Some(0), "micro logs -f did not end cleanly when the service was killed");

    // A service that crashes is restarted, and status counts the restarts.
    let dir = empty_dir(&p, "crasher");
    p.micro(["run", "--command", "echo up; sleep 2.5; echo down; exit 3", &dir.to_string_lossy()]).ok();
    wait_for("crasher restarted", || {
        let list = status(&p);
        service(&list, "crasher").is_some_and(|s| s["restarts"].as_u64().unwrap_or(0) >= 1)
            && pids(&p, "crasher").len() >= 2
    });
    let logs = p.micro(["logs", "-n", "50", "crasher"]).ok();
    assert!(logs.stdout.contains("exited with code 3"), "{}", logs.snapshot());
    assert!(logs.stdout.matches("up").count() >= 2, "{}", logs.snapshot());
    let since = p.micro(["logs", "--since", "1h", "crasher"]).ok();
    assert!(since.stdout.contains("creating crasher"), "{}", since.snapshot());
    let table = p.micro(["status", "crasher"]).ok();
    assert!(table.stdout.contains("restarts="), "{}", table.snapshot());
    p.micro(["kill", "crasher"]).ok();
}

#[test]
fn services_come_back_when_the_server_restarts() {
    let mut p = platform();
    let _cleanup = KillAll::of(&p);
    let dir = empty_dir(&p, "hw");
    let hello = support::example_bin("helloworld");
    p.micro(["run", "--name", "hw", "--command", &hello.to_string_lossy(), &dir.to_string_lossy()]).ok();
    // The binary registers under the runtime's name; its handler is still Helloworld.
    assert_eq!(p.micro(["hw", "helloworld", "call", "--name=Ann"]).ok().json()["msg"], "Hello Ann");
    let before = pids(&p, "hw");
    assert_eq!(before.len(), 1);

    // A graceful restart stops the process with the server, and starts it again.
    p.restart_server(false);
    assert!(!alive(before[0]), "the server stopped but left process {} running", before[0]);
    wait_for("hw runs again", || service(&status(&p), "hw").is_some_and(|s| s["status"] == "running"));
    p.wait_until("hw answers again", |p| p.micro(["hw", "helloworld", "call", "--name=Bo"]).code == 0);
    let after = pids(&p, "hw");
    assert_eq!(after.len(), 2, "{after:?}");

    // A killed server leaves its processes behind; the next one stops them before starting the service again.
    p.restart_server(true);
    wait_for("the orphan is stopped", || !alive(after[1]));
    wait_for("hw runs again", || service(&status(&p), "hw").is_some_and(|s| s["status"] == "running"));
    // Running is not yet registered: wait until it answers, as after the graceful restart.
    p.wait_until("hw answers after the orphan was stopped", |p| {
        p.micro(["hw", "helloworld", "call", "--name=Cy"]).code == 0
    });
    assert_eq!(p.micro(["hw", "helloworld", "call", "--name=Cy"]).ok().json()["msg"], "Hello Cy");
    p.micro(["kill", "hw"]).ok();
}

/// Where Python finds `grpc` for this user (the server's children get a temporary HOME, which hides packages
/// installed with `pip install --user`); fails the test with what to install when it is missing.
fn python_path() -> String {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection, os; print(os.path.dirname(os.path.dirname(grpc.__file__)))"])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python test service needs grpcio and grpcio-reflection: pip install grpcio grpcio-reflection\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Copies the Python greeter into the platform's directory.
fn pygreeter(p: &Platform) -> PathBuf {
    let dir = p.path("pygreeter");
    std::fs::create_dir_all(&dir).unwrap();
    let from = repo().join("tests/it/fixtures/pygreeter/server.py");
    std::fs::copy(from, dir.join("server.py")).unwrap();
    dir
}

#[test]
fn a_python_grpc_service_is_registered_from_its_reflection_and_updates_without_downtime() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let dir = pygreeter(&p);
    let python_path = format!("PYTHONPATH={}", python_path());
    p.micro([
        "run",
        "--command",
        "python3 server.py",
        "--port-env",
        "PORT",
        "--env_vars",
        &python_path,
        &dir.to_string_lossy(),
    ])
    .ok();
    let call = p.micro(["pygreeter", "greeter", "say-hello", "--name=Ann"]).ok();
    assert_eq!(call.json()["message"], "Hello, Ann");
    let build = service(&status(&p), "pygreeter").unwrap()["build"].clone();

    // Edit, update: the new code answers, and no call fails while the old version hands over to the new one.
    let source = std::fs::read_to_string(dir.join("server.py")).unwrap();
    std::fs::write(dir.join("server.py"), source.replace("GREETING = \"Hello\"", "GREETING = \"Howdy\"")).unwrap();
    let (stop, stopped) = mpsc::channel::<()>();
    let caller = {
        let cli = CliSpec::of(&p);
        std::thread::spawn(move || {
            let mut calls = Vec::new();
            while stopped.try_recv().is_err() {
                let out = cli.command(&["pygreeter", "greeter", "say-hello", "--name=Ann"]).output().unwrap();
                calls.push((
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).to_string(),
                    String::from_utf8_lossy(&out.stderr).to_string(),
                ));
            }
            calls
        })
    };
    let update = p.micro(["update", "pygreeter"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    stop.send(()).unwrap();
    let calls = caller.join().unwrap();
    assert!(!calls.is_empty());
    for (code, out, err) in &calls {
        assert_eq!(*code, Some(0), "a call failed during the update:\n{out}{err}\n{}", update.snapshot());
    }
    let after = p.micro(["pygreeter", "greeter", "say-hello", "--name=Ann"]).ok();
    assert_eq!(after.json()["message"], "Howdy, Ann");
    let list = status(&p);
    let svc = service(&list, "pygreeter").unwrap();
    assert_eq!(svc["status"], "running");
    assert_ne!(svc["build"], build);
    // One registration: the old node is gone.
    let get = p.micro(["get", "service", "pygreeter", "-o", "json"]).ok();
    assert_eq!(get.stdout.matches("\"address\"").count(), 1, "{}", get.snapshot());

    // An update whose new version does not start fails, and the running version keeps answering.
    std::fs::write(dir.join("server.py"), "raise SystemExit('broken on purpose')\n").unwrap();
    let failed = p.micro(["update", "pygreeter"]).code(1);
    assert!(
        failed.stderr.contains("the new version exited with code 1 before it was ready")
            && failed.stderr.contains("broken on purpose")
            && failed.stderr.contains("the previous version keeps running"),
        "{}",
        failed.snapshot()
    );
    let still = p.micro(["pygreeter", "greeter", "say-hello", "--name=Ann"]).ok();
    assert_eq!(still.json()["message"], "Howdy, Ann");
    assert_eq!(service(&status(&p), "pygreeter").unwrap()["status"], "running");

    p.micro(["kill", "pygreeter"]).ok();
    assert!(!p.service_names().contains(&"pygreeter".to_string()));
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_keeps_running() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let missing = p.micro(["logs", "nosuch"]).code(6);
    assert!(missing.stderr.contains("nosuch is not run by the runtime"), "{}", missing.snapshot());
    let missing = p.micro(["kill", "nosuch"]).code(6);
    assert!(missing.stderr.contains("nosuch is not run by the runtime"), "{}", missing.snapshot());
    let missing = p.micro(["update", "nosuch"]).code(6);
    assert!(missing.stderr.contains("nosuch is not run by the runtime"), "{}", missing.snapshot());

    let empty = empty_dir(&p, "empty");
    let empty = empty.to_string_lossy();
    let no_cargo = p.micro(["run", &empty]).code(128);
    assert!(
        no_cargo.stderr.contains("has no Cargo.toml") && no_cargo.stderr.contains("--command"),
        "{}",
        no_cargo.snapshot()
    );
    let reserved = p.micro(["run", "--metadata", "source=x", "--command", "true", &empty]).code(128);
    assert_eq!(reserved.stderr.trim(), "invalid metadata string, 'source' is a reserved key");
    let malformed = p.micro(["run", "--metadata", "X", "--command", "true", &empty]).code(128);
    assert_eq!(malformed.stderr.trim(), "invalid metadata string, must be of form foo=bar X");
    let nowhere = p.micro(["run", "./no/such/dir"]).code(128);
    assert!(nowhere.stderr.contains("no such directory"), "{}", nowhere.snapshot());

    // A build failure: the compiler's error is shown, and status says error.
    let broken = p.path("broken");
    std::fs::create_dir_all(broken.join("src")).unwrap();
    std::fs::write(
        broken.join("Cargo.toml"),
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(broken.join("src/main.rs"), "fn main() {\n    let x: u32 = \"not a number\";\n}\n").unwrap();
    let failed = p.micro(["run", &broken.to_string_lossy()]).code(1);
    assert!(failed.stderr.contains("error[E0308]"), "{}", failed.snapshot());
    assert!(failed.stderr.contains("build failed"), "{}", failed.snapshot());
    let list = status(&p);
    let svc = service(&list, "broken").expect("broken in status");
    assert_eq!(svc["status"], "error");
    assert!(svc["error"].as_str().unwrap_or_default().contains("build failed"), "{svc}");
    let table = p.micro(["status"]).ok();
    assert!(table.stdout.contains("error=build failed"), "{}", table.snapshot());
    // A service whose build failed is simply built again by the next run.
    let again = p.micro(["run", &broken.to_string_lossy()]).code(1);
    assert!(again.stderr.contains("error[E0308]"), "{}", again.snapshot());

    // A command that exits at once: the run fails with what it said.
    let quits = empty_dir(&p, "quits");
    let quit = p.micro(["run", "--command", "echo cannot start >&2; exit 2", &quits.to_string_lossy()]).code(1);
    assert!(quit.stderr.contains("exited with code 2") && quit.stderr.contains("cannot start"), "{}", quit.snapshot());

    // Running twice without --force is refused; with --force the service is replaced (here by two instances).
    let twice = p.micro(["run", "--command", "sleep 30", &quits.to_string_lossy()]).code(1);
    assert!(twice.stderr.contains("already exists"), "{}", twice.snapshot());
    p.micro(["run", "--force", "-i", "2", "--command", "sleep 30", &quits.to_string_lossy()]).ok();
    let list = status(&p);
    let quits = service(&list, "quits").expect("quits in status");
    assert_eq!((quits["status"].as_str(), quits["metadata"]["instances"].as_str()), (Some("running"), Some("2")));
    let started = pids(&p, "quits");
    assert!(started.iter().rev().take(2).all(|pid| alive(*pid)), "{started:?}");

    // A git source that cannot be cloned.
    let git = p.micro(["run", "no-such-host.invalid/owner/repo"]).code(1);
    assert!(git.stderr.contains("cannot clone https://no-such-host.invalid/owner/repo.git"), "{}", git.snapshot());

    // The server is fine, and its own log is readable.
    assert!(p.service_names().contains(&"runtime".to_string()));
    let server = p.micro(["logs", "-n", "1000", "server"]).ok();
    assert!(server.stdout.contains("micro server listening"), "{}", server.snapshot());
    let runtime = p.micro(["logs", "-n", "1000", "runtime"]).ok();
    assert!(runtime.stdout.contains("creating a service"), "{}", runtime.snapshot());
    assert!(!runtime.stdout.contains("micro server listening"), "{}", runtime.snapshot());
}

#[test]
fn reading_needs_an_account_and_changing_needs_an_admin() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let anonymous = p.cli(["status"]).env("MICRO_AUTH_TOKEN", "x").run();
    assert_eq!(anonymous.code, 2, "{}", anonymous.snapshot());
    p.micro(["auth", "create", "account", "reader", "--secret", "pw"]).ok();
    let dirs = support::Dirs::new();
    let login = p.cli_in(&dirs, ["login", "--username", "reader", "--password-stdin"]).stdin("pw").run().ok();
    assert!(login.stdout.contains("Successfully"));
    p.cli_in(&dirs, ["status"]).run().ok();
    let dir = empty_dir(&p, "x");
    let refused = p.cli_in(&dirs, ["run", "--command", "sleep 10", &dir.to_string_lossy()]).run().code(2);
    assert!(refused.stderr.contains("not an administrator"), "{}", refused.snapshot());
}

/// Runs the CLI with a limit of 15 minutes (a build may wait for other builds): exit code, stdout, stderr.
fn run_long(p: &Platform, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = CliSpec::of(p)
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the micro CLI");
    let read = |mut from: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = from.read_to_string(&mut text);
            text
        })
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(900);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, out.join().unwrap_or_default(), err.join().unwrap_or_default())
}

/// Kills every service of a platform when dropped, also when a test fails: the harness stops the server with
/// SIGKILL, which would leave the services' processes running.
struct KillAll(CliSpec);

impl KillAll {
    fn of(p: &Platform) -> Self {
        Self(CliSpec::of(p))
    }
}

impl Drop for KillAll {
    fn drop(&mut self) {
        let Ok(out) = self.0.command(&["status", "-o", "json"]).output() else { return };
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for name in list.iter().filter_map(|s| s["name"].as_str()) {
            let _ = self.0.command(&["kill", name]).output();
        }
    }
}

/// How to run the CLI of a platform from another thread (the support's `Cli` is built per run).
#[derive(Clone)]
struct CliSpec {
    addr: String,
    root: PathBuf,
}

impl CliSpec {
    fn of(p: &Platform) -> Self {
        Self { addr: p.addr.clone(), root: p.path("") }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::micro_bin());
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MICRO_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", self.root.join("home"))
            .env("MICRO_CONFIG_DIR", self.root.join("config"))
            .env("MICRO_CACHE_DIR", self.root.join("cache"))
            .env("MICRO_PROXY", &self.addr)
            .stdin(Stdio::null());
        cmd
    }
}

/// A CLI process whose stdout lines arrive on a channel.
struct Streaming {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    /// Waits at most `limit` for the process to exit; kills it after that.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_cli(p: &Platform, args: &[&str]) -> Streaming {
    let mut child =
        CliSpec::of(p).command(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start the micro CLI");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Streaming { child, lines: rx }
}

/// A `micro run --watch` process whose stderr (where the watcher reports) is collected.
struct Watcher {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watcher {
    fn start(p: &Platform, dir: &std::path::Path) -> Self {
        let mut child = CliSpec::of(p)
            .command(&["run", "--watch", &dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start micro run --watch");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (pipe, out) = (child.stderr.take().expect("stderr is piped"), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = out.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self { child, stderr }
    }

    fn said(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `limit` for `ready`, naming `what` (and showing `context()`) when it does not come.
fn wait_long(what: &str, limit: Duration, mut ready: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}:\n{}", context());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `micro run --watch`: a saved change is built and replaces the running process; a change that does not compile
/// keeps the previous version serving, with the compiler's error in the watcher's output, `micro status` and
/// `micro logs`; the next good change replaces it again.
#[test]
fn watch_rebuilds_on_change_and_a_failed_build_keeps_the_old_process_serving() {
    let p = platform();
    let _cleanup = KillAll::of(&p);
    let dir = p.path("watched");
    p.micro(["new", &dir.to_string_lossy()]).ok();
    let handler = dir.join("src/handler.rs");
    let original = std::fs::read_to_string(&handler).unwrap();
    assert!(original.contains("format!(\"Hello {name}\")"), "{original}");
    let answer = |p: &Platform| {
        let run = p.micro(["watched", "call", "--name=Ann"]);
        if run.code == 0 { run.json()["msg"].as_str().unwrap_or_default().to_string() } else { String::new() }
    };
    let build_time = Duration::from_secs(900);

    let watcher = Watcher::start(&p, &dir);
    wait_long("the first build", build_time, || answer(&p) == "Hello Ann", || watcher.said());
    wait_long("watching", DEADLINE_WATCH, || watcher.said().contains("Watching "), || watcher.said());
    let first = pids(&p, "watched");

    // A change is built and served, by a new process.
    std::fs::write(&handler, original.replace("format!(\"Hello {name}\")", "format!(\"Howdy {name}\")")).unwrap();
    wait_long("the new answer", build_time, || answer(&p) == "Howdy Ann", || watcher.said());
    assert!(watcher.said().contains("Changed: src/handler.rs; updating watched"), "{}", watcher.said());
    let second = pids(&p, "watched");
    assert_ne!(first.last(), second.last(), "the process was replaced");

    // A change that does not compile: the previous version keeps serving, and the error is shown everywhere.
    std::fs::write(&handler, original.replace("format!(\"Hello {name}\")", "42u32")).unwrap();
    wait_long(
        "the failed build",
        build_time,
        || watcher.said().contains("fix the error and save again"),
        || watcher.said(),
    );
    assert!(watcher.said().contains("error[E0308]"), "{}", watcher.said());
    assert!(watcher.said().contains("watched keeps running its previous build"), "{}", watcher.said());
    assert_eq!(answer(&p), "Howdy Ann");
    let list = status(&p);
    let svc = service(&list, "watched").expect("watched in status");
    assert_eq!(svc["status"], "running", "{svc}");
    assert!(svc["error"].as_str().unwrap_or_default().starts_with("update failed: build failed"), "{svc}");
    let logs = p.micro(["logs", "-n", "200", "watched"]).ok();
    assert!(logs.stdout.contains("error[E0308]"), "{}", logs.snapshot());

    // Fixed: served again, and the error is gone from status.
    std::fs::write(&handler, original.replace("format!(\"Hello {name}\")", "format!(\"Hi {name}\")")).unwrap();
    wait_long("the fixed answer", build_time, || answer(&p) == "Hi Ann", || watcher.said());
    // The new process answers before the update ends (it then stops the old one); once it ends, the error is gone.
    let settled = |p: &Platform| {
        let list = status(p);
        let svc = service(&list, "watched").cloned().unwrap_or_default();
        (svc["status"] == "running" && svc["error"] == "" && svc["deploy"].is_null(), svc.to_string())
    };
    wait_long("the update to end", DEADLINE_WATCH, || settled(&p).0, || settled(&p).1);
}

/// How long the watcher may take to say it watches after the first build.
const DEADLINE_WATCH: Duration = Duration::from_secs(30);
