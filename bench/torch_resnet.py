#!/usr/bin/python3
# models/resnet8.yaml's network and recipe in PyTorch 1.13, timed epoch by
# epoch: the reference bench/resnet.sh holds xentcc's time to accuracy against.
# Prints one JSON line: per epoch, the training seconds so far (evaluation and
# data decoding excluded) and the test accuracy after it.
#
#   /usr/bin/python3 bench/torch_resnet.py [MODEL.yaml] [--epochs N] [--threads N]
#                    [--seed S] [--data DIR] [--target 0.85] [--max-seconds T]
#
# The network is built from the YAML's layer list (named inputs, add, concat)
# as plain nn modules; the loss, optimizer and schedule come from
# scripts/torch_model.py's readers of the same YAML, so the recipe cannot
# drift from the model file. As xentcc's runtime does, the photos are decoded
# once before the clock starts (PIL, as torchvision's ImageFolder); each batch
# is then RandomCrop(32, padding=4) with zero pixels, RandomHorizontalFlip,
# ToTensor and Normalize, in that order, drawn from PyTorch's generator.

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import torch_model  # noqa: E402  (loss_of, optimizer_of, scheduler_of)
import torch_seed  # noqa: E402  (image_folder: PIL decoding as ImageFolder)


def pair(v):
    return tuple(v) if isinstance(v, list) else (v, v)


def opts(layer):
    """`relu`, or {type: {options}} beside `name` and `input`/`inputs`."""
    if isinstance(layer, str):
        return layer, {}, None
    kinds = [k for k in layer if k not in ("name", "input", "inputs")]
    if len(kinds) != 1:
        sys.exit("torch_resnet: cannot read layer %r" % layer)
    return kinds[0], layer[kinds[0]] or {}, layer.get("name")


