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
scripts/alibuild-alitx; then FETCH_REVISIONS (default 0) past revisions of
each package's links, written directly (boto3, 32 at a time), with a
manifest listing all of them but the newest FETCH_UNLISTED (default 10),
which aliBuild then reads one by one. FETCH_STORE=o2 sets those defaults
to an O2-like store (issue 27): 120 packages from 8 KiB to 200 MiB, 600 MiB
in all, in a fixed shuffled order, and 200 past revisions of each.
Per RTT, after an untimed warm-up, RUNS rounds (order rotated) of:
  stock   stock aliBuild (its boto3 fetch), its fetch calls timed
  helper  scripts/alibuild-alitx (its prefetch by `alitx fetch`, run
          through /usr/bin/time, where installed, for its peak RSS)
  floor   every tarball of the store downloaded at once (boto3, 32 threads)
(FETCH_WAYS, default "stock helper floor", picks among them.) The table:
medians of the build's wall time, of the time aliBuild waited in its fetch
calls (the floor: its whole download), of the helper's `alitx fetch` from
start to end (it runs beside aliBuild), ratios, requests per package, and
the largest peak RSS of the prefetch and of the floor.
"""

import os
import random
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


def o2_sizes():
    """120 payloads, 600 MiB in all: one of 200 MiB, a few tens of MiB, most
    below 1 MiB; shuffled with a fixed seed, so the chain mixes them."""
    tiers = [(1, 200 << 20), (2, 64 << 20), (6, 24 << 20), (12, 8 << 20), (24, 1 << 20),
             (25, 256 << 10), (25, 64 << 10), (25, 8 << 10)]
    sizes = [size for count, size in tiers for _ in range(count)]
    random.Random(27).shuffle(sizes)
    return sizes


O2 = os.environ.get("FETCH_STORE") == "o2"
PACKAGES = int(os.environ.get("FETCH_PACKAGES", "120" if O2 else "12"))
SIZES = ([int(s) for s in os.environ["FETCH_SIZES"].split()] if "FETCH_SIZES" in os.environ
         else o2_sizes() if O2 else [8 << 10, 1 << 20, 8 << 20, 32 << 20])
REVISIONS = int(os.environ.get("FETCH_REVISIONS", "200" if O2 else "0"))
UNLISTED = int(os.environ.get("FETCH_UNLISTED", "10"))
# Which builds and downloads to time (a stock build at 100 ms takes minutes).
WAYS = os.environ.get("FETCH_WAYS", "stock helper floor").split()
TIME = "/usr/bin/time"
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

# Past revisions' links, each package's manifest, written at once.
PAST = """
import hashlib, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config
bucket, arch, packages, revisions, unlisted = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
s3 = boto3.client("s3", config=Config(max_pool_connections=32,
                                       request_checksum_calculation="when_required"))
def put(key_body):
    s3.put_object(Bucket=bucket, Key=key_body[0], Body=key_body[1])
objects = []
for i in range(packages):
    package = "pkg%03d" % i
    links = []
    for r in range(1, revisions + 1):
        name = "%s-v0-%d.%s.tar.gz" % (package, r, arch)
        h = hashlib.sha1(name.encode()).hexdigest()
        links.append((name, "../../%s/store/%s/%s/%s" % (arch, h[:2], h, name)))
    objects += [("TARS/%s/%s/%s" % (arch, package, name), target.encode()) for name, target in links]
    manifest = "".join("%s\\t%s\\n" % link for link in links[:max(0, revisions - unlisted)])
    objects.append(("TARS/%s/%s.manifest" % (arch, package), manifest.encode()))
with ThreadPoolExecutor(32) as pool:
    list(pool.map(put, objects))
