#!/usr/bin/env python3
"""Benchmark alitx against the uploaders users would otherwise use, on the
same S3 server in the same run: aliBuild's own boto3 upload step
(Boto3RemoteSync.upload_symlinks_and_tarball from the PyPI `alibuild`
package) and a raw copy of the tarball with s5cmd (no links, no journal).

Run through scripts/bench.sh, which installs the tools, starts Ceph RGW and
builds alitx. Workloads:
  W1  one package: 1 GiB incompressible tarball, 300 links in each dist dir
  W2  100 packages: 1 MiB tarball and 3 x 50 links each, one after another
Each uploader gets a fresh bucket; after a warm-up round, runs are
interleaved with the order rotated; the table shows
medians over RUNS runs, their ratios, and peak RSS. Then, alitx is killed
at 50 % of W1's tarball and `alitx resume` is measured for bytes sent.
Finally, integrity: `alitx verify` of W1's tarball against a raw `s5cmd cp`
download of it, and aliBuild's own fetch of W1 and W2 from an alitx-published
store, stock and with scripts/alibuild-alitx's check against the publication
record.
"""

import functools
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ARCH = "slc9_x86-64"
ENDPOINT = os.environ["AWS_ENDPOINT_URL"]
ALITX = os.environ["ALITX"]
# Another alitx binary (e.g. the commit before a change), measured beside
# ALITX and interleaved with it run by run, as "before".
ALITX_BEFORE = os.environ.get("ALITX_BEFORE")
RUNS = int(os.environ.get("RUNS", "3"))
W1_BYTES = int(os.environ.get("W1_BYTES", str(1 << 30)))
W2_PACKAGES = int(os.environ.get("W2_PACKAGES", "100"))
# More `alitx upload` arguments, e.g. "--link-concurrency 64".
UPLOAD_ARGS = os.environ.get("ALITX_UPLOAD_ARGS", "").split()

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

s3 = boto3.client("s3", endpoint_url=ENDPOINT,
                  config=Config(request_checksum_calculation="when_required",
                                response_checksum_validation="when_required",
                                max_pool_connections=64))


def hash_of(name):
    return hashlib.sha1(name.encode()).hexdigest()


class Random:
    """Incompressible bytes, fast."""
    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return random.randbytes(n)


def make_package(sw, name, payload, links_per_dir):
    """Write an aliBuild-like package into work dir `sw`; return its spec."""
    spec = {"package": name, "version": "v1", "revision": "1", "hash": hash_of(name)}
    h = spec["hash"]
    tarball = f"{name}-v1-1.{ARCH}.tar.gz"
    store = os.path.join(sw, "TARS", ARCH, "store", h[:2], h)
    os.makedirs(store, exist_ok=True)
    with tarfile.open(os.path.join(store, tarball), "w:gz", compresslevel=0) as tar:
        for d in ("./", f"./{ARCH}/", f"./{ARCH}/{name}/", f"./{ARCH}/{name}/v1-1/"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        info = tarfile.TarInfo(f"./{ARCH}/{name}/v1-1/data.bin")
        info.size = payload
        tar.addfile(info, Random(payload))
    pkg_dir = os.path.join(sw, "TARS", ARCH, name)
    os.makedirs(pkg_dir, exist_ok=True)
    os.symlink(f"../../{ARCH}/store/{h[:2]}/{h}/{tarball}", os.path.join(pkg_dir, tarball))
    for dist in ("dist", "dist-direct", "dist-runtime"):
        d = os.path.join(sw, "TARS", ARCH, dist, name, f"{name}-v1-1")
        os.makedirs(d, exist_ok=True)
        os.symlink(f"../../../../../TARS/{ARCH}/store/{h[:2]}/{h}/{tarball}", os.path.join(d, tarball))
        for k in range(links_per_dir - 1):
            dh = hash_of(f"dep{k}")
            dep = f"dep{k}-v1-1.{ARCH}.tar.gz"
            os.symlink(f"../../../../../TARS/{ARCH}/store/{dh[:2]}/{dh}/{dep}", os.path.join(d, dep))
    return spec


def fresh_bucket():
    name = "bench-" + os.urandom(6).hex()
    s3.create_bucket(Bucket=name)
    return name


def empty_bucket(name):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=name, Delete={"Objects": keys[i:i + 1000]})
    for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", ()):
        s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    s3.delete_bucket(Bucket=name)


