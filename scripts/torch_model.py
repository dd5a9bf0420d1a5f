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
    """A layer is `relu` or {type: {options}} with an optional name (and
    input or inputs, see sources)."""
    if isinstance(layer, str):
        return layer, {}, None
    name = layer.get("name")
    kinds = [k for k in layer if k not in ("name", "input", "inputs")]
    if len(kinds) != 1:
        sys.exit("torch_model.py: cannot read layer %r" % layer)
    kind = kinds[0]
    return kind, layer[kind] or {}, name


def sources(layer, i, index):
    """The outputs layer i reads: the layer before (-1: the image), or the
    layers its input or inputs name (index: name -> layer index)."""
    if isinstance(layer, dict) and ("input" in layer or "inputs" in layer):
        names = [layer["input"]] if "input" in layer else layer["inputs"]
        return [-1 if n == "image" else index[n] for n in names]
    return [i - 1]


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

class Add(nn.Module):
    """The add layer: its inputs summed left to right, a + b + c."""

    def forward(self, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y


class Concat(nn.Module):
    """The concat layer: torch.cat along the channels."""

    def forward(self, *xs):
        return torch.cat(xs, 1)


class HashDropout(nn.Module):
    def __init__(self, p, salt, seed=0):
        super().__init__()
        self.p, self.salt, self.seed, self.step = p, salt, seed, 1

    def forward(self, x):
        if not self.training:
            return x
        return x * dropout_mask(self.salt, self.step, self.p, x.shape, self.seed)


class HashDropout2d(HashDropout):
    """nn.Dropout2d with xentcc's mask: one draw per (sample, channel), the
    draw of the element-wise mask's index n * C + c (dropout2d_mask)."""

    def forward(self, x):
        if not self.training:
            return x
        n, c = x.shape[:2]
        return x * dropout_mask(self.salt, self.step, self.p, (n, c), self.seed).reshape(n, c, 1, 1)


# --- Mixed precision: torch.autocast's rounding points, sums in float32 ----------------
#
# xentcc's precision: bf16 / fp16 places casts where PyTorch 1.13's CPU
# autocast does (passes/autocast.c): convolutions and linear layers take
# 16-bit inputs, weights and biases and give a 16-bit result; relu, pools,
# batch norm's normalisation, sigmoid, tanh, leaky_relu, gelu and dropout
# run on 16 bits (an activation computed in float32, its result rounded:
# Low16, or Sigmoid16 and Tanh16, whose backward reads the output); losses,
# softmax and log_softmax take float32. On this CPU PyTorch's own bf16
# convolution sums in lower precision than float32, so the reference here
# keeps float32 tensors holding 16-bit values and rounds where autocast
# rounds: each 16-bit op computes in float32 and rounds its result once, and
# in the backward the gradient of each 16-bit tensor is rounded too (a
# 16-bit tensor's gradient is 16-bit in PyTorch). That is autocast on a CPU
# with native bf16 arithmetic, and what xentcc computes.

LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def rnd(x, dt):
    """x rounded to dt (to nearest even), as float32."""
    return x.to(dt).float()


class Low16(torch.autograd.Function):
    """fn(*xs) as a 16-bit op: computed in float32, the result rounded to dt;
    the gradients of the inputs marked low rounded to dt as well."""

    @staticmethod
    def forward(ctx, dt, low, fn, *xs):
        ctx.dt, ctx.low, ctx.fn = dt, low, fn
        ctx.save_for_backward(*xs)
        with torch.no_grad():
            return rnd(fn(*xs), dt)

    @staticmethod
    def backward(ctx, g):
        xs = [x.detach().requires_grad_(need)
              for x, need in zip(ctx.saved_tensors, ctx.needs_input_grad[3:])]
        with torch.enable_grad():
            y = ctx.fn(*xs)
        wrt = [x for x in xs if x.requires_grad]
        gs = iter(torch.autograd.grad(y, wrt, g, allow_unused=True) if wrt else [])
        out = []
        for x, low in zip(xs, ctx.low):
            if not x.requires_grad:
                out.append(None)
                continue
            d = next(gs)
            d = torch.zeros_like(x) if d is None else d
            out.append(rnd(d, ctx.dt) if low else d)
        return (None, None, None, *out)


class Cast16(torch.autograd.Function):
    """x.to(dt) (down: rounds; the gradient, 16-bit already, passes) or a
    16-bit x back to float32 (up: the gradient is rounded to dt)."""

    @staticmethod
    def forward(ctx, x, dt, down):
        ctx.dt, ctx.down = dt, down
        return rnd(x, dt) if down else x.clone()

    @staticmethod
    def backward(ctx, g):
        return (g if ctx.down else rnd(g, ctx.dt)), None, None


class Fanout16(torch.autograd.Function):
    """A 16-bit value read by k layers, as k copies: autograd adds their
    gradients in 16 bits, each sum rounded, which float32 tensors holding
    16-bit values would not do. The order is xentcc's (passes/autodiff.c):
    the last reader's gradient first."""

    @staticmethod
    def forward(ctx, x, dt, k):
        ctx.dt = dt
        return tuple(x.clone() for _ in range(k))

    @staticmethod
    def backward(ctx, *gs):
        acc = gs[-1]
        for g in reversed(gs[:-1]):
            acc = rnd(acc + g, ctx.dt)
        return acc, None, None


class Sigmoid16(torch.autograd.Function):
    """sigmoid on 16 bits: its backward, like PyTorch's sigmoid_backward,
    reads the (rounded) output: dy * y * (1 - y), rounded."""

    @staticmethod
    def forward(ctx, x, dt):
        y = rnd(torch.sigmoid(x), dt)
        ctx.dt = dt
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return rnd(g * y * (1 - y), ctx.dt), None


class Tanh16(torch.autograd.Function):
    """tanh on 16 bits: its backward reads the (rounded) output, as
    PyTorch's tanh_backward: dy * (1 - y * y), rounded."""

    @staticmethod
    def forward(ctx, x, dt):
        y = rnd(torch.tanh(x), dt)
        ctx.dt = dt
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return rnd(g * (1 - y * y), ctx.dt), None


def low_forward(net, x, dt):
    """Net.forward under autocast to dt, emulated (see above)."""
    F = nn.functional
    low = False  # does x hold 16-bit values?

    def down(t):
        return None if t is None else Cast16.apply(t, dt, True)

    def up(t):
        return Cast16.apply(t, dt, False) if low else t
    image, outs = x, []  # outs: each layer's (value, holds 16-bit values?)
    readers = [sum(src.count(i) for src in net.srcs) for i in range(len(net.srcs))]

    def take(j):  # output j for its next reader
        if j < 0:
            return image, False
        v, lw = outs[j]
        return (v.pop(0), lw) if isinstance(v, list) else (v, lw)
    for m, src in zip(net.steps, net.srcs):
        ins = [take(j) for j in src]
        x, low = ins[0]
        if isinstance(m, (Add, Concat)):
            # Operands of one precision keep it (an add rounds its sum);
            # mixed ones are promoted to float32, as PyTorch promotes.
            same = all(lw == low for _, lw in ins)
            xs = [t if same or not lw else Cast16.apply(t, dt, False) for t, lw in ins]
            x = Low16.apply(dt, (True,) * len(xs), m, *xs) if same and low else m(*xs)
            low = same and low
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            xin = x if low else down(x)
            if isinstance(m, nn.Conv2d):
                fn = lambda a, w, b=None, m=m: F.conv2d(a, w, b, m.stride, m.padding)  # noqa: E731
            else:
                fn = lambda a, w, b=None: F.linear(a, w, b)  # noqa: E731
            args = [xin, down(m.weight)] + ([down(m.bias)] if m.bias is not None else [])
            x = Low16.apply(dt, (True,) * len(args), fn, *args)
            low = True
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax)):
            x = m(up(x))
            low = False
        elif not low or isinstance(m, (nn.Flatten, nn.ReLU)):
            x = m(x)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.training:  # the running statistics as PyTorch updates them, from the 16-bit x
                with torch.no_grad():
                    F.batch_norm(x, m.running_mean, m.running_var, None, None, True, m.momentum,
                                 m.eps)
                    m.num_batches_tracked += 1
                fn = lambda a, g, b, m=m: F.batch_norm(a, None, None, g, b, True, 0.0, m.eps)  # noqa: E731
            else:
                fn = lambda a, g, b, m=m: F.batch_norm(a, m.running_mean, m.running_var, g, b,  # noqa: E731
                                                       False, 0.0, m.eps)
            x = Low16.apply(dt, (True, False, False), fn, x, m.weight, m.bias)
        elif isinstance(m, HashDropout):
            if m.training:
                if isinstance(m, HashDropout2d):
                    n, c = x.shape[:2]
                    mask = dropout_mask(m.salt, m.step, m.p, (n, c), m.seed).reshape(n, c, 1, 1)
                else:
                    mask = dropout_mask(m.salt, m.step, m.p, x.shape, m.seed)
                x = Low16.apply(dt, (True,), lambda a, k=rnd(mask, dt): a * k, x)
        elif isinstance(m, nn.Sigmoid):
            x = Sigmoid16.apply(x, dt)
        elif isinstance(m, nn.Tanh):
            x = Tanh16.apply(x, dt)
        else:  # pools: on 16 bits
            x = Low16.apply(dt, (True,), m, x)
        k = readers[len(outs)]
        outs.append((list(Fanout16.apply(x, dt, k)) if low and k > 1 else x, low))
    return up(x)


