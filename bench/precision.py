#!/usr/bin/python3
"""float32 against bf16 against fp16 training in xentcc, side by side:
speed, activation memory and where the time goes. Called by
bench/precision.sh:

  bench/precision.sh [--models cifar10,vgg_small,allconv] [--rounds 3]
                     [--seconds 4] [--threads 2]

Each model file gets `precision: fp32`, `bf16` or `fp16` (nothing else
changes) and is compiled three times. NAME-train runs on synthetic data in
memory (IDX files, the YAML's batch); the rounds alternate fp32, bf16,
fp16, fp32, ... so the machine's load falls on all three alike, and the
tables give medians. Speed is NAME-train --profile-csv's wall time over
its steps; the kernel table sums the profile's kernels by kind:
convolutions and linear layers (the kernels that now also round their
results), pooling, batch norm, the casts and roundings that are kernels of
their own, and the rest. Activation memory is the workspace the memory
plan gives the training step (xentcc --emit=loops: xc_grad_step's
workspace_bytes, every activation and activation gradient the step keeps,
and the 16-bit copies of the image and the weights); peak RSS is the
training process's whole resident set (the data, the weights, gradients
and optimizer state included). Tables go to stdout as markdown and are
appended to build/bench/precision.md. Not part of the test suite.

Environment: XENTCC (default build/bin/xentcc).
"""
import argparse
import csv
import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

