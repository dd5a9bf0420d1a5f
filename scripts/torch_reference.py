#!/usr/bin/python3
"""PyTorch 1.13 reference numbers for xentcc's reference evaluator (ir/eval.c).

  scripts/torch_reference.py -o REF.bin [--steps N] [MODEL.yaml...]

writes one file of named tensors that tests/unit/test_eval_torch.c compares
the evaluator against, to 1e-5 relative:

  op/...       small cases of single ops and their gradients (conv2d with
               stride and padding, pools with padding, linear, activations,
               CrossEntropyLoss with weight and label_smoothing,
               BCEWithLogitsLoss with pos_weight, batch norm, the L2 norm) and
               optimizer steps (SGD, Adam, AdamW)
  MODEL/...    nets built from YAML model files -- the seed nets
               models/cifar10.yaml (CE + SGD momentum 0.9) and
               models/catdog.yaml (BCE-with-logits + Adam), and the option-heavy
               tests/torch/Inputs/*.yaml (batch norm, dropout, pools with padding,
               class weights, label smoothing, pos_weight, l2 terms, nesterov,
               AdamW, schedules, branches joined by add and concat): initial weights, then for each of N steps
               the batch, logits, loss, every parameter's gradient, and the
               state_dict after the step. Step s runs in epoch s - 1, so the
               schedule moves every step.

The models are built by torch_model.py (dropout masks: xentcc's hash, seed 0).

File format (little-endian): the magic b"XCREF\\0\\0\\0", u32 version (1), u32
tensor count, then per tensor: u32 name length, the name (UTF-8), u32 dtype
(0 f32, 1 i32), u32 rank, i64 dims[rank], the values (row-major, 4 bytes each).
"""
import argparse
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_model import Net, loss_of, optimizer_of, scheduler_of  # noqa: E402

MAGIC = b"XCREF\0\0\0"
VERSION = 1


