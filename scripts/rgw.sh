#!/usr/bin/env bash
# A throwaway Ceph RADOS Gateway on 127.0.0.1 -- the S3 implementation CERN
# S3 runs -- for alitx's integration tests: one monitor, one in-memory OSD
# (memstore) and a gateway, from Debian's packages (installed if missing).
#
# Usage: scripts/rgw.sh start [DIR] [PORT]   start (or reuse) a gateway
#        scripts/rgw.sh stop  [DIR]          stop it
#        scripts/rgw.sh env   [DIR]          print `export` lines for the S3 client
# DIR defaults to .rgw in the repository, PORT to $RGW_PORT or 7480. The
# gateway also serves HTTPS on PORT+10000 ($TLS_PORT) with a certificate for
# 127.0.0.1 and localhost signed by a throwaway CA made at start (DIR/tls/ca.pem);
# `env` exports ALITX_TEST_HTTPS_ENDPOINT and ALITX_TEST_CA_BUNDLE for it. The
# monitor listens on PORT+20000 ($MON_PORT). Keys: $RGW_ACCESS_KEY and
# $RGW_SECRET_KEY (testaccesskey/testsecretkey). MEMSTORE_BYTES sets the
# OSD's capacity (default 8 GiB): data lives in memory only.
# OSD_OBJECTSTORE=bluestore keeps the data in a sparse file in DIR instead
# (BLUESTORE_BYTES, default 60 GiB), for stores too large for memory: the
# in-memory OSD holds ~18 KB of RAM per S3 object. RGW_TCP_NODELAY=1 sets
# the frontend's tcp_nodelay (without it, an answer with a body waits ~44 ms
# for the client's delayed ACK: docs/benchmarks.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-start}
dir=$(realpath -m "${2:-$repo/.rgw}")
port=${3:-${RGW_PORT:-7480}}
tls_port=${TLS_PORT:-$((port + 10000))}
ca=$dir/tls/ca.pem
access=${RGW_ACCESS_KEY:-testaccesskey}
secret=${RGW_SECRET_KEY:-testsecretkey}
trap 'echo "rgw.sh: failed at line $LINENO (exit $?); logs in $dir/log" >&2' ERR

# Pids from DIR's pid files whose process is still one of DIR's daemons (a
# stale pid file may name a pid the system has since given to another process).
our_pids() {
  local f pid
  for f in "$dir"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $dir/ceph.conf " && echo "$pid"
  done
  return 0
}

