//! Containment: find every process a service started, directly or not, and stop them all, so that nothing a
//! service starts outlives it (`micro kill`, an update, a crash) or the server that ran it (`kill -9` of the server).
//!
//! Every process the runtime starts (an *instance*) is contained in three ways, from the strongest:
//!
//! 1. **A cgroup v2 of its own**, `<the server's cgroup>/micro-runtime-<key>/<marker>`, when the server can create
//!    one: the cgroup2 mount comes from `/proc/self/mountinfo` and the server's cgroup from `/proc/self/cgroup`, and
//!    at start the runtime checks that a child process can enter a cgroup it created there. An instance enters its
//!    cgroup before it runs anything (a `/bin/sh` wrapper writes its own pid to `cgroup.procs`, then `exec`s the
//!    service), and the kernel keeps every descendant in it, whatever it does (`setsid`, double forks, a cleared
//!    environment). Stopping signals the processes listed in `cgroup.procs` and kills with `cgroup.kill`; the cgroup
//!    is removed once empty. `MICRO_RUNTIME_CGROUPS=off` turns this off.
//! 2. **The fallback, always on**: an environment marker, `MICRO_RUNTIME_INSTANCE=<key>-<run>-<n>`, which every
//!    descendant inherits unless it clears its environment, and the instance's process group. Stopping scans `/proc`
//!    for the processes of the server's user that are in the recorded process group (its leader is alive and the
//!    recorded one, or gone), or whose environment carries the marker, and for their descendants.
//! 3. **The kernel's child subreaper** (`PR_SET_CHILD_SUBREAPER`): orphans of the services are re-parented to the
//!    server instead of init; the server reaps those that exit ([`Containment::reap_orphans`]).
//!
//! Stopping sends SIGTERM to every process found, gives them the grace period, then sends SIGKILL until none is
//! left. `<key>` is derived from the runtime's directory and `<run>` is new at each start of the server: a server
//! that starts stops whatever a previous server of the same data dir left (after `kill -9`), from its records, its
//! markers and its cgroups ([`Containment::sweep`]), and never touches its own processes or another server's.
//!
//! Without cgroups, a process that both clears its environment and leaves the process group (`env -i setsid …`),
//! then loses its parent, is no longer found: it stays a child of the server (the subreaper), which reaps it when it
//! exits.

use super::records::Group;
use micro_core::env::MICRO_RUNTIME_INSTANCE;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a stop looks for processes that are still alive.
const POLL: Duration = Duration::from_millis(50);
/// How long SIGKILL rounds go on before a stop gives up (a process stuck in the kernel).
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long a zombie child of the server that nobody waits for is left before the server reaps it.
pub const ZOMBIE_GRACE: Duration = Duration::from_secs(3);
/// How often the server looks for zombies to reap.
const REAP_INTERVAL: Duration = Duration::from_secs(2);
/// The prefix of the cgroup under which the runtime creates those of its instances.
pub const CGROUP_PREFIX: &str = "micro-runtime-";
/// The script that enters the cgroup whose `cgroup.procs` is `$0`, then runs the service (`"$@"`).
const ENTER_CGROUP: &str =
    "echo $$ > \"$0\" || { echo \"micro: cannot enter the cgroup $0\" >&2; exit 126; }; exec \"$@\"";

/// A process, as `/proc/<pid>/stat` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    /// Its id.
    pid: i32,
    /// Its parent's id.
    ppid: i32,
    /// Its process group.
    pgrp: i32,
    /// Exited, not yet reaped.
    zombie: bool,
    /// Start time in clock ticks since boot.
    started: u64,
}

/// A process from `/proc/<pid>/stat`, if it exists.
fn stat(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        pid,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
    })
}

/// Every process but this one and init.
fn processes() -> Vec<Proc> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid > 1 && pid != me)
        .filter_map(stat)
        .collect()
}

/// The real user id of a process.
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// The marker in the environment of a process (`MICRO_RUNTIME_INSTANCE`), when it can be read.
fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let key = format!("{MICRO_RUNTIME_INSTANCE}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(key.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The processes in a cgroup and in the cgroups below it.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

/// Removes a cgroup and those below it (`rmdir`: a cgroup goes once no process is left in it). Waits a little for
/// processes that are exiting; false when it is still there.
fn remove_cgroup(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    for _ in 0..40 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(POLL),
        }
    }
    false
}