class Net(nn.Module):
    """The model's layers as PyTorch modules. A named layer is an attribute
    (conv1.weight); an unnamed one is layers.INDEX, like an nn.Sequential
    member -- the frontend's state_dict names. precision: the YAML's
    (bf16 and fp16 emulate autocast, see low_forward)."""

    def __init__(self, spec, seed=0):
        super().__init__()
        self.low = LOW.get(spec.get("precision", "fp32"))
        c, h, wd = spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"]
        self.layers = nn.ModuleDict()
        self.steps, self.srcs = [], []  # each layer's module and the outputs it reads
        index, shapes = {}, []  # layer name -> index; each layer's output (c, h, w)
        image = (c, h, wd)
        for i, layer in enumerate(spec["layers"]):
            kind, o, name = opts(layer)
            src = sources(layer, i, index)
            ins = [image if j < 0 else shapes[j] for j in src]
            c, h, wd = ins[0]
            if kind == "add":
                m = Add()
            elif kind == "concat":
                m = Concat()
                c = sum(t[0] for t in ins)
            elif kind == "conv2d":
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
            elif kind == "adaptive_avgpool2d":
                m = nn.AdaptiveAvgPool2d(pair(o["output_size"]))
                h, wd = pair(o["output_size"])
            elif kind in ("batchnorm2d", "batchnorm1d"):
                bn = nn.BatchNorm2d if kind == "batchnorm2d" else nn.BatchNorm1d
                m = bn(c, eps=o.get("eps", 1e-5), momentum=o.get("momentum", 0.1))
            elif kind == "relu":
                m = nn.ReLU()
            elif kind == "sigmoid":
                m = nn.Sigmoid()
            elif kind == "tanh":
                m = nn.Tanh()
            elif kind == "leaky_relu":
                m = nn.LeakyReLU(o.get("negative_slope", 0.01))
            elif kind == "gelu":
                m = nn.GELU(approximate=o.get("approximate", "none"))
            elif kind == "softmax":
                m = nn.Softmax(dim=1)
            elif kind == "log_softmax":
                m = nn.LogSoftmax(dim=1)
            elif kind == "flatten":
                m = nn.Flatten()
                c, h, wd = c * h * wd, 1, 1
            elif kind == "dropout":
                m = HashDropout(o.get("p", 0.5), i, seed)
            elif kind == "dropout2d":
                m = HashDropout2d(o.get("p", 0.5), i, seed)
            elif kind == "linear":
                m = nn.Linear(c, o["out_features"], bias=o.get("bias", True))
                c = o["out_features"]
            else:
                sys.exit("torch_model.py: layer kind %s is not supported here" % kind)
            if name:
                self.add_module(name, m)
                index[name] = i
            else:
                self.layers[str(i)] = m
            self.steps.append(m)
            self.srcs.append(src)
            shapes.append((c, h, wd))

    def set_step(self, step):
        for m in self.steps:
            if isinstance(m, HashDropout):
                m.step = step

    def forward(self, x):
        if self.low is not None:
            return low_forward(self, x, self.low)
        outs = []
        for m, src in zip(self.steps, self.srcs):
            outs.append(m(*[x if j < 0 else outs[j] for j in src]))
        return outs[-1]


