//! Builds a Rust package with `cargo build`, feeding its progress into the deployment's output.
//!
//! Cargo runs with `--message-format json-render-diagnostics`: its JSON messages on stdout count the units built
//! (each `compiler-artifact`) and name the executable, and its human output on stderr (`Compiling x`, warnings and
//! errors, rendered) becomes the deployment's lines. Every build uses the same target dir, so that dependencies
//! compile once for every service; builds run one at a time (cargo would serialize them on its lock anyway).

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
}

/// Builds `package` and returns the path of its binary. Cancelling the future kills cargo.
pub async fn build(settings: &BuildSettings, package: &Package, deploy: &Deploy) -> Result<PathBuf, String> {
    deploy.set_total(package.units);
    let mut cmd = tokio::process::Command::new("cargo");
    cmd.args(["build", "--message-format", "json-render-diagnostics", "--color", "never", "--profile"])
        .arg(&settings.profile)
        .args(["-p", &package.name, "--bin", &package.bin, "--target-dir"])
        .arg(&settings.target_dir)
        .current_dir(&package.workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    super::process::strip_micro_env(&mut cmd);
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
                deploy.progress(None);
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

/// Copies the built binary out of the shared target dir (which the next build may overwrite) to `dest`.
pub fn keep_binary(built: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = dest.with_extension("partial");
    std::fs::copy(built, &partial)?;
    std::fs::rename(&partial, dest)
}
