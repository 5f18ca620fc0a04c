//! Findings 7 and 8 of the attack run, against the runtime: processes that escape `micro kill` or survive a killed
//! server (the children of a service's shell, with and without `setsid`), and namespaces that lead the runtime's
//! files outside its data dir.
//!
//! The process tests run twice: with cgroups when the machine allows them (`MICRO_RUNTIME_CGROUPS=auto`), and with
//! the fallback only (`off`: process groups, environment markers, the subreaper). The processes of a test are
//! `sleep <tag>` with a tag of its own, found in `/proc/*/cmdline`.

use crate::support::{self, Platform};
use micro_core::proto::runtime::{
    CreateOptions, CreateRequest, DeleteOptions, DeleteRequest, LogsOptions, LogsRequest, Service,
    runtime_client::RuntimeClient,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A server whose runtime gives stopped processes 2 s, with cgroups `auto` or `off`.
fn platform(cgroups: &str) -> Platform {
    Platform::start_env(&[("MICRO_RUNTIME_KILL_GRACE", "2s"), ("MICRO_RUNTIME_CGROUPS", cgroups)])
}

/// A `sleep` argument that no other process uses: `<base>.<digits>`.
fn tag(base: u32) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    format!("{base}.{}{:09}", std::process::id(), nanos)
}

/// The fields of `/proc/<pid>/stat` after the command: state, ppid, pgrp, session, …
fn stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process exists and has not exited (a zombie has).
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// The live processes running `sleep <tag>`.
fn sleepers(tag: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == tag.as_bytes()
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort();
    pids
}

