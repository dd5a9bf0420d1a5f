"""A YAML model file as PyTorch 1.13 builds it, for the tests that hold xentcc
against PyTorch: the network (nn modules named as the frontend names the
parameters), the criterion with its l2 terms, the optimizer, the schedule,
and xentcc's random draws (shuffles, augmentation, splits, dropout masks),
so that both sides see the same batches. Imported by torch_reference.py
(the evaluator's reference numbers) and option_parity.py (the executables).

Dropout cannot use PyTorch's RNG: xentcc's mask is a hash of (seed, layer
index, step, element), ir/dropout_hash.h, reproduced here bit for bit; the
same for the xoshiro256** stream behind shuffles and augmentation
(runtime/util.c, runtime/loader.c, runtime/data.c).
"""
import math
import sys

import torch
import torch.nn as nn
import torch.optim.lr_scheduler as lrs

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def opts(layer):
    """A layer is `relu` or {type: {options}} with an optional name."""
    if isinstance(layer, str):
        return layer, {}, None
    name = layer.get("name")
    kinds = [k for k in layer if k != "name"]
    if len(kinds) != 1:
        sys.exit("torch_model.py: cannot read layer %r" % layer)
    kind = kinds[0]
    return kind, layer[kind] or {}, name


def pair(v):
    return tuple(v) if isinstance(v, list) else (v, v)


# --- xentcc's random draws ---------------------------------------------------------------

def fmix32(h):
    """ir/dropout_hash.h's dropout_fmix32."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def dropout_mask(salt, step, p, shape, seed=0):
    """ir/dropout_hash.h: keep element i iff its 24 hash bits >= p * 2^24."""
    key = fmix32(((salt * 0x9E3779B1) & M32) ^ fmix32((step ^ fmix32(seed & M32)) & M32))
    threshold = int(p * 16777216.0)
    n = math.prod(shape)
    keep = [fmix32((key + i * 0x9E3779B1) & M32) >> 8 >= threshold for i in range(n)]
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    return torch.tensor(keep, dtype=torch.float32).reshape(shape) * scale


class XcRng:
    """runtime/util.c: xoshiro256** seeded through splitmix64, per stream."""

    def __init__(self, seed, stream):
        x = (seed ^ (stream * 0xD1B54A32D192ED03)) & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M64
        out = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return out

    def below(self, n):
        """Lemire's multiply-and-reject, as xc_rng_below."""
        m = (self.next() >> 32) * n
        if (m & M32) < n:
            floor = ((1 << 32) - n) % n
            while (m & M32) < floor:
                m = (self.next() >> 32) * n
        return m >> 32

    def uniform(self):
        """xc_rng_float: 24 random bits in [0, 1)."""
        return (self.next() >> 40) / 16777216.0

    def shuffle(self, a):
        for i in range(len(a) - 1, 0, -1):
            j = self.below(i + 1)
            a[i], a[j] = a[j], a[i]


def epoch_order(n, shuffle, seed, epoch):
    """runtime/loader.c: the sample order of an epoch."""
    order = list(range(n))
    if shuffle:
        XcRng(seed, 1000 + epoch).shuffle(order)
    return order


def split_mask(n, val_split, seed):
    """runtime/data.c apply_split: True for the files held out for validation."""
    nval = int(math.floor(n * val_split + 0.5))
    perm = list(range(n))
    XcRng(seed, 4).shuffle(perm)
    held = [False] * n
    for i in perm[:nval]:
        held[i] = True
    return held


def augment_draws(rng, crop_padding, flip):
    """runtime/data.c xc_transform's draws for one sample: (dy, dx, flip)."""
    dy = dx = 0
    if crop_padding > 0:
        dy = rng.below(2 * crop_padding + 1) - crop_padding
        dx = rng.below(2 * crop_padding + 1) - crop_padding
    f = flip and rng.uniform() < 0.5
    return dy, dx, f


# --- The network ---------------------------------------------------------------------------

class HashDropout(nn.Module):
    def __init__(self, p, salt, seed=0):
        super().__init__()
        self.p, self.salt, self.seed, self.step = p, salt, seed, 1

    def forward(self, x):
        if not self.training:
            return x
        return x * dropout_mask(self.salt, self.step, self.p, x.shape, self.seed)