"""

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


def timed_alitx(work):
    """An ALITX for the helper that runs alitx through /usr/bin/time, and
    the file where each of its runs leaves its peak RSS (KiB), its wall
    time (s) and command."""
    wrapper, rss = os.path.join(work, "alitx"), os.path.join(work, "alitx-rss")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec {TIME} -a -o "{rss}" -f "%M %e %C" "{os.environ["ALITX"]}" "$@"\n')
    os.chmod(wrapper, 0o755)
    return wrapper, rss


def build(how, alidist, top, bucket, endpoint):
    """A build of `top` from `bucket` into a fresh work dir: (wall seconds,
    seconds aliBuild waited in its fetch calls, the peak RSS of the
    helper's `alitx fetch` in MiB and its wall seconds; NaN for stock)."""
    runner = [HELPER] if how == "helper" else ["-c", STOCK]
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_CA_BUNDLE": CA,
           "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="alitx-bench-fetch-") as work:
        timed = how == "helper" and os.path.exists(TIME)
        if timed:
            env["ALITX"], rss_log = timed_alitx(work)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, *runner, "build", top, "--defaults", "release",
                               "-a", ARCH, "-c", alidist, "-w", work,
                               "--remote-store", f"b3://{bucket}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        seconds = time.monotonic() - started
        rss = prefetch = float("nan")
        if timed:
            with open(rss_log) as f:
                fetches = [line.split()[:2] for line in f if " fetch " in line]
            if not fetches:
                sys.exit("the helper ran no `alitx fetch`")
            rss = max(int(kib) for kib, _ in fetches) / 1024
            prefetch = sum(float(secs) for _, secs in fetches)
    waited = WAITED.search(proc.stdout)
    if proc.returncode != 0 or not waited:
        sys.exit(f"{how} build failed:\n{proc.stdout.decode(errors='replace')[-3000:]}")
    return seconds, float(waited.group(1)), rss, prefetch


def floor(bucket, endpoint):
    with tempfile.TemporaryDirectory(prefix="alitx-bench-floor-") as dest:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", FLOOR, bucket, dest],
                                env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_CA_BUNDLE": CA})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
    if status != 0:
        sys.exit("the floor's download failed")
    return seconds, seconds, usage.ru_maxrss / 1024, seconds


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
        if REVISIONS:
            subprocess.run([sys.executable, "-c", PAST, bucket, ARCH, str(PACKAGES), str(REVISIONS),
                            str(UNLISTED)], check=True, env={**os.environ, "AWS_ENDPOINT_URL": HTTPS,
                                                              "AWS_CA_BUNDLE": CA})
        total = sum(SIZES[i % len(SIZES)] for i in range(PACKAGES))
        print(f"store: {PACKAGES} packages, {total >> 20} MiB of payload, {REVISIONS} past revisions "
              f"of each package's links ({max(0, REVISIONS - UNLISTED)} in its manifest)", flush=True)
        ways = {
            "stock": lambda e: build("stock", alidist, top, bucket, e),
            "helper": lambda e: build("helper", alidist, top, bucket, e),
            "floor": lambda e: floor(bucket, e),
        }
        ways = {w: run for w, run in ways.items() if w in WAYS}
        for rtt in RTTS:
            proxy = bench_latency.Proxy(rtt)
            try:
                results = {w: ([], [], [], [], []) for w in ways}
                for run in ways.values():
                    run(proxy.endpoint)
                order = list(ways.items())
                for r in range(RUNS):
                    for way, run in order[r % len(order):] + order[:r % len(order)]:
                        requests = bench_latency.requests_served() if "RGW_LOG" in os.environ else 0
                        wall, waited, rss, fetching = run(proxy.endpoint)
                        requests = (bench_latency.requests_served() - requests
                                    if "RGW_LOG" in os.environ else float("nan"))
                        for values, v in zip(results[way], (wall, waited, requests / (PACKAGES + 1),
                                                            fetching, rss)):
                            values.append(v)
                        print(f"  RTT {rtt:g} ms, run {r + 1}: {way:6} {wall:7.2f} s, fetch "
                              f"{waited:6.2f} s, prefetch {fetching:6.2f} s, {requests / (PACKAGES + 1):5.1f} requests per "
                              f"package, peak RSS {rss:6.1f} MiB", flush=True)
                rows.append((rtt, {w: [statistics.median(v) for v in vs[:4]] + [max(vs[4])]
                                   for w, vs in results.items()}))
            finally:
                proxy.stop()
    finally:
        bench_latency.bench.empty_bucket(bucket)
        shutil.rmtree(work)
    print(f"\nA build of {PACKAGES + 1} packages ({total >> 20} MiB) from the store into a fresh "
          f"work dir, HTTPS through the delay proxy; medians over {RUNS} runs. fetch: the time "
          f"aliBuild waited in its fetch calls (floor: all tarballs at once); prefetch: the "
          f"helper's `alitx fetch` from start to end, beside aliBuild; peak RSS (MiB): "
          f"the largest of the helper's `alitx fetch` and of the floor's process")
    print(f"  {'RTT':>4} {'stock s':>8} {'helper s':>9} {'helper/stock':>13} {'vs RTT 0':>9} "
          f"{'stock fetch':>12} {'helper fetch':>13} {'floor':>6} {'fetch h/s':>10} "
          f"{'h/floor':>8} {'prefetch':>9} {'pf/floor':>9} {'req/pkg s':>10} {'req/pkg h':>10} {'RSS fetch':>10} {'RSS floor':>10}")
    base = rows[0][1]["helper"][0] if rows and rows[0][0] == 0 else float("nan")
    unmeasured = [float("nan")] * 5
    for rtt, m in rows:
        s, h, f = (m.get(w, unmeasured) for w in ("stock", "helper", "floor"))
        print(f"  {rtt:4g} {s[0]:8.2f} {h[0]:9.2f} {h[0] / s[0]:13.2f} {h[0] / base:9.2f} "
              f"{s[1]:12.2f} {h[1]:13.2f} {f[1]:6.2f} {h[1] / s[1]:10.2f} {h[1] / f[1]:8.2f} "
              f"{h[3]:9.2f} {h[3] / f[1]:9.2f} {s[2]:10.1f} {h[2]:10.1f} {h[4]:10.1f} {f[4]:10.1f}")


if __name__ == "__main__":
    main()