def run(cmd, env=None):
    """Run a command; return (seconds, peak RSS in MiB, stdout)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0 and not (env or {}).get("ALITX_FAILPOINT"):
        sys.exit(f"{cmd[0]} failed: {err.decode()}")
    return seconds, usage.ru_maxrss / 1024, out


BOTO3_DRIVER = """
import json, sys
from alibuild_helpers.sync import Boto3RemoteSync
class Sync(Boto3RemoteSync):
    def _s3_init(self):
        self.endpoint_url = sys.argv[1]
        super()._s3_init()
bucket, sw, specs = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sync = Sync("b3://" + bucket, "b3://" + bucket, "%s", sw)
for spec in specs:
    sync.upload_symlinks_and_tarball(spec)
""" % ARCH


FETCH_DRIVER = """
import importlib.machinery, importlib.util, json, os, sys
from alibuild_helpers import log, sync
helper_path, endpoint, bucket, sw, specs, checked = sys.argv[1:]
class Sync(sync.Boto3RemoteSync):
    def _s3_init(self):
        self.endpoint_url = endpoint
        super()._s3_init()
remote = Sync("b3://" + bucket, "b3://" + bucket, "%s", sw)
if checked == "checked":
    loader = importlib.machinery.SourceFileLoader("alibuild_alitx", helper_path)
    helper = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(helper)
    remote.fetch_tarball = helper.check_fetches(log, sync, remote, "b3://" + bucket,
                                                helper.s3_reader(remote.s3, bucket))
for spec in json.loads(specs):
    remote.fetch_tarball(spec)
    if not os.listdir(os.path.join(sw, "TARS", "%s", "store", spec["hash"][:2], spec["hash"])):
        sys.exit("nothing fetched for " + spec["package"])