class RefWriter:
    def __init__(self):
        self.tensors = []

    def add(self, name, t):
        t = t.detach().clone()  # a snapshot: params, grads and state change in place later
        if t.dtype in (torch.int64, torch.int32):
            t = t.to(torch.int32)
        else:
            t = t.to(torch.float32)
        self.tensors.append((name, t))

    def save(self, path):
        with open(path, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<II", VERSION, len(self.tensors)))
            for name, t in self.tensors:
                b = name.encode()
                f.write(struct.pack("<I", len(b)) + b)
                f.write(struct.pack("<II", 0 if t.dtype == torch.float32 else 1, t.dim()))
                f.write(struct.pack("<%dq" % t.dim(), *t.shape))
                f.write(t.numpy().astype("<f4" if t.dtype == torch.float32 else "<i4").tobytes())


def grads(out, dy, *wrt):
    return torch.autograd.grad(out, wrt, dy)


# --- Single ops ---------------------------------------------------------------------

def leaf(*shape, lo=-1.0, hi=1.0):
    return (torch.rand(*shape) * (hi - lo) + lo).requires_grad_()


def op_cases(w):
    # conv2d, stride 2, padding 1, uneven kernel and input
    x, k, b = leaf(2, 3, 7, 6), leaf(4, 3, 3, 2), leaf(4)
    y = F.conv2d(x, k, b, stride=2, padding=1)
    dy = torch.randn_like(y)
    for n, t in zip(["x", "w", "b", "y", "dy"], [x, k, b, y, dy]):
        w.add("op/conv2d/" + n, t)
    for n, t in zip(["dx", "dw", "db"], grads(y, dy, x, k, b)):
        w.add("op/conv2d/" + n, t)

    # pools, kernel 3, stride 2, padding 1
    for name, pool in [("maxpool2d", F.max_pool2d), ("avgpool2d", F.avg_pool2d)]:
        x = leaf(2, 3, 7, 6)
        y = pool(x, 3, 2, 1)
        dy = torch.randn_like(y)
        w.add("op/%s/x" % name, x)
        w.add("op/%s/y" % name, y)
        w.add("op/%s/dy" % name, dy)
        w.add("op/%s/dx" % name, grads(y, dy, x)[0])

    x, k, b = leaf(5, 7), leaf(4, 7), leaf(4)
    y = F.linear(x, k, b)
    dy = torch.randn_like(y)
    for n, t in zip(["x", "w", "b", "y", "dy"], [x, k, b, y, dy]):
        w.add("op/linear/" + n, t)
    for n, t in zip(["dx", "dw", "db"], grads(y, dy, x, k, b)):
        w.add("op/linear/" + n, t)

    for name, fn in [("relu", torch.relu), ("sigmoid", torch.sigmoid),
                     ("softmax", lambda t: torch.softmax(t, 1)),
                     ("log_softmax", lambda t: torch.log_softmax(t, 1))]:
        x = leaf(4, 5, lo=-3, hi=3)
        y = fn(x)
        dy = torch.randn_like(y)
        w.add("op/%s/x" % name, x)
        w.add("op/%s/y" % name, y)
        w.add("op/%s/dy" % name, dy)
        w.add("op/%s/dx" % name, grads(y, dy, x)[0])

    # Casts, mixed precision's rounding points: f32 to bf16 and to f16
    # (values of all sizes, ties, the ends of both ranges, f32 and f16
    # subnormals, infinities, signed zeros), and the gradient back through
    # Tensor.to, which casts it to f32.
    ties = [1 + k * 2.0 ** -8 for k in (1, 3, 5, 7)] + [1 + k * 2.0 ** -11 for k in (1, 3)]
    edges = [1e-40, -3e-39, 3.4028234e38, -3.3e38, 65504.0, 65519.0, 65520.0, -70000.0, 3e-6,
             -6e-8, 2e-8, float("inf"), float("-inf"), 0.0, -0.0]
    x = torch.cat([torch.randn(40) * 10, torch.tensor(ties + edges)]).requires_grad_()
    w.add("op/cast/x", x)
    for name, dt in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
        y = x.to(dt)
        dy = torch.randn(y.shape).to(dt)
        w.add("op/cast/%s/y" % name, y)
        w.add("op/cast/%s/dy" % name, dy)
        w.add("op/cast/%s/dx" % name, grads(y, dy, x)[0])

    # GradScaler's unscale_: the gradients times scale.double().reciprocal().float()
    # (float32 products, as _amp_foreach_non_finite_check_and_unscale_),
    # for a power-of-two scale and another.
    g = torch.randn(50) * 3e4
    for k, sc in enumerate([65536.0, 3000.0]):
        inv = torch.tensor([sc]).double().reciprocal().float()
        w.add("op/unscale/%d/g" % k, g)
        w.add("op/unscale/%d/inv_scale" % k, inv[0])
        w.add("op/unscale/%d/out" % k, g * inv)

    # CrossEntropyLoss(weight, label_smoothing) on logits; op/ce_ignore has
    # two rows labelled -100, PyTorch's default ignore_index, which is how
    # xentcc's runtime pads a partial last batch.
    x = leaf(6, 5, lo=-3, hi=3)
    cw = torch.rand(5) * 2 + 0.2
    y = torch.randint(0, 5, (6,))
    for prefix, labels in [("op/ce", y), ("op/ce_ignore", torch.tensor([3, -100, 0, 4, -100, 1]))]:
        w.add(prefix + "/x", x)
        w.add(prefix + "/label", labels)
        w.add(prefix + "/weight", cw)
        for tag, kw in [("plain", {}), ("weighted", {"weight": cw}),
                        ("smooth", {"label_smoothing": 0.1}),
                        ("both", {"weight": cw, "label_smoothing": 0.3})]:
            loss = nn.CrossEntropyLoss(**kw)(x, labels)
            w.add("%s/%s/loss" % (prefix, tag), loss)
            w.add("%s/%s/dx" % (prefix, tag), grads(loss, torch.tensor(1.0), x)[0])

    # BCEWithLogitsLoss(pos_weight) on [N,3]: none, one value, one per column.
    # op/bce_ignore: rows 1 and 4 of six are padding (target -1, xentcc's
    # convention); PyTorch's numbers are for the four real rows, with zero
    # gradient in the padding rows.
    x = leaf(6, 3, lo=-4, hi=4)
    t = torch.randint(0, 2, (6, 3)).float()
    pad = t.clone()
    pad[[1, 4]] = -1.0
    real = torch.tensor([0, 2, 3, 5])
    for prefix, target, rows in [("op/bce", t, torch.arange(6)), ("op/bce_ignore", pad, real)]:
        w.add(prefix + "/x", x)
        w.add(prefix + "/target", target)
        for tag, pw in [("plain", None), ("pw1", torch.tensor([2.5])),
                        ("pw3", torch.tensor([2.5, 0.5, 4.0]))]:
            loss = nn.BCEWithLogitsLoss(pos_weight=pw)(x[rows], t[rows])
            w.add("%s/%s/loss" % (prefix, tag), loss)
            w.add("%s/%s/dx" % (prefix, tag), grads(loss, torch.tensor(1.0), x)[0])

    # BatchNorm2d in training mode, and its running statistics
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = leaf(4, 3, 5, 5, lo=-2, hi=2)
    y = bn(x)
    dy = torch.randn_like(y)
    for n, t in [("x", x), ("gamma", bn.weight), ("beta", bn.bias), ("y", y), ("dy", dy),
                 ("running_mean", bn.running_mean), ("running_var", bn.running_var)]:
        w.add("op/batchnorm2d/" + n, t)
    for n, t in zip(["dx", "dgamma", "dbeta"], grads(y, dy, x, bn.weight, bn.bias)):
        w.add("op/batchnorm2d/" + n, t)

    x = leaf(3, 4)
    norm = torch.norm(x)
    w.add("op/l2norm/x", x)
    w.add("op/l2norm/y", norm)
    w.add("op/l2norm/dx", grads(norm, torch.tensor(0.7), x)[0])

    # tanh, leaky_relu (the default slope and a negative one), gelu (the
    # exact erf form and the tanh approximation), as nn.Tanh, nn.LeakyReLU
    # and nn.GELU compute them
    for name, fn in [("tanh", torch.tanh), ("leaky_relu", F.leaky_relu),
                     ("leaky_relu_neg", lambda t: F.leaky_relu(t, -0.5)),
                     ("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh"))]:
        x = leaf(4, 5, lo=-4, hi=4)
        y = fn(x)
        dy = torch.randn_like(y)
        w.add("op/%s/x" % name, x)
        w.add("op/%s/y" % name, y)
        w.add("op/%s/dy" % name, dy)
        w.add("op/%s/dx" % name, grads(y, dy, x)[0])

    # BatchNorm1d on [N, features] in training mode, and its running statistics
    bn = nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = leaf(9, 6, lo=-2, hi=2)
    y = bn(x)
    dy = torch.randn_like(y)
    for n, t in [("x", x), ("gamma", bn.weight), ("beta", bn.bias), ("y", y), ("dy", dy),
                 ("running_mean", bn.running_mean), ("running_var", bn.running_var)]:
        w.add("op/batchnorm1d/" + n, t)
    for n, t in zip(["dx", "dgamma", "dbeta"], grads(y, dy, x, bn.weight, bn.bias)):
        w.add("op/batchnorm1d/" + n, t)


