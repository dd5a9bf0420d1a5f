#!/usr/bin/python3
"""xentcc's speed against PyTorch 1.13, both measured in the same run on this
machine, and as a share of the machine's FMA peak. Called by bench/speed.sh:

  bench/speed.sh [--threads N] [--pairs N] [--seconds S] [--quick] [--only seeds|cnns|sweep]
                 [--models vgg_small,resnet8] [--layers 5,10,35] [--isa native|avx2] [--out DIR]

1. bench/fma_peak.c, compiled now with the system's cc, measures the peak.
2. Each model (the seed nets and bench/models/*.yaml) is compiled, then
   trained and evaluated on synthetic data held in memory on both sides
   (written once as IDX files for NAME-train and NAME-eval; PyTorch gets the
   same images, normalised as the YAML says). Runs alternate xentcc, PyTorch,
   xentcc, PyTorch...; each timing covers about --seconds and leaves out
   compilation, data loading and, for PyTorch, a few warm-up steps. xentcc's
   time is NAME-train's --profile-csv wall_seconds over its steps (the first
   step included) and NAME-eval's over its batches (the per-batch
   normalisation included); its arithmetic is the csv's flops_per_call x
   calls of every kernel. PyTorch's loop takes its batches in order from
   tensors normalised beforehand; xentcc's loader shuffles and normalises
   each batch on its own thread, inside the time.
3. A sweep of single convolution layers times each direction of the layer
   in xentcc -- its conv2d, conv2d_grad_input or conv2d_grad_weight kernels
   and the padded, phase-split, interleaved or transposed copies they need
   (directions: a copy counts for the kernel it runs before), per call, from
   the profile -- against F.conv2d and the two gradients autograd computes.
   Each layer is compiled as a tiny model whose first layer, a 1x1
   convolution, makes the channels and, having weights, the input gradient
   needed.

Ratios are xentcc's speed over PyTorch's (above 1: xentcc is faster).
Tables go to stdout as markdown and are appended to build/bench/speed.md (or
DIR/speed.md with --out DIR, where the work goes too).
Both sides run with OMP_WAIT_POLICY=passive unless the environment sets it:
xentcc's executables choose it themselves, and on a shared 2-core machine
PyTorch's spinning threads made it up to six times slower. And with
GLIBC_TUNABLES keeping freed memory in the process (mmap_threshold 32 MiB,
the most glibc takes, trim_threshold 1 GiB; the script starts itself
again with them unless the environment sets GLIBC_TUNABLES): by default
glibc returns PyTorch's large tensors to the kernel when they are freed,
and every step faults them in anew. On the AMD EPYC (Zen 5) virtual
machine of 2026-12-02, whose page faults are slow, that made PyTorch's
training of vgg_small and allconv 2.5-2.8x slower (its relu, fill and
threshold_backward at 3 GB/s); xentcc's executables allocate their
memory once, and xentcc compiles without them, setting its own.

--isa avx2 holds both sides to AVX2 and FMA, the vectors of the AMD EPYC
issue 11 names, on a machine that has more: xentcc compiles with
-mcpu=x86-64-v3, the peak loop with -march=x86-64-v3, and PyTorch's oneDNN
and ATen kernels are told to stop at AVX2 (ONEDNN_MAX_CPU_ISA,
ATEN_CPU_CAPABILITY, set before torch loads). The heading names the
instructions oneDNN reports it uses.

Environment: XENTCC (default build/bin/xentcc), CC (default cc).
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
sys.path.insert(0, os.path.join(ROOT, "scripts"))
# Before torch starts its OpenMP threads: see the docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# Read as the process starts: main starts the script again with them (see
# the docstring).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"

# --isa: the vector instructions both sides may use. mcpu goes to xentcc
# (None: its default, the host's), march to the peak loop's cc, env to
# PyTorch before it loads.
ISAS = {
    "native": {"mcpu": None, "march": "native", "env": {}, "says": ""},
    "avx2": {"mcpu": "x86-64-v3", "march": "x86-64-v3",
             "env": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
             "says": "AVX2 on both sides (xentcc -mcpu=x86-64-v3; PyTorch's oneDNN and ATen "
                     "held to AVX2)"},
}


# --isa is read before torch loads, then again with main's other options.
ISA_ARG = argparse.ArgumentParser(add_help=False)
ISA_ARG.add_argument("--isa", choices=sorted(ISAS), default="native",
                     help="vector instructions on both sides: native (default: all the machine "
                          "has) or avx2 (AVX2 and FMA only, as on the AMD EPYC of issue 11)")
os.environ.update(ISAS[ISA_ARG.parse_known_args()[0].isa]["env"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import torch_model as tm  # noqa: E402

# name, model file, what it stands for, and the batch to time it at when
# not the file's own (resnet8 trains at 128; the CNNs here are timed at 64)
MODELS = [
    ("cifar10", "models/cifar10.yaml", "seeds", None),
    ("catdog", "models/catdog.yaml", "seeds", None),
    ("mnist", "models/mnist.yaml", "seeds", None),
    ("vgg_small", "bench/models/vgg_small.yaml", "cnns", None),
    ("allconv", "bench/models/allconv.yaml", "cnns", None),
    ("resnet8", "models/resnet8.yaml", "cnns", 64),
]

# The convolution sweep: (in channels, out channels, kernel, stride, padding,
# input height = width). Every kernel 1-7, stride 1-2, padding 0-3, channels
# from 1 to 128 on both sides and mostly odd sizes, with a few even twins
# (32 and 8) of odd layers; each call stays under about 0.4 GFLOP at batch 16.
SWEEP = [
    (3, 16, 3, 1, 1, 33), (3, 16, 3, 1, 1, 32), (16, 32, 3, 2, 1, 33), (32, 32, 3, 1, 1, 17),
    (32, 64, 3, 2, 1, 17), (64, 64, 3, 1, 1, 9), (64, 64, 3, 1, 1, 8), (64, 128, 3, 2, 1, 9),
    (128, 128, 3, 1, 1, 5), (128, 128, 3, 2, 1, 15), (96, 96, 3, 1, 1, 11), (1, 8, 3, 1, 0, 29),
    (8, 8, 3, 1, 0, 15), (5, 7, 3, 1, 2, 13), (24, 40, 3, 2, 0, 23), (1, 1, 3, 1, 1, 31),
    (1, 32, 3, 1, 1, 27), (32, 1, 3, 1, 1, 27),
    (64, 128, 1, 1, 0, 15), (128, 64, 1, 1, 0, 9), (32, 64, 1, 2, 0, 17), (3, 16, 1, 1, 0, 31),
    (128, 128, 1, 1, 0, 7), (16, 32, 1, 1, 1, 11), (128, 1, 1, 1, 0, 9), (1, 128, 1, 1, 0, 9),
    (16, 32, 2, 2, 0, 31), (64, 64, 2, 2, 0, 15), (3, 8, 2, 1, 1, 33),
    (16, 32, 4, 2, 1, 31), (32, 32, 4, 1, 2, 15), (8, 16, 4, 1, 3, 11),
    (3, 6, 5, 1, 0, 33), (6, 16, 5, 1, 0, 15), (1, 6, 5, 1, 2, 29), (32, 32, 5, 1, 2, 15),
    (16, 32, 5, 2, 2, 17), (8, 16, 5, 2, 3, 19),
    (8, 16, 6, 2, 2, 27), (16, 16, 6, 1, 3, 13),
    (3, 64, 7, 2, 3, 33), (1, 16, 7, 1, 3, 21), (16, 16, 7, 1, 0, 19), (32, 64, 7, 2, 3, 17),
]
QUICK_SWEEP = [0, 5, 6, 14, 22, 31, 40, 17]  # indices into SWEEP for --quick
SWEEP_BATCH = 16
MAX_IMAGES = 200000       # the largest synthetic data set, in images
TORCH_HOLD_BYTES = 256 << 20  # PyTorch holds at most this much of it as floats, cycling

# The three directions of the sweep's layer (named conv). Each is every
# kernel xentcc runs for it: the convolution's own (a strided input gradient
# is a kernel per stride phase, then their interleave) and the copies made
# for it, each counted with the kernel it runs before -- the padded or
# phase-split input and the weight transposed (forward; the weight gradient
# reads the same input copy), the padded output gradient and the weight
# transposed again (input gradient), the output gradient or the input
# transposed (weight gradient). The layer in front is named pre.
DIRECTIONS = ["forward", "input grad", "weight grad"]


COPIES = ("pad", "phases", "transpose")


def direction_of(row):
    """Which direction of the sweep's layer a kernel of its own (not a copy)
    belongs to, or None."""
    k, layer = row["kernel"], row["layer"]
    if k.startswith("conv2d_grad_input") or k.startswith("interleave"):
        return 1
    if k.startswith("conv2d_grad_weight"):
        return 2 if layer == "conv.weight.grad" else None
    if k.startswith("conv2d"):
        return 0 if layer == "conv" else None
    return None


def directions(rows):
    """direction_of each row of one step function, in the order it runs
    them; a copy counts in the direction of the layer's next kernel, which
    it was made for (the forward's weight transposed, dy padded for the
    input gradient, dy transposed for the weight gradient). The weight
    gradient also reads the forward's padded or phase-split input: that
    copy counts in the forward's time."""
    out, after = [None] * len(rows), None
    for i in reversed(range(len(rows))):
        if rows[i]["kernel"] in COPIES:
            out[i] = after
        else:
            out[i] = direction_of(rows[i])
            after = out[i] if out[i] is not None else after
    return out


