#!/usr/bin/python3
"""The schedules, differentially, on the real executables: random small
models compiled plainly (-O0: the lowering's loop nests) and scheduled (the
default -O3: fuse-epilogue, pad, tile, vectorize, parallelize), trained the
same steps from the same seed on the same generated data, must agree.

  scripts/diff_models.py --workdir DIR [--models N] [--seed S] [--xentcc PATH] [--mcpu CPU]
                         [--perturb] [--keep] [--verbose]

Model i of seed S is drawn from (S, i) alone; its YAML is written to
DIR/mI/mI.yaml and named in every failure, so one model reproduces with
its YAML and `xentcc`. The draws cover, over the first few models: conv
layers on grey (1-channel IDX) and 3-channel (IDX4) images of odd sizes,
with padding, stride 2, 1x1 kernels and non-square ones, a conv followed
directly by relu and one by batch norm then relu (epilogue fusions); max and
average pooling with padding; dropout; linear stacks of odd widths;
cross-entropy (class weights, label smoothing) and BCE with logits
(pos_weight); SGD (momentum, nesterov, weight decay), Adam and AdamW; a
partial last batch (rows the loss ignores). Checks, per model:

  loss      every step of --log, -O0 against -O3     |a - b| <= 1e-5 |b| + 1e-7
  weights   scripts/compare_weights.py, -O0 vs -O3   |a - b| <= 2e-5 |b| + 2e-6
            and -O3 with --threads 1 against 2       bit for bit
  eval      NAME-eval of -O0 and -O3 on the same (-O3) weights:
            --predict --json probabilities           |a - b| <= 2e-6
            --json on the test set                   equal

Tolerances: the two programs sum in different orders (the tile pass splits a
sum into vector lanes), so a step's gradients differ by rounding, ~1e-7
relative, and the 6-8 SGD/Adam steps here carry that to a few 1e-7 in the
weights. Over 80 models (seeds 1-5) the worst differences were an eighth
of the weight tolerance, a tenth of the probabilities' and a twelfth of the
loss's, while a wrong element in any kernel moves them by far more
(--perturb's 1e-3 fails). Conv layers feeding batch norm are drawn without
bias, as usual: their gradient is zero up to rounding, which Adam would
scale up to whole steps. Thread counts must not change a bit (docs/ir.md).

--perturb scales one weight of the -O3 run by 1 + 1e-3 before comparing:
the check must then fail (the test's own test). Exit status 0 when
everything agrees, 1 when not, 2 on a usage or setup error.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import make_test_data as td  # noqa: E402

WEIGHT_RTOL, WEIGHT_ATOL = 2e-5, 2e-6
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7
PROB_ATOL = 2e-6
EPOCHS = 2


def die(msg):
    print(f"diff_models: error: {msg}", file=sys.stderr)
    sys.exit(2)


class Mismatch(Exception):
    pass


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        raise Mismatch(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r.stdout


#
# Random models
#

def window_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def draw_conv(rng, h, w, must):
    """A conv2d layer fitting an input of h x w; `must` asks for some
    settings: 'stride2', 'pad', 'k1', 'nonsquare'."""
    for _ in range(1000):
        kh = rng.choice([1, 2, 3, 3, 5])
        kw = kh if rng.random() < 0.7 else rng.choice([1, 2, 3, 4])
        if "k1" in must:
            kh = kw = 1
        if "nonsquare" in must and kh == kw:
            kw = kh + 1
        s = rng.choice([1, 1, 2])
        if "stride2" in must:
            s = 2
        p = rng.choice([0, 0, 1, 2])
        if "pad" in must and p == 0:
            p = 1
        if h + 2 * p < kh or w + 2 * p < kw:
            continue
        oh, ow = window_out(h, kh, s, p), window_out(w, kw, s, p)
        o = rng.randint(1, 7)
        spec = {"out_channels": o, "kernel": kh if kh == kw else [kh, kw], "stride": s, "padding": p}
        return spec, (o, oh, ow)
    die("no conv layer fits")


def draw_pool(rng, h, w):
    """A max or average pooling layer (padding at most half the kernel), or None."""
    k = rng.choice([2, 2, 3])
    p = rng.choice([0, 0, 1])
    s = rng.choice([1, 2, k])
    if h + 2 * p < k or w + 2 * p < k:
        return None, (h, w)
    kind = rng.choice(["maxpool2d", "avgpool2d"])
    return {kind: {"kernel": k, "stride": s, "padding": p}}, (window_out(h, k, s, p),
                                                              window_out(w, k, s, p))


def random_model(seed, i):
    """Model i of seed: a dict ready for YAML, and what it covers."""
    rng = random.Random(seed * 1000003 + i)
    binary = i % 3 == 2
    conv = i % 4 != 3  # every fourth model is a plain MLP
    c = 1 if i % 2 == 0 else 3  # grey IDX images, or IDX4 with 3 channels
    h, w = rng.choice([5, 7, 9, 11, 13]), rng.choice([5, 6, 7, 9, 11, 13])
    layers, covers = [], ["grey" if c == 1 else "rgb", f"{h}x{w}"]
    ch, hh, ww = c, h, w
    if conv:
        blocks = rng.randint(1, 2)
        for b in range(blocks):
            # The first models take the settings the test must see.
            must = {0: {"stride2", "pad"}, 1: {"pad", "nonsquare"}, 2: {"k1"}}.get(i, set()) if b == 0 else set()
            spec, (ch, hh, ww) = draw_conv(rng, hh, ww, must)
            bn = i == 1 and b == 0 or rng.random() < 0.25
            if bn:
                spec["bias"] = False  # batch norm follows: its gradient would be rounding only
            elif rng.random() < 0.3:
                spec["bias"] = False
            layers.append({"name": f"conv{b + 1}", "conv2d": spec})
            covers.append("conv k%s s%d p%d" % (spec["kernel"], spec["stride"], spec["padding"]))
            if bn:
                layers.append({"name": f"bn{b + 1}", "batchnorm2d": {"momentum": rng.choice([0.1, 0.3])}})
                covers.append("batchnorm")
            act = "relu" if (i == 0 and b == 0) or rng.random() < 0.8 else "sigmoid"
            layers.append(act)
            if act == "relu" and not bn:
                covers.append("conv+relu")
            if rng.random() < 0.6 or i == 0:
                pool, (ph, pw) = draw_pool(rng, hh, ww)
                if pool:
                    layers.append(pool)
                    hh, ww = ph, pw
                    covers.append(next(iter(pool)))
    layers.append("flatten")
    if rng.random() < 0.4 or i == 1:
        layers.append({"dropout": {"p": rng.choice([0.2, 0.5])}})
        covers.append("dropout")
    for j in range(rng.randint(0 if conv else 1, 2)):
        width = rng.choice([3, 5, 7, 9, 13, 17, 19, 23, 31, 37])
        layers.append({"name": f"fc{j + 1}", "linear": {"out_features": width}})
        layers.append("relu" if rng.random() < 0.8 else "sigmoid")
        covers.append(f"linear {width}")
    classes = 1 if binary else rng.randint(2, 5)
    layers.append({"name": "out", "linear": {"out_features": classes}})
    if binary:
        loss = {"bce_with_logits": {"pos_weight": round(rng.uniform(0.5, 3), 2)}} if rng.random() < 0.7 \
            else "bce_with_logits"
        covers.append("bce")
    else:
        ce = {}
        if rng.random() < 0.5:
            ce["label_smoothing"] = rng.choice([0.05, 0.1])
        if rng.random() < 0.5:
            ce["weight"] = [round(rng.uniform(0.5, 2), 2) for _ in range(classes)]
        loss = {"cross_entropy": ce}
        covers.append("cross_entropy")
    kind = ["sgd", "adam", "sgd", "adamw"][i % 4]
    if kind == "sgd":
        opt = {"lr": rng.choice([0.01, 0.05]), "momentum": rng.choice([0.0, 0.9])}
        if opt["momentum"] and rng.random() < 0.5:
            opt["nesterov"] = True
        if rng.random() < 0.5:
            opt["weight_decay"] = 0.001
    else:
        opt = {"lr": rng.choice([0.001, 0.005])}
        if rng.random() < 0.5:
            opt["weight_decay"] = 0.01
    covers.append(kind)
    batch = rng.randint(2, 7)
    model = {
        "model": f"m{i}",
        "input": {"channels": c, "height": h, "width": w},
        "layers": layers,
        "loss": loss,
        "optimizer": {kind: opt},
        "train": {"epochs": EPOCHS, "batch_size": batch, "seed": rng.randint(0, 99)},
        "data": {"format": "idx", "train": "data", "test": "data",
                 "normalize": {"mean": [0.5] * c, "std": [0.25] * c}},
    }
    if binary:
        model["classes"] = ["no", "yes"]
    return model, covers, classes


def features(model):
    """The settings a model exercises, by name, for the run's `covered:` line."""
    f = set()
    c, h, w = (model["input"][k] for k in ("channels", "height", "width"))
    f.add("grey IDX" if c == 1 else "3-channel IDX4")
    if h % 2 or w % 2:
        f.add("odd image")
    layers = model["layers"]
    kinds = [l if isinstance(l, str) else next(k for k in l if k != "name") for l in layers]
    for j, (l, kind) in enumerate(zip(layers, kinds)):
        nxt = kinds[j + 1] if j + 1 < len(kinds) else None
        if kind == "conv2d":
            spec = l["conv2d"]
            f.add("conv")
            f |= {"conv stride 2"} if spec["stride"] == 2 else set()
            f |= {"conv padding"} if spec["padding"] else set()
            f |= {"conv 1x1"} if spec["kernel"] == 1 else set()
            f |= {"conv non-square"} if isinstance(spec["kernel"], list) else set()
            f |= {"conv+relu"} if nxt == "relu" else set()
        elif kind == "linear":
            f.add("linear" if nxt is None else "hidden linear")
            f |= {"linear+relu"} if nxt == "relu" else set()
        elif kind in ("maxpool2d", "avgpool2d"):
            f.add(kind)
            f |= {"pool padding"} if l[kind]["padding"] else set()
        elif kind in ("batchnorm2d", "dropout", "sigmoid"):
            f.add(kind)
            f |= {"batchnorm2d+relu"} if kind == "batchnorm2d" and nxt == "relu" else set()
    if "batchnorm2d" not in kinds:
        f.add("partial last batch")
    loss = model["loss"]
    lname = loss if isinstance(loss, str) else next(iter(loss))
    opts = {} if isinstance(loss, str) else loss[lname]
    f.add({"cross_entropy": "cross-entropy", "bce_with_logits": "BCE with logits"}[lname])
    f |= {{"label_smoothing": "label smoothing", "weight": "class weights",
           "pos_weight": "pos_weight"}[k] for k in opts}
    (oname, o), = model["optimizer"].items()
    f.add(oname)
    f |= {k for k in ("nesterov", "weight_decay") if o.get(k)}
    f |= {"momentum"} if o.get("momentum") else set()
    return f


