#!/usr/bin/env bash
# The main job: builds netward and runs `netward lab` (default: the three-tier zero-trust
# tutorial across two nodes). Run as root on Debian/Ubuntu: sudo ./scripts/lab.sh [ARGS]
# Any arguments go to `netward lab` (e.g. rogue-pod --keep, --step, --reject).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
echo "netward: building (release) ..." >&2
cargo build --release -q -p netward-proxy --bin netward
exec ./target/release/netward lab "$@"