class Net(nn.Module):
    """The model's layers as PyTorch modules. A named layer is an attribute
    (conv1.weight); an unnamed one is layers.INDEX, like an nn.Sequential
    member -- the frontend's state_dict names."""

    def __init__(self, spec, seed=0):
        super().__init__()
        c, h, wd = spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"]
        self.layers = nn.ModuleDict()
        self.steps = []
        for i, layer in enumerate(spec["layers"]):
            kind, o, name = opts(layer)
            if kind == "conv2d":
                m = nn.Conv2d(c, o["out_channels"], o["kernel"], stride=o.get("stride", 1),
                              padding=o.get("padding", 0), bias=o.get("bias", True))
                kh, kw = pair(o["kernel"])
                sh, sw = pair(o.get("stride", 1))
                ph, pw = pair(o.get("padding", 0))
                c, h, wd = o["out_channels"], (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
            elif kind in ("maxpool2d", "avgpool2d"):
                k = o["kernel"]
                st = o.get("stride", k)
                p = o.get("padding", 0)
                m = (nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d)(k, st, p)
                (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(st), pair(p)
                h, wd = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
            elif kind == "batchnorm2d":
                m = nn.BatchNorm2d(c, eps=o.get("eps", 1e-5), momentum=o.get("momentum", 0.1))
            elif kind == "relu":
                m = nn.ReLU()
            elif kind == "sigmoid":
                m = nn.Sigmoid()
            elif kind == "softmax":
                m = nn.Softmax(dim=1)
            elif kind == "log_softmax":
                m = nn.LogSoftmax(dim=1)
            elif kind == "flatten":
                m = nn.Flatten()
                c, h, wd = c * h * wd, 1, 1
            elif kind == "dropout":
                m = HashDropout(o.get("p", 0.5), i, seed)
            elif kind == "linear":
                m = nn.Linear(c, o["out_features"], bias=o.get("bias", True))
                c = o["out_features"]
            else:
                sys.exit("torch_model.py: layer kind %s is not supported here" % kind)
            if name:
                self.add_module(name, m)
            else:
                self.layers[str(i)] = m
            self.steps.append(m)

    def set_step(self, step):
        for m in self.steps:
            if isinstance(m, HashDropout):
                m.step = step

    def forward(self, x):
        for m in self.steps:
            x = m(x)
        return x


# --- Loss, optimizer, schedule -----------------------------------------------------------

def loss_of(spec, net):
    """The criterion, plus each l2 term's weight * ||param||_2; and 'ce' or 'bce'."""
    loss = spec["loss"]
    kind, o, _ = opts({k: v for k, v in loss.items() if k != "l2"}) if isinstance(loss, dict) \
        else (loss, {}, None)
    if kind == "cross_entropy":
        weight = torch.tensor(o["weight"], dtype=torch.float32) if "weight" in o else None
        crit = nn.CrossEntropyLoss(weight=weight,
                                   label_smoothing=float(o.get("label_smoothing", 0.0)))
    elif kind == "bce_with_logits":
        pw = o.get("pos_weight")
        pw = torch.tensor(pw if isinstance(pw, list) else [pw], dtype=torch.float32) \
            if pw is not None else None
        crit = nn.BCEWithLogitsLoss(pos_weight=pw)
    else:
        sys.exit("torch_model.py: loss %s is not supported here" % kind)
    params = dict(net.named_parameters())
    terms = [(params[t["param"]], float(t["weight"]))
             for t in (loss.get("l2", []) if isinstance(loss, dict) else [])]

    def total(logits, label):
        value = crit(logits, label)
        for p, w in terms:
            value = value + w * torch.norm(p)
        return value
    return "ce" if kind == "cross_entropy" else "bce", total


def optimizer_of(spec, params):
    kind, o, _ = opts(spec["optimizer"])
    o = dict(o)
    if "betas" in o:
        o["betas"] = tuple(o["betas"])
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
        params, **o)


def schedule_kind(spec):
    """(kind, options, warmup, per_step) of the YAML's schedule."""
    s = spec.get("schedule")
    if s is None:
        return "constant", {}, None, False
    if isinstance(s, str):
        kind, o, warm, interval = s, {}, None, None
    else:
        kind = [k for k in s if k not in ("warmup", "interval")][0]
        o, warm, interval = s[kind] or {}, s.get("warmup"), s.get("interval")
    per_step = interval == "step" if interval else kind == "one_cycle"
    return kind, o, warm, per_step


def scheduler_of(spec, opt, run_total):
    """The torch.optim.lr_scheduler for the YAML's schedule, and whether it
    steps per batch. run_total: the run's length in the scheduler's units
    (one-cycle without total_steps anneals over it)."""
    kind, o, warm, per_step = schedule_kind(spec)
    # As the PyTorch docs build SequentialLR: the warm-up first, then the main one.
    first = lrs.LinearLR(opt, start_factor=warm.get("start_factor", 1.0 / 3),
                         total_iters=warm["total_iters"]) if warm else None
    if kind == "constant":
        main = None
    elif kind == "step":
        main = lrs.StepLR(opt, o["step_size"], gamma=o.get("gamma", 0.1))
    elif kind == "multistep":
        main = lrs.MultiStepLR(opt, o["milestones"], gamma=o.get("gamma", 0.1))
    elif kind == "exponential":
        main = lrs.ExponentialLR(opt, o["gamma"])
    elif kind == "cosine":
        main = lrs.CosineAnnealingLR(opt, o["t_max"], eta_min=o.get("eta_min", 0.0))
    elif kind == "linear":
        main = lrs.LinearLR(opt, start_factor=o.get("start_factor", 1.0 / 3),
                            end_factor=o.get("end_factor", 1.0), total_iters=o.get("total_iters", 5))
    elif kind == "one_cycle":
        main = lrs.OneCycleLR(
            opt, o["max_lr"], total_steps=o.get("total_steps", run_total),
            pct_start=o.get("pct_start", 0.3), anneal_strategy=o.get("anneal_strategy", "cos"),
            div_factor=o.get("div_factor", 25.0), final_div_factor=o.get("final_div_factor", 1e4),
            three_phase=o.get("three_phase", False), cycle_momentum=o.get("cycle_momentum", True),
            base_momentum=o.get("base_momentum", 0.85), max_momentum=o.get("max_momentum", 0.95))
    else:
        sys.exit("torch_model.py: schedule %s is not supported here" % kind)
    if first and main:
        main = lrs.SequentialLR(opt, [first, main], milestones=[warm["total_iters"]])
    return main or first, per_step
