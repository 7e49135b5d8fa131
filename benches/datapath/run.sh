#!/usr/bin/env bash
# Builds netward and the datapath bench (release) and runs the bench as root.
# Arguments go to the bench: --smoke, --rounds N, --paths a,b, --workloads a,b,
# --perf DIR, --no-write, --out DIR (see --help).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p netward-proxy -p netward-datapath-bench --bins
exec "$target/release/netward-datapath-bench" "$@"