def optimizer_cases(w, steps):
    """Each optimizer on one parameter for `steps` steps with given gradients."""
    p0 = torch.randn(3, 4)
    gs = torch.randn(steps, 3, 4)
    w.add("opt/p0", p0)
    w.add("opt/grads", gs)
    cases = [
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
        ("sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1,
                                                    weight_decay=0.01)),
        ("sgd_nesterov", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                    weight_decay=0.01)),
        ("adam", lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1)),
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ]
    for name, make in cases:
        p = nn.Parameter(p0.clone())
        opt = make([p])
        for s in range(steps):
            p.grad = gs[s].clone()
            opt.step()
            w.add("opt/%s/step%d" % (name, s + 1), p)


# --- The seed nets, built from their YAML files ---------------------------------------------

def optimizer_and_schedule(spec, params):
    """The optimizer and, stepped once per step here (step s runs in epoch s - 1),
    the schedule."""
    opt = optimizer_of(spec, params)
    sched, _ = scheduler_of(spec, opt, 1 << 20)
    return opt, sched


def model_net(w, path, steps):
    with open(path) as f:
        spec = yaml.safe_load(f)
    model = spec.get("model", os.path.splitext(os.path.basename(path))[0])
    batch = spec["train"]["batch_size"]
    torch.manual_seed(0)
    net = Net(spec)
    kind, criterion = loss_of(spec, net)
    opt, sched = optimizer_and_schedule(spec, net.parameters())
    for name, t in net.state_dict().items():
        w.add("%s/init/%s" % (model, name), t)
    shape = (batch, spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"])
    with torch.no_grad():
        outputs = net.eval()(torch.zeros(shape)).shape[1]
    net.train()
    for s in range(1, steps + 1):
        image = torch.randn(shape)
        if kind == "ce":
            label = torch.randint(0, outputs, (batch,))
        else:
            label = torch.randint(0, 2, (batch, 1)).float()
        net.set_step(s)
        opt.zero_grad()
        logits = net(image)
        loss = criterion(logits, label)
        loss.backward()
        pre = "%s/step%d/" % (model, s)
        w.add(pre + "image", image)
        w.add(pre + "label", label)
        w.add(pre + "logits", logits)
        w.add(pre + "loss", loss)
        w.add(pre + "lr", torch.tensor(opt.param_groups[0]["lr"]))
        for name, p in net.named_parameters():
            w.add(pre + "grad/" + name, p.grad)
        opt.step()
        if sched:
            sched.step()  # one step per "epoch": step s runs in epoch s - 1
        for name, t in net.state_dict().items():
            w.add(pre + "after/" + name, t)


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("models", nargs="*", help="YAML model files (default: the seed nets and "
                    "tests/torch/Inputs/*.yaml)")
    args = ap.parse_args()
    inputs = os.path.join(root, "tests", "torch", "Inputs")
    models = args.models or [os.path.join(root, "models", "cifar10.yaml"),
                             os.path.join(root, "models", "catdog.yaml")] + sorted(
        os.path.join(inputs, f) for f in os.listdir(inputs) if f.endswith(".yaml"))
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    w = RefWriter()
    op_cases(w)
    optimizer_cases(w, args.steps)
    for path in models:
        model_net(w, path, args.steps)
    w.save(args.output + ".tmp")
    os.replace(args.output + ".tmp", args.output)  # never a half-written file
    print("torch_reference.py: wrote %d tensors to %s (torch %s)" %
          (len(w.tensors), args.output, torch.__version__))


if __name__ == "__main__":
    main()
