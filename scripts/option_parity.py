#!/usr/bin/python3
"""Every option of the model file, held against PyTorch 1.13 in the real
executables.

  scripts/option_parity.py --workdir DIR [--xentcc PATH] [--batches N] MODEL.yaml...
  scripts/option_parity.py --coverage DIR [--xentcc PATH]

For each model: synthetic data in its data.format and input shape (or, when
the YAML asks for data.convert / data.resize, in another shape) is written
once and read by both sides. PyTorch 1.13 trains the model as the YAML
describes it (scripts/torch_model.py) from seeded initial weights, which
xentcc's NAME-train starts from too (--init); PyTorch takes xentcc's sample
order and augmentation draws (shuffle, random crop and flip are ported from
the runtime's xoshiro256** stream), so both sides see the same batches.
NAME-train runs as the YAML says: its epochs, batch, seed, shuffle, data
paths (rewritten to the generated data). precision: bf16 / fp16 runs
PyTorch with autocast's rounding points and float32 sums
(torch_model.low_forward), fp16 with GradScaler's algorithm
(torch_model.CpuGradScaler). Then it compares:

  loss      every step, relative                       <= 1e-4
  lr        every step (the --log column) to PyTorch's  <= 1e-6 relative
  scale     precision fp16: GradScaler's scale and whether the step was
            skipped, every step (the --log columns)     equal
  weights   each tensor's relative L2 error             <= 1e-4
            num_batches_tracked                         equal
  eval      NAME-eval's metrics on the test data or the held-out part equal
            PyTorch's evaluation of its own final model, and its loss
            within 1e-4 relative (data.test_augment: both average each
            image's logits with its mirror image's)
  output    'training NAME on' and a loss line every train.log_every steps

--coverage DIR checks that every option `xentcc --list-options` prints (the
frontend's own table) is used by some DIR/*.yaml, each of which must run
this script on itself: adding an option to the frontend without a test
that compiles it to executables and trains with it fails here.

Exit status 0 when everything holds, 1 when not, 2 on a usage or setup error.
"""
import argparse
import csv
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import make_test_data as td  # noqa: E402
import torch_model as tm  # noqa: E402

LOSS_RTOL, LR_RTOL, WEIGHT_RTOL = 1e-4, 1e-6, 1e-4
THREADS = 2


