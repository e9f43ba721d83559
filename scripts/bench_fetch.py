#!/usr/bin/env python3
"""The fetch benchmark (issue 27): a build whose every package is already
in the store, into a fresh work dir, over HTTPS through
scripts/delay_proxy.py at each round-trip time of RTTS (milliseconds,
default "0 20 100"). Run by `scripts/bench.sh fetch`, which sets
AWS_ENDPOINT_URL, credentials, ALITX, ALITX_TEST_HTTPS_ENDPOINT,
ALITX_TEST_CA_BUNDLE and RGW_LOG (the gateway's log, whose "req done"
lines count the requests; optional).

The store: FETCH_PACKAGES (default 12) packages in a chain, each
installing an incompressible payload, sizes cycling through FETCH_SIZES
(bytes, default 8 KiB, 1, 8 and 32 MiB), built and published once through
scripts/alibuild-alitx. Per RTT, after an untimed warm-up, RUNS rounds
(order rotated) of:
  stock   stock aliBuild (its boto3 fetch), its fetch calls timed
  helper  scripts/alibuild-alitx (its prefetch by `alitx fetch`)
  floor   every tarball of the store downloaded at once (boto3, 32 threads)
The table: medians of the build's wall time, of the time aliBuild waited
in its fetch calls (the floor: its whole download), ratios, and requests
per package.
"""

import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

import bench_latency

ARCH = "slc9_x86-64"
RUNS = int(os.environ.get("RUNS", "3"))
RTTS = [float(r) for r in os.environ.get("RTTS", "0 20 100").split()]
PACKAGES = int(os.environ.get("FETCH_PACKAGES", "12"))
SIZES = [int(s) for s in os.environ.get(
    "FETCH_SIZES", f"{8 << 10} {1 << 20} {8 << 20} {32 << 20}").split()]
CA = os.environ["ALITX_TEST_CA_BUNDLE"]
HTTPS = os.environ["ALITX_TEST_HTTPS_ENDPOINT"]
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alibuild-alitx")

# Stock aliBuild, its boto3 client on AWS_ENDPOINT_URL, the time it waits in
# its fetch calls printed at exit.
STOCK = """
import atexit, os, runpy, sys, sysconfig, time
from alibuild_helpers import sync
cls = sync.Boto3RemoteSync
stock_s3_init = cls._s3_init
def s3_init(self):
    self.endpoint_url = os.environ["AWS_ENDPOINT_URL"]
    stock_s3_init(self)
cls._s3_init = s3_init
waited = [0.0]
def timed(fetch):
    def timed_fetch(self, spec):
        started = time.monotonic()
        try:
            return fetch(self, spec)
        finally:
            waited[0] += time.monotonic() - started
    return timed_fetch
cls.fetch_symlinks, cls.fetch_tarball = timed(cls.fetch_symlinks), timed(cls.fetch_tarball)
atexit.register(lambda: print("aliBuild waited %.3f s in its fetch calls" % waited[0],
                              file=sys.stderr))
sys.argv[0] = os.path.join(sysconfig.get_path("scripts"), "aliBuild")
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Every tarball under TARS/<arch>/store/ at once, as a parallel client would.
FLOOR = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
bucket, dest = sys.argv[1:]
s3 = boto3.client("s3", config=Config(max_pool_connections=32))
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
    Bucket=bucket, Prefix="TARS/%s/store/") for o in page.get("Contents", ())]
def get(key):
    s3.download_file(bucket, key, os.path.join(dest, key.replace("/", "_")))
with ThreadPoolExecutor(32) as pool:
    list(pool.map(get, keys))
""" % ARCH

WAITED = re.compile(rb"aliBuild waited ([0-9.]+) s in its ")


def recipes(root):
    """A git checkout of the chain's recipes; the name of its top package."""
    alidist = os.path.join(root, "alidist")
    os.makedirs(alidist)
    with open(os.path.join(alidist, "defaults-release.sh"), "w") as f:
        f.write("package: defaults-release\nversion: v1\nenv:\n  CFLAGS: \"-O2\"\n---\n")
    for i in range(PACKAGES):
        requires = f"requires:\n  - pkg{i - 1:03}\n" if i else ""
        with open(os.path.join(alidist, f"pkg{i:03}.sh"), "w") as f:
            f.write(f"package: pkg{i:03}\nversion: v1\n{requires}---\n"
                    f"mkdir -p \"$INSTALLROOT/share\"\n"
                    f"head -c {SIZES[i % len(SIZES)]} /dev/urandom > \"$INSTALLROOT/share/payload\"\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "recipes"]):
        subprocess.run(git + args, cwd=alidist, check=True)
    return alidist, f"pkg{PACKAGES - 1:03}"


def build(how, alidist, top, bucket, endpoint, extra_env=None):
    """A build of `top` from `bucket` into a fresh work dir: (wall seconds,
    seconds aliBuild waited in its fetch calls)."""
    runner = [HELPER] if how == "helper" else ["-c", STOCK]
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_CA_BUNDLE": CA,
           "PYTHONHASHSEED": "0", **(extra_env or {})}
    with tempfile.TemporaryDirectory(prefix="alitx-bench-fetch-") as work:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, *runner, "build", top, "--defaults", "release",
                               "-a", ARCH, "-c", alidist, "-w", work,
                               "--remote-store", f"b3://{bucket}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        seconds = time.monotonic() - started
    waited = WAITED.search(proc.stdout)
    if proc.returncode != 0 or not waited:
        sys.exit(f"{how} build failed:\n{proc.stdout.decode(errors='replace')[-3000:]}")
    return seconds, float(waited.group(1))