daemons_stop() {
  local pids
  pids=$(our_pids)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 100); do
      # shellcheck disable=SC2086
      kill -0 $pids 2>/dev/null || break # true while any of them lives
      sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
  fi
  rm -f "$dir"/run/*.pid "$dir/port" "$dir/tls-port"
}

install_packages() {
  local missing=0 c
  for c in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl openssl; do
    command -v "$c" >/dev/null || missing=1
  done
  [ $missing = 0 ] && return 0
  echo "rgw.sh: installing Ceph from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq ceph-mon ceph-osd radosgw ceph-common curl openssl >/dev/null
}

# A signed ListBuckets with our keys succeeds: an RGW we can use answers.
# With an argument: the same over HTTPS, trusting only our CA.
s3_answers() {
  local url=http://127.0.0.1:$port/ tls=()
  [ "${1:-}" = https ] && url=https://127.0.0.1:$tls_port/ tls=(--cacert "$ca")
  curl -fs -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    ${tls[@]+"${tls[@]}"} "$url"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
    # A gateway started before it served HTTPS has no tls-port file.
    if [ -f "$dir/tls-port" ]; then
      echo "export ALITX_TEST_HTTPS_ENDPOINT=https://127.0.0.1:$(cat "$dir/tls-port")"
      echo "export ALITX_TEST_CA_BUNDLE=$ca"
    fi
    exit 0 ;;
  start)
    install_packages
    if s3_answers; then
      echo "$port" >"$dir/port" 2>/dev/null || true
      [ -f "$dir/tls-port" ] || echo "rgw.sh: this gateway serves no HTTPS (started by an older rgw.sh): stop it and start it again for the HTTPS tests" >&2
      echo "RGW up at http://127.0.0.1:$port (already running)"
      exit 0
    fi
    # A fresh cluster occasionally fails to form when another one is
    # starting on the machine at the same moment: try again from scratch.
    t0=$SECONDS
    for attempt in 1 2 3; do
      if "$0" start-once "$dir" "$port"; then
        echo "RGW up at http://127.0.0.1:$port and https://127.0.0.1:$tls_port (started in $((SECONDS - t0)) s)"
        exit 0
      fi
      [ -f "$dir/port-busy" ] && exit 1 # retrying cannot help
      [ $attempt = 3 ] && break
      echo "rgw.sh: attempt $attempt failed; retrying" >&2
      sleep 2
    done
    daemons_stop
    echo "rgw.sh: could not start RGW on port $port; logs in $dir/log" >&2
    exit 1 ;;
  start-once) ;;
  *) echo "usage: $0 start|stop|env [DIR] [PORT]" >&2; exit 2 ;;
esac

fail() { echo "rgw.sh: $1; logs in $dir/log" >&2; exit 1; }
wait_for() { # tries (0.2 s apart), command...
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

objectstore_conf() {
  case "${OSD_OBJECTSTORE:-memstore}" in
    memstore) printf '%s\n' "osd objectstore = memstore" \
      "memstore device bytes = ${MEMSTORE_BYTES:-8589934592}" ;;
    # Small S3 objects take one 4 KiB allocation each, not 64 KiB.
    bluestore) printf '%s\n' "osd objectstore = bluestore" \
      "bluestore block path = $dir/osd0.block" "bluestore block create = true" \
      "bluestore block size = ${BLUESTORE_BYTES:-64424509440}" \
      "bluestore min alloc size = 4096" "osd memory target = 2147483648" ;;
    *) fail "OSD_OBJECTSTORE must be memstore or bluestore" ;;
  esac
}

osd_conf=$(objectstore_conf)
daemons_stop
rm -rf "$dir"
mkdir -p "$dir"/{mon,osd0,run,log,rgw,tls}
mon_port=${MON_PORT:-$((port + 20000))}
for p in "$port" "$tls_port" "$mon_port"; do
  if listening "$p"; then
    touch "$dir/port-busy"
    fail "port $p on 127.0.0.1 is taken by another program (not an RGW with our keys); choose another PORT"
  fi
done
# A throwaway CA, and a server certificate it signs for the addresses the
# tests use (clients check the subject alternative names, not the CN).
tls_files() {
  local t=$dir/tls
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 30 \
    -subj "/CN=alitx test CA" -keyout "$t/ca.key" -out "$ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -subj /CN=localhost -keyout "$t/server.key" -out "$t/server.csr"
  printf '%s\n' subjectAltName=DNS:localhost,IP:127.0.0.1 basicConstraints=CA:FALSE \
    keyUsage=critical,digitalSignature extendedKeyUsage=serverAuth >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$ca" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -extfile "$t/server.ext" -out "$t/server.pem"
}
tls_files 2>>"$dir/log/setup.log" || fail "could not make the test CA with openssl"
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
# Commit each map change at once, not batched for 1 s: RGW's first start
# makes ~15 pool changes one after another (13 s -> a few).
paxos propose interval = 0.05
[osd.0]
osd data = $dir/osd0
$osd_conf
# Limits on RADOS objects, not S3 objects: RGW stripes S3 objects and each
# multipart part into 4 MiB RADOS objects, written 4 MiB at a time.
osd max object size = 134217728
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$dir/tls/server.pem ssl_private_key=$dir/tls/server.key${RGW_TCP_NODELAY:+ tcp_nodelay=$RGW_TCP_NODELAY}
rgw data = $dir/rgw
rgw dns name = localhost
# S3 limits, as on AWS (these are Ceph's defaults, spelled out): a single
# PUT (and so one part) up to 5 GiB, parts of at least 5 MiB except the
# last, 10000 parts, so multipart objects of several GiB are fine (memstore
# capacity permitting: the OSD refuses writes once 95% full).
rgw max put size = 5368709120
rgw multipart min part size = 5242880
rgw multipart part upload limit = 10000
# Reclaim deleted objects' space at once, not after the default two hours:
# the OSD lives in memory, and benchmarks delete what they wrote.
rgw gc obj min wait = 0
rgw gc processor period = 5
CONF

ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --addv a "[v1:127.0.0.1:$mon_port]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" 2>>"$dir/log/setup.log"
ceph-mon -c "$conf" -i a
wait_for 100 ceph -c "$conf" mon stat || fail "the monitor did not start"
# The OSD registers itself with the monitor on first boot.
ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$(cat /proc/sys/kernel/random/uuid)" 2>>"$dir/log/setup.log"
# Pacific's OSD sometimes sends its first command before it holds the
# monitor's map (the monitor answers "wrong fsid") and exits: start it again.
osd_start() { ceph-osd -c "$conf" -i 0 2>>"$dir/log/setup.log"; }
wait_for 10 osd_start || fail "the OSD did not start"
osd_up() { ceph -c "$conf" osd stat 2>/dev/null | grep -q "1 up"; }
wait_for 150 osd_up || fail "the OSD did not come up"
radosgw -c "$conf" -n client.rgw.a
wait_for 150 curl -fs -o /dev/null "http://127.0.0.1:$port/" || fail "the gateway did not answer on port $port"
radosgw-admin -c "$conf" user create --uid=test --display-name=test \
  --access-key="$access" --secret="$secret" >/dev/null 2>>"$dir/log/setup.log"
wait_for 50 s3_answers || fail "the gateway does not accept our keys"
wait_for 50 s3_answers https || fail "the gateway does not answer HTTPS on port $tls_port"
echo "$tls_port" >"$dir/tls-port"
echo "$port" >"$dir/port"