def write_yaml(path, model):
    import yaml
    with open(path, "w") as f:
        f.write("# Drawn by scripts/diff_models.py.\n")
        yaml.safe_dump(model, f, default_flow_style=None, sort_keys=False)


def write_data(root, model, classes, rng):
    """IDX train and test sets (idx3 grey, idx4 for 3 channels) of the
    model's input size; a partial last batch. Returns the predict images."""
    from PIL import Image
    i = model["input"]
    c, h, w = i["channels"], i["height"], i["width"]
    batch = model["train"]["batch_size"]
    k = max(classes, 2)
    os.makedirs(root, exist_ok=True)
    for pre, n in (("train", 3 * batch + 1), ("t10k", 2 * batch + 3)):
        x, y = td.synthetic(rng, n, h, w, c, k)
        if c == 1:
            td.write_idx(os.path.join(root, f"{pre}-images-idx3-ubyte.gz"), x[..., 0])
        else:
            td.write_idx(os.path.join(root, f"{pre}-images-idx4-ubyte.gz"), x.transpose(0, 3, 1, 2))
        td.write_idx(os.path.join(root, f"{pre}-labels-idx1-ubyte.gz"), y)
    files = []
    x, _ = td.synthetic(rng, batch + 2, h, w, c, k)  # more than a batch: two forward calls
    for j, img in enumerate(x):
        p = os.path.join(root, f"predict{j}.png")
        Image.fromarray(img[..., 0] if c == 1 else img).save(p)
        files.append(p)
    return files


