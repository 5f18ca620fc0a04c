#!/usr/bin/env bash
# Builds micro from this checkout and installs it for the current user:
#
#   the binary          → ${PREFIX:-$HOME/.local}/bin/micro  (stripped: its symbols and debug info go beside it
#                         in bin/.debug/micro.debug, where backtraces, gdb and perf find them)
#   bash completion     → ${XDG_DATA_HOME:-$HOME/.local/share}/bash-completion/completions/micro
#   zsh completion      → ${XDG_DATA_HOME:-$HOME/.local/share}/zsh/site-functions/_micro
#   fish completion     → ${XDG_CONFIG_HOME:-$HOME/.config}/fish/completions/micro.fish
#   man pages           → ${PREFIX:-$HOME/.local}/share/man/man1/micro.1, micro-call.1, … (`man micro-call`)
#
# Then it warms micro's build cache: it builds a throwaway `micro new` service, so that the service library's
# dependencies are compiled once for every service you will `micro run` (skip with --no-warm).
#
# Usage: ./install.sh [--no-warm]     (PREFIX=/usr/local ./install.sh to install elsewhere)
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

warm=1
for arg in "$@"; do
    case "$arg" in
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --no-warm) warm=0 ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"
[[ -f Cargo.toml && -f Cargo.lock ]] || die "run this script from a micro checkout ($root has no Cargo.toml/Cargo.lock)"

command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed (or not on PATH). Install Rust from https://rustup.rs, open a new shell, then run ./install.sh again."

prefix="${PREFIX:-$HOME/.local}"
bin_dir="$prefix/bin"
man_dir="$prefix/share/man/man1"
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
config_home="${XDG_CONFIG_HOME:-$HOME/.config}"

cargo_version="$(cargo --version 2>&1)" ||
    die "cargo is installed but does not work: ${cargo_version%%$'\n'*}"
say "building micro with $cargo_version (cargo build --profile dist --locked -p micro-cli; several minutes)"
cargo build --profile dist --locked -p micro-cli ||
    die "the build failed (see the errors above). If cargo says the lock file needs to be updated, your checkout is not clean: run 'git status'."

# Where cargo put the binary: honour CARGO_TARGET_DIR and build.target-dir.
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
target_dir="${target_dir:-${CARGO_TARGET_DIR:-$root/target}}"
built="$target_dir/dist/micro"
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

# The debug info and the symbols (for backtraces with names, files and lines) go into their own file; the installed
# binary keeps a link to it (.gnu_debuglink), which Rust's backtraces, gdb and perf follow to bin/.debug/.
split="$(mktemp -d)"
trap 'rm -rf "$split"' EXIT
if command -v objcopy >/dev/null 2>&1; then
    objcopy --only-keep-debug "$built" "$split/micro.debug" &&
        objcopy --strip-all --add-gnu-debuglink="$split/micro.debug" "$built" "$split/micro" ||
        die "objcopy could not split the debug info out of $built"
    install_file "$split/micro.debug" "$bin_dir/.debug/micro.debug" 0644
else
    say "warning: objcopy (binutils) is missing, so the binary keeps its debug info (about 5 times bigger)"
    cp "$built" "$split/micro"
fi
install_file "$split/micro" "$bin_dir/micro" 0755
size_mb=$(($(wc -c <"$bin_dir/micro") / 1000000))
say "installed $bin_dir/micro ($("$bin_dir/micro" --version), ${size_mb} MB)"

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

# Man pages, one per command, generated from the installed binary's own command tree (`micro man`, hidden).
"$bin_dir/micro" man --out "$split/man" 2>/dev/null || die "cannot generate the man pages"
pages=0
for page in "$split"/man/*.1; do
    install_file "$page" "$man_dir/$(basename "$page")" 0644
    pages=$((pages + 1))
done
say "installed $pages man pages: $man_dir (man micro, man micro-call, …)"

# Warm the build cache: `micro run` and `micro update` build services with the release profile in micro's build
# dir (~/.cache/micro/build, MICRO_BUILD_DIR), shared by every service. Building one throwaway service now
# compiles the library's dependencies once, so the first `micro run` of a new service takes seconds, not minutes.
if [[ $warm == 1 ]]; then
    say "warming the build cache: building a throwaway service (a few minutes, once; skip with --no-warm)"
    warmup="$split/warmup"
    "$bin_dir/micro" new "$warmup" --build >/dev/null ||
        die "the warm-up build failed (see above); micro is installed, and 'micro run' will build what it needs"
    say "the build cache is warm: new services build in seconds"
fi

case ":${PATH}:" in
    *":$bin_dir:"*) ;;
    *)
        echo >&2
        echo "install.sh: warning: $bin_dir is not on your PATH, so the shell will not find 'micro'." >&2
        echo "install.sh: add it, for example:  echo 'export PATH=\"$bin_dir:\$PATH\"' >> ~/.bashrc" >&2
        ;;
esac

cat <<EOF

Done. 'man micro' finds the pages when $bin_dir is on PATH (or add $prefix/share/man to MANPATH).
Completions load in new shells:
  bash: automatically, if the bash-completion package is installed (or: source $data_home/bash-completion/completions/micro)
  zsh:  add 'fpath=($data_home/zsh/site-functions \$fpath)' before 'compinit' in ~/.zshrc
  fish: automatically

Next: run 'micro server', then see README.md for a five-minute tour.
EOF