/// What a stop looks for: the processes of one instance, or all that previous servers of the data dir left.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// Recorded process groups: (pgid, start time of its leader).
    pub groups: Vec<(i32, u64)>,
    /// Markers that select the processes whose environment carries them.
    pub markers: HashSet<String>,
    /// A marker prefix that selects (previous servers of the data dir), and one that does not (this server).
    pub prefix: Option<(String, String)>,
    /// cgroups whose processes are all selected.
    pub cgroups: Vec<PathBuf>,
}

impl Selector {
    /// Whether a process whose environment carries `marker` is selected.
    fn selects_marker(&self, marker: &str) -> bool {
        self.markers.contains(marker)
            || self
                .prefix
                .as_ref()
                .is_some_and(|(yes, no)| marker.starts_with(yes.as_str()) && !marker.starts_with(no.as_str()))
    }

    /// The processes it selects now (zombies included).
    fn members(&self) -> Vec<Proc> {
        let all = processes();
        let uid = real_uid(std::process::id() as i32);
        let by_pid: HashMap<i32, &Proc> = all.iter().map(|p| (p.pid, p)).collect();
        // A recorded group counts while its leader is the recorded process, or gone: the processes left in it are
        // then its survivors (a pid is not reused while a process group has that id).
        let groups: Vec<(i32, u64)> = self
            .groups
            .iter()
            .copied()
            .filter(|&(pgid, started)| pgid > 1 && by_pid.get(&pgid).is_none_or(|leader| leader.started == started))
            .collect();
        let in_cgroups: HashSet<i32> = self.cgroups.iter().flat_map(|dir| cgroup_pids(dir)).collect();
        let by_marker = !self.markers.is_empty() || self.prefix.is_some();
        let mut mine: HashMap<i32, bool> = HashMap::new();
        let mut same_user = |pid: i32| *mine.entry(pid).or_insert_with(|| uid.is_some() && real_uid(pid) == uid);
        let mut found: HashSet<i32> = HashSet::new();
        for p in &all {
            if in_cgroups.contains(&p.pid) {
                found.insert(p.pid);
                continue;
            }
            let grouped = groups.iter().any(|&(pgid, started)| p.pgrp == pgid && p.started >= started);
            if !grouped && !by_marker {
                continue;
            }
            if !same_user(p.pid) {
                continue;
            }
            if grouped || (!p.zombie && marker_of(p.pid).is_some_and(|m| self.selects_marker(&m))) {
                found.insert(p.pid);
            }
        }
        // And their descendants.
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for p in &all {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut stack: Vec<i32> = found.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for &child in children.get(&pid).into_iter().flatten() {
                if !found.contains(&child) && same_user(child) {
                    found.insert(child);
                    stack.push(child);
                }
            }
        }
        all.into_iter().filter(|p| found.contains(&p.pid)).collect()
    }