""" % (ARCH, ARCH)
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "alibuild-alitx")


def alitx_upload(sw, bucket, specs, endpoint=ENDPOINT, env=None, alitx=ALITX):
    total, peak = 0.0, 0.0
    for spec in specs:
        secs, rss, _ = run([alitx, "upload", "--work-dir", sw, "--architecture", ARCH,
                            "--package", spec["package"], "--version", spec["version"],
                            "--revision", spec["revision"], "--hash", spec["hash"],
                            "--remote-store", f"b3://{bucket}", *UPLOAD_ARGS],
                           env={"AWS_ENDPOINT_URL": endpoint, **(env or {})})
        total, peak = total + secs, max(peak, rss)
    return total, peak


def alitx_serve_upload(sw, bucket, specs, endpoint=ENDPOINT, env=None, alitx=ALITX):
    """One `alitx serve-uploads` for every package, as scripts/alibuild-alitx runs it."""
    lines = "".join(json.dumps(["--work-dir", sw, "--architecture", ARCH, "--package", spec["package"],
                                "--version", spec["version"], "--revision", spec["revision"],
                                "--hash", spec["hash"], "--remote-store", f"b3://{bucket}", *UPLOAD_ARGS]) + "\n"
                    for spec in specs)
    start = time.monotonic()
    proc = subprocess.run([alitx, "serve-uploads"], input=lines.encode(), stdout=subprocess.PIPE,
                          env={**os.environ, "AWS_ENDPOINT_URL": endpoint, **(env or {})})
    seconds = time.monotonic() - start
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    if proc.returncode != 0 or any(a["status"] == "error" for a in answers):
        sys.exit(f"alitx serve-uploads failed: {answers}")
    return seconds, 0.0


def boto3_upload(sw, bucket, specs, endpoint=ENDPOINT, env=None):
    secs, rss, _ = run([sys.executable, "-c", BOTO3_DRIVER, endpoint, bucket, sw, json.dumps(specs)],
                       env=env)
    return secs, rss


def store_key(spec):
    h = spec["hash"]
    return f"TARS/{ARCH}/store/{h[:2]}/{h}/{spec['package']}-v1-1.{ARCH}.tar.gz"


def raw_copy(sw, bucket, specs):
    total, peak = 0.0, 0.0
    for spec in specs:
        key = store_key(spec)
        secs, rss, _ = run(["s5cmd", "--endpoint-url", ENDPOINT, "cp", os.path.join(sw, key), f"s3://{bucket}/{key}"])
        total, peak = total + secs, max(peak, rss)
    return total, peak


def package_objects(sw, spec):
    """(key, local file) of every object aliBuild uploads for `spec`: its
    tarball, and each link as a file holding the link's target (the body
    aliBuild gives it), written once beside the work dir."""
    name = spec["package"]
    objects = [(store_key(spec), os.path.join(sw, store_key(spec)))]
    dirs = [os.path.join("TARS", ARCH, name)] + [os.path.join("TARS", ARCH, dist, name, f"{name}-v1-1")
                                                 for dist in ("dist", "dist-direct", "dist-runtime")]
    for d in dirs:
        for link in sorted(os.listdir(os.path.join(sw, d))):
            key = os.path.join(d, link)
            body = os.path.join(os.path.dirname(sw), "link-bodies", key)
            if not os.path.exists(body):
                os.makedirs(os.path.dirname(body), exist_ok=True)
                with open(body, "w") as f:
                    f.write(os.readlink(os.path.join(sw, key)))
            objects.append((key, body))
    return objects


def parallel_floor(sw, bucket, specs, endpoint=ENDPOINT, env=None):
    """What a parallel client needs for the same objects: every object of
    a package (tarball and links) written at once by one `s5cmd run`,
    packages one after another."""
    total, peak = 0.0, 0.0
    for spec in specs:
        objects = package_objects(sw, spec)
        commands = os.path.join(os.path.dirname(sw), f"s5cmd-{spec['package']}.txt")
        with open(commands, "w") as f:
            f.writelines(f'cp "{path}" "s3://{bucket}/{key}"\n' for key, path in objects)
        secs, rss, _ = run(["s5cmd", "--endpoint-url", endpoint, "run", commands], env=env)
        total, peak = total + secs, max(peak, rss)
    return total, peak


def measure(name, sw, specs, uploaders, bucket_for=None):
    """Interleave the uploaders run by run, rotating who goes first, after
    one untimed warm-up round (a fresh gateway is slow at first). Each run
    gets a fresh bucket, unless `bucket_for` names the one every run reads."""
    def one(fn):
        bucket = bucket_for or fresh_bucket()
        result = fn(sw, bucket, specs)
        if not bucket_for:
            empty_bucket(bucket)
        return result
    results = {u: ([], []) for u in uploaders}
    for fn in uploaders.values():
        one(fn)
    order = list(uploaders.items())
    for r in range(RUNS):
        for uploader, fn in order[r % len(order):] + order[:r % len(order)]:
            secs, rss = one(fn)
            results[uploader][0].append(secs)
            results[uploader][1].append(rss)
            print(f"  {name} run {r + 1}: {uploader:6} {secs:7.2f} s  peak RSS {rss:6.1f} MiB", flush=True)
    return {u: (statistics.median(t), max(m)) for u, (t, m) in results.items()}


def resume_after_kill(sw, spec):
    """Kill alitx at 50 % of the tarball, resume, return (sent, size)."""
    h = spec["hash"]
    path = os.path.join(sw, f"TARS/{ARCH}/store/{h[:2]}/{h}/{spec['package']}-v1-1.{ARCH}.tar.gz")
    size = os.path.getsize(path)
    part = 8 << 20
    # Killed once the part holding the 50 % mark is stored (parts complete
    # out of order, so a few earlier ones may still be in flight and lost).
    half = (size // 2) // part + 1
    bucket = fresh_bucket()
    store = f"b3://{bucket}"
    run([ALITX, "upload", "--work-dir", sw, "--architecture", ARCH, "--package", spec["package"],
         "--version", "v1", "--revision", "1", "--hash", h, "--remote-store", store],
        env={"ALITX_FAILPOINT": f"part-sent-{half}"})
    _, _, out = run([ALITX, "resume", "--remote-store", store, "--work-dir", sw, "--json"])
    sent = json.loads(out)[0]["report"]["bytes_sent"]
    empty_bucket(bucket)
    return sent, size


def alitx_verify(sw, bucket, specs, alitx=ALITX):
    """`alitx verify` of the published specs; every one must verify."""
    secs, rss, out = run([alitx, "verify", "--remote-store", f"b3://{bucket}",
                          "--architecture", ARCH, "--json"])
    classes = [r["class"] for r in json.loads(out)["revisions"]]
    if classes != ["verified"] * len(specs):
        sys.exit(f"alitx verify: expected {len(specs)} verified, got {classes}")
    return secs, rss


def raw_download(sw, bucket, specs):
    """`s5cmd cp` of each tarball from the store into a file, then removed."""
    total, peak = 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="alitx-bench-dl-") as dest:
        for spec in specs:
            secs, rss, _ = run(["s5cmd", "--endpoint-url", ENDPOINT, "cp",
                                f"s3://{bucket}/{store_key(spec)}", os.path.join(dest, "t.tar.gz")])
            os.unlink(os.path.join(dest, "t.tar.gz"))
            total, peak = total + secs, max(peak, rss)
    return total, peak


def fetcher(checked):
    """aliBuild's own fetch_tarball of every spec into an empty work dir, in
    one process, stock or wrapped by the helper's check against the record."""
    def fetch(sw, bucket, specs):
        fetch_specs = [{**s, "remote_hashes": [s["hash"]]} for s in specs]
        with tempfile.TemporaryDirectory(prefix="alitx-bench-fetch-") as dest:
            secs, rss, _ = run([sys.executable, "-c", FETCH_DRIVER, HELPER, ENDPOINT, bucket, dest,
                                json.dumps(fetch_specs), checked])
        return secs, rss
    return fetch