def die(msg):
    print(f"option_parity: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r.stdout


#
# The model file's settings, with the frontend's defaults
#

class Recipe:
    def __init__(self, path):
        with open(path) as f:
            self.spec = yaml.safe_load(f)
        s = self.spec
        self.path = path
        self.name = s.get("model", re.sub(r"[^A-Za-z0-9_]", "_",
                                          os.path.splitext(os.path.basename(path))[0]))
        i = s["input"]
        self.c, self.h, self.w = i["channels"], i["height"], i["width"]
        t = s.get("train") or {}
        self.epochs = t.get("epochs", 10)
        self.batch = t.get("batch_size", 32)
        self.shuffle = t.get("shuffle", True)
        self.seed = t.get("seed", 0)
        self.log_every = t.get("log_every", 100)
        layers = [tm.opts(l)[0] for l in s["layers"]]
        # batch-norm models drop the partial batch (runtime/README.md).
        self.drop_last = t.get("drop_last", False) or bool({"batchnorm2d", "batchnorm1d"} & set(layers))
        d = s["data"]
        self.format = d["format"]
        self.val_split = d.get("val_split", 0.0)
        self.has_test = "test" in d
        norm = d.get("normalize") or {}
        self.mean = norm.get("mean", [0.0] * self.c)
        self.std = norm.get("std", [1.0] * self.c)
        aug = d.get("augment") or {}
        self.crop = (aug.get("random_crop") or {}).get("padding", 0)
        self.flip = bool(aug.get("random_horizontal_flip", False))
        self.test_flip = bool((d.get("test_augment") or {}).get("horizontal_flip", False))
        self.convert = d.get("convert")
        self.resize = bool(d.get("resize", False))
        loss = s["loss"]
        kind = loss if isinstance(loss, str) else [k for k in loss if k != "l2"][0]
        self.binary = kind == "bce_with_logits"
        self.precision = s.get("precision", "fp32")

    def stored_shape(self):
        """The shape the generated data is stored in: the input's unless the
        YAML asks for a conversion."""
        if self.format == "cifar10":
            return 3, 32, 32
        c = self.c
        if self.convert:
            c = 1 if self.c == 3 else 3
        h, w = (self.h + 3, self.w + 5) if self.resize else (self.h, self.w)
        return c, h, w


#
# Data: generated, written in the model's format, read back as the runtime does
#

def to_input(r, chw):
    """A stored CHW uint8 image as the runtime hands it to the model: PIL's
    convert and bilinear resize where the shapes differ."""
    from PIL import Image
    c, h, w = chw.shape
    if (c, h, w) == (r.c, r.h, r.w):
        return chw
    img = Image.fromarray(chw[0] if c == 1 else chw.transpose(1, 2, 0))
    img = img.convert("L" if r.c == 1 else "RGB")
    if (h, w) != (r.h, r.w):
        img = img.resize((r.w, r.h), Image.BILINEAR)
    a = np.asarray(img)
    return a[None] if r.c == 1 else a.transpose(2, 0, 1)


def class_names(r, net):
    if r.binary:
        return r.spec.get("classes", ["neg", "pos"])
    with torch.no_grad():
        k = net.eval()(torch.zeros(1, r.c, r.h, r.w)).shape[1]
    net.train()
    return r.spec.get("classes", [str(i) for i in range(k)])


def write_set(r, root, part, x, y, names):
    """Writes images x ([n, h, w, c] uint8) and labels y as `part` (train or
    test) of the model's format under root; returns the path the YAML names."""
    c = x.shape[3]
    if r.format == "cifar10":
        os.makedirs(root, exist_ok=True)
        td.write_cifar(os.path.join(root, "data_batch_1.bin" if part == "train" else "test_batch.bin"),
                       x, y)
        return root
    if r.format == "idx":
        os.makedirs(root, exist_ok=True)
        pre = "train" if part == "train" else "t10k"
        if c == 1:
            td.write_idx(os.path.join(root, f"{pre}-images-idx3-ubyte.gz"), x[..., 0])
        else:
            td.write_idx(os.path.join(root, f"{pre}-images-idx4-ubyte.gz"), x.transpose(0, 3, 1, 2))
        td.write_idx(os.path.join(root, f"{pre}-labels-idx1-ubyte.gz"), y)
        return root
    from PIL import Image
    d = os.path.join(root, part)
    os.makedirs(d, exist_ok=True)
    for i, (img, lab) in enumerate(zip(x, y)):
        pil = Image.fromarray(img[..., 0] if c == 1 else img)
        if r.format == "folder":
            pil.save(os.path.join(d, f"{i:05d}.{names[lab]}.png"))
        else:
            os.makedirs(os.path.join(d, names[lab]), exist_ok=True)
            pil.save(os.path.join(d, names[lab], f"{i:05d}.png"))
    return d


def runtime_order(r, y, names):
    """Indices of the written samples in the order the runtime lists them:
    file order, or for an ImageFolder tree class folders by name, then files."""
    n = len(y)
    if r.format != "imagefolder":
        return list(range(n))
    return sorted(range(n), key=lambda i: (names[y[i]].encode(), f"{i:05d}"))


def make_data(r, net, work, rng, batches=3):
    """Writes the training (and test) data; returns the YAML's data paths and
    what each side reads: (train images CHW, labels), (eval images, labels)."""
    names = class_names(r, net)
    k = len(names)
    sc, sh, sw = r.stored_shape()
    # `batches` full batches per epoch (3 unless --batches says) and, unless
    # it is dropped, a partial one.
    ntrain = batches * r.batch + max(1, r.batch // 2)
    if r.val_split:
        ntrain = int(ntrain / (1 - r.val_split)) + 1
    ntest = 2 * r.batch + 3
    x, y = td.synthetic(rng, ntrain, sh, sw, sc, k)
    root = os.path.join(work, "data")
    paths = {"train": write_set(r, root, "train", x, y, names)}
    order = runtime_order(r, y, names)
    samples = [(to_input(r, x[i].transpose(2, 0, 1)), int(y[i])) for i in order]
    if r.has_test:
        xt, yt = td.synthetic(rng, ntest, sh, sw, sc, k)
        paths["test"] = write_set(r, root, "test", xt, yt, names)
        test = [(to_input(r, xt[i].transpose(2, 0, 1)), int(yt[i]))
                for i in runtime_order(r, yt, names)]
    elif r.val_split and r.format in ("folder", "imagefolder"):
        held = tm.split_mask(len(samples), r.val_split, r.seed)
        test = [s for s, h in zip(samples, held) if h]
        samples = [s for s, h in zip(samples, held) if not h]
    else:
        test = None
    return paths, samples, test


#
# The PyTorch side
#

def transform(r, chw, aug):
    """runtime/data.c xc_transform with torch ops: RandomCrop(padding) then
    RandomHorizontalFlip with xentcc's draws, ToTensor, Normalize."""
    x = torch.from_numpy(np.ascontiguousarray(chw))
    if aug is not None:
        dy, dx, flip = tm.augment_draws(aug, r.crop, r.flip)
        p = r.crop
        if p:
            x = torch.nn.functional.pad(x, (p, p, p, p))[:, p + dy:p + dy + r.h, p + dx:p + dx + r.w]
        if flip:
            x = x.flip(2)
    x = x.float().div(255)
    mean = torch.tensor(r.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(r.std, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def labels_of(r, ys):
    t = torch.tensor(ys)
    return t.float().unsqueeze(1) if r.binary else t.long()


def torch_train(r, net, samples, init_path):
    td.write_safetensors(init_path, {k: v.numpy() for k, v in net.state_dict().items()})
    _, criterion = tm.loss_of(r.spec, net)
    opt = tm.optimizer_of(r.spec, net.parameters())
    n = len(samples)
    steps = n // r.batch if r.drop_last else -(-n // r.batch)
    per_step = tm.schedule_kind(r.spec)[3]
    sched, _ = tm.scheduler_of(r.spec, opt, r.epochs * steps if per_step else r.epochs)
    augment = r.crop > 0 or r.flip
    scaler = tm.CpuGradScaler(r.spec) if r.precision == "fp16" else None
    losses, lrs, scales = [], [], []
    step = 0
    net.train()
    for epoch in range(r.epochs):
        order = tm.epoch_order(n, r.shuffle, r.seed, epoch)
        aug = tm.XcRng(r.seed, 1000000 + epoch) if augment else None
        for it in range(steps):
            idx = order[it * r.batch:(it + 1) * r.batch]
            x = torch.stack([transform(r, samples[i][0], aug) for i in idx])
            y = labels_of(r, [samples[i][1] for i in idx])
            step += 1
            net.set_step(step)
            lrs.append(opt.param_groups[0]["lr"])
            opt.zero_grad()
            loss = criterion(net(x), y)
            if scaler:
                used = scaler.scale_value()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scales.append((used, int(scaler.found_inf)))
                scaler.update()
            else:
                loss.backward()
                opt.step()
            losses.append(loss.item())
            if per_step and sched:
                sched.step()
        if not per_step and sched:
            sched.step()
    return losses, lrs, scales


def torch_eval(r, net, test):
    """The confusion matrix and the loss of PyTorch's evaluation of test."""
    net.eval()
    k = 2 if r.binary else None
    _, criterion = tm.loss_of(r.spec, net)
    with torch.no_grad():
        x = torch.stack([transform(r, s[0], None) for s in test])
        out = net(x)
        if r.test_flip:  # data.test_augment: {horizontal_flip: true}
            out = (out + net(x.flip(3))) / 2
        pred = (torch.sigmoid(out[:, 0]) > 0.5).long() if r.binary else out.argmax(1)
        loss = criterion(out, labels_of(r, [s[1] for s in test])).item()
    k = k or out.shape[1]
    conf = np.zeros((k, k), np.int64)
    for s, p in zip(test, pred.numpy()):
        conf[s[1], int(p)] += 1
    return conf, loss


def metrics(conf):
    total = conf.sum()
    m = {"accuracy": np.trace(conf) / total if total else 0.0}
    if conf.shape[0] == 2:
        tp, fp, fn = conf[1, 1], conf[0, 1], conf[1, 0]
        p = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        m.update(precision=p, recall=rc, f1=2 * p * rc / (p + rc) if p + rc else 0.0)
    return m


#
# xentcc's side
#

def rewrite_yaml(r, work, paths):
    """The model file with its data paths pointing at the generated data."""
    spec = dict(r.spec)
    spec["data"] = dict(spec["data"])
    spec["data"]["train"] = paths["train"]
    if "test" in paths:
        spec["data"]["test"] = paths["test"]
    elif r.has_test:
        del spec["data"]["test"]
    out = os.path.join(work, os.path.basename(r.path))
    with open(out, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return out


def ours(r, xentcc, work, yaml_path, init_path):
    exe = os.path.join(work, r.name)
    run([xentcc, yaml_path, "-o", exe])
    log, saved = exe + ".log.csv", exe + ".final.safetensors"
    out = run([exe + "-train", "--init", init_path, "--log", log, "--save", saved,
               "--threads", str(THREADS)])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    weights, _ = td.read_safetensors(saved)
    ev = None
    if r.has_test or r.val_split:
        js = run([exe + "-eval", "--weights", saved, "--json", "--threads", str(THREADS), "--quiet"])
        ev = json.loads(js.strip().splitlines()[-1])
    scales = [(float(np.float32(x["scale"])), int(x["skipped"])) for x in rows if "scale" in x]
    return [float(x["loss"]) for x in rows], [float(x["lr"]) for x in rows], weights, ev, out, scales


#
# One model
#

def check_model(path, xentcc, workdir, batches=3):
    r = Recipe(path)
    work = os.path.join(workdir, r.name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.manual_seed(0)
    net = tm.Net(r.spec, r.seed)
    rng = np.random.default_rng(1)
    paths, samples, test = make_data(r, net, work, rng, batches)
    init = os.path.join(work, "init.safetensors")
    t_losses, t_lrs, t_scales = torch_train(r, net, samples, init)
    o_losses, o_lrs, o_w, o_ev, out, o_scales = ours(r, xentcc, work, rewrite_yaml(r, work, paths),
                                                     init)

    ok = True
    print(f"\n== {os.path.basename(path)}: {len(t_losses)} steps, batch {r.batch}, "
          f"{r.epochs} epochs, {r.format} data ==")

    def row(what, diff, tol, good, note=""):
        nonlocal ok
        ok &= bool(good)
        print(f"  {what:<34} {diff:>11.3e} {tol:>9.1e}  {'ok' if good else 'FAIL'}{note}")

    if len(o_losses) != len(t_losses):
        print(f"  log has {len(o_losses)} steps, PyTorch took {len(t_losses)}: FAIL")
        return False
    rel = [abs(o - t) / max(abs(t), 1e-6) for o, t in zip(o_losses, t_losses)]
    i = int(np.argmax(rel))
    row("loss (relative)", rel[i], LOSS_RTOL, rel[i] <= LOSS_RTOL,
        f"  (step {i + 1}: ours {o_losses[i]:.9g}, torch {t_losses[i]:.9g})")
    rel = [abs(o - t) / t for o, t in zip(o_lrs, t_lrs)]
    i = int(np.argmax(rel))
    row("lr (relative)", rel[i], LR_RTOL, rel[i] <= LR_RTOL,
        f"  (step {i + 1}: ours {o_lrs[i]:.9g}, torch {t_lrs[i]:.9g}; "
        f"torch's lr runs {min(t_lrs):.3g}..{max(t_lrs):.3g})")
    if t_scales or o_scales:
        bad = [i + 1 for i, (o, t) in enumerate(zip(o_scales, t_scales)) if o != t]
        same = len(o_scales) == len(t_scales) and not bad
        row("GradScaler scale and skips", float(len(bad)), 0, same,
            f"  ({sum(k for _, k in t_scales)} of {len(t_scales)} steps skipped; scale "
            f"{t_scales[0][0]:g} to {t_scales[-1][0]:g}"
            f"{'; first differing: step ' + str(bad[0]) if bad else ''})" if t_scales else "")
    t_w = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    if set(o_w) != set(t_w):
        print(f"  state_dict names differ: ours {sorted(o_w)}, torch {sorted(t_w)}: FAIL")
        return False
    for name, t in t_w.items():
        o = o_w[name]
        if t.dtype == np.int64:
            row(f"{name}", float(abs(int(o) - int(t))), 0, int(o) == int(t),
                f"  (ours {int(o)}, torch {int(t)})")
            continue
        err = float(np.linalg.norm(o.astype(np.float64) - t)) / max(float(np.linalg.norm(t)), 1e-30)
        row(f"{name} (rel. L2)", err, WEIGHT_RTOL, err <= WEIGHT_RTOL)
    if test is not None:
        t_conf, t_loss = torch_eval(r, net, test)
        o_conf = np.array(o_ev["confusion_matrix"], np.int64)
        same = o_conf.shape == t_conf.shape and (o_conf == t_conf).all()
        row(f"eval confusion ({len(test)} images)", 0.0 if same else 1.0, 0, same)
        d = abs(float(o_ev["loss"]) - t_loss) / max(abs(t_loss), 1e-6)
        row("eval loss (relative)", d, LOSS_RTOL, d <= LOSS_RTOL,
            f"  (ours {float(o_ev['loss']):.9g}, torch {t_loss:.9g})")
        for key, t in metrics(t_conf).items():
            d = abs(float(o_ev[key]) - float(t))
            row(f"eval {key}", d, 1e-9, d <= 1e-9)
    lines = len(re.findall(r"^\[\d+, +\d+\] loss: ", out, re.M))
    steps = len(t_losses) // r.epochs
    want = r.epochs * (steps // r.log_every)
    row(f"loss lines every {r.log_every} steps", float(abs(lines - want)), 0, lines == want,
        f"  ({lines}, want {want})")
    named = f"training {r.name} on " in out
    row("names the model", 0.0 if named else 1.0, 0, named)
    print(f"{os.path.basename(path)}: {'PASS' if ok else 'FAIL'}")
    return ok


#
# Coverage: every option the frontend accepts is used by a tested model
#

def coverage(xentcc, folder):
    accepted = run([xentcc, "--list-options"]).split()
    models = sorted(glob.glob(os.path.join(folder, "*.yaml")))
    if not models:
        die(f"no *.yaml in {folder}")
    used, ok = {}, True
    for m in models:
        with open(m) as f:
            text = f.read()
        if "option_parity.py" not in text or "RUN:" not in text:
            print(f"{m}: does not run option_parity.py on itself (a '# RUN:' line): FAIL")
            ok = False
        for opt in run([xentcc, m, "--list-options"]).split():
            used.setdefault(opt, os.path.basename(m))
    missing = [o for o in accepted if o not in used]
    unknown = [o for o in used if o not in accepted]
    print(f"{len(accepted)} options accepted by the frontend, {len(accepted) - len(missing)} "
          f"used by the {len(models)} models of {folder}")
    for o in missing:
        print(f"  not compiled to executables and trained by any model: {o}")
    for o in unknown:
        print(f"  used by {used[o]} but not in --list-options (the schema table is incomplete): {o}")
    return ok and not missing and not unknown


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--workdir")
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    ap.add_argument("--coverage", metavar="DIR")
    ap.add_argument("--batches", type=int, default=3, metavar="N",
                    help="full training batches per epoch (default 3): longer runs")
    args = ap.parse_args()
    xentcc = os.path.abspath(args.xentcc) if os.sep in args.xentcc else args.xentcc
    torch.set_num_threads(THREADS)
    if args.coverage:
        sys.exit(0 if coverage(xentcc, args.coverage) else 1)
    if not args.models or not args.workdir:
        die("give --workdir and one or more MODEL.yaml, or --coverage DIR")
    ok = True
    for m in args.models:
        ok &= check_model(m, xentcc, os.path.abspath(args.workdir), args.batches)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