class GraphNet(nn.Module):
    """The YAML's layers as modules; a layer reads the layer before it, or
    the one(s) its `input`/`inputs` names. Named layers are attributes
    (state_dict `b1conv1.weight`), as the frontend names parameters."""

    def __init__(self, spec):
        super().__init__()
        shapes = {}
        prev = "image"
        shapes[prev] = (spec["input"]["channels"], spec["input"]["height"], spec["input"]["width"])
        self.plan = []  # (module attribute, kind, input names, output name)
        for i, layer in enumerate(spec["layers"]):
            kind, o, name = opts(layer)
            srcs = layer.get("inputs") if isinstance(layer, dict) else None
            if srcs is None:
                src = layer.get("input", prev) if isinstance(layer, dict) else prev
                srcs = [src]
            c, h, w = shapes[srcs[0]]
            if kind == "conv2d":
                (kh, kw), (sh, sw) = pair(o["kernel"]), pair(o.get("stride", 1))
                ph, pw = pair(o.get("padding", 0))
                m = nn.Conv2d(c, o["out_channels"], o["kernel"], stride=o.get("stride", 1),
                              padding=o.get("padding", 0), bias=o.get("bias", True))
                shape = (o["out_channels"], (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
            elif kind in ("maxpool2d", "avgpool2d"):
                k, st, p = o["kernel"], o.get("stride", o["kernel"]), o.get("padding", 0)
                m = (nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d)(k, st, p)
                (kh, kw), (sh, sw), (ph, pw) = pair(k), pair(st), pair(p)
                shape = (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
            elif kind == "adaptive_avgpool2d":
                oh, ow = pair(o.get("output_size", 1))
                m = nn.AdaptiveAvgPool2d((oh, ow))
                shape = (c, oh, ow)
            elif kind == "batchnorm2d":
                m = nn.BatchNorm2d(c, eps=o.get("eps", 1e-5), momentum=o.get("momentum", 0.1))
                shape = (c, h, w)
            elif kind == "relu":
                m, shape = nn.ReLU(), (c, h, w)
            elif kind == "flatten":
                m, shape = nn.Flatten(), (c * h * w, 1, 1)
            elif kind == "linear":
                m = nn.Linear(c, o["out_features"], bias=o.get("bias", True))
                shape = (o["out_features"], 1, 1)
            elif kind == "add":
                m, shape = None, (c, h, w)
                for s in srcs[1:]:
                    if shapes[s] != shapes[srcs[0]]:
                        sys.exit(f"torch_resnet: add of {srcs}: shapes {shapes[s]} and {shapes[srcs[0]]}")
            elif kind == "concat":
                m, shape = None, (sum(shapes[s][0] for s in srcs), h, w)
            else:
                sys.exit(f"torch_resnet: layer kind {kind} is not supported here")
            out = name or f"layers.{i}"
            attr = name or f"layer{i}"
            if m is not None:
                self.add_module(attr, m)
            self.plan.append((attr if m is not None else None, kind, srcs, out))
            shapes[out] = shape
            prev = out

    def forward(self, x):
        values = {"image": x}
        for attr, kind, srcs, out in self.plan:
            if kind == "add":
                # Summed in the order named, as xentcc's add.
                y = values[srcs[0]]
                for s in srcs[1:]:
                    y = y + values[s]
            elif kind == "concat":
                y = torch.cat([values[s] for s in srcs], 1)
            else:
                y = getattr(self, attr)(values[srcs[0]])
            values[out] = y
            x = y
        return x


class Batches:
    """The training set, decoded once to uint8 NHWC and zero-padded for the
    crop; each batch drawn, cropped, flipped, then ToTensor + Normalize."""

    def __init__(self, pixels, labels, data, gen):
        aug = data.get("augment") or {}
        self.pad = (aug.get("random_crop") or {}).get("padding", 0)
        self.flip = bool(aug.get("random_horizontal_flip", False))
        p = self.pad
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # N C H W uint8
        self.h, self.w = x.shape[2], x.shape[3]
        self.x = nn.functional.pad(x, (p, p, p, p)) if p else x
        self.y = labels
        norm = data.get("normalize") or {}
        c = x.shape[1]
        self.mean = torch.tensor(norm.get("mean", [0.0] * c), dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(norm.get("std", [1.0] * c), dtype=torch.float32).view(1, c, 1, 1)
        self.gen = gen

    def batch(self, idx):
        n = len(idx)
        if self.pad:
            off = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=self.gen).tolist()
            src = self.x[idx]
            x = torch.stack([src[i, :, dy:dy + self.h, dx:dx + self.w]
                             for i, (dy, dx) in enumerate(off)])
        else:
            x = self.x[idx]
        if self.flip:
            f = torch.rand(n, generator=self.gen) < 0.5
            x[f] = x[f].flip(3)
        x = (x.float().div_(255) - self.mean) / self.std
        return x, self.y[idx]


def accuracy(model, x, y, flip=False):
    """Test accuracy; flip (data.test_augment: {horizontal_flip: true}): of the
    logits averaged over each image and its mirror image, as xentcc's."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 500):
            out = model(x[i:i + 500])
            if flip:
                out = (out + model(x[i:i + 500].flip(3))) / 2
            correct += (out.argmax(1) == y[i:i + 500]).sum().item()
    model.train()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description="models/resnet8.yaml in PyTorch, timed per epoch.")
    p.add_argument("model", nargs="?", default=os.path.join(ROOT, "models/resnet8.yaml"))
    p.add_argument("--epochs", type=int, help="default: the YAML's train.epochs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, help="default: the YAML's train.seed")
    p.add_argument("--data", help="CIFAR-10 ImageFolder root holding train/ and test/ "
                   "(default: the YAML's paths)")
    p.add_argument("--target", type=float, default=0.85, help="test accuracy to time (0.85)")
    p.add_argument("--max-seconds", type=float,
                   help="stop after the epoch that passes this much training time")
    args = p.parse_args()

    with open(args.model) as f:
        spec = yaml.safe_load(f)
    train = spec.get("train") or {}
    data = spec["data"]
    epochs = args.epochs or train.get("epochs", 10)
    batch = train.get("batch_size", 32)
    seed = train.get("seed", 0) if args.seed is None else args.seed
    if data.get("format") != "imagefolder":
        sys.exit("torch_resnet: only imagefolder data is read here")

    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)

    here = os.path.dirname(os.path.abspath(args.model))
    train_dir = os.path.join(args.data, "train") if args.data else os.path.join(here, data["train"])
    test_dir = os.path.join(args.data, "test") if args.data else os.path.join(here, data["test"])
    t0 = time.perf_counter()
    xtr, ytr = torch_seed.image_folder(train_dir, spec["classes"])
    xte, yte = torch_seed.image_folder(test_dir, spec["classes"])
    data_seconds = time.perf_counter() - t0
    tta = bool((data.get("test_augment") or {}).get("horizontal_flip", False))
    norm = data.get("normalize") or {}
    xte = torch_seed.to_tensor(xte, norm.get("mean", [0.0] * 3), norm.get("std", [1.0] * 3))

    model = GraphNet(spec)
    _, criterion = torch_model.loss_of(spec, model)
    opt = torch_model.optimizer_of(spec, model.parameters())
    n = len(ytr)
    # Batch norm models drop the last partial batch, as xentcc does.
    steps_per_epoch = n // batch if train.get("drop_last", True) else math.ceil(n / batch)
    kind, _, _, per_step = torch_model.schedule_kind(spec)
    sched, per_step = torch_model.scheduler_of(
        spec, opt, epochs * steps_per_epoch if per_step else epochs)
    gen = torch.Generator().manual_seed(seed)
    batches = Batches(xtr, ytr, data, gen)

    history = []
    seconds = 0.0
    reached = None
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total_loss, correct = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            x, y = batches.batch(idx)
            opt.zero_grad()
            out = model(x)
            loss = criterion(out, y)
            loss.backward()
            opt.step()
            if sched is not None and per_step:
                sched.step()
            total_loss += loss.item() * len(idx)
            correct += (out.argmax(1) == y).sum().item()
        if sched is not None and not per_step:
            sched.step()
        seconds += time.perf_counter() - t0
        acc = accuracy(model, xte, yte, flip=tta)
        seen = steps_per_epoch * batch
        history.append({"epoch": epoch + 1, "seconds": round(seconds, 2),
                        "train_loss": round(total_loss / seen, 4),
                        "train_accuracy": round(correct / seen, 4), "test_accuracy": acc})
        if reached is None and acc >= args.target:
            reached = round(seconds, 2)
        print(f"torch_resnet: epoch {epoch + 1}/{epochs}: train loss {total_loss / seen:.4f}, "
              f"accuracy {100 * correct / seen:.2f}%; test accuracy {100 * acc:.2f}%; "
              f"{seconds:.1f} s, {seen / (time.perf_counter() - t0):.0f} images/s",
              file=sys.stderr, flush=True)
        if args.max_seconds and seconds >= args.max_seconds:
            break

    print(json.dumps({
        "model": spec.get("model"), "framework": f"pytorch {torch.__version__}",
        "threads": args.threads, "seed": seed, "epochs": len(history), "batch_size": batch,
        "train_images": steps_per_epoch * batch, "data_seconds": round(data_seconds, 2),
        "train_seconds": round(seconds, 2), "target": args.target,
        "seconds_to_target": reached, "accuracy": history[-1]["test_accuracy"],
        "history": history}))


if __name__ == "__main__":
    main()