def say(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    print(f"bench/speed.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, log=None, timeout=1800, env=None):
    """Runs an argument vector (no shell); its output goes to LOG. Returns
    True on success; on failure says what failed and where the log is."""
    with open(log or os.devnull, "w") as out:
        try:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            say(f"  timed out after {timeout} s: {' '.join(cmd)}")
            return False
    if r.returncode != 0:
        say(f"  failed ({r.returncode}): {' '.join(cmd)}" + (f"\n  see {log}" if log else ""))
        return False
    return True


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


#
# The FMA peak
#

def build_fma_peak(out, march):
    exe = os.path.join(out, "fma_peak")
    cc = os.environ.get("CC", "cc")
    if not run([cc, "-O2", f"-march={march}", "-fopenmp", os.path.join(ROOT, "bench", "fma_peak.c"),
                "-o", exe], os.path.join(out, "fma_peak.log")):
        die(f"cannot build bench/fma_peak.c with {cc}; install gcc or set CC")
    return exe


def fma_peak(exe, threads):
    """{threads: GFLOP/s} for 1, 2 and `threads` threads."""
    counts = sorted({1, 2, threads})
    text = subprocess.run([exe] + [str(c) for c in counts], stdout=subprocess.PIPE, text=True,
                          check=True).stdout
    return {int(t): float(g) for t, g in (line.split() for line in text.splitlines())}


#
# Data: IDX files for the executables, the same images as tensors for PyTorch
#

def write_idx(path, array):
    """array: labels [n], grey images [n, h, w] or [n, c, h, w] (IDX 0x0804);
    plain IDX, written whole or not at all."""
    kind = {1: 0x801, 3: 0x803, 4: 0x804}[array.ndim]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(kind.to_bytes(4, "big"))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


class Data:
    """n random images of shape (c, h, w) and labels below `classes`, written
    under DIR as PREFIX-images/labels (train or t10k)."""

    def __init__(self, directory, prefix, n, c, h, w, classes, seed):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
        self.labels = rng.integers(0, classes, n).astype(np.uint8)
        os.makedirs(directory, exist_ok=True)
        for stale in os.listdir(directory):
            if stale.startswith(prefix + "-"):
                os.unlink(os.path.join(directory, stale))
        kind = "idx3" if c == 1 else "idx4"
        write_idx(os.path.join(directory, f"{prefix}-images-{kind}-ubyte"),
                  self.images[:, 0] if c == 1 else self.images)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), self.labels)

    def tensors(self, mean, std, binary, batch):
        """The first images (at most TORCH_HOLD_BYTES of floats, whole
        batches) as ToTensor + Normalize make them, and their labels."""
        per = self.images[0].size * 4
        n = max(batch, min(len(self.images), TORCH_HOLD_BYTES // per) // batch * batch)
        x = torch.from_numpy(self.images[:n]).float().div_(255)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        y = torch.from_numpy(self.labels[:n].astype(np.int64))
        return ((x - m) / s).contiguous(), y.float().unsqueeze(1) if binary else y


#
# xentcc's executables
#

def read_profile(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("calls", "flops_per_call", "steps"):
            r[k] = int(r[k])
        for k in ("seconds", "peak_gflops", "wall_seconds"):
            r[k] = float(r[k])
    return rows


class Profile:
    """One run's --profile-csv: wall time per step (or batch) and work."""

    def __init__(self, path):
        self.rows = read_profile(path)
        self.steps = self.rows[0]["steps"]
        self.wall = self.rows[0]["wall_seconds"]
        self.runtime_peak = self.rows[0]["peak_gflops"]
        self.flops = sum(r["flops_per_call"] * r["calls"] for r in self.rows)

    def per_step(self):
        return self.wall / self.steps

    def per_call(self, kernel, layer=None):
        """Seconds per call of the kernel named so (and of that layer), or None."""
        rows = [r for r in self.rows if r["calls"] and r["kernel"] == kernel and
                (layer is None or r["layer"] == layer)]
        if len(rows) != 1:
            return None, None
        r = rows[0]
        return r["seconds"] / r["calls"], r["flops_per_call"]


def xc_train(exe, data_dir, steps, threads, work, tag):
    csv_path = os.path.join(work, f"{tag}.train.csv")
    ok = run([exe, "--data", data_dir, "--steps", str(steps), "--no-eval", "--threads", str(threads),
              "--profile-csv", csv_path, "--save", os.path.join(work, f"{tag}.safetensors"),
              "--quiet"], os.path.join(work, f"{tag}.train.log"))
    return Profile(csv_path) if ok else None


def xc_eval(exe, weights, data_dir, threads, work, tag):
    csv_path = os.path.join(work, f"{tag}.eval.csv")
    ok = run([exe, "--weights", weights, "--data", data_dir, "--threads", str(threads),
              "--profile-csv", csv_path, "--quiet"], os.path.join(work, f"{tag}.eval.log"))
    return Profile(csv_path) if ok else None


def compiler_env():
    """The environment xentcc compiles in: a user's, without the
    GLIBC_TUNABLES this script set for PyTorch, so that xentcc sets its own
    (frontend/main.c) as it does for anyone who has not set them."""
    env = dict(os.environ)
    if env.get("GLIBC_TUNABLES") == MALLOC_TUNABLES:
        del env["GLIBC_TUNABLES"]
    return env


def compile_model(xentcc, yaml_path, out, log):
    """xentcc: the command, a list (the compiler and its -mcpu)."""
    t = time.perf_counter()
    ok = run(xentcc + [yaml_path, "-o", out], log, env=compiler_env())
    return time.perf_counter() - t if ok else None


#
# PyTorch
#

def onednn_isa():
    """The instructions PyTorch's oneDNN says it uses here, from its verbose
    output in a child process (it prints them on its first primitive)."""
    probe = ("import torch; torch.nn.functional.conv2d(torch.ones(8, 16, 16, 16), "
             "torch.ones(16, 16, 3, 3), padding=1)")  # big enough for oneDNN's kernel
    env = dict(os.environ, ONEDNN_VERBOSE="1", DNNL_VERBOSE="1")
    out = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env).stdout
    m = re.search(r"^(?:onednn|dnnl)_verbose,info,cpu,isa:(.*)$", out, re.M)
    return m.group(1).strip() if m else "unknown"


def timed_loop(fn, seconds, warmup=3, min_calls=5):
    """Seconds per call of fn over at least `seconds`, after warm-up calls."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= min_calls:
            return elapsed / n


def torch_train(spec, x, y, batch, seconds):
    """Seconds per training step, as a PyTorch user writes the loop."""
    net = tm.Net(spec)
    net.train()
    _, criterion = tm.loss_of(spec, net)
    opt = tm.optimizer_of(spec, net.parameters())
    nb, i = len(x) // batch, [0]

    def step():
        k = i[0] % nb
        i[0] += 1
        opt.zero_grad()
        loss = criterion(net(x[k * batch:(k + 1) * batch]), y[k * batch:(k + 1) * batch])
        loss.backward()
        opt.step()
    return timed_loop(step, seconds)


def torch_eval(spec, x, batch, seconds):
    """Seconds per evaluation batch (logits and predicted classes)."""
    net = tm.Net(spec)
    net.eval()
    nb, i = len(x) // batch, [0]

    def forward():
        k = i[0] % nb
        i[0] += 1
        with torch.no_grad():
            net(x[k * batch:(k + 1) * batch]).argmax(1)
    return timed_loop(forward, seconds)


def torch_conv(layer, batch, seconds):
    """Seconds per call of F.conv2d's forward, and of the input and the
    weight gradient as autograd computes each alone (bias included in the
    forward, as in xentcc's layer; its gradient is a separate kernel on both
    sides and not timed)."""
    cin, cout, k, s, p, hw = layer
    conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
    x = torch.rand(batch, cin, hw, hw, requires_grad=True)
    with torch.no_grad():
        fwd = timed_loop(lambda: conv(x), seconds)
    y = conv(x)
    gy = torch.randn_like(y)
    dx = timed_loop(lambda: torch.autograd.grad(y, x, gy, retain_graph=True), seconds)
    dw = timed_loop(lambda: torch.autograd.grad(y, conv.weight, gy, retain_graph=True), seconds)
    return fwd, dx, dw


#
# Models: training and evaluation, side by side
#

class ModelResult:
    def __init__(self, name, batch):
        self.name, self.batch = name, batch
        self.compile = None
        self.xc_train, self.pt_train, self.xc_eval, self.pt_eval = [], [], [], []
        self.profiles = []   # (seconds per step, Profile) of each xentcc training run
        self.error = None


def bench_model(name, rel, batch_override, args, work):
    path = os.path.join(ROOT, rel)
    with open(path) as f:
        text = f.read()
    mdir = os.path.join(work, name)
    os.makedirs(mdir, exist_ok=True)
    if batch_override:
        # A copy at the batch asked, without the augmentation PyTorch's side
        # does not do either (both time the network on the same tensors).
        text = re.sub(r"batch_size: *[0-9]+", f"batch_size: {batch_override}", text)
        text = re.sub(r"(?m)^ *augment:.*\n", "", text)
        path = os.path.join(mdir, os.path.basename(rel))
        with open(path, "w") as f:
            f.write(text)
    spec = yaml.safe_load(text)
    inp = spec["input"]
    c, h, w = inp["channels"], inp["height"], inp["width"]
    batch = (spec.get("train") or {}).get("batch_size", 32)
    classes = len(spec.get("classes") or []) or 10
    norm = (spec.get("data") or {}).get("normalize") or {}
    mean, std = norm.get("mean", [0.0] * c), norm.get("std", [1.0] * c)
    loss_kind, _ = tm.loss_of(spec, tm.Net(spec))
    binary = loss_kind == "bce"
    res = ModelResult(name, batch)
    exe = os.path.join(mdir, name)

    say(f"== {name}: compiling {rel}")
    res.compile = compile_model(args.xentcc, path, exe, os.path.join(mdir, "compile.log"))
    if res.compile is None:
        res.error = "compile failed"
        return res

    # Calibration: a few steps and batches say how much data covers the time.
    data_dir = os.path.join(mdir, "data")
    Data(data_dir, "train", 4 * batch, c, h, w, classes, 1)
    Data(data_dir, "t10k", 3 * batch, c, h, w, classes, 2)
    p = xc_train(exe + "-train", data_dir, 3, args.threads, mdir, "calibrate")
    e = p and xc_eval(exe + "-eval", os.path.join(mdir, "calibrate.safetensors"), data_dir,
                      args.threads, mdir, "calibrate")
    if not p or not e:
        res.error = "calibration run failed"
        return res
    most = MAX_IMAGES // batch
    steps = min(max(5, math.ceil(1.2 * args.seconds / p.per_step())), most - 1)
    batches = min(max(5, math.ceil(1.2 * args.seconds / e.per_step())), most)
    say(f"   data: {steps + 1} training batches, {batches} test batches of {batch}")
    train = Data(data_dir, "train", (steps + 1) * batch, c, h, w, classes, 1)
    test = Data(data_dir, "t10k", batches * batch, c, h, w, classes, 2)
    xt, yt = train.tensors(mean, std, binary, batch)
    xe, _ = test.tensors(mean, std, binary, batch)

    for pair in range(args.pairs):
        tag = f"run{pair + 1}"
        p = xc_train(exe + "-train", data_dir, steps, args.threads, mdir, tag)
        pt = torch_train(spec, xt, yt, batch, args.seconds)
        e = p and xc_eval(exe + "-eval", os.path.join(mdir, f"{tag}.safetensors"), data_dir,
                          args.threads, mdir, tag)
        pe = torch_eval(spec, xe, batch, args.seconds)
        if not p or not e:
            res.error = "a run failed"
            return res
        res.xc_train.append(batch / p.per_step())
        res.pt_train.append(batch / pt)
        res.xc_eval.append(batch / e.per_step())
        res.pt_eval.append(batch / pe)
        res.profiles.append((p.per_step(), p))
        say(f"   pair {pair + 1}/{args.pairs}: training {res.xc_train[-1]:.0f} / "
            f"{res.pt_train[-1]:.0f} img/s, evaluation {res.xc_eval[-1]:.0f} / "
            f"{res.pt_eval[-1]:.0f} img/s (xentcc / PyTorch)")
    return res


def median_profile(res):
    """The xentcc training run of median speed."""
    runs = sorted(res.profiles, key=lambda t: t[0])
    return runs[(len(runs) - 1) // 2][1]


def dx_layer(rows, i):
    """conv2d_grad_input rows carry no layer name; the profile lists the
    weight gradient of the same layer, with the same FLOPs, next to it."""
    for j in (i + 1, i - 1):
        if 0 <= j < len(rows) and rows[j]["kernel"] == "conv2d_grad_weight" and \
                rows[j]["flops_per_call"] == rows[i]["flops_per_call"]:
            return rows[j]["layer"].replace(".weight.grad", "") + " (inferred)"
    return "?"


def hottest_convs(res, peak, top):
    """The `top` convolution kernels of the median training run by time:
    (kernel, layer, ms per step, GFLOP/s, share of peak)."""
    p = median_profile(res)
    out = []
    for i, r in enumerate(p.rows):
        if not r["kernel"].startswith("conv2d") or not r["calls"] or r["seconds"] <= 0:
            continue
        layer = r["layer"] or dx_layer(p.rows, i)
        g = r["flops_per_call"] * r["calls"] / r["seconds"] * 1e-9
        out.append((r["seconds"], r["kernel"], layer, 1e3 * r["seconds"] / p.steps, g, g / peak))
    out.sort(reverse=True)
    return [o[1:] for o in out[:top]]


#
# The convolution sweep
#

def conv_out(hw, k, s, p):
    return (hw + 2 * p - k) // s + 1


def sweep_yaml(layer, batch):
    """A tiny model around the layer. A 1x1 convolution from one channel in
    front makes the layer's input channels (the input has at most 4) and,
    having weights, makes the layer's input gradient needed."""
    cin, cout, k, s, p, hw = layer
    return f"""model: conv
input: {{channels: 1, height: {hw}, width: {hw}}}
classes: ["0", "1"]
layers:
  - {{name: pre, conv2d: {{out_channels: {cin}, kernel: 1}}}}
  - {{name: conv, conv2d: {{out_channels: {cout}, kernel: {k}, stride: {s}, padding: {p}}}}}
  - flatten
  - {{name: fc, linear: {{out_features: 2}}}}
loss: cross_entropy
optimizer: {{sgd: {{lr: 0.001}}}}
train: {{epochs: 1, batch_size: {batch}, shuffle: false}}
data: {{format: idx, train: data, test: data}}
"""


def xc_conv_times(p):
    """(seconds per call, flops per call) of each direction of the layer: the
    sums over its kernels (directions), or (None, None) if it has none."""
    out = [[None, None] for _ in DIRECTIONS]
    rows = [r for r in p.rows if r["function"] == "grad"]
    for r, d in zip(rows, directions(rows)):
        if d is None or not r["calls"]:
            continue
        t, fl = out[d]
        out[d] = [(t or 0) + r["seconds"] / r["calls"], (fl or 0) + r["flops_per_call"]]
    return [tuple(x) for x in out]


def bench_sweep(args, work):
    picked = args.layers or (QUICK_SWEEP if args.quick else range(len(SWEEP)))
    layers = [(i, SWEEP[i]) for i in picked]
    results = []
    seconds = args.seconds / 5   # per direction and side
    for n, (index, layer) in enumerate(layers):
        cin, cout, k, s, p, hw = layer
        name = f"conv{n:02d}"
        ldir = os.path.join(work, "sweep", name)
        os.makedirs(ldir, exist_ok=True)
        yaml_path = os.path.join(ldir, "conv.yaml")
        with open(yaml_path, "w") as f:
            f.write(sweep_yaml(layer, SWEEP_BATCH))
        say(f"== sweep {n + 1}/{len(layers)} (layer {index}): {cin}->{cout} k{k} s{s} p{p} {hw}x{hw}")
        r = {"index": index, "layer": layer, "xc": [[], [], []], "pt": [[], [], []],
             "flops": [None] * 3, "error": None}
        results.append(r)
        exe = os.path.join(ldir, "conv")
        if compile_model(args.xentcc, yaml_path, exe, os.path.join(ldir, "compile.log")) is None:
            r["error"] = "compile failed"
            continue
        data_dir = os.path.join(ldir, "data")
        Data(data_dir, "train", 3 * SWEEP_BATCH, 1, hw, hw, 2, 1)
        cal = xc_train(exe + "-train", data_dir, 2, args.threads, ldir, "calibrate")
        if not cal:
            r["error"] = "training run failed"
            continue
        per_step = sum(t for t, _ in xc_conv_times(cal) if t) or cal.per_step()
        steps = min(max(5, math.ceil(3 * seconds / per_step)), 2000)
        Data(data_dir, "train", (steps + 1) * SWEEP_BATCH, 1, hw, hw, 2, 1)
        for pair in range(args.pairs):
            prof = xc_train(exe + "-train", data_dir, steps, args.threads, ldir, f"run{pair + 1}")
            if not prof:
                r["error"] = "training run failed"
                break
            for d, (t, fl) in enumerate(xc_conv_times(prof)):
                r["xc"][d].append(t)
                r["flops"][d] = fl
            for d, t in enumerate(torch_conv(layer, SWEEP_BATCH, seconds)):
                r["pt"][d].append(t)
    return results


#
# Tables
#

def fmt_ratio(r):
    """A speed ratio, in bold when xentcc is the slower."""
    if r is None:
        return "—"
    return f"**{r:.2f}x**" if r < 1 else f"{r:.2f}x"


def fmt_int(x):
    return "—" if x is None else f"{x:,.0f}"


def model_tables(results, peak):
    lines = ["| model | batch | compile | xentcc training | PyTorch training | ratio | "
             "xentcc evaluation | PyTorch evaluation | ratio | xentcc training GFLOP/s | "
             "share of peak: xentcc / PyTorch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r.error and not r.xc_train:
            lines.append(f"| `{r.name}` | {r.batch} | {r.compile or 0:.1f} s | {r.error} "
                         "| | | | | | | |")
            continue
        xt, pt, xe, pe = (median(v) for v in (r.xc_train, r.pt_train, r.xc_eval, r.pt_eval))
        # PyTorch does the same arithmetic per image (the FLOPs of xentcc's step).
        g = median([p.flops / p.wall * 1e-9 for _, p in r.profiles])
        g_pt = g * pt / xt
        lines.append(f"| `{r.name}` | {r.batch} | {r.compile:.1f} s | {fmt_int(xt)} img/s | "
                     f"{fmt_int(pt)} img/s | {fmt_ratio(xt / pt)} | {fmt_int(xe)} img/s | "
                     f"{fmt_int(pe)} img/s | {fmt_ratio(xe / pe)} | {g:.1f} | "
                     f"{100 * g / peak:.1f}% / {100 * g_pt / peak:.1f}% |")
    hot = ["| model | kernel | layer | ms/step | GFLOP/s | share of peak |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r.profiles:
            for kernel, layer, ms, g, share in hottest_convs(r, peak, 3):
                hot.append(f"| `{r.name}` | {kernel} | {layer} | {ms:.2f} | {g:.1f} | "
                           f"{100 * share:.1f}% |")
    return lines, hot


def targets_table(mres, sres, peak):
    """Issue 11's targets, each with what this run measured."""
    rows = ["| target (issue 11) | measured | met |", "| --- | --- | --- |"]

    def row(what, value, ok):
        rows.append(f"| {what} | {value} | {'yes' if ok else '**no**'} |")
    by = {r.name: r for r in mres if r.xc_train}
    ratio = lambda a, b: median(a) / median(b)
    if "cifar10" in by:
        x = ratio(by["cifar10"].xc_train, by["cifar10"].pt_train)
        row("`cifar10` training at batch 32: 4x PyTorch", f"{x:.2f}x", x >= 4)
    for name in ("vgg_small", "allconv"):
        if name in by:
            r = by[name]
            x = ratio(r.xc_train, r.pt_train)
            row(f"`{name}` training: 2.5x PyTorch", f"{x:.2f}x", x >= 2.5)
            x = ratio(r.xc_eval, r.pt_eval)
            row(f"`{name}` evaluation: 3x PyTorch", f"{x:.2f}x", x >= 3)
            shares = [share for _, _, _, _, share in hottest_convs(r, peak, 3)]
            row(f"`{name}`: its 3 hottest convolution kernels at 60% of the FMA peak",
                " / ".join(f"{100 * s:.1f}%" for s in shares), min(shares) >= 0.6)
    if "resnet8" in by:
        x = ratio(by["resnet8"].xc_train, by["resnet8"].pt_train)
        row(f"`resnet8` training at batch {by['resnet8'].batch}: 2.5x PyTorch (issue 14)",
            f"{x:.2f}x", x >= 2.5)
    for r in mres:
        if r.name in ("catdog", "vgg_small", "allconv") and r.compile is not None:
            limit = 1 if r.name == "catdog" else 2
            row(f"`xentcc {r.name}.yaml` compiles in at most {limit} s", f"{r.compile:.1f} s",
                r.compile <= limit)
    if sres:
        n = slower = 0
        for r in sres:
            for d in range(3):
                xc, pt = median(r["xc"][d]), median(r["pt"][d])
                n += 1
                slower += xc is None or pt is None or pt < xc
        row("convolution sweep: no layer slower than PyTorch, any direction",
            f"slower (or failed) in {slower} of {n} layer-directions", slower == 0)
    return rows


def sweep_table(results):
    lines = ["| # | layer: in→out channels, kernel, stride, padding, size | MFLOP/call | "
             "forward: xentcc / PyTorch ms | input grad | weight grad | xentcc GFLOP/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    slower, counted, logs = [0, 0, 0], [0, 0, 0], [[], [], []]
    for r in results:
        n = r["index"]
        cin, cout, k, s, p, hw = r["layer"]
        o = conv_out(hw, k, s, p)
        desc = f"{cin}→{cout}, {k}x{k}, s{s}, p{p}, {hw}x{hw}→{o}x{o}"
        if r["error"]:
            lines.append(f"| {n} | {desc} | | {r['error']} | | | |")
            continue
        cells, gflops = [], []
        for d in range(3):
            xc, pt = median(r["xc"][d]), median(r["pt"][d])
            if xc is None or pt is None:
                cells.append("no kernel" if xc is None else "—")
                gflops.append("—")
                continue
            ratio = pt / xc
            counted[d] += 1
            slower[d] += ratio < 1
            logs[d].append(math.log(ratio))
            cells.append(f"{1e3 * xc:.3f} / {1e3 * pt:.3f} = {fmt_ratio(ratio)}")
            gflops.append(f"{r['flops'][d] / xc * 1e-9:.1f}")
        mflop = r["flops"][0] * 1e-6 if r["flops"][0] else 0
        lines.append(f"| {n} | {desc} | {mflop:.1f} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{' / '.join(gflops)} |")
    summary = []
    for d, label in enumerate(DIRECTIONS):
        if counted[d]:
            gm = math.exp(sum(logs[d]) / len(logs[d]))
            summary.append(f"{label}: xentcc slower in {slower[d]} of {counted[d]} layers, "
                           f"geometric mean ratio {gm:.2f}x")
    return lines, summary


def main():
    if "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:])
    ap = argparse.ArgumentParser(
        description="xentcc against PyTorch 1.13 in one run: FMA peak, models, convolution sweep.",
        parents=[ISA_ARG])
    ap.add_argument("--threads", type=int, default=2, help="threads on both sides (default 2)")
    ap.add_argument("--pairs", type=int, help="xentcc/PyTorch run pairs (default 3; --quick 1)")
    ap.add_argument("--seconds", type=float,
                    help="time each training or evaluation timing covers (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one pair, 8 sweep layers")
    ap.add_argument("--only", choices=["seeds", "cnns", "sweep"], help="run one part only")
    ap.add_argument("--models", help="these models only, comma-separated (e.g. vgg_small,resnet8)")
    ap.add_argument("--layers", help="these sweep layers only, by number, comma-separated (e.g. 5,10)")
    ap.add_argument("--out", help="where the work and speed.md go (default build/bench)")
    args = ap.parse_args()
    try:
        args.layers = [int(i) for i in args.layers.split(",")] if args.layers else None
    except ValueError:
        ap.error("--layers takes numbers of the sweep's table, comma-separated (e.g. 5,10)")
    if args.layers and not all(0 <= i < len(SWEEP) for i in args.layers):
        ap.error(f"--layers: the sweep's layers are numbered 0 to {len(SWEEP) - 1}")
    if args.threads < 1 or (args.pairs is not None and args.pairs < 1):
        ap.error("--threads and --pairs take a positive number")
    args.pairs = args.pairs or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.xentcc = os.environ.get("XENTCC", os.path.join(ROOT, "build", "bin", "xentcc"))
    if not os.access(args.xentcc, os.X_OK):
        die(f"no compiler at {args.xentcc}; build first (cmake --build build) or set XENTCC")
    isa = ISAS[args.isa]
    args.xentcc = [args.xentcc] + ([f"-mcpu={isa['mcpu']}"] if isa["mcpu"] else [])

    out = os.path.abspath(args.out) if args.out else os.path.join(ROOT, "build", "bench")
    work = os.path.join(out, "speed")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(args.threads)
    load_before = open("/proc/loadavg").read().split()[:3]
    started = datetime.datetime.now(datetime.timezone.utc)

    say("== FMA peak (bench/fma_peak.c)")
    peak_exe = build_fma_peak(work, isa["march"])
    first = fma_peak(peak_exe, args.threads)
    say("   " + ", ".join(f"{t} thread{'s' if t > 1 else ''}: {g:.1f} GFLOP/s"
                          for t, g in sorted(first.items())))

    models = [m for m in MODELS if args.only in (None, m[2]) and
              (not args.models or m[0] in args.models.split(","))]
    mres = [bench_model(name, rel, b, args, work) for name, rel, _, b in models]
    sres = bench_sweep(args, work) if args.only in (None, "sweep") and not args.models else []
    # Measured again at the end: on a shared machine the start alone can
    # catch a busy moment; the better of the two is the peak.
    last = fma_peak(peak_exe, args.threads)
    peaks = {t: max(g, last[t]) for t, g in first.items()}
    peak = peaks[args.threads]

    load_after = open("/proc/loadavg").read().split()[:3]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    md = [f"### {started:%Y-%m-%d %H:%M} UTC: {args.threads} thread{'s' if args.threads > 1 else ''}"
          f", {args.pairs} pair{'s' if args.pairs > 1 else ''}{', --quick' if args.quick else ''}"
          f"{', --isa ' + args.isa if args.isa != 'native' else ''}",
          "",
          f"{cpu}, {os.cpu_count()} cores, load average {' '.join(load_before)} before and "
          f"{' '.join(load_after)} after; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
          f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}; "
          f"PyTorch {torch.__version__} (oneDNN: {onednn_isa()})"
          f"{'; ' + isa['says'] if isa['says'] else ''}. "
          "FMA peak (bench/fma_peak.c, best of 7 at the start and 7 at the end): " +
          ", ".join(f"{g:.1f} GFLOP/s on {t} thread{'s' if t > 1 else ''}"
                    for t, g in sorted(peaks.items())) + ".", ""]
    if mres:
        runtime_peak = median([p.runtime_peak for r in mres for _, p in r.profiles])
        lines, hot = model_tables(mres, peak)
        md += [f"Training and evaluation on synthetic data in memory, images/s, median of "
               f"{args.pairs}; ratio = xentcc / PyTorch (bold: xentcc slower); share of the "
               f"{peak:.1f} GFLOP/s peak: the convolutions' and linear layers' FLOPs per "
               f"second of the whole step. (The runtime's own peak loop measured "
               f"{runtime_peak or 0:.1f} GFLOP/s after the runs.)", ""] + lines
        md += ["", "The hottest convolution kernels of xentcc's training step (median run; "
               "the profile leaves an input gradient's layer blank, the weight gradient's "
               "row beside it names it):", ""] + hot
    if sres:
        lines, summary = sweep_table(sres)
        # The long table folds away on GitHub; the summary stays in view.
        md += ["", f"Single convolution layers at batch {SWEEP_BATCH}, per call, median of "
               f"{args.pairs}: xentcc's kernels in NAME-train --profile-csv against PyTorch's "
               "F.conv2d (bias included) and each gradient alone through autograd; ratio = "
               "PyTorch time / xentcc time. " + "; ".join(summary) + ".", "",
               f"<details><summary>The {len(sres)} layers</summary>", ""] + lines + \
            ["", "</details>"]
    md += ["", "Issue 11's targets:", ""] + targets_table(mres, sres, peak)
    text = "\n".join(md)
    print(text)
    with open(os.path.join(out, "speed.md"), "a") as f:
        f.write("\n" + text + "\n")
    say(f"(appended to {os.path.join(out, 'speed.md')})")


if __name__ == "__main__":
    main()