class CpuGradScaler:
    """torch.cuda.amp.GradScaler's algorithm on the CPU, step for step (1.13
    runs it only on CUDA: _amp_foreach_non_finite_check_and_unscale_ and
    _amp_update_scale_ have no CPU kernels). scale() multiplies the loss by
    the float32 scale; step() unscales every gradient by
    scale.double().reciprocal().float(), notes whether one held an inf or a
    NaN (checked before the multiply, as the kernel does) and then skips
    optimizer.step(); update() backs the scale off after such a step and
    resets the growth tracker, or counts a clean step and multiplies the
    scale by growth_factor after growth_interval of them (unless the result
    is not finite), each product computed in double and rounded to float32
    as the kernel's float * double. The YAML's grad_scaler gives the settings."""

    def __init__(self, spec):
        g = spec.get("grad_scaler") or {}
        self.growth_factor = float(g.get("growth_factor", 2.0))
        self.backoff_factor = float(g.get("backoff_factor", 0.5))
        self.growth_interval = int(g.get("growth_interval", 2000))
        self._scale = torch.full((1,), float(g.get("init_scale", 2.0 ** 16)), dtype=torch.float32)
        self._growth_tracker = 0
        self.found_inf = False

    def scale_value(self):
        return float(self._scale[0])

    def scale(self, loss):
        return loss * self._scale

    def step(self, optimizer):
        inv_scale = self._scale.double().reciprocal().float()
        found = False
        with torch.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    found |= not bool(torch.isfinite(p.grad).all())
                    p.grad.mul_(inv_scale)
        self.found_inf = found
        if not found:
            optimizer.step()

    def update(self):
        f32 = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731
        if self.found_inf:
            self._scale[0] = f32(self.scale_value() * self.backoff_factor)
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful == self.growth_interval:
                new = f32(self.scale_value() * self.growth_factor)
                if math.isfinite(new):
                    self._scale[0] = new
                self._growth_tracker = 0
            else:
                self._growth_tracker = successful


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