#
# Building, training, evaluating, comparing
#

def load_log(path):
    with open(path) as f:
        rows = f.read().split("\n")[1:]
    return [float(r.split(",")[2]) for r in rows if r]


def perturb(path):
    """Scales the largest F32 weight of a safetensors file by 1 + 1e-3, in
    place, leaving every other byte as it was."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    best = None
    for name, e in header.items():
        if name == "__metadata__" or e["dtype"] != "F32" or e["data_offsets"][0] == e["data_offsets"][1]:
            continue
        a = np.frombuffer(raw, np.float32, (e["data_offsets"][1] - e["data_offsets"][0]) // 4,
                          8 + n + e["data_offsets"][0])
        j = int(np.abs(a).argmax())
        if best is None or abs(a[j]) > best[0]:
            best = (abs(a[j]), 8 + n + e["data_offsets"][0] + 4 * j)
    at = best[1]
    raw[at:at + 4] = struct.pack("<f", struct.unpack("<f", raw[at:at + 4])[0] * (1 + 1e-3))
    with open(path, "wb") as f:
        f.write(raw)


def check_model(args, i):
    model, covers, classes = random_model(args.seed, i)
    name = model["model"]
    work = os.path.join(args.workdir, name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    yaml_path = os.path.join(work, f"{name}.yaml")
    write_yaml(yaml_path, model)
    data = os.path.join(work, "data")
    predict = write_data(data, model, classes, np.random.default_rng(args.seed * 1000003 + i))
    exe = {}
    for level in ("O0", "O3"):
        exe[level] = os.path.join(work, f"{name}-{level}")
        run([args.xentcc, yaml_path, f"-{level}", "-o", exe[level]] +
            ([f"-mcpu={args.mcpu}"] if getattr(args, "mcpu", None) else []))
    w, logs = {}, {}
    for level, threads in (("O0", 2), ("O3", 2), ("O3", 1)):
        tag = f"{level}.t{threads}"
        w[tag] = os.path.join(work, f"{tag}.safetensors")
        logs[tag] = os.path.join(work, f"{tag}.csv")
        run([exe[level] + "-train", "--data", data, "--save", w[tag], "--log", logs[tag],
             "--threads", str(threads), "--no-eval", "--quiet"])
    if args.perturb:
        perturb(w["O3.t2"])
    worst = {"loss": 0.0, "weights": 0.0, "probabilities": 0.0}  # fractions of the tolerances
    l0, l3 = load_log(logs["O0.t2"]), load_log(logs["O3.t2"])
    if len(l0) != len(l3) or not l0:
        raise Mismatch(f"step counts differ: {len(l0)} at -O0, {len(l3)} at -O3")
    for step, (a, b) in enumerate(zip(l3, l0)):
        worst["loss"] = max(worst["loss"], abs(a - b) / (LOSS_ATOL + LOSS_RTOL * abs(b)))
        if not abs(a - b) <= LOSS_ATOL + LOSS_RTOL * abs(b):
            raise Mismatch(f"loss of step {step + 1}: {a!r} at -O3, {b!r} at -O0")
    compare = [sys.executable, os.path.join(HERE, "compare_weights.py")]
    tolerance = ["--rtol", str(WEIGHT_RTOL), "--atol", str(WEIGHT_ATOL)]
    run(compare + [w["O3.t2"], w["O0.t2"]] + tolerance)
    t3, t0 = td.read_safetensors(w["O3.t2"])[0], td.read_safetensors(w["O0.t2"])[0]
    for n in t3:
        a, b = t3[n].astype(np.float64), t0[n].astype(np.float64)
        if a.size:
            r = np.abs(a - b) / (WEIGHT_ATOL + WEIGHT_RTOL * np.abs(b))
            worst["weights"] = max(worst["weights"], float(r.max()))
    run(compare + [w["O3.t1"], w["O3.t2"], "--rtol", "0", "--atol", "0"])
    if getattr(args, "check_perturbed", False):
        # The comparison can fail: a copy of the -O3 weights, one scaled by
        # 1 + 1e-3 (as --perturb does, without compiling and training again).
        scaled = os.path.join(work, "perturbed.safetensors")
        shutil.copyfile(w["O3.t2"], scaled)
        perturb(scaled)
        r = subprocess.run(compare + [scaled, w["O0.t2"]] + tolerance, capture_output=True,
                           text=True)
        if r.returncode != 1:
            raise Mismatch(f"compare_weights.py exits {r.returncode}, not 1, on a weight scaled "
                           "by 1 + 1e-3")
    probs, metrics = {}, {}
    for level in ("O0", "O3"):
        ev = [exe[level] + "-eval", "--weights", w["O3.t2"], "--threads", "2", "--quiet", "--json"]
        probs[level] = json.loads(run(ev + ["--predict"] + predict))["predictions"]
        metrics[level] = json.loads(run(ev + ["--data", data]))
    for p0, p3 in zip(probs["O0"], probs["O3"]):
        for cls, a in p3["probabilities"].items():
            b = p0["probabilities"][cls]
            worst["probabilities"] = max(worst["probabilities"], abs(a - b) / PROB_ATOL)
            if not abs(a - b) <= PROB_ATOL:
                raise Mismatch(f"{os.path.basename(p3['file'])}: probability of {cls} "
                               f"{a!r} at -O3, {b!r} at -O0")
    # The counts exactly; the loss, a mean of the logits' log-probabilities,
    # to rounding as the step losses.
    loss = {level: metrics[level].pop("loss") for level in metrics}
    if metrics["O0"] != metrics["O3"]:
        raise Mismatch(f"test-set metrics differ:\n-O0 {metrics['O0']}\n-O3 {metrics['O3']}")
    if not abs(loss["O0"] - loss["O3"]) <= LOSS_ATOL + LOSS_RTOL * abs(loss["O0"]):
        raise Mismatch(f"test-set loss {loss['O3']!r} at -O3, {loss['O0']!r} at -O0")
    return covers, features(model), len(l0), worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--models", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    ap.add_argument("--mcpu", help="xentcc's -mcpu for both builds (default: the host's)")
    ap.add_argument("--perturb", action="store_true",
                    help="scale one -O3 weight by 1 + 1e-3: the comparison must fail")
    ap.add_argument("--keep", action="store_true", help="keep the work folders of agreeing models")
    ap.add_argument("--verbose", action="store_true", help="the worst differences of each model")
    args = ap.parse_args()
    if os.sep in args.xentcc:
        args.xentcc = os.path.abspath(args.xentcc)
    elif not shutil.which(args.xentcc):
        die(f"{args.xentcc} not found; pass --xentcc PATH or put build/bin on PATH")
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    failed, covered = 0, set()
    for i in range(args.models):
        name = f"m{i}"
        try:
            covers, feats, steps, worst = check_model(args, i)
        except Mismatch as e:
            failed += 1
            yaml_path = os.path.join(args.workdir, name, f"{name}.yaml")
            print(f"{name}: MISMATCH (seed {args.seed}, {yaml_path}): {e}")
            continue
        covered |= feats
        print(f"{name}: -O0 and -O3 agree over {steps} steps: {', '.join(covers)}")
        if args.verbose:
            print("    worst, as a fraction of the tolerance: " +
                  ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
        if not args.keep:
            shutil.rmtree(os.path.join(args.workdir, name), ignore_errors=True)
    print(f"{args.models - failed} of {args.models} models agree")
    print(f"covered: {', '.join(sorted(covered))}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
