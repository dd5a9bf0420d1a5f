#!/usr/bin/env python3
"""PyTorch parity of the generated executables: trains the seed's recipes for
64 steps in PyTorch 1.13 and with xentcc's NAME-train from the same initial
weights, data and order, then compares per-step losses, final weights and
NAME-eval's metrics with PyTorch's evaluation of its own final model.

  scripts/parity.py --recipe cifar10|catdog|all --workdir DIR [--xentcc PATH]
                    [--partial | --custom-loss]

--partial trains on 496 samples for 4 epochs instead of 2,048 for one: each
epoch ends with a batch of 16, which PyTorch (drop_last=False) runs as is and
xentcc pads to the compiled 32 with rows the loss ignores.

--custom-loss trains the source article's custom loss, ce_loss + 0.01 *
torch.norm(model.fc3.weight, p=2) (BCE for catdog), with
CosineAnnealingLR(T_max=10, eta_min=1e-6) stepped once per epoch: the YAML
gets loss.l2 and schedule.cosine, and 8 epochs of 256 samples make the 64
steps, so the learning rate moves every 8 steps; the logged lr of every step
must match PyTorch's within 1e-6 relative.

Exit status 0 when everything is within tolerance, 1 when not; without
python3-torch it prints SKIP and exits 0 (or --skip-code). Tolerances:
  loss     |ours - torch| / |torch|                    <= 1e-4 per step
  weights  ||ours - torch||_2 / ||torch||_2             <= 1e-4 per tensor
           (relative error of each tensor as a whole; the largest element
           difference is printed too; an element-wise check cannot hold, below)
  eval     confusion matrices identical; accuracy, precision, recall, F1 equal
When something is off it also lists the reference trajectory's near-ties
(ReLU inputs near 0, max-pool windows whose two largest values nearly tie):
a one-ulp difference in summation order flips such a decision, and the
weights of that channel or unit then drift by much more than rounding.
Over 64 steps a few such flips are expected for any implementation that does
not add in exactly PyTorch's order (they were traced one by one: e.g. two
pool inputs one ulp apart at step 17), so individual small weights can be off
by 2-5e-4 of their own size while every tensor as a whole stays within 1e-4.
"""
import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import numpy as np
    import make_test_data as td
except ImportError as e:  # checked again, with the skip message, in main()
    np = td = e

STEPS, BATCH, THREADS = 64, 32, 2
LOSS_RTOL = 1e-4
LR_RTOL = 1e-6
WEIGHT_RTOL = 1e-4
L2_WEIGHT, T_MAX, ETA_MIN = 0.01, 10, 1e-6
NTEST = 512


def die(msg):
    print(f"parity: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(cmd, **kw):
    """Runs a command; on failure shows it with its output and stops."""
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}")
    return r.stdout


#
# Data: written here, read back by both sides from the same files.
#

def make_cifar(work, rng, n):
    d = os.path.join(work, "cifar")
    os.makedirs(d, exist_ok=True)
    x, y = td.synthetic(rng, n, 32, 32, 3, 10)
    td.write_cifar(os.path.join(d, "data_batch_1.bin"), x, y)
    x, y = td.synthetic(rng, NTEST, 32, 32, 3, 10)
    td.write_cifar(os.path.join(d, "test_batch.bin"), x, y)
    return os.path.join(d, "data_batch_1.bin"), os.path.join(d, "test_batch.bin")


