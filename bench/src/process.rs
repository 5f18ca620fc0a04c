//! Whole-process timing: `micro helloworld call --name=x` against the minimal compiled client `hello-client`.
//!
//! Both binaries are found next to the benchmark's own executable (`target/release/`). Each run is a fresh process
//! that makes one call through the proxy; its wall time covers exec, dynamic loading, runtime start-up, the
//! connection, the call(s) and exit. The CLI runs with its own temporary config and cache dirs; before timing it
//! logs in (`micro login`, as a user would; the proxy requires an account for service calls) and calls once, so
//! that its schema cache is warm. `hello-client` gets the same account's token in `MICRO_AUTH_TOKEN`. Runs of the
//! two binaries alternate so that background load skews both alike.

use crate::platform::{ADMIN, ADMIN_PASSWORD, Platform};
use crate::stats::Samples;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The two executables to compare.
pub struct Binaries {
    /// `target/release/micro`.
    pub micro: PathBuf,
    /// `target/release/hello-client`.
    pub hello_client: PathBuf,
}

impl Binaries {
    /// Finds both binaries in the directory of the running benchmark executable.
    pub fn locate() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let dir = exe.parent().context("the benchmark executable has no parent directory")?;
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} is missing: build the release binaries first with `cargo build --release --workspace` \
                     (or run bench/run.sh, which does)",
                    path.display()
                )
            }
        };
        Ok(Self { micro: find("micro")?, hello_client: find("hello-client")? })
    }
}

/// One command to time: a program, its arguments and environment, and a text its stdout must contain.
struct Job {
    what: &'static str,
    command: Command,
    expect: &'static str,
}

impl Job {
    fn run(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let out = self.command.output().with_context(|| format!("cannot start {}", self.what))?;
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(self.expect) {
            bail!(
                "{} failed ({}): stdout {:?}, stderr {:?}",
                self.what,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}

/// `micro ARGS` with the benchmark's proxy and its own config and cache dirs under `home`.
fn micro(bins: &Binaries, platform: &Platform, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(&bins.micro);
    cmd.args(args)
        .env("MICRO_PROXY", platform.proxy.to_string())
        .env("MICRO_CONFIG_DIR", home.join("config"))
        .env("MICRO_CACHE_DIR", home.join("cache"))
        .env("HOME", home);
    for var in ["MICRO_ENV", "MICRO_OUTPUT", "MICRO_NAMESPACE", "MICRO_AUTH_TOKEN", "MICRO_USERNAME", "MICRO_PASSWORD"]
    {
        cmd.env_remove(var);
    }
    cmd
}

/// `micro login` as the admin, into the config dir under `home`.
fn login(bins: &Binaries, platform: &Platform, home: &Path) -> anyhow::Result<()> {
    let mut child = micro(bins, platform, home, &["login", "--username", ADMIN, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start micro login")?;
    child.stdin.take().context("no stdin")?.write_all(ADMIN_PASSWORD.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("micro login failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Wall times of `runs` runs of each command, after one untimed run of each.
pub fn time_calls(
    bins: &Binaries,
    platform: &Platform,
    runs: usize,
    home: &Path,
) -> anyhow::Result<(Samples, Samples)> {
    login(bins, platform, home)?;
    let micro = micro(bins, platform, home, &["helloworld", "call", "--name=x"]);
    let mut client = Command::new(&bins.hello_client);
    client.arg(platform.proxy.to_string()).arg("x").env("MICRO_AUTH_TOKEN", &platform.token);
    let mut jobs = [
        Job { what: "micro helloworld call --name=x", command: micro, expect: "Hello x" },
        Job { what: "hello-client", command: client, expect: "Hello x" },
    ];
    // Warm-up: fills micro's schema cache and the page cache for both binaries.
    for job in &mut jobs {
        job.run()?;
    }
    let mut samples = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    for _ in 0..runs.max(1) {
        for (job, out) in jobs.iter_mut().zip(samples.iter_mut()) {
            out.push(job.run()?);
        }
    }
    let [m, c] = samples;
    Ok((Samples::new(m), Samples::new(c)))
}