    /// Sends `signal` to every live process it selects; returns how many there were.
    fn signal(&self, signal: Signal) -> usize {
        let live: Vec<Proc> = self.members().into_iter().filter(|p| !p.zombie).collect();
        for p in &live {
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), signal);
        }
        live.len()
    }

    /// Whether a process it selects is alive.
    fn any_alive(&self) -> bool {
        self.members().iter().any(|p| !p.zombie)
    }

    /// SIGKILL (with `cgroup.kill` first) until no process it selects is alive, for at most [`KILL_WAIT`]. The
    /// children of the server among them (orphans it adopted) are reaped, except `leader`, which its caller waits
    /// for. Returns how many processes are still alive (0 unless some would not die).
    fn kill(&self, leader: Option<i32>) -> usize {
        let deadline = Instant::now() + KILL_WAIT;
        let mut seen: HashMap<i32, u64> = HashMap::new();
        let left = loop {
            for dir in &self.cgroups {
                let kill = dir.join("cgroup.kill");
                if kill.exists() {
                    let _ = std::fs::write(kill, "1");
                }
            }
            let found = self.members();
            seen.extend(found.iter().map(|p| (p.pid, p.started)));
            let live: Vec<&Proc> = found.iter().filter(|p| !p.zombie).collect();
            if live.is_empty() || Instant::now() > deadline {
                break live.len();
            }
            for p in live {
                let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let me = std::process::id() as i32;
        for (pid, started) in seen {
            if Some(pid) != leader
                && let Some(p) = stat(pid)
                && p.zombie
                && p.ppid == me
                && p.started == started
            {
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
        }
        left
    }

    /// Stops what it selects: SIGTERM, then SIGKILL after `grace` (or as soon as nothing is alive).
    fn stop(&self, grace: Duration, leader: Option<i32>) -> usize {
        if self.signal(Signal::SIGTERM) > 0 {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.any_alive() {
                std::thread::sleep(POLL);
            }
        }
        self.kill(leader)
    }
}

/// Runs a blocking scan off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Sends SIGTERM to every live process `selector` selects.
pub async fn terminate(selector: Selector) {
    blocking(move || selector.signal(Signal::SIGTERM)).await;
}

/// Waits until no process `selector` selects is alive, or until `deadline`.
pub async fn wait_gone(selector: Selector, deadline: Instant) {
    loop {
        let sel = selector.clone();
        if !blocking(move || sel.any_alive()).await.unwrap_or(false) || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Kills every process `selector` selects (see [`Selector::kill`]); returns how many would not die.
pub async fn kill(selector: Selector, leader: Option<i32>) -> usize {
    blocking(move || selector.kill(leader)).await.unwrap_or_default()
}

/// How this server contains the processes of its services (see the module's documentation).
#[derive(Debug)]
pub struct Containment {
    /// Identifies the runtime's directory: the markers and cgroups of every server that used it start with it.
    key: String,
    /// New at each start of the server.
    run: String,
    /// The number of the next instance of this run.
    next: AtomicU64,
    /// The cgroup under which each instance gets its own, when cgroups are used.
    cgroups: Option<PathBuf>,
    /// Why cgroups are not used.
    no_cgroups: String,
    /// Whether the server is a child subreaper.
    subreaper: bool,
    /// The instances' leaders: children of the server that their tasks wait for, which the orphan reaper leaves.
    leaders: Mutex<HashSet<i32>>,
}

/// What a new instance runs with.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Its marker (`MICRO_RUNTIME_INSTANCE`).
    pub marker: String,
    /// Its cgroup (created), when cgroups are used.
    pub cgroup: Option<PathBuf>,
}

impl Containment {
    /// The containment of a runtime whose directory is `root`: makes the server a child subreaper, and uses
    /// cgroups when `cgroups` allows and the server can create them.
    pub async fn new(root: &Path, cgroups: bool) -> Containment {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
        let key: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        let run: String = uuid::Uuid::new_v4().simple().to_string().chars().take(12).collect();
        let subreaper = become_subreaper();
        let (cgroups, no_cgroups) = if !cgroups {
            (None, format!("{}=off", micro_core::env::MICRO_RUNTIME_CGROUPS))
        } else {
            match probe(&key, &run).await {
                Ok(dir) => (Some(dir), String::new()),
                Err(e) => (None, e),
            }
        };
        Containment {
            key,
            run,
            next: AtomicU64::new(1),
            cgroups,
            no_cgroups,
            subreaper,
            leaders: Mutex::new(HashSet::new()),
        }
    }

    /// The mechanism in use, for the server's log.
    pub fn describe(&self) -> String {
        let reaper = if self.subreaper { ", child subreaper" } else { "" };
        match &self.cgroups {
            Some(dir) => format!("a cgroup v2 per process under {}, environment markers{reaper}", dir.display()),
            None => format!("process groups and environment markers{reaper} (no cgroups: {})", self.no_cgroups),
        }
    }

    /// Whether each instance gets a cgroup.
    pub fn uses_cgroups(&self) -> bool {
        self.cgroups.is_some()
    }

    /// A new marker, and a new cgroup when cgroups are used (an error when it cannot be created).
    pub fn prepare(&self) -> Result<Prepared, String> {
        let marker = format!("{}-{}-{}", self.key, self.run, self.next.fetch_add(1, Ordering::Relaxed));
        let cgroup = match &self.cgroups {
            None => None,
            Some(parent) => {
                let dir = parent.join(&marker);
                // The parent goes when its last instance does ([`Containment::release_parent`]): create it again,
                // and once more if it went in between.
                let mut created = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
                for _ in 0..3 {
                    if let Err(e) = std::fs::create_dir(parent)
                        && e.kind() != std::io::ErrorKind::AlreadyExists
                    {
                        created = Err(e);
                        break;
                    }
                    created = std::fs::create_dir(&dir);
                    if !matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
                        break;
                    }
                }
                created.map_err(|e| format!("cannot create the cgroup {}: {e}", dir.display()))?;
                Some(dir)
            }
        };
        Ok(Prepared { marker, cgroup })
    }

    /// Removes the `micro-runtime-<key>` cgroup when no instance cgroup is left in it, so that a server leaves no
    /// cgroup behind (`rmdir` fails while it has children, and a prepare creates it again).
    fn release_parent(&self) {
        if let Some(parent) = &self.cgroups {
            let _ = std::fs::remove_dir(parent);
        }
    }

    /// The command that runs `program` with `args` contained as `prepared` says: in its cgroup (entered before the
    /// program runs), in a process group of its own. The caller sets the environment, and then the marker
    /// (`MICRO_RUNTIME_INSTANCE`) last.
    pub fn command(&self, prepared: &Prepared, program: &Path, args: &[std::ffi::OsString]) -> tokio::process::Command {
        let mut cmd = match &prepared.cgroup {
            Some(dir) => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c").arg(ENTER_CGROUP).arg(dir.join("cgroup.procs")).arg(program);
                cmd
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(args).process_group(0);
        cmd
    }

    /// Notes the leader of an instance (a child the server waits for itself), or forgets it.
    pub fn leader(&self, pid: i32, alive: bool) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if alive {
            leaders.insert(pid);
        } else {
            leaders.remove(&pid);
        }
    }

    /// Whether `dir` is a cgroup that a runtime created (under a `micro-runtime-…` cgroup).
    fn ours(dir: &Path) -> bool {
        dir.parent().and_then(Path::file_name).and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(CGROUP_PREFIX))
            && dir.join("cgroup.procs").is_file()
    }

    /// What finds the processes of an instance.
    pub fn selector(&self, group: &Group) -> Selector {
        Selector {
            groups: vec![(group.pgid, group.started)],
            markers: Some(group.marker.clone()).filter(|m| !m.is_empty()).into_iter().collect(),
            prefix: None,
            cgroups: group.cgroup.clone().filter(|d| Self::ours(d)).into_iter().collect(),
        }
    }

    /// Stops an instance's processes: SIGTERM, then SIGKILL after `grace`; then removes its cgroup. `leader` is left
    /// for its caller to reap. Returns how many processes would not die.
    pub async fn stop(&self, group: &Group, grace: Duration, leader: Option<i32>) -> usize {
        let selector = self.selector(group);
        let left = blocking(move || {
            let left = selector.stop(grace, leader);
            for dir in &selector.cgroups {
                remove_cgroup(dir);
            }
            left
        })
        .await
        .unwrap_or_default();
        self.release_parent();
        left
    }

    /// Kills an instance's processes at once (SIGKILL) and removes its cgroup; see [`Containment::stop`].
    pub async fn kill(&self, group: &Group, leader: Option<i32>) -> usize {
        self.stop(group, Duration::ZERO, leader).await
    }

    /// Removes the cgroup of an instance that did not start.
    pub fn discard(&self, prepared: &Prepared) {
        if let Some(dir) = &prepared.cgroup {
            let _ = std::fs::remove_dir(dir);
        }
        self.release_parent();
    }

    /// The `micro-runtime-<key>` cgroup of a previous server when this one uses no cgroups, if it is there.
    fn leftover_parent(&self) -> Option<PathBuf> {
        let dir = cgroup2_dir().ok()?.join(format!("{CGROUP_PREFIX}{}", self.key));
        dir.is_dir().then_some(dir)
    }

    /// What finds everything previous servers of this data dir left: the recorded groups, markers and cgroups, every
    /// process whose marker has this data dir's key (but not this server's run), and every cgroup of a previous run
    /// under this server's cgroup.
    pub fn sweep_selector(&self, recorded: &[Group]) -> Selector {
        let mut selector = Selector {
            groups: recorded.iter().map(|g| (g.pgid, g.started)).collect(),
            markers: recorded.iter().map(|g| g.marker.clone()).filter(|m| !m.is_empty()).collect(),
            prefix: Some((format!("{}-", self.key), format!("{}-{}-", self.key, self.run))),
            cgroups: recorded.iter().filter_map(|g| g.cgroup.clone()).filter(|d| Self::ours(d)).collect(),
        };
        let parent = self.cgroups.clone().or_else(|| self.leftover_parent());
        if let Some(parent) = parent
            && let Ok(entries) = std::fs::read_dir(&parent)
        {
            let current = format!("{}-{}-", self.key, self.run);
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && !name.starts_with(&current)
                    && !selector.cgroups.contains(&entry.path())
                {
                    selector.cgroups.push(entry.path());
                }
            }
        }
        selector
    }

    /// Stops everything previous servers of this data dir left running (see [`Containment::sweep_selector`]):
    /// SIGTERM, then SIGKILL after `grace`; removes their cgroups. Returns how many processes it found.
    pub async fn sweep(&self, recorded: &[Group], grace: Duration) -> usize {
        let selector = self.sweep_selector(recorded);
        let found = blocking(move || {
            let found = selector.members().iter().filter(|p| !p.zombie).count();
            if found > 0 {
                tracing::info!(processes = found, "stopping the processes a previous server left running");
                let left = selector.stop(grace, None);
                if left > 0 {
                    tracing::warn!(processes = left, "some processes a previous server left would not die");
                }
            }
            for dir in &selector.cgroups {
                remove_cgroup(dir);
            }
            found
        })
        .await
        .unwrap_or_default();
        if let Some(parent) = self.cgroups.clone().or_else(|| self.leftover_parent()) {
            let _ = std::fs::remove_dir(parent);
        }
        found
    }

    /// Reaps, until `stop` is cancelled, the zombies among the server's children that nobody waits for: orphans of
    /// services re-parented to the server (its subreaper). A zombie is reaped once it has been one for
    /// [`ZOMBIE_GRACE`], so that the children the server waits for itself are never taken from their waiters.
    pub async fn reap_orphans(self: std::sync::Arc<Self>, stop: CancellationToken) {
        if !self.subreaper {
            return;
        }
        let mut first_seen: HashMap<(i32, u64), Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REAP_INTERVAL) => {}
                _ = stop.cancelled() => return,
            }
            let this = self.clone();
            first_seen = blocking(move || {
                let me = std::process::id() as i32;
                let leaders = this.leaders.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let now = Instant::now();
                let mut seen = HashMap::new();
                for p in processes().into_iter().filter(|p| p.zombie && p.ppid == me && !leaders.contains(&p.pid)) {
                    let since = first_seen.get(&(p.pid, p.started)).copied().unwrap_or(now);
                    if now.duration_since(since) >= ZOMBIE_GRACE {
                        let _ =
                            nix::sys::wait::waitpid(Pid::from_raw(p.pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
                    } else {
                        seen.insert((p.pid, p.started), since);
                    }
                }
                seen
            })
            .await
            .unwrap_or_default();
        }
    }
}