def floor(bucket, endpoint):
    with tempfile.TemporaryDirectory(prefix="alitx-bench-floor-") as dest:
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", FLOOR, bucket, dest], check=True,
                       env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_CA_BUNDLE": CA})
        seconds = time.monotonic() - started
    return seconds, seconds


def main():
    work = tempfile.mkdtemp(prefix="alitx-bench-fetch-")
    alidist, top = recipes(work)
    bucket = bench_latency.bench.fresh_bucket()
    rows = []
    try:
        publish = os.path.join(work, "publish")
        subprocess.run([sys.executable, HELPER, "build", top, "--defaults", "release", "-a", ARCH,
                        "-c", alidist, "-w", publish, "--remote-store", f"b3://{bucket}::rw"],
                       check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "AWS_ENDPOINT_URL": HTTPS, "AWS_CA_BUNDLE": CA,
                            "PYTHONHASHSEED": "0"})
        total = sum(SIZES[i % len(SIZES)] for i in range(PACKAGES))
        print(f"store: {PACKAGES} packages, {total >> 20} MiB of payload", flush=True)
        ways = {
            "stock": lambda e: build("stock", alidist, top, bucket, e),
            "helper": lambda e: build("helper", alidist, top, bucket, e),
            "floor": lambda e: floor(bucket, e),
        }
        for rtt in RTTS:
            proxy = bench_latency.Proxy(rtt)
            try:
                results = {w: ([], [], []) for w in ways}
                for run in ways.values():
                    run(proxy.endpoint)
                order = list(ways.items())
                for r in range(RUNS):
                    for way, run in order[r % len(order):] + order[:r % len(order)]:
                        requests = bench_latency.requests_served() if "RGW_LOG" in os.environ else 0
                        wall, waited = run(proxy.endpoint)
                        requests = (bench_latency.requests_served() - requests
                                    if "RGW_LOG" in os.environ else float("nan"))
                        for values, v in zip(results[way], (wall, waited, requests / (PACKAGES + 1))):
                            values.append(v)
                        print(f"  RTT {rtt:g} ms, run {r + 1}: {way:6} {wall:7.2f} s, fetch "
                              f"{waited:6.2f} s, {requests / (PACKAGES + 1):5.1f} requests per "
                              f"package", flush=True)
                rows.append((rtt, {w: [statistics.median(v) for v in vs]
                                   for w, vs in results.items()}))
            finally:
                proxy.stop()
    finally:
        bench_latency.bench.empty_bucket(bucket)
        shutil.rmtree(work)
    print(f"\nA build of {PACKAGES + 1} packages ({total >> 20} MiB) from the store into a fresh "
          f"work dir, HTTPS through the delay proxy; medians over {RUNS} runs. fetch: the time "
          f"aliBuild waited in its fetch calls (floor: all tarballs at once)")
    print(f"  {'RTT':>4} {'stock s':>8} {'helper s':>9} {'helper/stock':>13} {'vs RTT 0':>9} "
          f"{'stock fetch':>12} {'helper fetch':>13} {'floor':>6} {'fetch h/s':>10} "
          f"{'h/floor':>8} {'req/pkg s':>10} {'req/pkg h':>10}")
    base = rows[0][1]["helper"][0] if rows and rows[0][0] == 0 else float("nan")
    for rtt, m in rows:
        s, h, f = m["stock"], m["helper"], m["floor"]
        print(f"  {rtt:4g} {s[0]:8.2f} {h[0]:9.2f} {h[0] / s[0]:13.2f} {h[0] / base:9.2f} "
              f"{s[1]:12.2f} {h[1]:13.2f} {f[1]:6.2f} {h[1] / s[1]:10.2f} {h[1] / f[1]:8.2f} "
              f"{s[2]:10.1f} {h[2]:10.1f}")


if __name__ == "__main__":
    main()
