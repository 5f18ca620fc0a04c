//! Builds a Rust package with `cargo build`, feeding its progress into the deployment's output.
//!
//! Cargo runs with `--message-format json-render-diagnostics`: its JSON messages on stdout count the units built
//! (each `compiler-artifact`) and name the executable, and its human output on stderr (`Compiling x`, warnings and
//! errors, rendered) becomes the deployment's lines. Every build of a server uses the same target dir, and every
//! build of the user (every server, and `micro new --build`) the same cargo build dir ([`default_build_dir`],
//! `MICRO_BUILD_DIR`: cargo's `build.build-dir`, where intermediate artifacts go), so that dependencies compile
//! once for every service; builds run one at a time (cargo would serialize them on its lock anyway).

use super::deploy::Deploy;
use super::source::Package;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How to build.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    /// The cargo profile (`release`, `dev`, or a custom one).
    pub profile: String,
    /// The target dir shared by every build.
    pub target_dir: PathBuf,
    /// Cargo's build dir (intermediate artifacts), shared by every build of the user; `None`: the target dir.
    pub build_dir: Option<PathBuf>,
}

impl BuildSettings {
    /// The settings the environment gives, with `target_dir`: the profile `MICRO_RUNTIME_CARGO_PROFILE` (default
    /// [`super::DEFAULT_PROFILE`], checked to be a profile name) and the build dir `MICRO_BUILD_DIR` (default
    /// [`default_build_dir`]). The runtime and `micro new --build` both read them here, so they build alike.
    pub fn from_env(target_dir: PathBuf) -> Result<Self, String> {
        use micro_core::env::{MICRO_BUILD_DIR, MICRO_RUNTIME_CARGO_PROFILE, var};
        let profile = var(MICRO_RUNTIME_CARGO_PROFILE).unwrap_or_else(|| super::DEFAULT_PROFILE.into());
        if profile.is_empty() || !profile.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(format!("{MICRO_RUNTIME_CARGO_PROFILE}={profile:?} is not a cargo profile name"));
        }
        let build_dir = match var(MICRO_BUILD_DIR) {
            Some(dir) => Some(std::path::absolute(&dir).map_err(|e| format!("{MICRO_BUILD_DIR}={dir}: {e}"))?),
            None => default_build_dir(),
        };
        Ok(Self { profile, target_dir, build_dir })
    }

    /// `cargo build` with these settings: the profile, the target dir and the shared build dir, incremental
    /// compilation on for the service's own crates whatever the profile says (cargo applies it to workspace and
    /// path packages only; dependencies are built as the profile says, once), and without the caller's `MICRO_*`
    /// variables. Every build of a service starts here, so what `micro new --build` compiles is what the runtime's
    /// builds reuse.
    pub fn cargo_build(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("cargo");
        cmd.args(["build", "--profile", &self.profile, "--target-dir"]).arg(&self.target_dir);
        super::process::strip_micro_env(&mut cmd);
        if let Some(dir) = &self.build_dir {
            cmd.env("CARGO_BUILD_BUILD_DIR", dir);
        }
        let profile = match self.profile.as_str() {
            "dev" | "test" => "DEV".to_string(),
            "bench" => "RELEASE".to_string(),
            other => other.to_ascii_uppercase().replace('-', "_"),
        };
        cmd.env(format!("CARGO_PROFILE_{profile}_INCREMENTAL"), "true");
        cmd
    }
}

/// The build dir shared by the runtime's builds of every server of the user: `build` in the platform's cache dir
/// for micro (`~/.cache/micro/build` on Linux), if there is a home directory.
pub fn default_build_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "micro", "micro").map(|p| p.cache_dir().join("build"))
}