/// Makes this process a child subreaper (Linux): orphaned descendants are re-parented to it, not to init.
#[cfg(target_os = "linux")]
fn become_subreaper() -> bool {
    match nix::sys::prctl::set_child_subreaper(true) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot become a child subreaper");
            false
        }
    }
}

/// Other systems have no subreaper.
#[cfg(not(target_os = "linux"))]
fn become_subreaper() -> bool {
    false
}

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or(""), 8)
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of this process's cgroup v2, from `/proc/self/cgroup` and the cgroup2 mount in
/// `/proc/self/mountinfo`.
pub fn cgroup2_dir() -> Result<PathBuf, String> {
    let cgroup =
        std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::")).ok_or("the server is in no cgroup v2")?;
    let own = own.trim_end_matches(" (deleted)");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    parse_cgroup2_dir(&mountinfo, own).ok_or_else(|| "no cgroup2 file system holds the server's cgroup".to_string())
}

/// The directory of cgroup `own` in the cgroup2 mounts of `mountinfo`.
fn parse_cgroup2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (root, mount) = (unescape(fields.get(3)?), unescape(fields.get(4)?));
        let relative = Path::new(own).strip_prefix(&root).ok()?;
        Some(PathBuf::from(mount).join(relative))
    })
}

/// Checks that this server can contain a process in a cgroup v2: creates `micro-runtime-<key>` under its own
/// cgroup, and a child process enters a cgroup created there. Returns the `micro-runtime-<key>` directory.
async fn probe(key: &str, run: &str) -> Result<PathBuf, String> {
    let base = cgroup2_dir()?;
    let parent = base.join(format!("{CGROUP_PREFIX}{key}"));
    match std::fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", parent.display())),
    }
    if !parent.join("cgroup.procs").is_file() {
        return Err(format!("{} is not a cgroup", parent.display()));
    }
    let test = parent.join(format!("{key}-{run}-probe"));
    std::fs::create_dir(&test).map_err(|e| format!("cannot create {}: {e}", test.display()))?;
    let entered = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("echo $$ > \"$0\"")
        .arg(test.join("cgroup.procs"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
    let removed = blocking({
        let test = test.clone();
        move || remove_cgroup(&test)
    })
    .await
    .unwrap_or(false);
    // It is created again for the first instance.
    let _ = std::fs::remove_dir(&parent);
    match entered {
        Ok(status) if status.success() && removed => Ok(parent),
        Ok(status) if status.success() => Err(format!("cannot remove the cgroup {}", test.display())),
        Ok(_) => Err(format!("a process cannot enter a cgroup under {}", parent.display())),
        Err(e) => Err(format!("cannot run /bin/sh: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mounts_are_found() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_dir(hybrid, "/"), Some(PathBuf::from("/sys/fs/cgroup/unified/")));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_dir(unified, "/user.slice/app.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/app.scope"))
        );
        let nested = "30 1 0:26 /user.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_dir(nested, "/user.slice/a"), Some(PathBuf::from("/sys/fs/cgroup/a")));
        assert_eq!(parse_cgroup2_dir(nested, "/system.slice/a"), None);
        assert_eq!(parse_cgroup2_dir("25 30 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n", "/"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn markers_select_previous_runs_only() {
        let s = Selector {
            markers: ["x-1-1".to_string()].into(),
            prefix: Some(("k-".into(), "k-now-".into())),
            ..Selector::default()
        };
        assert!(s.selects_marker("x-1-1") && s.selects_marker("k-before-3"));
        assert!(!s.selects_marker("k-now-3") && !s.selects_marker("other-1-1") && !s.selects_marker("x-1-12"));
    }

    /// A process group with a background child and a child that left it (`setsid`) and carries the marker: all
    /// are found while the leader lives, and the survivors after it died; a selector whose leader's start time is not
    /// the recorded one finds nothing.
    #[tokio::test]
    async fn the_group_and_the_marked_are_found_after_the_leader_died() {
        let marker = format!("test-{}", uuid::Uuid::new_v4().simple());
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script =
            format!("sleep 300 & echo $! > {p}.bg; setsid sleep 300 & echo $! > {p}.sid; wait", p = pids.display());
        let mut leader = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .env(MICRO_RUNTIME_INSTANCE, &marker)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pgid = leader.id().unwrap() as i32;
        let started = stat(pgid).unwrap().started;
        let read = |ext: &str| std::fs::read_to_string(format!("{}.{ext}", pids.display())).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        let number = |ext: &str| read(ext).and_then(|t| t.trim().parse::<i32>().ok());
        while number("bg").is_none() || number("sid").is_none() {
            assert!(Instant::now() < deadline, "the test processes did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (bg, sid) = (number("bg").unwrap(), number("sid").unwrap());
        while stat(sid).is_some_and(|p| p.pgrp == pgid) {
            assert!(Instant::now() < deadline, "setsid did not run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let live = |s: &Selector| -> HashSet<i32> { s.members().iter().filter(|p| !p.zombie).map(|p| p.pid).collect() };
        let by_group = Selector { groups: vec![(pgid, started)], ..Selector::default() };
        assert_eq!(live(&by_group), [pgid, bg, sid].into(), "the group and the descendants of its leader");
        let stale = Selector { groups: vec![(pgid, started + 1)], ..Selector::default() };
        assert!(live(&stale).is_empty(), "a group whose leader is another process");

        // The leader dies: its children are orphans, one still in the group, one only marked.
        nix::sys::signal::kill(Pid::from_raw(pgid), Signal::SIGKILL).unwrap();
        let _ = leader.wait().await;
        assert_eq!(live(&by_group), [bg].into(), "the group's survivor");
        let selector = Selector { groups: vec![(pgid, started)], markers: [marker].into(), ..Selector::default() };
        assert_eq!(live(&selector), [bg, sid].into(), "the group's survivor and the marked process");
        assert_eq!(kill(selector.clone(), None).await, 0);
        let alive = |pid: i32| stat(pid).is_some_and(|p| !p.zombie);
        assert!(!alive(bg) && !alive(sid), "{bg} or {sid} survived");
    }
}