def make_catdog(work, rng, n):
    """32x32 PNGs (no resize on either side) named N.cat.png / N.dog.png with
    random classes and unpadded numbers, so byte order (1, 10, 100, 1000, 1001,
    ...) interleaves the classes and differs from numeric order."""
    from PIL import Image
    dirs = []
    for part, n in (("train", n), ("test", NTEST)):
        d = os.path.join(work, "catdog", part)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        labels = rng.integers(0, 2, n)
        for i in range(n):
            x, _ = td.synthetic(rng, 1, 32, 32, 3, 1)
            # Dogs a little brighter than cats, with overlap, so 64 steps of
            # Adam at 1e-4 learn something but not everything.
            x = (x.astype(np.int64) // 2 + (80 if labels[i] else 48)).astype(np.uint8)
            Image.fromarray(x[0]).save(os.path.join(d, f"{i}.{('cat', 'dog')[labels[i]]}.png"))
        dirs.append(d)
    return dirs


def catdog_yaml(models, work):
    """models/catdog.yaml without data.val_split: with it the runtime holds
    out a seeded 20% of the --data folder (its own PRNG), and the training
    stream would no longer be the folder in byte order. Everything else (the
    network, loss, optimizer, batch) is the file as shipped."""
    text = open(os.path.join(models, "catdog.yaml")).read()
    new, n = re.subn(r"^\s*val_split:.*\n", "", text, flags=re.M)
    if n != 1:
        die("models/catdog.yaml: expected exactly one 'val_split:' line to remove")
    path = os.path.join(work, "catdog.yaml")
    with open(path, "w") as f:
        f.write(new)
    return path


def custom_loss_yaml(path, work, recipe):
    """The recipe with the article's custom loss term and a cosine schedule."""
    import yaml
    with open(path) as f:
        spec = yaml.safe_load(f)
    loss = spec["loss"]
    kind = loss if isinstance(loss, str) else [k for k in loss if k != "l2"][0]
    spec["loss"] = {kind: None if isinstance(loss, str) else loss[kind],
                    "l2": [{"param": "fc3.weight", "weight": L2_WEIGHT}]}
    spec["schedule"] = {"cosine": {"t_max": T_MAX, "eta_min": ETA_MIN}}
    out = os.path.join(work, recipe + "-custom.yaml")
    with open(out, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return out


def to_tensor(torch, u8):
    """ToTensor + Normalize(0.5, 0.5) in float32, as torchvision computes it."""
    x = torch.from_numpy(np.ascontiguousarray(u8)).float().div(255)
    return x.sub(0.5).div(0.5)


#
# The PyTorch side
#

def make_net(torch, outputs):
    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):
        # The PyTorch tutorial's network, layers created in the same order so
        # that torch.manual_seed(0) gives the tutorial's initial weights.
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, outputs)

        def forward(self, x, probe=None):
            # probe(name, tensor) sees each ReLU's input and each pool's input,
            # the places where a rounding-level difference can flip a discrete
            # choice (gradient through or not; which element is the max).
            probe = probe or (lambda name, t: None)
            x = self.conv1(x)
            probe("relu1", x)
            x = F.relu(x)
            probe("pool1", x)
            x = self.pool(x)
            x = self.conv2(x)
            probe("relu2", x)
            x = F.relu(x)
            probe("pool2", x)
            x = self.pool(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            probe("relu3", x)
            x = self.fc2(F.relu(x))
            probe("relu4", x)
            return self.fc3(F.relu(x))

    return Net()


class NearTies:
    """Counts the discrete decisions of the reference trajectory that sit
    within a relative distance of a tie: ReLU inputs with |x| <= t * max|x|
    (of that layer's batch tensor) and 2x2 max-pool windows whose two largest
    (positive) values differ by <= t * max|x|. A one-ulp difference in a
    convolution's summation order can flip such a decision, which sends one
    sample's gradient elsewhere and moves the trajectory by far more than
    rounding; when weights disagree, these say whether such ties exist."""
    LEVELS = (1e-7, 1e-6)

    def __init__(self, torch):
        self.torch, self.step = torch, 0
        self.count = {}
        self.worst = {}  # layer -> (relative gap, step, index)

    def __call__(self, name, t):
        t = t.detach()
        scale = float(t.abs().max()) or 1.0
        if name.startswith("pool"):
            n, c, h, w = t.shape
            v = t.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
            top, _ = v.topk(2, dim=-1)
            gap = (top[..., 0] - top[..., 1]) / scale
            gap = self.torch.where(top[..., 0] > 0, gap, self.torch.full_like(gap, float("inf")))
        else:
            gap = t.abs() / scale
        counts = self.count.setdefault(name, [0] * len(self.LEVELS))
        for i, level in enumerate(self.LEVELS):
            counts[i] += int((gap <= level).sum())
        g = float(gap.min())
        if name not in self.worst or g < self.worst[name][0]:
            idx = np.unravel_index(int(gap.argmin()), tuple(gap.shape))
            self.worst[name] = (g, self.step, [int(i) for i in idx])

    def report(self):
        print("near-ties on the PyTorch trajectory (relative to the layer's max |x|):")
        levels = " ".join(f"{'<=' + format(l, 'g'):>8}" for l in self.LEVELS)
        print(f"  {'decision':<8} {levels}  closest (step, [sample, channel/unit, ...])")
        for name in sorted(self.count):
            g, step, idx = self.worst[name]
            cells = " ".join(f"{c:>8}" for c in self.count[name])
            print(f"  {name:<8} {cells}  {g:.1e} at step {step}, {idx}")


def torch_run(torch, recipe, train, test, init_path, epochs, custom):
    """epochs passes over train in order, batches of 32 and a smaller last one
    (a DataLoader with shuffle=False, drop_last=False), from fresh seeded
    weights (saved to init_path first), then the evaluation of the final
    model. custom: the l2 term and the cosine schedule of --custom-loss.
    Returns (losses, lrs, final state_dict as numpy, confusion matrix,
    near-ties)."""
    torch.manual_seed(0)
    binary = recipe == "catdog"
    net = make_net(torch, 1 if binary else 10)
    td.write_safetensors(init_path, {k: v.numpy() for k, v in net.state_dict().items()})
    if binary:
        crit = torch.nn.BCEWithLogitsLoss()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    else:
        crit = torch.nn.CrossEntropyLoss()
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T_MAX, eta_min=ETA_MIN) \
        if custom else None
    x_all, y_all = train
    losses, lrs = [], []
    ties = NearTies(torch)
    net.train()
    starts = list(range(0, len(x_all), BATCH)) * epochs
    for step, first in enumerate(starts):
        ties.step = step + 1
        sl = slice(first, first + BATCH)
        x = to_tensor(torch, x_all[sl])
        y = torch.from_numpy(y_all[sl])
        y = y.float().unsqueeze(1) if binary else y.long()
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss = crit(net(x, ties), y)
        if custom:
            loss = loss + L2_WEIGHT * torch.norm(net.fc3.weight, p=2)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if sched and (step + 1) % (len(starts) // epochs) == 0:
            sched.step()  # once per epoch

    net.eval()
    x_test, y_test = test
    k = 2 if binary else 10
    conf = np.zeros((k, k), np.int64)
    with torch.no_grad():
        out = net(to_tensor(torch, x_test))
        pred = (torch.sigmoid(out[:, 0]) > 0.5).long() if binary else out.argmax(1)
    for t, p in zip(y_test, pred.numpy()):
        conf[int(t), int(p)] += 1
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    return losses, lrs, weights, conf, ties


def metrics(conf):
    """accuracy and, for 2 classes, precision/recall/F1 of class 1 (0 when
    undefined), as NAME-eval defines them."""
    total = conf.sum()
    m = {"accuracy": np.trace(conf) / total if total else 0.0}
    if conf.shape[0] == 2:
        tp, fp, fn = conf[1, 1], conf[0, 1], conf[1, 0]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        m.update(precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0)
    return m


#
# xentcc's side
#

def ours_run(xentcc, yaml, name, work, data, test, init_path, epochs):
    out = os.path.join(work, name)
    t0 = time.time()
    run([xentcc, yaml, "-o", out])
    t_compile = time.time() - t0
    log, saved = out + ".log.csv", out + ".final.safetensors"
    run([out + "-train", "--data", data, "--init", init_path, "--no-shuffle",
         "--epochs", str(epochs), "--no-eval", "--log", log, "--save", saved,
         "--threads", str(THREADS), "--quiet"])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    lrs = [float(r["lr"]) for r in rows]
    weights, _ = td.read_safetensors(saved)
    js = run([out + "-eval", "--weights", saved, "--data", test, "--json", "--threads",
              str(THREADS), "--quiet"])
    ev = json.loads(js.strip().splitlines()[-1])
    return losses, lrs, weights, ev, t_compile


#
# Comparison
#

def compare(recipe, ref, ours):
    t_losses, t_lrs, t_w, t_conf, ties = ref
    o_losses, o_lrs, o_w, o_ev = ours
    ok = True
    print(f"\n== {recipe}: {STEPS} steps, batch {BATCH}, {THREADS} threads ==")
    print(f"{'quantity':<28} {'max difference':>16} {'tolerance':>12}  result")

    def row(what, diff, tol, good, note=""):
        nonlocal ok
        ok &= bool(good)
        print(f"{what:<28} {diff:>16.3e} {tol:>12.1e}  {'ok' if good else 'FAIL'}{note}")

    if len(o_losses) != STEPS:
        print(f"log has {len(o_losses)} rows, expected {STEPS}: FAIL")
        return False
    rel = [abs(o - t) / abs(t) for o, t in zip(o_losses, t_losses)]
    worst = int(np.argmax(rel))
    row("loss (relative)", rel[worst], LOSS_RTOL, rel[worst] <= LOSS_RTOL,
        f"  (worst step {worst + 1}: ours {o_losses[worst]:.9g}, torch {t_losses[worst]:.9g})")
    print(f"{'':<28} first step: ours {o_losses[0]:.9g}, torch {t_losses[0]:.9g}; "
          f"last: ours {o_losses[-1]:.9g}, torch {t_losses[-1]:.9g}")
    rel = [abs(o - t) / t for o, t in zip(o_lrs, t_lrs)]
    worst = int(np.argmax(rel))
    row("lr (relative)", rel[worst], LR_RTOL, rel[worst] <= LR_RTOL,
        f"  (worst step {worst + 1}: ours {o_lrs[worst]:.9g}, torch {t_lrs[worst]:.9g}; "
        f"torch's runs {min(t_lrs):.3g}..{max(t_lrs):.3g})")

    if set(o_w) != set(t_w):
        print(f"weight names differ: ours {sorted(o_w)}, torch {sorted(t_w)}: FAIL")
        return False
    for name, t in t_w.items():
        o = o_w[name]
        if o.shape != t.shape:
            row(f"{name} shape {list(o.shape)}", float("inf"), 0, False, f" vs {list(t.shape)}")
            continue
        diff = np.abs(o.astype(np.float64) - t)
        i = np.unravel_index(np.argmax(diff), diff.shape)
        err = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(t)), 1e-30)
        row(f"{name} (rel. L2)", err, WEIGHT_RTOL, err <= WEIGHT_RTOL,
            f"  (max abs {diff[i]:.2e}; at {list(i)}: ours {o[i]:.9g}, torch {t[i]:.9g})")

    o_conf = np.array(o_ev["confusion_matrix"], np.int64)
    same = o_conf.shape == t_conf.shape and (o_conf == t_conf).all()
    row("confusion matrix (cells)", float(np.abs(o_conf - t_conf).sum()) if o_conf.shape == t_conf.shape
        else float("inf"), 0, same)
    for key, t in metrics(t_conf).items():
        d = abs(float(o_ev[key]) - float(t))
        row(f"eval {key}", d, 1e-9, d <= 1e-9, f"  (ours {float(o_ev[key]):.6f}, torch {float(t):.6f})")
    if not same:
        print(f"confusion matrix ours:\n{o_conf}\ntorch:\n{t_conf}")
    if not ok:
        ties.report()
    print(f"{recipe}: {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=["cifar10", "catdog", "all"], default="all")
    ap.add_argument("--workdir", required=True, help="scratch directory (emptied first)")
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    ap.add_argument("--models", default=os.path.join(os.path.dirname(HERE), "models"))
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data")
    ap.add_argument("--skip-code", type=int, default=0, help="exit status without torch")
    ap.add_argument("--partial", action="store_true",
                    help="4 epochs of 496 samples: every epoch ends with a batch of 16")
    ap.add_argument("--custom-loss", action="store_true",
                    help="the l2 term on fc3.weight and a cosine schedule, 8 epochs of 256")
    args = ap.parse_args()
    # Every way makes STEPS steps.
    ntrain, epochs = (15 * BATCH + BATCH // 2, 4) if args.partial else \
        (8 * BATCH, 8) if args.custom_loss else (STEPS * BATCH, 1)
    try:
        import torch
        import numpy  # noqa: F401
    except ImportError as e:
        print(f"SKIP: PyTorch parity needs python3-torch ({e}); apt-get install python3-torch")
        sys.exit(args.skip_code)
    torch.set_num_threads(THREADS)
    xentcc = os.path.abspath(args.xentcc) if os.sep in args.xentcc else args.xentcc

    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rng = np.random.default_rng(args.data_seed)
    recipes = ["cifar10", "catdog"] if args.recipe == "all" else [args.recipe]
    ok = True
    for recipe in recipes:
        t0 = time.time()
        init = os.path.join(work, recipe + ".init.safetensors")
        if recipe == "cifar10":
            data, test = make_cifar(work, rng, ntrain)
            train_set = td.load_cifar_bin(data)
            test_set = td.load_cifar_bin(test)
            yaml = os.path.join(args.models, "cifar10.yaml")
        else:
            data, test = make_catdog(work, rng, ntrain)
            train_set = td.load_folder(data, ["cat", "dog"], (32, 32))
            test_set = td.load_folder(test, ["cat", "dog"], (32, 32))
            yaml = catdog_yaml(args.models, work)
        if len(train_set[0]) != ntrain:
            die(f"{data}: read {len(train_set[0])} samples, wrote {ntrain}")
        if args.custom_loss:
            yaml = custom_loss_yaml(yaml, work, recipe)
        ref = torch_run(torch, recipe, train_set, test_set, init, epochs, args.custom_loss)
        *ours, t_compile = ours_run(xentcc, yaml, recipe, work, data, test, init, epochs)
        ok &= compare(recipe, ref, ours)
        print(f"({recipe}: compile {t_compile:.2f} s, total {time.time() - t0:.1f} s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
