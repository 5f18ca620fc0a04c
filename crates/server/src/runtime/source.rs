//! Sources: uploaded archives (`Source.Upload`), git repositories, and what is inside them (the Rust package to
//! build).
//!
//! An upload is a gzipped tar streamed by the CLI; it is kept in the data dir until a create or update unpacks it
//! into a fresh tree. A git source `host/owner/repo[/folder][@ref]` is cloned with `git` (shallow, over HTTPS).
//! A tree is never reused by another deployment: each one gets its own directory, deleted when it is replaced.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The largest upload accepted.
pub const MAX_UPLOAD: u64 = 512 * 1024 * 1024;
/// How long an upload that no create or update used is kept.
pub const UPLOAD_TTL: Duration = Duration::from_secs(3600);
/// How long a git clone may take.
pub const CLONE_TIMEOUT: Duration = Duration::from_secs(300);

/// The prefix of upload ids.
pub const UPLOAD_SCHEME: &str = "source://";

/// An archive received by `Source.Upload`.
#[derive(Clone, Debug)]
pub struct Upload {
    /// Where it is stored.
    pub path: PathBuf,
    /// Hex SHA-256 of the archive.
    pub sha: String,
    /// The namespace of the uploader.
    pub namespace: String,
    received: Instant,
}

/// The uploads not yet used.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    map: Mutex<HashMap<String, Upload>>,
}

impl Uploads {
    /// Uploads stored in `dir` (emptied: uploads do not outlive the server).
    pub fn new(dir: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&dir);
        Self { dir, map: Mutex::new(HashMap::new()) }
    }

    /// Where a new upload is written.
    pub fn new_path(&self) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        Ok(self.dir.join(format!("{}.tar.gz", uuid::Uuid::new_v4())))
    }

    /// Records a received archive under a new id `source://<name>:<version>/<uuid>`.
    pub fn add(&self, name: &str, version: &str, namespace: &str, path: PathBuf, sha: String) -> String {
        let id = format!("{UPLOAD_SCHEME}{name}:{version}/{}", uuid::Uuid::new_v4());
        let upload = Upload { path, sha, namespace: namespace.to_string(), received: Instant::now() };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Forget (and delete) uploads nobody used.
        map.retain(|_, u| {
            let keep = u.received.elapsed() < UPLOAD_TTL;
            if !keep {
                let _ = std::fs::remove_file(&u.path);
            }
            keep
        });
        map.insert(id.clone(), upload);
        id
    }

    /// Takes an upload of `namespace` by id.
    pub fn take(&self, id: &str, namespace: &str) -> Option<Upload> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(u) if u.namespace == namespace => map.remove(id),
            _ => None,
        }
    }
}

/// An error about what an archive holds.
fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Unpacks a gzipped tar into `dest` (which must not exist), refusing what could reach or grant more than the tree:
/// - entries with a `..` component or an absolute path are refused;
/// - symlinks must be relative and stay inside the tree (see [`check_symlink`]), and hard links must name a path
///   inside the archive, without `..`;
/// - modes are kept without the setuid, setgid and sticky bits; owners are not kept;
/// - devices, FIFOs and other special entries are skipped.
pub fn unpack(archive: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let root = dest.canonicalize()?;
    let file = std::fs::File::open(archive)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_mtime(true);
    tar.set_preserve_permissions(false);
    tar.set_preserve_ownerships(false);
    tar.set_mask(0o7000);
    tar.set_overwrite(true);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            return Err(invalid(format!("the archive has an entry outside its root: {}", path.display())));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| invalid(format!("the link {} has no target", path.display())))?
                    .into_owned();
                if kind == tar::EntryType::Symlink {
                    check_symlink(&root, &path, &target)?;
                } else if target.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
                    return Err(invalid(format!(
                        "the archive has a hard link to a path outside its root: {} -> {}",
                        path.display(),
                        target.display()
                    )));
                }
            }
            _ => continue,
        }
        entry.unpack_in(&root)?;
    }
    Ok(())
}

/// Checks that a symlink at `path` (relative to the tree `root`, canonical) to `target` points inside the tree: the
/// target must be relative, made of `..` components first (no more than the depth of the link's directory, as it
/// really is on disk), then names only. A `..` after a name is refused: the name may be a symlink, and `..` would
/// then climb from wherever it points.
pub fn check_symlink(root: &Path, path: &Path, target: &Path) -> std::io::Result<()> {
    let refuse = || {
        invalid(format!(
            "the archive has a symlink that points outside its root: {} -> {} (replace it with a copy)",
            path.display(),
            target.display()
        ))
    };
    // The directory of the link as it really is on disk: its deepest existing ancestor, resolved, then the parts
    // that do not exist yet (unpacking creates them as plain directories).
    let parent = root.join(path.parent().unwrap_or(Path::new("")));
    let mut existing = parent.as_path();
    let mut missing = Vec::new();
    while !existing.exists() {
        missing.push(existing.file_name().ok_or_else(refuse)?.to_os_string());
        existing = existing.parent().ok_or_else(refuse)?;
    }
    let real = existing.canonicalize()?;
    let below = real.strip_prefix(root).map_err(|_| refuse())?;
    let depth = below.components().count() + missing.len();
    let mut ups = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if !named => ups += 1,
            Component::Normal(_) => named = true,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(refuse()),
        }
    }
    if ups > depth {
        return Err(refuse());
    }
    Ok(())
}