# name, model file (as bench/speed.py's)
MODELS = [
    ("cifar10", "models/cifar10.yaml"),
    ("catdog", "models/catdog.yaml"),
    ("mnist", "models/mnist.yaml"),
    ("vgg_small", "bench/models/vgg_small.yaml"),
    ("allconv", "bench/models/allconv.yaml"),
]


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    print(f"bench/precision.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def write_idx(path, array):
    """Images [n, h, w] or [n, c, h, w], or labels [n], as plain IDX."""
    kind = {1: 0x801, 3: 0x803, 4: 0x804}[array.ndim]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(kind.to_bytes(4, "big"))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def Data(directory, prefix, n, c, h, w, classes, seed):
    """n random images (c, h, w) and labels as DIR/PREFIX-*-ubyte."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    os.makedirs(directory, exist_ok=True)
    write_idx(os.path.join(directory, f"{prefix}-images-{'idx3' if c == 1 else 'idx4'}-ubyte"),
              images[:, 0] if c == 1 else images)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"),
              rng.integers(0, classes, n).astype(np.uint8))

PRECISIONS = ["fp32", "bf16", "fp16"]
KINDS = ["conv", "linear", "pool", "batch norm", "casts", "other"]


def kind_of(op):
    """A profile row's kernel (conv2d+round+relu, cast, ...) as a KINDS entry."""
    first = op.split("+")[0]
    if first.startswith("conv2d") or first in ("interleave", "pad", "phases"):
        return "conv"
    if first.startswith("linear") or first == "transpose":
        return "linear"
    if "pool" in first:
        return "pool"
    if first.startswith("batch"):
        return "batch norm"
    if first in ("cast", "round"):
        return "casts"
    return "other"


TIME = "/usr/bin/time"  # GNU time (Debian's package time), for peak RSS


def run_timed(cmd, log):
    """Runs cmd (no shell) with its output in log; returns (ok, its peak
    resident set in bytes, or None without GNU time). The peak comes from
    GNU time, whose child is forked from a small process: Linux counts the
    pages of the process a child was forked (or vforked) from in the
    child's peak, and this Python's are far more than a training run's."""
    rss_file = log + ".rss"
    timed = os.access(TIME, os.X_OK)
    full = [TIME, "-f", "%M", "-o", rss_file] + cmd if timed else cmd
    with open(log, "w") as out:
        r = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        say(f"  failed ({r.returncode}): {' '.join(cmd)}; see {log}")
        return False, None
    if not timed:
        return True, None
    with open(rss_file) as f:
        return True, int(f.read().split()[-1]) * 1024


def workspace(xentcc, path):
    """xc_grad_step's and xc_forward's workspace bytes from the loop IR."""
    out = subprocess.run([xentcc, path, "--emit=loops"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    ws = dict(re.findall(r"^func @(\w+) workspace_bytes=(\d+)", out, re.M))
    return int(ws["xc_grad_step"]), int(ws["xc_forward"])


def profile(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = int(rows[0]["steps"])
    kinds = {k: 0.0 for k in KINDS}
    for r in rows:
        if r["function"] in ("grad", "apply"):
            kinds[kind_of(r["kernel"])] += float(r["seconds"]) / steps
    return float(rows[0]["wall_seconds"]) / steps, kinds


class Variant:
    def __init__(self, model, precision):
        self.model, self.precision = model, precision
        self.compile = self.ws_train = self.ws_eval = None
        self.step, self.rss, self.kinds = [], [], []


def bench(name, rel, args, work):
    with open(os.path.join(ROOT, rel)) as f:
        spec = yaml.safe_load(f)
    inp = spec["input"]
    batch = (spec.get("train") or {}).get("batch_size", 32)
    classes = len(spec.get("classes") or []) or 10
    mdir = os.path.join(work, name)
    os.makedirs(mdir, exist_ok=True)
    variants = []
    for p in PRECISIONS:
        v = Variant(name, p)
        s = dict(spec, precision=p)
        s.pop("data", None)
        s["data"] = {"format": "idx"}
        path = os.path.join(mdir, f"{name}_{p}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(s, f, sort_keys=False)
        say(f"== {name} {p}: compiling")
        t = time.perf_counter()
        ok, _ = run_timed([args.xentcc, path, "-o", os.path.join(mdir, f"{name}_{p}")],
                          os.path.join(mdir, f"compile_{p}.log"))
        if not ok:
            die(f"{name} {p} does not compile")
        v.compile = time.perf_counter() - t
        v.ws_train, v.ws_eval = workspace(args.xentcc, path)
        variants.append(v)
    data = os.path.join(mdir, "data")
    Data(data, "train", 4 * batch, inp["channels"], inp["height"], inp["width"], classes, 1)
    # Steps that fill about --seconds at fp32's speed (a calibration run).
    cal = os.path.join(mdir, "calibrate.csv")
    ok, _ = run_timed([os.path.join(mdir, f"{name}_fp32-train"), "--data", data, "--steps", "3",
                       "--no-eval", "--threads", str(args.threads), "--quiet", "--save",
                       os.path.join(mdir, "cal.safetensors"), "--profile-csv", cal],
                      os.path.join(mdir, "calibrate.log"))
    if not ok:
        die(f"{name}: the calibration run failed")
    steps = max(10, math.ceil(args.seconds / profile(cal)[0]))
    Data(data, "train", (steps + 1) * batch, inp["channels"], inp["height"], inp["width"], classes,
         1)
    for r in range(args.rounds):
        for v in variants:
            tag = f"{v.precision}_{r}"
            csv_path = os.path.join(mdir, f"{tag}.csv")
            ok, rss = run_timed([os.path.join(mdir, f"{name}_{v.precision}-train"), "--data", data,
                                 "--steps", str(steps), "--no-eval", "--threads", str(args.threads),
                                 "--quiet", "--save", os.path.join(mdir, f"{tag}.safetensors"),
                                 "--profile-csv", csv_path], os.path.join(mdir, f"{tag}.log"))
            if not ok:
                die(f"{name} {v.precision}: a training run failed")
            step, kinds = profile(csv_path)
            v.step.append(step)
            v.rss.append(rss)
            v.kinds.append(kinds)
            say(f"   round {r + 1}: {v.precision} {1e3 * step:.2f} ms/step")
    return batch, steps, variants


def mib(b):
    return f"{b / 2 ** 20:.2f} MiB"


def report(results, args, load0, load1):
    lines = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"### {now}: {args.threads} threads, {args.rounds} rounds\n")
    lines.append(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
                 f"average {load0} before and {load1} after; OMP_WAIT_POLICY="
                 f"{os.environ['OMP_WAIT_POLICY']}. Training on synthetic data in memory; medians "
                 "of the rounds; ratios against fp32 (speed: above 1 is faster; memory: below 1 "
                 "is smaller).\n")
    lines.append("| model | batch | precision | compile | training | speed vs fp32 | activation "
                 "memory (training) | vs fp32 | evaluation workspace | peak RSS |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (batch, steps, vs) in results.items():
        base = vs[0]
        for v in vs:
            step = statistics.median(v.step)
            lines.append(
                f"| `{name}` | {batch} | {v.precision} | {v.compile:.1f} s | "
                f"{batch / step:,.0f} img/s ({1e3 * step:.2f} ms/step) | "
                f"{statistics.median(base.step) / step:.2f}x | {mib(v.ws_train)} | "
                f"{v.ws_train / base.ws_train:.2f}x | {mib(v.ws_eval)} | "
                f"{mib(statistics.median(v.rss)) if None not in v.rss else 'n/a (no GNU time)'} |")
    lines.append("")
    lines.append("Where the training step's time goes, ms/step by kind of kernel (median of the "
                 "rounds; `casts`: the casts and roundings that are kernels of their own -- the "
                 "image's, the weights' and their gradients' -- while the convolutions and "
                 "linear layers round their results in their own kernels):\n")
    lines.append("| model | precision | " + " | ".join(KINDS) + " | all kernels |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in KINDS) + " | --- |")
    for name, (batch, steps, vs) in results.items():
        for v in vs:
            med = {k: statistics.median(d[k] for d in v.kinds) for k in KINDS}
            lines.append(f"| `{name}` | {v.precision} | " +
                         " | ".join(f"{1e3 * med[k]:.2f}" for k in KINDS) +
                         f" | {1e3 * sum(med.values()):.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="cifar10,vgg_small,allconv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xentcc", default=os.environ.get("XENTCC",
                                                       os.path.join(ROOT, "build/bin/xentcc")))
    args = ap.parse_args()
    known = dict(MODELS)
    names = args.models.split(",")
    for n in names:
        if n not in known:
            die(f"--models: no model {n}; choose from {', '.join(known)}")
    work = os.path.join(ROOT, "build", "bench", "precision")
    os.makedirs(work, exist_ok=True)
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = {n: bench(n, known[n], args, work) for n in names}
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(results, args, load0, load1)
    print(text)
    with open(os.path.join(ROOT, "build", "bench", "precision.md"), "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