/// Builds `package` and returns the path of its binary. The progress bar's total is `last` (the number of units
/// the package's last build counted) when known, else the estimate of `cargo metadata`. Cancelling the future
/// kills cargo.
pub async fn build(
    settings: &BuildSettings,
    package: &Package,
    last: Option<u64>,
    deploy: &Deploy,
) -> Result<PathBuf, String> {
    deploy.set_total(last.filter(|n| *n > 0).unwrap_or(package.units));
    let mut cmd = tokio::process::Command::from(settings.cargo_build());
    cmd.args(["--message-format", "json-render-diagnostics", "--color", "never"])
        .args(["-p", &package.name, "--bin", &package.bin])
        .current_dir(&package.workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo (is a Rust toolchain installed?): {e}"))?;
    let stdout = child.stdout.take().ok_or("cargo has no stdout")?;
    let stderr = child.stderr.take().ok_or("cargo has no stderr")?;

    let human = async {
        let mut first_error: Option<String> = None;
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if first_error.is_none() && line.starts_with("error") {
                first_error = Some(line.clone());
            }
            if let Some(krate) = compiling(&line) {
                deploy.compiling(krate);
            }
            deploy.cargo_line(line);
        }
        first_error
    };
    let machine = async {
        let mut executable: Option<PathBuf> = None;
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let build_script = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "custom-build"));
            if !build_script {
                let name = msg["package_id"].as_str().map(package_name);
                deploy.progress(name.as_deref(), None);
            }
            if msg["target"]["name"] == package.bin.as_str()
                && let Some(exe) = msg["executable"].as_str()
            {
                executable = Some(PathBuf::from(exe));
            }
        }
        executable
    };
    let (first_error, executable) = tokio::join!(human, machine);
    let status = child.wait().await.map_err(|e| format!("cargo failed: {e}"))?;
    if !status.success() {
        return Err(match first_error {
            Some(e) => format!("build failed: {e}"),
            None => format!("build failed: cargo exited with {status}"),
        });
    }
    executable.ok_or_else(|| format!("cargo built {} but named no executable for {}", package.name, package.bin))
}

/// The crate of cargo's status line `Compiling NAME VERSION (…)`, if it is one.
fn compiling(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    (words.next() == Some("Compiling")).then(|| words.next()).flatten()
}

/// The package name of a cargo package id: `registry+…#name@1.0`, `path+file:///…/dir#name@0.1.0`,
/// `path+file:///…/name#0.1.0` (the name is the directory's), or the old `name 1.0 (source)`.
fn package_name(id: &str) -> String {
    match id.split_once('#') {
        Some((url, fragment)) => match fragment.split_once('@') {
            Some((name, _)) => name.to_string(),
            None => url.rsplit('/').next().unwrap_or(url).to_string(),
        },
        None => id.split_whitespace().next().unwrap_or(id).to_string(),
    }
}

/// Copies the built binary out of the shared target dir (which the next build may overwrite) to `dest`.
pub fn keep_binary(built: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = dest.with_extension("partial");
    std::fs::copy(built, &partial)?;
    std::fs::rename(&partial, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_incremental_in_every_profile() {
        let env = |p: &str| {
            let settings = BuildSettings { profile: p.into(), target_dir: "/t".into(), build_dir: Some("/b".into()) };
            let cmd = settings.cargo_build();
            let mut vars: Vec<String> =
                cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?))).collect();
            vars.sort();
            let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
            assert_eq!(args, ["build", "--profile", p, "--target-dir", "/t"]);
            vars
        };
        assert_eq!(env("release"), ["CARGO_BUILD_BUILD_DIR=/b", "CARGO_PROFILE_RELEASE_INCREMENTAL=true"]);
        assert_eq!(env("dev"), ["CARGO_BUILD_BUILD_DIR=/b", "CARGO_PROFILE_DEV_INCREMENTAL=true"]);
        assert_eq!(env("fast-dev"), ["CARGO_BUILD_BUILD_DIR=/b", "CARGO_PROFILE_FAST_DEV_INCREMENTAL=true"]);
    }

    #[test]
    fn crates_of_status_lines_and_package_ids() {
        assert_eq!(compiling("   Compiling tokio-stream v0.1.17"), Some("tokio-stream"));
        assert_eq!(compiling("Compiling greeter v0.1.0 (/w/greeter)"), Some("greeter"));
        assert_eq!(compiling("warning: unused import"), None);
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#tokio-stream@0.1.17"),
            "tokio-stream"
        );
        assert_eq!(package_name("path+file:///w/crates/core#micro-core@0.1.0"), "micro-core");
        assert_eq!(package_name("path+file:///w/greeter#0.1.0"), "greeter");
        assert_eq!(package_name("tokio 1.48.0 (registry+https://github.com/rust-lang/crates.io-index)"), "tokio");
    }
}
