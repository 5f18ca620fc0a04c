#!/usr/bin/env bash
# Builds micro from this checkout and installs it for the current user:
#
#   the binary          → ${PREFIX:-$HOME/.local}/bin/micro
#   bash completion     → ${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions/micro
#   zsh completion      → ${XDG_DATA_HOME:-$HOME/.local/share}/zsh/site-functions/_micro
#   fish completion     → ${XDG_CONFIG_HOME:-$HOME/.config}/fish/completions/micro.fish
#
# Usage: ./install.sh            (PREFIX=/usr/local ./install.sh to install elsewhere)
#
# It is safe to run again: every file is replaced atomically, nothing else is touched.
set -euo pipefail

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
say() {
    echo "install.sh: $*"
}

case "${1:-}" in
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "unknown argument '$1' (try --help)" ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
[[ -f Cargo.toml && -f Cargo.lock ]] || die "run this script from a micro checkout ($root has no Cargo.toml/Cargo.lock)"

command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed (or not on PATH). Install Rust from https://rustup.rs, open a new shell, then run ./install.sh again."

prefix="${PREFIX:-$HOME/.local}"
bin_dir="$prefix/bin"
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
config_home="${XDG_CONFIG_HOME:-$HOME/.config}"

cargo_version="$(cargo --version 2>&1)" ||
    die "cargo is installed but does not work: ${cargo_version%%$'\n'*}"
say "building micro with $cargo_version (cargo build --release --locked -p micro)"
cargo build --release --locked -p micro ||
    die "the build failed (see the errors above). If cargo says the lock file needs to be updated, your checkout is not clean: run 'git status'."

# Where cargo put the binary: honour CARGO_TARGET_DIR and build.target-dir.
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-${CARGO_TARGET_DIR:-$root/target}}"
built="$target_dir/release/micro"
[[ -x "$built" ]] || die "the build succeeded but $built does not exist"

# install_file SRC DEST MODE: copies SRC over DEST through a temporary file and a rename, so a running micro
# (or a shell reading a completion script) never sees a half-written file.
install_file() {
    local src="$1" dest="$2" mode="$3" dir
    dir="$(dirname "$dest")"
    mkdir -p "$dir" || die "cannot create $dir"
    local tmp="$dest.tmp.$$"
    if ! cp "$src" "$tmp" || ! chmod "$mode" "$tmp" || ! mv -f "$tmp" "$dest"; then
        rm -f "$tmp"
        die "cannot write $dest"
    fi
}

install_file "$built" "$bin_dir/micro" 0755
say "installed $bin_dir/micro ($("$bin_dir/micro" --version))"

# Completion scripts: the checked-in ones, or freshly generated if a file is missing.
install_completion() {
    local shell="$1" file="$2" dest="$3" src="$root/completions/$2"
    if [[ ! -f "$src" ]]; then
        src="$(mktemp)"
        "$bin_dir/micro" completion "$shell" >"$src" || die "cannot generate the $shell completion script"
        install_file "$src" "$dest" 0644
        rm -f "$src"
    else
        install_file "$src" "$dest" 0644
    fi
    say "installed $shell completion: $dest"
}

install_completion bash micro.bash "$data_home/bash-completion/completions/micro"
install_completion zsh _micro "$data_home/zsh/site-functions/_micro"
install_completion fish micro.fish "$config_home/fish/completions/micro.fish"

case ":${PATH}:" in
    *":$bin_dir:"*) ;;
    *)
        echo >&2
        echo "install.sh: warning: $bin_dir is not on your PATH, so the shell will not find 'micro'." >&2
        echo "install.sh: add it, for example:  echo 'export PATH=\"$bin_dir:\$PATH\"' >> ~/.bashrc" >&2
        ;;
esac

cat <<EOF

Done. Completions load in new shells:
  bash: automatically, if the bash-completion package is installed (or: source $data_home/bash-completion/completions/micro)
  zsh:  add 'fpath=($data_home/zsh/site-functions \$fpath)' before 'compinit' in ~/.zshrc
  fish: automatically

Next: run 'micro server', then see README.md for a five-minute tour.
EOF