/// A git source: `host/owner/repo[/folder][@ref]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    /// `host/owner/repo`.
    pub repo: String,
    /// The folder inside the repository (may be empty).
    pub folder: String,
    /// The branch, tag or commit (`latest`: the default branch).
    pub reference: String,
}

impl GitSource {
    /// Parses a git source; `None` when it does not look like one (the host must have a dot, and there must be an
    /// owner and a repository).
    pub fn parse(source: &str) -> Option<GitSource> {
        let source = source.trim().trim_start_matches("https://").trim_start_matches("http://");
        let (path, reference) = match source.rsplit_once('@') {
            Some((p, r)) if !r.is_empty() && !r.contains('/') => (p, r.to_string()),
            _ => (source, "latest".to_string()),
        };
        let path = path.trim_end_matches('/').trim_end_matches(".git");
        let parts: Vec<&str> = path.split('/').collect();
        let host = parts[0];
        let is_host = host.contains('.') && host.split('.').all(|label| !label.is_empty());
        if parts.len() < 3 || !is_host || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
            return None;
        }
        let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !parts.iter().all(|p| ok(p)) || !reference.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            return None;
        }
        Some(GitSource {
            repo: parts[..3].join("/"),
            folder: parts[3..].join("/"),
            reference: reference.trim_end_matches(".git").to_string(),
        })
    }

    /// The URL to clone.
    pub fn url(&self) -> String {
        format!("https://{}.git", self.repo)
    }

    /// The name of the service by default: the folder's last part, else the repository's.
    pub fn name(&self) -> String {
        let base = if self.folder.is_empty() { &self.repo } else { &self.folder };
        base.rsplit('/').next().unwrap_or_default().to_string()
    }
}

async fn git(args: &[&str], dir: Option<&Path>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args).env("GIT_TERMINAL_PROMPT", "0").stdin(std::process::Stdio::null()).kill_on_drop(true);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().await.map_err(|e| format!("cannot run git (is it installed?): {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("git failed")
        .trim_start_matches("fatal: ")
        .trim_start_matches("error: ")
        .to_string();
    Err(reason)
}

/// Clones `source` into `dest` (shallow) and returns the commit it checked out.
pub async fn clone(source: &GitSource, dest: &Path) -> Result<String, String> {
    let url = source.url();
    let dest_text = dest.to_string_lossy().to_string();
    let fail = |e: String| format!("cannot clone {url}: {e}");
    let work = async {
        let is_commit = source.reference.len() >= 7 && source.reference.chars().all(|c| c.is_ascii_hexdigit());
        if source.reference == "latest" {
            git(&["clone", "--quiet", "--depth", "1", &url, &dest_text], None).await.map_err(fail)?;
        } else if is_commit {
            git(&["init", "--quiet", &dest_text], None).await.map_err(fail)?;
            git(&["remote", "add", "origin", &url], Some(dest)).await.map_err(fail)?;
            git(&["fetch", "--quiet", "--depth", "1", "origin", &source.reference], Some(dest)).await.map_err(fail)?;
            git(&["checkout", "--quiet", "FETCH_HEAD"], Some(dest)).await.map_err(fail)?;
        } else {
            git(&["clone", "--quiet", "--depth", "1", "--branch", &source.reference, &url, &dest_text], None)
                .await
                .map_err(fail)?;
        }
        git(&["rev-parse", "HEAD"], Some(dest)).await.map_err(fail)
    };
    match tokio::time::timeout(CLONE_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("cannot clone {url}: it took longer than {}s", CLONE_TIMEOUT.as_secs())),
    }
}

/// The Rust package in a folder of a tree, as `cargo metadata` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The workspace root (where to run cargo).
    pub workspace_root: PathBuf,
    /// The package's name.
    pub name: String,
    /// The binary to build and run.
    pub bin: String,
    /// An estimate of how many units a build compiles (for the progress bar).
    pub units: u64,
}

