#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration
# tests against the local-directory store and a real Ceph RADOS Gateway that
# this script starts (installing Ceph from Debian's packages if needed).
# aliBuild (PyPI `alibuild`) goes into .venv (the newest supported) and
# .venv-alibuild-1.17.43 (the oldest; tests/suite/alibuild.rs runs with both) and
# .venv-alibuild-1.17.20 (unsupported: the helper must refuse it).
#
# Usage: scripts/test.sh [CARGO TEST ARGUMENTS]
#   Arguments go to `cargo test --release --no-fail-fast`. Without a target
#   selection it runs every unit and integration test (--lib --bins --tests);
#   `--test suite` runs only the integration tests (tests/suite/, one
#   binary), a trailing name filters them by module or name
#   (`scripts/test.sh --test suite -- check::`, `-- upload::bad_input`).
# Environment: KEEP_RGW=1 leaves the gateway running afterwards (the next run
#   reuses it; `scripts/rgw.sh stop` ends it). RUST_TEST_THREADS (default 4,
#   twice the cores of the CI machines: most tests wait on leases, timeouts
#   and the gateway rather than the CPU) sets how many tests run at once.
#
# fmt, clippy and the tests run even when one of them failed; a setup failure
# (toolchain, aliBuild, gateway) stops the run. The last line is always
# `tests: N passed, N failed`; the exit status is 0 only when every step
# (fmt, clippy, setup, build, every test) succeeded.
set -uo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp "${TMPDIR:-/tmp}/alitx-test.XXXXXX")
failed=()
rgw_started=0

finish() {
  local status=$?
  # A setup step that stopped the script (set -e below) is a failure too.
  [ "$status" -ne 0 ] && [ ${#failed[@]} -eq 0 ] && failed+=("setup (exit $status)")
  if [ "$rgw_started" = 1 ] && [ "${KEEP_RGW:-0}" != 1 ]; then
    scripts/rgw.sh stop || failed+=("stopping the gateway")
  fi
  # One closing line for the whole suite, summed over every test binary.
  local counts
  counts=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed", p, f }' "$log")
  rm -f "$log"
  echo
  if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
  fi
  echo "tests: $counts"
  [ ${#failed[@]} -eq 0 ] || exit 1
  exit 0
}
trap finish EXIT

step() { printf '\n==> %s\n' "$*"; }

# Setup: stop at the first failure (the closing line still comes).
set -e
step "toolchain components"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
set +e

step "cargo fmt --check"
cargo fmt --check || failed+=("fmt")

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings || failed+=("clippy")

set -e
step "aliBuild from PyPI for the end-to-end tests: the newest (.venv) and oldest supported, 1.17.20 (refused); rsync for its local stores"
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync; }
alibuild_venv() { # DIR PIP-REQUIREMENT
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/python" -c 'import alibuild_helpers' 2>/dev/null || "$1/bin/python" -m pip install -q "$2"
}
alibuild_venv .venv 'alibuild>=1.17.43,<1.18'
alibuild_venv .venv-alibuild-1.17.43 'alibuild==1.17.43'
alibuild_venv .venv-alibuild-1.17.20 'alibuild==1.17.20'
export ALITX_ALIBUILD_PYTHON="$PWD/.venv/bin/python"
export ALITX_ALIBUILD_UNSUPPORTED_PYTHON="$PWD/.venv-alibuild-1.17.20/bin/python"

step "objdump (binutils) for tests/suite/wheel.rs, which builds and checks the wheel (ALITX_WHEEL=0 skips it)"
command -v objdump >/dev/null || { apt-get update -qq && apt-get install -y -qq binutils; }
wheel="${ALITX_WHEEL:-1}"

step "starting Ceph RGW (scripts/rgw.sh)"
rgw_started=1
scripts/rgw.sh start
eval "$(scripts/rgw.sh env)"
unset ALITX_SKIP_S3
set +e
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}

# Which targets: the caller's selection if any, else every unit and
# integration test.
targets=(--lib --bins --tests)
for arg in "$@"; do
  [ "$arg" = -- ] && break
  case $arg in
  --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --examples | --example | \
    --example=* | --benches | --bench | --bench=* | --all-targets | --doc) targets=() ;;
  esac
done

# The wheel's build (a second, zig-made build of alitx) gets a step of its
# own in the whole suite, so that its CPU does not slow the timing-sensitive
# race tests running beside it.
step "cargo test --release (local store and RGW at $AWS_ENDPOINT_URL)"
whole_suite_wheel=$wheel
[ ${#targets[@]} -gt 0 ] && whole_suite_wheel=0
ALITX_WHEEL=$whole_suite_wheel \
  cargo test --release --no-fail-fast ${targets[@]+"${targets[@]}"} "$@" 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("cargo test")

# The whole suite also runs tests/suite/alibuild.rs with the oldest supported aliBuild.
if [ ${#targets[@]} -gt 0 ]; then
  step "tests/suite/alibuild.rs with the oldest supported aliBuild (1.17.43)"
  ALITX_ALIBUILD_PYTHON="$PWD/.venv-alibuild-1.17.43/bin/python" \
    cargo test --release --no-fail-fast --test suite alibuild:: "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("aliBuild 1.17.43")
fi
if [ ${#targets[@]} -gt 0 ] && [ "$wheel" = 1 ]; then
  step "tests/suite/wheel.rs: build the manylinux 2.17 wheel, install it into an empty venv, build with it"
  ALITX_WHEEL=1 cargo test --release --no-fail-fast --test suite wheel:: "$@" 2>&1 | tee -a "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("wheel")
fi
