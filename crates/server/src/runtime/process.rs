//! Processes: start a service's instances, capture their output, tell when they are ready, restart them when they
//! crash (with backoff), and stop them — with everything they started, SIGTERM then SIGKILL (see [`super::contain`]).
//!
//! Each instance runs in its own process group (and its own cgroup when the runtime uses cgroups), with the server's
//! environment minus every `MICRO_*` variable, plus what the runtime injects (proxy, name, version, namespace,
//! service account, the marker `MICRO_RUNTIME_INSTANCE`) and `MICRO_SERVICE_ADDRESS`, a free port on 127.0.0.1
//! picked for it (also in the `--port-env` variable when one is given). An instance is ready
//! when a registry node appears at that address (a micro service registered itself), when its gRPC reflection
//! answers on that port (a foreign service, which the runtime then registers), or when it has stayed alive long
//! enough without either ([`READY_GRACE`] for a command, [`REGISTER_WAIT`] for a built service or one with a port).

use super::contain::{self, Prepared};
use super::foreign;
use super::logs::{LogFile, MAX_LINE};
use super::manager::{Managed, Runtime};
use super::records::{Group, Status};
use crate::registry::RegistryBackend;
use micro_core::env;
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a command that neither registers nor serves reflection must stay alive to count as ready.
pub const READY_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a built service to register, or for a service with a port to answer reflection, before
/// counting it as ready anyway.
pub const REGISTER_WAIT: Duration = Duration::from_secs(30);
/// The first delay before restarting a crashed process; it doubles on each crash, up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest delay before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before crashing restarts after [`BACKOFF_MIN`] again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How often readiness is checked.
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a stopping process that the runtime registered (from reflection) keeps running after it left the
/// registry, so that calls the proxy routed to it just before finish.
pub const DRAIN: Duration = Duration::from_millis(500);

/// What to start.
#[derive(Clone, Debug)]
pub enum Launch {
    /// A binary.
    Binary(PathBuf),
    /// A command line, run by `/bin/sh -c`.
    Shell(String),
}

/// How to run one version of a service.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// What to start.
    pub launch: Launch,
    /// Its arguments.
    pub args: Vec<String>,
    /// Where.
    pub workdir: PathBuf,
    /// Environment variables to set (the server's `MICRO_*` are removed first).
    pub env: Vec<(String, String)>,
    /// The variable that gets the port to listen on.
    pub port_env: Option<String>,
    /// How many processes.
    pub instances: u32,
    /// Whether it is expected to register itself (a built micro service).
    pub registers: bool,
    /// How long a stopped process gets between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// What an instance reports to the deployment that started it.
#[derive(Debug)]
pub enum Event {
    /// Instance `n` is ready.
    Ready(usize),
    /// Instance `n` failed before it was ready.
    Failed(usize, String),
}

/// One version of a service: its instances, started together and stopped together.
pub struct Generation {
    /// The deployment it came from.
    pub id: String,
    /// Cancelled to stop every instance (a child of the service's token, itself a child of the server's).
    pub stop: CancellationToken,
    tasks: TaskTracker,
    states: Mutex<Vec<(Status, String)>>,
}

impl Generation {
    /// A generation of `instances` processes that stops when `stop` is cancelled.
    pub fn new(id: String, stop: CancellationToken, instances: u32) -> Arc<Self> {
        Arc::new(Self {
            id,
            stop,
            tasks: TaskTracker::new(),
            states: Mutex::new(vec![(Status::Starting, String::new()); instances.max(1) as usize]),
        })
    }

    /// Stops every instance and waits until all have exited.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The status of the generation: error if an instance is in error, else starting if one is starting, else
    /// running; with the first error.
    pub fn status(&self) -> (Status, String) {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, e)) = states.iter().find(|(s, _)| *s == Status::Error) {
            return (Status::Error, e.clone());
        }
        if states.iter().any(|(s, _)| *s != Status::Running) {
            return (Status::Starting, String::new());
        }
        (Status::Running, String::new())
    }

    fn set(&self, instance: usize, status: Status, error: String) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = states.get_mut(instance) {
            *s = (status, error);
        }
    }
}