/// Finds the package whose manifest is `dir/Cargo.toml`, with `cargo metadata`.
pub async fn inspect(dir: &Path) -> Result<Package, String> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(format!(
            "there is no Cargo.toml in {}: run a Rust package, or pass --command to run anything else",
            dir.display()
        ));
    }
    // Dependencies for other platforms are in the graph but never built: leave them out of the count.
    let host = host_triple().await;
    let mut cmd = tokio::process::Command::new("cargo");
    cmd.args(["metadata", "--format-version", "1", "--color", "never", "--manifest-path"]).arg(&manifest);
    if let Some(host) = &host {
        cmd.args(["--filter-platform", host]);
    }
    let out = cmd
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run cargo (is a Rust toolchain installed on the server?): {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("cargo metadata failed: {}", stderr.trim()));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cannot read cargo metadata: {e}"))?;
    package_of(&meta, &manifest)
}

/// The host's target triple (`rustc -vV`), if rustc says.
async fn host_triple() -> Option<String> {
    let out = tokio::process::Command::new("rustc")
        .arg("-vV")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("host: ")).map(|h| h.trim().to_string())
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The package of `manifest` in `cargo metadata` output.
pub fn package_of(meta: &serde_json::Value, manifest: &Path) -> Result<Package, String> {
    let root = meta["workspace_root"].as_str().ok_or("cargo metadata has no workspace_root")?;
    let packages = meta["packages"].as_array().ok_or("cargo metadata has no packages")?;
    let package = packages
        .iter()
        .find(|p| p["manifest_path"].as_str().is_some_and(|m| same_file(Path::new(m), manifest)))
        .ok_or_else(|| format!("{} is not a package of its workspace", manifest.display()))?;
    let name = package["name"].as_str().unwrap_or_default().to_string();
    let bins: Vec<&str> = package["targets"]
        .as_array()
        .map(|targets| {
            targets
                .iter()
                .filter(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
                .filter_map(|t| t["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let bin = match bins.as_slice() {
        [] => return Err(format!("package {name} has no binary to run (add src/main.rs)")),
        [one] => one.to_string(),
        many => match package["default_run"].as_str() {
            Some(d) if many.contains(&d) => d.to_string(),
            _ if many.contains(&name.as_str()) => name.clone(),
            _ => many[0].to_string(),
        },
    };
    let has_lib = package["targets"]
        .as_array()
        .is_some_and(|ts| ts.iter().any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib"))));
    let units = count_units(meta, package["id"].as_str().unwrap_or_default()) + u64::from(has_lib);
    Ok(Package { workspace_root: PathBuf::from(root), name, bin, units })
}

/// The packages a build of `root` compiles (itself and its normal and build dependencies, transitively).
fn count_units(meta: &serde_json::Value, root: &str) -> u64 {
    let Some(nodes) = meta["resolve"]["nodes"].as_array() else { return 1 };
    let deps: HashMap<&str, Vec<&str>> = nodes
        .iter()
        .filter_map(|n| {
            let id = n["id"].as_str()?;
            let deps = n["deps"]
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .filter(|d| {
                            d["dep_kinds"]
                                .as_array()
                                .is_none_or(|ks| ks.iter().any(|k| k["kind"].as_str() != Some("dev")))
                        })
                        .filter_map(|d| d["pkg"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            Some((id, deps))
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if seen.insert(id)
            && let Some(next) = deps.get(id)
        {
            stack.extend(next.iter().copied());
        }
    }
    seen.len().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources() {
        let g = GitSource::parse("github.com/micro/services/helloworld@v1.2").unwrap();
        assert_eq!(
            g,
            GitSource {
                repo: "github.com/micro/services".into(),
                folder: "helloworld".into(),
                reference: "v1.2".into()
            }
        );
        assert_eq!(g.url(), "https://github.com/micro/services.git");
        assert_eq!(g.name(), "helloworld");
        let g = GitSource::parse("https://gitlab.com/a/b").unwrap();
        assert_eq!((g.folder.as_str(), g.reference.as_str(), g.name()), ("", "latest", "b".to_string()));
        for bad in
            ["helloworld", "./x", "./a/b/c", "../a/b", "a/b/c", "github.com/a", "github.com/a/../b", "github.com/a/b c"]
        {
            assert_eq!(GitSource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn packages_from_metadata() {
        let meta = serde_json::json!({
            "workspace_root": "/w",
            "packages": [
                {"id": "a 0.1", "name": "a", "manifest_path": "/w/a/Cargo.toml",
                 "targets": [{"name": "a", "kind": ["lib"]}, {"name": "a", "kind": ["bin"]}, {"name": "tool", "kind": ["bin"]}]},
                {"id": "b 0.1", "name": "b", "manifest_path": "/w/b/Cargo.toml", "targets": [{"name": "b", "kind": ["lib"]}]}
            ],
            "resolve": {"nodes": [
                {"id": "a 0.1", "deps": [{"pkg": "c 1", "dep_kinds": [{"kind": null}]}, {"pkg": "d 1", "dep_kinds": [{"kind": "dev"}]}]},
                {"id": "c 1", "deps": [{"pkg": "e 1", "dep_kinds": [{"kind": "build"}]}]},
                {"id": "d 1", "deps": []},
                {"id": "e 1", "deps": []}
            ]}
        });
        let p = package_of(&meta, Path::new("/w/a/Cargo.toml")).unwrap();
        assert_eq!(p, Package { workspace_root: "/w".into(), name: "a".into(), bin: "a".into(), units: 4 });
        let e = package_of(&meta, Path::new("/w/b/Cargo.toml")).unwrap_err();
        assert!(e.contains("no binary"), "{e}");
        assert!(package_of(&meta, Path::new("/w/z/Cargo.toml")).is_err());
    }

    /// Writes a gzipped tar made by `add` into `dir/a.tar.gz`; returns its path.
    fn archive(dir: &Path, add: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>)) -> PathBuf {
        let path = dir.join("a.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), Default::default());
        let mut b = tar::Builder::new(gz);
        add(&mut b);
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    /// Adds a 2-byte file with `mode`.
    fn file(b: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>, path: &str, mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(mode);
        b.append_data(&mut h, path, &b"hi"[..]).unwrap();
    }

    /// Adds a link (symbolic or hard) from `path` to `to`.
    fn link(b: &mut tar::Builder<flate2::write::GzEncoder<std::fs::File>>, kind: tar::EntryType, path: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, to).unwrap();
    }

    #[test]
    fn unpack_refuses_escaping_entries() {
        let dir = tempfile::tempdir().unwrap();
        let good = archive(dir.path(), |b| file(b, "ok/file.txt", 0o644));
        unpack(&good, &dir.path().join("out")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("out/ok/file.txt")).unwrap(), "hi");

        // `..` in an entry's name (written into the header by hand: the builder refuses it).
        let bad = archive(dir.path(), |b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            let name = b"../escaped.txt";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, &b"hi"[..]).unwrap();
        });
        let e = unpack(&bad, &dir.path().join("out2/tree")).unwrap_err();
        assert!(e.to_string().contains("outside its root"), "{e}");
        assert!(!dir.path().join("out2/escaped.txt").exists());
    }

    #[test]
    fn unpacked_files_lose_setuid_setgid_and_sticky_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), |b| {
            file(b, "suid", 0o4755);
            file(b, "sgid", 0o2750);
            file(b, "plain", 0o640);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o1777);
            b.append_data(&mut h, "sticky", std::io::empty()).unwrap();
        });
        let out = dir.path().join("out");
        unpack(&a, &out).unwrap();
        let mode = |name: &str| std::fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("sgid"), 0o750);
        assert_eq!(mode("plain"), 0o640);
        assert_eq!(mode("sticky"), 0o777);
    }

    #[test]
    fn unpack_refuses_symlinks_out_of_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let attempts: [(&str, &[(&str, &str)]); 5] = [
            ("absolute", &[("etc", "/etc")]),
            ("climbing", &[("sub/up", "../../..")]),
            ("through a name", &[("here", "."), ("sub/x", "../here/..")]),
            // `p` is the root itself: `p/p/link` really sits at the root, so one `..` already leaves it.
            ("through a symlinked dir", &[("p", "."), ("p/p/link", "../x")]),
            ("a hard link", &[]),
        ];
        for (n, (what, links)) in attempts.iter().enumerate() {
            let out = dir.path().join(format!("out{n}"));
            let a = archive(dir.path(), |b| {
                file(b, "file.txt", 0o644);
                for (path, to) in *links {
                    link(b, tar::EntryType::Symlink, path, to);
                }
                if links.is_empty() {
                    link(b, tar::EntryType::Link, "hard", "/etc/passwd");
                }
            });
            let e = unpack(&a, &out).expect_err(what);
            assert!(e.to_string().contains("outside its root"), "{what}: {e}");
            assert!(!out.join("etc").exists() && !out.join("hard").exists(), "{what}");
        }

        // Links that stay inside are kept.
        let out = dir.path().join("inside");
        let a = archive(dir.path(), |b| {
            file(b, "a/file.txt", 0o644);
            link(b, tar::EntryType::Symlink, "a/b/up", "../file.txt");
            link(b, tar::EntryType::Symlink, "top", "a/file.txt");
            link(b, tar::EntryType::Link, "copy", "a/file.txt");
        });
        unpack(&a, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("top")).unwrap(), "hi");
        assert_eq!(std::fs::read_to_string(out.join("copy")).unwrap(), "hi");
        assert_eq!(std::fs::read_link(out.join("a/b/up")).unwrap(), Path::new("../file.txt"));
    }
}
