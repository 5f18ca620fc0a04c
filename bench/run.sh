#!/usr/bin/env bash
# Builds the release binaries (micro, helloworld, micro-bench, hello-client) and runs the benchmark.
# Arguments are passed to micro-bench; `bench/run.sh --help` lists them. See docs/benchmarks.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v cargo >/dev/null 2>&1; then
    echo "bench/run.sh: cargo is not installed; install Rust from https://rustup.rs" >&2
    exit 1
fi

echo "bench/run.sh: building release binaries (cargo build --release --workspace)…" >&2
cargo build --release --workspace

# Everything is built: this only runs target/release/micro-bench.
exec cargo run --release --quiet -p micro-bench -- "$@"