/// Starts the instances of `generation`; each reports to `events`.
pub fn start(
    rt: &Arc<Runtime>,
    svc: &Arc<Managed>,
    generation: &Arc<Generation>,
    spec: Arc<RunSpec>,
    events: mpsc::UnboundedSender<Event>,
) {
    for n in 0..spec.instances.max(1) as usize {
        let task = instance(rt.clone(), svc.clone(), generation.clone(), spec.clone(), n, events.clone());
        rt.ctx.tasks.spawn(generation.tasks.track_future(task));
    }
}

/// Removes the server's own `MICRO_*` variables from a child's environment.
pub fn strip_micro_env(cmd: &mut std::process::Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MICRO_") {
            cmd.env_remove(key);
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// When a process started, in clock ticks since boot (from `/proc`), to tell it from a later process with the
/// same id.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Starts one process of `spec`, contained as `prepared` says (see [`super::contain`]).
fn spawn(
    rt: &Runtime,
    spec: &RunSpec,
    svc: &Managed,
    address: &str,
    port: u16,
    prepared: &Prepared,
) -> std::io::Result<Child> {
    let (program, args): (PathBuf, Vec<OsString>) = match &spec.launch {
        Launch::Binary(path) => {
            // Checked here: behind the cgroup's wrapper, a missing binary would only show as an exit code.
            if !path.is_file() {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
            }
            (path.clone(), spec.args.iter().map(OsString::from).collect())
        }
        Launch::Shell(line) => {
            // Arguments follow the command line as "$@" (only when there are some: the line may be any script).
            let mut args: Vec<OsString> = vec!["-c".into()];
            if spec.args.is_empty() {
                args.push(line.into());
            } else {
                args.push(format!("{line} \"$@\"").into());
                args.push(svc.name.clone().into());
                args.extend(spec.args.iter().map(OsString::from));
            }
            (PathBuf::from("/bin/sh"), args)
        }
    };
    let mut cmd = rt.contain.command(prepared, &program, &args);
    cmd.current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    strip_micro_env(cmd.as_std_mut());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.env(env::MICRO_SERVICE_ADDRESS, address);
    if let Some(var) = &spec.port_env {
        cmd.env(var, port.to_string());
    }
    // Last, so that nothing replaces it.
    cmd.env(env::MICRO_RUNTIME_INSTANCE, &prepared.marker);
    cmd.spawn()
}

/// Reads a line of at most `max` bytes (a longer one is cut there); 0 at the end.
async fn read_line_capped<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = max.saturating_sub(buf.len());
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(p) if p < room => (p + 1, true),
            _ => {
                let take = available.len().min(room);
                (take, buf.len() + take >= max)
            }
        };
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

/// Copies a child's output into its service's log, line by line.
async fn capture(reader: impl AsyncRead + Unpin, log: Arc<LogFile>, stream: String) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match read_line_capped(&mut reader, &mut buf, MAX_LINE).await {
            Ok(0) | Err(_) => break,
            Ok(_) => log.line(&stream, &String::from_utf8_lossy(&buf)),
        }
    }
}

/// Stops an instance: SIGTERM to every process of it (see [`super::contain`]), up to `grace` for them to exit, then
/// SIGKILL to what is left. Returns the exit status of its first process (`child`), which it reaps.
async fn terminate(rt: &Runtime, child: &mut Child, group: &Group, grace: Duration) -> Option<ExitStatus> {
    let selector = rt.contain.selector(group);
    let deadline = Instant::now() + grace;
    contain::terminate(selector.clone()).await;
    let status = tokio::time::timeout(grace, child.wait()).await.ok().and_then(Result::ok);
    contain::wait_gone(selector.clone(), deadline).await;
    contain::kill(selector, Some(group.pgid)).await;
    match status {
        Some(status) => Some(status),
        None => child.wait().await.ok(),
    }
}

/// How an exit reads in logs and errors.
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("exited ({status})"),
    }
}

enum Outcome {
    Exited(ExitStatus),
    Stopped,
}

