//! A terminal for the tests: a program runs in a tmux pane (a real pseudo-terminal), keys are sent to it with
//! `send-keys`, and the screen is read with `capture-pane`.
//!
//! Each [`Tmux`] is its own tmux server on a socket in the platform's temporary directory, started with no config
//! file and the CLI's environment (as [`crate::support::Platform::cli`] gives it), and killed on drop. tmux is a
//! Debian package (`.ci/run` installs it); without it these tests are skipped, except in CI (`CI` set), where they
//! fail.

use crate::support::{DEADLINE, Platform, clean_env, micro_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether tmux is installed; fails the test in CI when it is not.
pub fn available() -> bool {
    let found = Command::new("tmux").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if found {
        return true;
    }
    let hint = "tmux is not installed (apt-get install tmux)";
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{hint} (CI runs every terminal test)");
    }
    eprintln!("skipped: {hint}");
    false
}

/// A tmux server with one pane that runs a program.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Runs `program ARGS` in a 120×40 pane, with the environment of the platform's CLI plus `env`; the pane stays
    /// after the program exits, with its exit status ([`Tmux::exit_status`]).
    pub fn start(p: &Platform, name: &str, env: &[(&str, &str)], program: &Path, args: &[&str]) -> Tmux {
        let socket = p.path(&format!("tmux-{name}.sock"));
        let mut cmd = Command::new("tmux");
        clean_env(&mut cmd);
        cmd.env("HOME", p.path("home"))
            .env("MICRO_CONFIG_DIR", p.path("config"))
            .env("MICRO_CACHE_DIR", p.path("cache"))
            .env("MICRO_PROXY", &p.addr)
            .env("TERM", "xterm-256color")
            .env_remove("TMUX");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A shell runs the program, then prints its exit status and keeps the pane (tmux's own `pane_dead_status`
        // is sometimes never filled in). Its Ctrl-C trap keeps it waiting when the program gets a Ctrl-C too.
        cmd.arg("-S").arg(&socket).args(["-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", "--"]);
        cmd.args(["sh", "-c", r#"trap : INT; "$0" "$@"; echo "[exit status $?]"; exec sleep 3600"#]);
        cmd.arg(program).args(args);
        let out = cmd.output().expect("run tmux");
        assert!(out.status.success(), "tmux new-session failed: {}", String::from_utf8_lossy(&out.stderr));
        Tmux { socket }
    }

    /// `micro ARGS` in a pane.
    pub fn micro(p: &Platform, name: &str, env: &[(&str, &str)], args: &[&str]) -> Tmux {
        Tmux::start(p, name, env, &micro_bin(), args)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys by their tmux names: `Tab`, `Enter`, `Up`, `C-r`, `C-d`…
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend(keys);
        self.tmux(&args);
    }

    /// Types `text` as it is.
    pub fn text(&self, text: &str) {
        self.tmux(&["send-keys", "-l", "--", text]);
    }

    /// The screen, without trailing blank lines.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"]).trim_end().to_string()
    }

    /// The last line of the screen that is not blank: the line being edited.
    pub fn line(&self) -> String {
        self.screen().lines().last().unwrap_or_default().trim_end().to_string()
    }

    /// Waits until `ready` holds for the screen, and returns that screen; fails the test after [`DEADLINE`].
    #[track_caller]
    pub fn wait(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the line being edited is `line`.
    #[track_caller]
    pub fn wait_line(&self, line: &str) {
        let deadline = Instant::now() + DEADLINE;
        while self.line() != line {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the line {line:?}; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the program exits, and returns its exit status.
    #[track_caller]
    pub fn exit_status(&self) -> i32 {
        let screen = self.wait("the program exits", |s| s.contains("[exit status "));
        let status = screen.rsplit("[exit status ").next().and_then(|rest| rest.split(']').next()).unwrap_or_default();
        status.parse().unwrap_or_else(|_| panic!("an exit status: {status:?}\n{screen}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
