#!/usr/bin/env bash
# Installs what netward's lab, tests and benchmarks need on Debian/Ubuntu (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
for pair in ip:iproute2 nft:nftables iptables:iptables python3:python3 curl:curl wget:wget nc:netcat-openbsd; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# kubernetes-validate (deploy/ checks) runs in a venv.
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  echo "netward: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "netward: cargo is missing: install the Rust toolchain pinned in rust-toolchain.toml (rustup) and retry" >&2
  exit 1
fi
