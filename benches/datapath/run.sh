#!/usr/bin/env bash
# Builds netward and the datapath bench (release) and runs the bench as root.
# Arguments go to the bench: --smoke, --two-node, --rounds N, --paths a,b,
# --workloads a,b, --perf DIR, --no-write, --out DIR, --name NAME (see --help).
#   sudo benches/datapath/run.sh               single-node paths (direct, netward, haproxy, copy, netward-scale)
#   sudo benches/datapath/run.sh --two-node    two-node paths (direct-2n, netward-2n-plaintext,
#                                              netward-2n-mtls, haproxy-2n-tls) -> results/<date>-mtls.{md,json}
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p netward-proxy -p netward-datapath-bench --bins
exec "$target/release/netward-datapath-bench" "$@"
