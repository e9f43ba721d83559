#!/usr/bin/env python3
"""The latency benchmark: alitx against aliBuild's boto3 upload step over
HTTPS, through scripts/delay_proxy.py at each round-trip time of RTTS
(milliseconds, default "0 5 20"; "direct": no proxy), on the gateway's TLS
endpoint. Run by
`scripts/bench.sh latency`, which sets up what scripts/bench.py needs plus
ALITX_TEST_HTTPS_ENDPOINT, ALITX_TEST_CA_BUNDLE and RGW_LOG (the gateway's
log, whose "req done" lines count the requests).

Uploaders: alitx, one process per package (`alitx upload`); serve, one
alitx process for all (`alitx serve-uploads`, as scripts/alibuild-alitx
runs it); boto3, aliBuild's upload step (one process); with FLOOR=1, floor:
the same objects written by s5cmd, a package's all at once, packages one
after another (bench.parallel_floor). Workloads, smaller
than bench.py's: W1 one package, W1_BYTES (default 64 MiB) and 3 x 200
links; W2 W2_PACKAGES (default 10) packages of 1 MiB and 3 x 50 links. Per
RTT (and workload of WORKLOADS, default "W1 W2"): an untimed warm-up round, then RUNS rounds of the uploaders
interleaved (order rotated), each on a fresh bucket; the table gives
medians, ratios to boto3, and per package the TCP connections and full TLS
handshakes, those not resumed from a session ticket (both counted at the
proxy), and the requests (counted in the gateway's log).

Through the proxy, the gateway's TCP peer is the proxy: how fast the
gateway's segments are acknowledged is the proxy's kernel's doing, not
the uploader's (alitx asks for quick ACKs, see src/storage/s3_net.rs).
"direct" measures the uploaders as the gateway's own peers, at RTT 0,
without connection counts (nan).
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
import shutil

import bench

RTTS = os.environ.get("RTTS", "0 5 20").split()
DIRECT = "direct"
W1_BYTES = int(os.environ.get("W1_BYTES", str(64 << 20)))
W2_PACKAGES = int(os.environ.get("W2_PACKAGES", "10"))
WORKLOADS = os.environ.get("WORKLOADS", "W1 W2").split()
TLS_PORT = int(os.environ["ALITX_TEST_HTTPS_ENDPOINT"].rsplit(":", 1)[1])
CA = os.environ["ALITX_TEST_CA_BUNDLE"]
RGW_LOG = os.environ["RGW_LOG"]
PROXY_PORT = int(os.environ.get("PROXY_PORT", str(TLS_PORT + 1)))
PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delay_proxy.py")


def requests_served():
    """Requests the gateway has finished, once its log stopped growing."""
    last = None
    for _ in range(50):
        with open(RGW_LOG, "rb") as f:
            count = f.read().count(b" req done ")
        if count == last:
            return count
        last = count
        time.sleep(0.3)
    return last


class Proxy:
    """scripts/delay_proxy.py at `rtt` ms in front of the TLS endpoint (none
    for DIRECT)."""
    def __init__(self, rtt):
        if rtt == DIRECT:
            self.proc, self.endpoint = None, os.environ["ALITX_TEST_HTTPS_ENDPOINT"]
            return
        self.counts = tempfile.NamedTemporaryFile(prefix="alitx-proxy-", delete=False).name
        self.proc = subprocess.Popen([sys.executable, PROXY, str(PROXY_PORT), str(TLS_PORT), str(rtt),
                                      self.counts])
        self.endpoint = f"https://127.0.0.1:{PROXY_PORT}"
        for _ in range(100):
            if subprocess.run(["curl", "-s", "-o", "/dev/null", "--cacert", CA, self.endpoint]).returncode == 0:
                return
            time.sleep(0.1)
        sys.exit("the delay proxy did not start")

    def connections(self):
        """TCP connections and full (not resumed) TLS handshakes so far."""
        if self.proc is None:
            return float("nan"), float("nan")
        with open(self.counts) as f:
            counts = f.read().split() or (0, 0, 0)
        return int(counts[0]), int(counts[1])

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait()
        os.unlink(self.counts)


def measure(proxy, sw, specs, uploaders):
    """Per uploader: (median seconds, connections, full handshakes and
    requests per package)."""
    env = {"AWS_CA_BUNDLE": CA}
    results = {u: ([], [], [], []) for u in uploaders}

    def one(fn):
        bucket = bench.fresh_bucket()
        (conns, full), reqs = proxy.connections(), requests_served()
        secs, _ = fn(sw, bucket, specs, endpoint=proxy.endpoint, env=env)
        (conns_after, full_after), reqs_after = proxy.connections(), requests_served()
        bench.empty_bucket(bucket)
        n = len(specs)
        return secs, (conns_after - conns) / n, (full_after - full) / n, (reqs_after - reqs) / n

    for fn in uploaders.values():
        one(fn)
    order = list(uploaders.items())
    for r in range(bench.RUNS):
        for uploader, fn in order[r % len(order):] + order[:r % len(order)]:
            measured = one(fn)
            for values, v in zip(results[uploader], measured):
                values.append(v)
            secs, conns, full, reqs = measured
            print(f"  run {r + 1}: {uploader:6} {secs:7.2f} s  {conns:5.1f} connections "
                  f"{full:5.1f} full handshakes {reqs:6.1f} requests per package", flush=True)
    return {u: [statistics.median(v) for v in vs] for u, vs in results.items()}


def main():
    work = tempfile.mkdtemp(prefix="alitx-bench-latency-")
    uploaders = bench.with_before({"alitx": bench.alitx_upload, "serve": bench.alitx_serve_upload,
                                   "boto3": bench.boto3_upload})
    if os.environ.get("FLOOR") == "1":
        uploaders["floor"] = bench.parallel_floor
    rows = []
    try:
        w1 = os.path.join(work, "w1")
        w1_specs = [bench.make_package(w1, "big", W1_BYTES, 200)]
        w2 = os.path.join(work, "w2")
        w2_specs = [bench.make_package(w2, f"small{i}", 1 << 20, 50) for i in range(W2_PACKAGES)]
        for rtt in RTTS:
            proxy = Proxy(rtt)
            try:
                for name, sw, specs in (("W1", w1, w1_specs), ("W2", w2, w2_specs)):
                    if name not in WORKLOADS:
                        continue
                    print(f"RTT {rtt} ms, {name}", flush=True)
                    rows.append((rtt, name, len(specs), measure(proxy, sw, specs, uploaders)))
            finally:
                proxy.stop()
    finally:
        shutil.rmtree(work)
    print(f"\nHTTPS through the delay proxy: medians over {bench.RUNS} runs; W1 {W1_BYTES} B and "
          f"3 x 200 links, W2 {W2_PACKAGES} x 1 MiB and 3 x 50 links; per package: s, connections, "
          "full TLS handshakes (not resumed), requests")
    print("  alitx: one `alitx upload` per package; serve: one `alitx serve-uploads` for all "
          "(as scripts/alibuild-alitx runs it); boto3: aliBuild's upload step, one process")
    print(f"  {'RTT':>4} {'load':4} " + " ".join(f"{u + ' s':>8}" for u in uploaders)
          + " " + " ".join(f"{u + '/boto3':>12}" for u in uploaders if u != "boto3")
          + " " + " ".join(f"{u + ' conn':>10}" for u in uploaders)
          + " " + " ".join(f"{u + ' full':>10}" for u in uploaders)
          + " " + " ".join(f"{u + ' req':>9}" for u in uploaders))
    for rtt, name, n, m in rows:
        b = m["boto3"][0]
        print(f"  {rtt:>4} {name:4} " + " ".join(f"{m[u][0] / n:8.3f}" for u in uploaders)
              + " " + " ".join(f"{m[u][0] / b:12.2f}" for u in uploaders if u != "boto3")
              + " " + " ".join(f"{m[u][1]:10.1f}" for u in uploaders)
              + " " + " ".join(f"{m[u][2]:10.1f}" for u in uploaders)
              + " " + " ".join(f"{m[u][3]:9.1f}" for u in uploaders))


if __name__ == "__main__":
    main()
