#!/usr/bin/env bash
# A throwaway Ceph RADOS Gateway on 127.0.0.1 -- the S3 implementation CERN
# S3 runs -- for alitx's integration tests: one monitor, one in-memory OSD
# (memstore) and a gateway, from Debian's packages (installed if missing).
#
# Usage: scripts/rgw.sh start [DIR] [PORT]   start (or reuse) a gateway
#        scripts/rgw.sh stop  [DIR]          stop it
#        scripts/rgw.sh env   [DIR]          print `export` lines for the S3 client
# DIR defaults to .rgw in the repository, PORT to $RGW_PORT or 7480. The
# monitor listens on PORT+20000. MEMSTORE_BYTES sets the OSD's capacity
# (default 8 GiB): data lives in memory only.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-start}
dir=${2:-$repo/.rgw}
port=${3:-${RGW_PORT:-7480}}
access=${RGW_ACCESS_KEY:-testaccesskey}
secret=${RGW_SECRET_KEY:-testsecretkey}
trap 'echo "rgw.sh: failed at line $LINENO (exit $?); logs in $dir/log" >&2' ERR

daemons_stop() {
  local pids=()
  for f in "$dir"/run/*.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

install_packages() {
  command -v radosgw >/dev/null && command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null \
    && command -v curl >/dev/null && return 0
  echo "rgw.sh: installing Ceph from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq ceph-mon ceph-osd radosgw ceph-common curl >/dev/null
}

case "$cmd" in
  stop) daemons_stop; exit 0 ;;
  env)
    [ -f "$dir/port" ] && port=$(cat "$dir/port")
    cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ACCESS_KEY_ID=$access
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
ENV
    exit 0 ;;
  start)
    # A fresh cluster occasionally fails to form when another one is
    # starting on the machine at the same moment: try again from scratch.
    for attempt in 1 2 3; do
      "$0" start-once "$dir" "$port" && exit 0
      echo "rgw.sh: attempt $attempt failed; retrying" >&2
      sleep 2
    done
    exit 1 ;;
  start-once) ;;
  *) echo "usage: $0 start|stop|env [DIR] [PORT]" >&2; exit 2 ;;
esac

install_packages
# Reuse a gateway this script started in DIR if it still answers.
if [ -f "$dir/port" ] && [ "$(cat "$dir/port")" = "$port" ] && curl -fs -o /dev/null "http://127.0.0.1:$port/"; then
  echo "RGW up at http://127.0.0.1:$port (already running)"
  exit 0
fi
daemons_stop
rm -rf "$dir"
mkdir -p "$dir"/{mon,osd0,run,log,rgw}
mon_port=${MON_PORT:-$((port + 20000))}
conf=$dir/ceph.conf
fsid=$(cat /proc/sys/kernel/random/uuid)
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
run dir = $dir/run
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
admin socket = $dir/run/\$name.asok
ms bind ipv6 = false
ms bind msgr2 = false
public addr = 127.0.0.1
[mon.a]
mon data = $dir/mon
[osd.0]
osd data = $dir/osd0
osd objectstore = memstore
memstore device bytes = ${MEMSTORE_BYTES:-8589934592}
# RADOS objects, not S3 objects: RGW stripes S3 objects into 4 MiB pieces.
osd max object size = 134217728
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port
rgw data = $dir/rgw
rgw dns name = localhost
# Reclaim deleted objects' space at once, not after the default two hours:
# the OSD lives in memory, and benchmarks delete what they wrote.
rgw gc obj min wait = 0
rgw gc processor period = 5
CONF

wait_for() { # tries, command...
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}
fail() { echo "rgw.sh: $1; logs in $dir/log" >&2; exit 1; }

ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --addv a "[v1:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" 2>>"$dir/log/setup.log"
ceph-mon -c "$conf" -i a
wait_for 100 ceph -c "$conf" mon stat || fail "the monitor did not start"
ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$(cat /proc/sys/kernel/random/uuid)" 2>>"$dir/log/setup.log"
ceph-osd -c "$conf" -i 0 2>>"$dir/log/setup.log"
osd_up() { ceph -c "$conf" osd stat 2>/dev/null | grep -q "1 up"; }
wait_for 150 osd_up || fail "the OSD did not come up"
radosgw -c "$conf" -n client.rgw.a
wait_for 150 curl -fs -o /dev/null "http://127.0.0.1:$port/" || fail "the gateway did not answer on port $port"
radosgw-admin -c "$conf" user create --uid=test --display-name=test \
  --access-key="$access" --secret="$secret" >/dev/null 2>>"$dir/log/setup.log"
echo "$port" >"$dir/port"
echo "RGW up at http://127.0.0.1:$port"