/// Runs instance `n` of a generation until the generation stops: start, wait until ready, restart after a crash.
async fn instance(
    rt: Arc<Runtime>,
    svc: Arc<Managed>,
    generation: Arc<Generation>,
    spec: Arc<RunSpec>,
    n: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let several = spec.instances > 1;
    let tag = |stream: &str| if several { format!("{stream}#{}", n + 1) } else { stream.to_string() };
    let note = |text: &str| svc.log.line(&tag("runtime"), text);
    let mut backoff = BACKOFF_MIN;
    let mut reported = false;
    let report = |event: Event, reported: &mut bool| {
        if !*reported {
            *reported = true;
            let _ = events.send(event);
        }
    };
    let set = |status: Status, error: String| {
        generation.set(n, status, error);
        rt.refresh(&svc, &generation);
    };
    loop {
        if generation.stop.is_cancelled() {
            break;
        }
        set(Status::Starting, String::new());
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("no free port: {e}");
                note(&msg);
                report(Event::Failed(n, msg.clone()), &mut reported);
                set(Status::Error, msg);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = generation.stop.cancelled() => break,
                }
                continue;
            }
        };
        let address = format!("127.0.0.1:{port}");
        let known: HashSet<String> = rt
            .ctx
            .registry
            .get(&svc.namespace, &svc.name)
            .into_iter()
            .flat_map(|s| s.nodes.into_iter().map(|n| n.id))
            .collect();
        let spawned =
            rt.contain.prepare().and_then(|prepared| match spawn(&rt, &spec, &svc, &address, port, &prepared) {
                Ok(child) => Ok((child, prepared)),
                Err(e) => {
                    rt.contain.discard(&prepared);
                    Err(e.to_string())
                }
            });
        let (mut child, prepared) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                let what = match &spec.launch {
                    Launch::Binary(p) => p.display().to_string(),
                    Launch::Shell(c) => c.clone(),
                };
                let msg = format!("cannot start {what}: {e}");
                note(&msg);
                report(Event::Failed(n, msg.clone()), &mut reported);
                rt.restarted(&svc, &generation);
                set(Status::Error, format!("{msg}; retrying in {}s", backoff.as_secs()));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = generation.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        rt.contain.leader(pid, true);
        let group = Group {
            pgid: pid,
            started: start_time(pid).unwrap_or_default(),
            marker: prepared.marker,
            cgroup: prepared.cgroup,
        };
        rt.add_group(&svc, group.clone());
        note(&format!("started process {pid}, address {address}"));
        let mut captures = Vec::new();
        if let Some(out) = child.stdout.take() {
            captures.push(tokio::spawn(capture(out, svc.log.clone(), tag("stdout"))));
        }
        if let Some(err) = child.stderr.take() {
            captures.push(tokio::spawn(capture(err, svc.log.clone(), tag("stderr"))));
        }

        let started = Instant::now();
        let fallback = if spec.registers || spec.port_env.is_some() { REGISTER_WAIT } else { READY_GRACE };
        let mut ready = false;
        let mut self_registered = false;
        let mut foreign: Option<micro_core::proto::registry::Service> = None;
        let mut next_probe = Instant::now();
        let mut probe_error = String::new();
        let mut tick = tokio::time::interval(READY_POLL);
        let outcome = loop {
            let watching = !ready || (spec.port_env.is_some() && !self_registered && foreign.is_none());
            tokio::select! {
                status = child.wait() => match status {
                    Ok(status) => break Outcome::Exited(status),
                    Err(e) => {
                        note(&format!("cannot wait for process {pid}: {e}"));
                        terminate(&rt, &mut child, &group, spec.grace).await;
                        break Outcome::Stopped;
                    }
                },
                _ = generation.stop.cancelled() => {
                    // A service the runtime registered cannot leave the registry itself: take it out first, so no
                    // new call is routed here, and give the calls on their way a moment before the signal.
                    if let Some(record) = foreign.take() {
                        let _ = rt.ctx.registry.deregister(&svc.namespace, &record);
                        tokio::time::sleep(DRAIN).await;
                    }
                    let status = terminate(&rt, &mut child, &group, spec.grace).await;
                    note(&format!("stopped process {pid}{}", status.map(|s| format!(" ({})", describe(&s))).unwrap_or_default()));
                    break Outcome::Stopped;
                }
                _ = tick.tick(), if watching => {
                    if !self_registered && registered(&rt, &svc, &address, &known, foreign.as_ref()) {
                        self_registered = true;
                    }
                    if let Some(_var) = &spec.port_env
                        && !self_registered
                        && foreign.is_none()
                        && Instant::now() >= next_probe
                    {
                        match foreign::discover(&address).await {
                            Ok(served) => {
                                let record = foreign::record(&svc.name, &svc.version, &address, &served);
                                match rt.ctx.registry.register(&svc.namespace, record.clone(), Duration::ZERO) {
                                    Ok(()) => {
                                        note(&format!("registered {} from its gRPC reflection: {}", svc.name, served.services.join(", ")));
                                        foreign = Some(record);
                                    }
                                    Err(e) => {
                                        probe_error = format!("cannot register: {e}");
                                    }
                                }
                            }
                            Err(e) => probe_error = e,
                        }
                        let every = if started.elapsed() > fallback { Duration::from_secs(2) } else { Duration::from_millis(250) };
                        next_probe = Instant::now() + every;
                    }
                    if !ready && (self_registered || foreign.is_some()) {
                        ready = true;
                    } else if !ready && started.elapsed() > fallback {
                        ready = true;
                        if spec.port_env.is_some() {
                            note(&format!("no gRPC reflection on {address} after {}s ({probe_error}); not registered yet", fallback.as_secs()));
                        } else if spec.registers {
                            note(&format!("did not register within {}s; counting it as running", fallback.as_secs()));
                        }
                    }
                    if ready {
                        set(Status::Running, String::new());
                        report(Event::Ready(n), &mut reported);
                    }
                }
            }
        };

        // Whatever happened, nothing of this process may stay: what it started (wherever it went), its cgroup, or
        // its registrations.
        let left = rt.contain.kill(&group, Some(pid)).await;
        if left > 0 {
            note(&format!("{left} processes started by process {pid} would not die"));
        }
        rt.contain.leader(pid, false);
        // Its last words reach the log before anyone reads them (bounded: a process stuck in the kernel may hold the
        // pipes open).
        for task in captures {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        rt.remove_group(&svc, &group);
        if let Some(record) = foreign.take() {
            let _ = rt.ctx.registry.deregister(&svc.namespace, &record);
        }
        deregister_address(&rt, &svc, &address);

        match outcome {
            Outcome::Stopped => break,
            Outcome::Exited(status) => {
                if generation.stop.is_cancelled() {
                    break;
                }
                let what = describe(&status);
                note(&format!("process {pid} {what}"));
                report(Event::Failed(n, format!("{what} before it was ready")), &mut reported);
                if started.elapsed() > BACKOFF_RESET {
                    backoff = BACKOFF_MIN;
                }
                rt.restarted(&svc, &generation);
                set(Status::Error, format!("{what}; restarting in {}s", backoff.as_secs()));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = generation.stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Whether the process at `address` registered itself: a node at that address, or a node of the service that was
/// not there when it started (for services that listen where they like).
fn registered(
    rt: &Runtime,
    svc: &Managed,
    address: &str,
    known: &HashSet<String>,
    ours: Option<&micro_core::proto::registry::Service>,
) -> bool {
    let our_ids: HashSet<&str> = ours.map(|s| s.nodes.iter().map(|n| n.id.as_str()).collect()).unwrap_or_default();
    rt.ctx
        .registry
        .get(&svc.namespace, &svc.name)
        .iter()
        .flat_map(|s| s.nodes.iter())
        .any(|node| !our_ids.contains(node.id.as_str()) && (node.address == address || !known.contains(&node.id)))
}

/// Removes the registry nodes at `address` (a process that died without deregistering).
fn deregister_address(rt: &Runtime, svc: &Managed, address: &str) {
    for mut service in rt.ctx.registry.get(&svc.namespace, &svc.name) {
        service.nodes.retain(|n| n.address == address);
        if !service.nodes.is_empty() {
            let _ = rt.ctx.registry.deregister(&svc.namespace, &service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut() {
        let input: &[u8] = b"short\nabcdefghij\nend";
        let mut reader = BufReader::new(input);
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            if read_line_capped(&mut reader, &mut buf, 4).await.unwrap() == 0 {
                break;
            }
            lines.push(String::from_utf8_lossy(&buf).to_string());
        }
        assert_eq!(lines, ["shor", "t\n", "abcd", "efgh", "ij\n", "end"]);
    }

    #[test]
    fn process_start_times() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
    }
}
