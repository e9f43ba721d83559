#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration
# tests against the local-directory store and a real Ceph RADOS Gateway that
# this script starts (installing Ceph from Debian's packages if needed).
# aliBuild (PyPI `alibuild`) goes into .venv for tests/alibuild.rs.
# Extra arguments go to `cargo test` (e.g. a test name filter).
# KEEP_RGW=1 leaves the gateway running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "aliBuild for the end-to-end tests (.venv, from PyPI; rsync for its local stores)"
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import alibuild_helpers' 2>/dev/null ||
  .venv/bin/python -m pip install -q 'alibuild>=1.17.48,<1.18'
export ALITX_ALIBUILD_PYTHON="$PWD/.venv/bin/python"

step "starting Ceph RGW (scripts/rgw.sh)"
scripts/rgw.sh start
if [ "${KEEP_RGW:-0}" != 1 ]; then
  trap 'scripts/rgw.sh stop' EXIT
fi
eval "$(scripts/rgw.sh env)"
unset ALITX_SKIP_S3

step "cargo test --release (local store and RGW at $AWS_ENDPOINT_URL)"
log=$(mktemp)
cargo test --release --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
