#!/usr/bin/python3
"""A compiled model's library (xentcc --emit=lib) against PyTorch 1.13 in
eval mode under torch.no_grad(): the latency of one image (batch 1, the
median call) and the throughput of a batch of N images. Called by
bench/library.sh:

  bench/library.sh [--models cifar10,mnist,vgg_small,allconv] [--seconds 3]
                   [--threads 1] [--n 256]

Both sides get the same weights (PyTorch's default initialization, from
scripts/torch_model.py's Net, written as safetensors), the same thread
count (OMP_NUM_THREADS for the library, torch.set_num_threads) and random
images already normalized; the library runs through bench/library_bench.c
linked with it. The rounds alternate xentcc and PyTorch; the tables give
medians. Tables go to stdout as markdown and are appended to
build/bench/library.md. Not part of the test suite.

Environment: XENTCC (default build/bin/xentcc).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import torch_model as tm  # noqa: E402

MODELS = {
    "cifar10": "models/cifar10.yaml",
    "catdog": "models/catdog.yaml",
    "mnist": "models/mnist.yaml",
    "vgg_small": "bench/models/vgg_small.yaml",
    "allconv": "bench/models/allconv.yaml",
}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if r.returncode != 0:
        sys.exit("bench/library.py: error: %s failed:\n%s" % (" ".join(cmd), r.stdout))
    return r.stdout


def save_safetensors(path, state):
    """The state_dict as a safetensors file (F32, I64 for counters)."""
    header, blobs, off = {}, [], 0
    for name, t in state.items():
        a = t.detach().cpu().numpy()
        dtype = "I64" if a.dtype == np.int64 else "F32"
        b = a.astype(np.int64 if dtype == "I64" else np.float32).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def torch_times(net, shape, n, seconds):
    x1 = torch.randn(1, *shape)
    xn = torch.randn(n, *shape)
    with torch.no_grad():
        for _ in range(20):
            net(x1)
        t, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds and len(t) < 200000:
            t0 = time.perf_counter()
            net(x1)
            t.append(time.perf_counter() - t0)
        net(xn)
        batches, start = 0, time.perf_counter()
        while batches < 3 or time.perf_counter() - start < seconds:
            net(xn)
            batches += 1
        per_image = (time.perf_counter() - start) / (batches * n)
    return statistics.median(t) * 1e3, 1 / per_image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cifar10,mnist,vgg_small,allconv")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    xentcc = os.environ.get("XENTCC", os.path.join(ROOT, "build/bin/xentcc"))
    out = os.path.join(ROOT, "build/bench/library")
    os.makedirs(out, exist_ok=True)
    link = open(os.path.join(os.path.dirname(os.path.dirname(xentcc)), "lib/xentcc_lib.link")).read().split()
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    rows = []
    for name in a.models.split(","):
        path = os.path.join(ROOT, MODELS[name])
        with open(path) as f:
            spec = yaml.safe_load(f)
        torch.manual_seed(0)
        net = tm.Net(spec).eval()
        weights = os.path.join(out, name + ".safetensors")
        save_safetensors(weights, net.state_dict())
        t0 = time.perf_counter()
        run([xentcc, path, "--emit=lib", "-o", os.path.join(out, name)])
        compile_s = time.perf_counter() - t0
        exe = os.path.join(out, name + "_bench")
        run(["cc", "-O2", "-DNAME=" + name, "-include", os.path.join(out, name + ".h"),
             os.path.join(ROOT, "bench/library_bench.c"), "-L" + out, "-l" + name, *link, "-o", exe])
        shape = (spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"])
        lib, pt = [], []
        for r in range(a.rounds):
            say("%s: round %d of %d" % (name, r + 1, a.rounds))
            lib.append(json.loads(run([exe, weights, str(a.seconds), str(a.n)], env)))
            pt.append(torch_times(net, shape, a.n, a.seconds))
        lat = statistics.median(x["latency_ms"] for x in lib)
        thr = statistics.median(x["images_per_s"] for x in lib)
        plat = statistics.median(p[0] for p in pt)
        pthr = statistics.median(p[1] for p in pt)
        rows.append((name, lib[0]["block"], compile_s, lat, plat, thr, pthr))

    load = os.getloadavg()
    lines = [
        "### %s: %d thread%s, %d rounds" % (datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
                                           a.threads, "" if a.threads == 1 else "s", a.rounds),
        "",
        "%s, load average %.2f %.2f %.2f after; PyTorch %s. Latency: the median NAME_predict "
        "of one image against net(x) of one image under torch.no_grad(); throughput: %d images "
        "a call." % (platform.processor() or platform.machine(), *load, torch.__version__, a.n),
        "",
        "| model | block | compile | latency, batch 1: xentcc | PyTorch | ratio | "
        "throughput, %d a call: xentcc | PyTorch | ratio |" % a.n,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, block, cs, lat, plat, thr, pthr in rows:
        lines.append("| `%s` | %d | %.1f s | %.3f ms | %.3f ms | %.1fx | %s img/s | %s img/s | %.2fx |"
                     % (name, block, cs, lat, plat, plat / lat, format(round(thr), ","),
                        format(round(pthr), ","), thr / pthr))
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "build/bench/library.md"), "a") as f:
        f.write(text + "\n")


main()