/// Waits (at most [`support::DEADLINE`]) until `ready` holds.
#[track_caller]
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + support::DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills every `sleep <tag>` left when dropped, so that a failed test leaves nothing behind.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for pid in sleepers(&self.0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// An empty directory to run a command in.
fn empty_dir(p: &Platform, name: &str) -> PathBuf {
    let dir = p.path(name);
    std::fs::create_dir_all(&dir).expect("create a service dir");
    dir
}

/// The cgroup under which the server puts its services' processes, from its log; `None` without cgroups.
fn cgroup_parent(p: &Platform) -> Option<PathBuf> {
    let log = p.server_log();
    let line = log.lines().find(|l| l.contains("the runtime contains each service's processes"))?;
    let rest = line.split("a cgroup v2 per process under ").nth(1)?;
    Some(PathBuf::from(rest.split(',').next()?.trim()))
}

/// The sub-directories (cgroups) of `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The command of an escaping service: a background child (in the shell's process group), a child that leaves the
/// session and process group (`setsid`), an orphan that does too (its parent, a subshell, exits at once), and with
/// cgroups an orphan that also clears its environment; then the shell waits. Returns the command and how many
/// `sleep <tag>` it starts.
fn escaper(tag: &str, cgroups: bool) -> (String, usize) {
    let mut command = format!("sleep {tag} & setsid sleep {tag} & (setsid sleep {tag} &) ; ");
    let mut count = 3;
    if cgroups {
        command.push_str(&format!("(env -i setsid sleep {tag} &) ; "));
        count += 1;
    }
    command.push_str("wait");
    (command, count)
}

/// Runs the escaper as `name` and waits until all its sleepers run; returns them. Checks that one of them did
/// leave the shell's session (so that the test does test an escape).
fn run_escaper(p: &Platform, name: &str, tag: &str, cgroups: bool) -> Vec<i32> {
    let dir = empty_dir(p, name);
    let (command, count) = escaper(tag, cgroups);
    p.micro(["run", "--name", name, "--command", &command, &dir.to_string_lossy()]).ok();
    wait_for("the service's children run", || sleepers(tag).len() == count);
    let pids = sleepers(tag);
    let sessions: Vec<String> = pids.iter().filter_map(|pid| stat(*pid).map(|f| f[3].clone())).collect();
    assert!(
        sessions.iter().any(|s| s != &sessions[0]),
        "no child left the shell's session: {pids:?} in sessions {sessions:?}"
    );
    pids
}

/// Finding 7: `micro kill` stops a service's background children, also one that called `setsid` (and with cgroups
/// one that also cleared its environment and was orphaned), and leaves no cgroup behind.
fn kill_leaves_nothing(mode: &str) {
    let p = platform(mode);
    let parent = cgroup_parent(&p);
    assert!(mode == "auto" || parent.is_none(), "cgroups are off, yet the server uses {parent:?}");
    if mode == "auto" && parent.is_none() {
        eprintln!("note: this machine gives the server no cgroups; testing the fallback only");
    }
    let tag = tag(86401);
    let _sweep = Sweep(tag.clone());
    let pids = run_escaper(&p, "escaper", &tag, parent.is_some());

    p.micro(["kill", "escaper"]).ok();
    let left: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
    assert!(left.is_empty(), "micro kill left {left:?} of {pids:?} running");
    assert!(sleepers(&tag).is_empty(), "micro kill left {:?} running", sleepers(&tag));
    if let Some(parent) = parent {
        assert!(!parent.exists(), "cgroups left: {} with {:?}", parent.display(), subdirs(&parent));
    }
}

#[test]
fn kill_stops_the_children_that_left_the_process_group() {
    kill_leaves_nothing("auto");
}

#[test]
fn kill_stops_the_children_that_left_the_process_group_without_cgroups() {
    kill_leaves_nothing("off");
}

/// Finding 7: after `kill -9` of the server, the next server stops the children of the service's shell that the
/// killed one left (with and without `setsid`), then runs the service again, whose new processes it leaves alone.
fn restart_leaves_nothing(mode: &str) {
    let mut p = platform(mode);
    let parent = cgroup_parent(&p);
    let cgroups = parent.is_some();
    let tag = tag(86402);
    let _sweep = Sweep(tag.clone());
    let old = run_escaper(&p, "orphans", &tag, cgroups);

    p.restart_server(true);
    wait_for("the orphans of the killed server are stopped", || old.iter().all(|pid| !alive(*pid)));
    // The service comes back with new processes, and these stay.
    let (_, count) = escaper(&tag, cgroups);
    wait_for("the service's new children run", || {
        let now = sleepers(&tag);
        now.len() == count && now.iter().all(|pid| !old.contains(pid))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sleepers(&tag).len(), count, "the new server stopped its own processes");
    p.micro(["kill", "orphans"]).ok();
    assert!(sleepers(&tag).is_empty(), "micro kill left {:?} running", sleepers(&tag));
    // The cgroups of both servers are gone.
    if let Some(parent) = parent {
        assert!(!parent.exists(), "cgroups left: {} with {:?}", parent.display(), subdirs(&parent));
    }
}

#[test]
fn a_restarted_server_stops_what_the_killed_one_left() {
    restart_leaves_nothing("auto");
}

#[test]
fn a_restarted_server_stops_what_the_killed_one_left_without_cgroups() {
    restart_leaves_nothing("off");
}

/// Finding 8: namespaces that are paths are refused by the CLI's run, kill, logs and status, and by the Runtime
/// API itself; nothing is created outside the data dir, and nothing there is removed.
#[test]
fn namespaces_that_climb_out_of_the_data_dir_are_refused() {
    let p = platform("auto");
    let dir = empty_dir(&p, "trav");
    let dir = dir.to_string_lossy().to_string();
    // Where `logs/<ns>` and `trees/<ns>` (under <data>/runtime) lead for these namespaces: into the data dir, next
    // to it, and above the test's directory.
    let escapes = ["../../x", "../../../x", "../../../../x"];
    let landing = [p.path("data/x"), p.path("x"), p.path("").parent().expect("a parent").join("x")];
    // A file where `kill` would have removed a tree.
    let canary = p.path("x/trav@latest/canary");
    std::fs::create_dir_all(canary.parent().unwrap()).unwrap();
    std::fs::write(&canary, "still here").unwrap();
    let before_above = landing[2].exists();

    for ns in escapes {
        for args in [
            vec!["run", "--namespace", ns, "--name", "trav", "--command", "sleep 30", &dir],
            vec!["kill", "--namespace", ns, "trav"],
            vec!["logs", "--namespace", ns, "trav"],
            vec!["status", "--namespace", ns],
        ] {
            let run = p.micro(&args);
            assert!(run.code == 127 || run.code == 128, "{}", run.snapshot());
            assert!(run.stderr.contains("invalid namespace"), "{}", run.snapshot());
        }
    }
    assert!(!landing[0].exists(), "{} was created", landing[0].display());
    assert_eq!(subdirs(&p.path("x")), vec![p.path("x/trav@latest")], "something was created next to the data dir");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "still here");
    assert_eq!(landing[2].exists(), before_above, "{} was created", landing[2].display());

    // The API itself, whatever a client sends.
    support::block_on(async {
        let mut runtime = RuntimeClient::with_interceptor(support::channel(&p).await, p.bearer());
        for ns in escapes.iter().chain(&["/tmp/x", "a/b", ".hidden", "UPPER"]) {
            let service = Some(Service { name: "trav".into(), ..Default::default() });
            let create = runtime
                .create(CreateRequest {
                    service: service.clone(),
                    options: Some(CreateOptions {
                        namespace: ns.to_string(),
                        command: vec!["sleep 30".into()],
                        ..Default::default()
                    }),
                })
                .await
                .expect_err("a create in a path");
            assert_eq!(create.code(), tonic::Code::InvalidArgument, "{ns}: {create:?}");
            assert!(create.message().contains("invalid namespace"), "{ns}: {create:?}");
            let delete = runtime
                .delete(DeleteRequest { service, options: Some(DeleteOptions { namespace: ns.to_string() }) })
                .await
                .expect_err("a delete in a path");
            assert_eq!(delete.code(), tonic::Code::InvalidArgument, "{ns}: {delete:?}");
            let logs = runtime
                .logs(LogsRequest {
                    service: "trav".into(),
                    options: Some(LogsOptions { namespace: ns.to_string() }),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .expect_err("logs in a path");
            assert_eq!(logs.code(), tonic::Code::InvalidArgument, "{ns}: {logs:?}");
        }
        // Names and versions that are paths are refused too, naming the field.
        for (name, version, field) in
            [("../x", "", "service name"), ("a/b", "", "service name"), ("x", "../v", "version")]
        {
            let bad = runtime
                .create(CreateRequest {
                    service: Some(Service { name: name.into(), version: version.into(), ..Default::default() }),
                    options: Some(CreateOptions { command: vec!["sleep 30".into()], ..Default::default() }),
                })
                .await
                .expect_err("a create with a path for a name");
            assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{name}@{version}: {bad:?}");
            assert!(bad.message().starts_with(&format!("invalid {field}")), "{name}@{version}: {bad:?}");
        }
    });
    assert!(!landing[0].exists() && !p.path("data/runtime/x").exists());
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "still here");
}