def published(sw, specs):
    """A fresh bucket with the specs published by alitx (with their records)."""
    bucket = fresh_bucket()
    alitx_upload(sw, bucket, specs)
    return bucket


def with_before(uploaders):
    """The uploaders, and with ALITX_BEFORE each alitx one again as run by
    that binary (named "before" and "before-serve")."""
    if not ALITX_BEFORE:
        return uploaders
    names = {"alitx": "before", "serve": "before-serve"}
    before = {names[u]: functools.partial(fn, alitx=ALITX_BEFORE) for u, fn in uploaders.items() if u in names}
    return {**uploaders, **before}


def table(name, medians, per=1):
    a = medians["alitx"][0] / per
    print(f"\n{name}: median wall time over {RUNS} runs{' per package' if per > 1 else ''}")
    print(f"  {'uploader':8} {'median s':>9} {'alitx/x':>8} {'peak RSS MiB':>13}")
    for u, (t, rss) in medians.items():
        print(f"  {u:8} {t / per:9.3f} {a / (t / per):8.2f} {rss:13.1f}")


def main():
    work = tempfile.mkdtemp(prefix="alitx-bench-")
    try:
        print(f"generating W1 ({W1_BYTES} B tarball, 3 x 300 links) and W2 ({W2_PACKAGES} x 1 MiB, 3 x 50 links)")
        w1 = os.path.join(work, "w1")
        w1_spec = make_package(w1, "big", W1_BYTES, 300)
        w2 = os.path.join(work, "w2")
        w2_specs = [make_package(w2, f"small{i}", 1 << 20, 50) for i in range(W2_PACKAGES)]
        w1_med = measure("W1", w1, [w1_spec],
                         with_before({"alitx": alitx_upload, "boto3": boto3_upload, "raw": raw_copy}))
        w2_med = measure("W2", w2, w2_specs, with_before({"alitx": alitx_upload, "boto3": boto3_upload}))
        sent, size = resume_after_kill(w1, w1_spec)
        w1_store, w2_store = published(w1, [w1_spec]), published(w2, w2_specs)
        verify_med = measure("verify W1", w1, [w1_spec],
                             with_before({"alitx": alitx_verify, "raw": raw_download}), bucket_for=w1_store)
        fetch = {"alitx": fetcher("checked"), "stock": fetcher("stock")}
        fetch_w1 = measure("fetch W1", w1, [w1_spec], fetch, bucket_for=w1_store)
        fetch_w2 = measure("fetch W2", w2, w2_specs, fetch, bucket_for=w2_store)
        empty_bucket(w1_store)
        empty_bucket(w2_store)
        table("W1 (1 package, 1 GiB, 3 x 300 links)", w1_med)
        table(f"W2 ({W2_PACKAGES} packages, 1 MiB, 3 x 50 links)", w2_med, per=W2_PACKAGES)
        print(f"\nresume after a kill at 50 % of W1: sent {sent} of {size} B ({100 * sent / size:.1f} %)")
        table("verify W1's tarball: alitx verify vs raw = s5cmd cp download to a file", verify_med)
        table("aliBuild's fetch of W1: alitx = checked by the helper, stock = unchecked", fetch_w1)
        table(f"aliBuild's fetch of W2: alitx = checked by the helper, stock = unchecked",
              fetch_w2, per=W2_PACKAGES)
        print(f"fetch check adds {fetch_w1['alitx'][0] - fetch_w1['stock'][0]:.3f} s to W1's fetch, "
              f"{(fetch_w2['alitx'][0] - fetch_w2['stock'][0]) / W2_PACKAGES * 1000:.1f} ms per W2 package")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
