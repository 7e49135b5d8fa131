#!/usr/bin/env bash
# The test command: formatting, lints, and every test (root tests build their own
# network namespaces). Run as root on Debian/Ubuntu: sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --release
echo "== engine benchmark (smoke: each bench once)"
cargo bench -p netward-controller --bench engine -- --test
echo "== deploy/ manifests against the Kubernetes schemas"
./scripts/validate-deploy.sh
echo "== supply chain: cargo-deny (licenses, bans, sources)"
./scripts/deny.sh
echo "== datapath benchmark (smoke: every path moves the bytes correctly; no speed asserted)"
cargo build --release -q -p netward-proxy -p netward-datapath-bench --bins
./target/release/netward-datapath-bench --smoke
