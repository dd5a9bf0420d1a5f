#!/usr/bin/python3
# The seed's training recipes (cifar10, catdog, mnist) written as a PyTorch
# 1.13 user would, as the reference xentcc's binaries are timed against.
# Prints one JSON line: training wall time (data decoding excluded), images/s
# and the final test or validation accuracy.
#
#   /usr/bin/python3 bench/torch_seed.py cifar10 [--epochs N] [--threads N] [--data DIR]
#
# Like xentcc's runtime, the whole data set is decoded into one tensor before
# the clock starts, so both sides time training only; decoding is reported
# separately as data_seconds. Images go through PIL exactly as torchvision's
# Resize((32, 32)) + ToTensor + Normalize would (torchvision is not installed
# here, so those three are spelled out).

import argparse
import gzip
import json
import math
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


# models/cifar10.yaml and models/catdog.yaml: the PyTorch tutorial's network.
class Net(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, outputs)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# models/mnist.yaml: LeNet-5 with conv1 padded by 2 for 28x28 input.
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


#
# Data: decoded once into uint8 NHWC, then ToTensor + Normalize in float32.
#

def load_photo(path, size):
    # PIL's convert("RGB") and resize(BILINEAR), which antialiases when
    # shrinking: what torchvision's Resize((32, 32)) does to a PIL image.
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def to_tensor(pixels, mean, std):
    # ToTensor (HWC uint8 -> CHW float in [0, 1]) then Normalize.
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def image_folder(root, classes):
    # torchvision's ImageFolder order: class folders sorted, then file names.
    pixels, labels = [], []
    for c, name in enumerate(classes):
        d = os.path.join(root, name)
        for f in sorted(os.listdir(d)):
            if f.startswith("."):
                continue
            pixels.append(load_photo(os.path.join(d, f), 32))
            labels.append(c)
    return np.stack(pixels), torch.tensor(labels, dtype=torch.long)


class XcRng:
    # runtime/util.c's generator (xoshiro256** seeded through splitmix64),
    # only so that the validation split holds out the very files xentcc's
    # runtime holds out; training randomness is PyTorch's own.
    M = (1 << 64) - 1

    def __init__(self, seed, stream):
        x = (seed ^ (stream * 0xd1b54a32d192ed03)) & self.M
        self.s = []
        for _ in range(4):
            x = (x + 0x9e3779b97f4a7c15) & self.M
            z = x
            z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & self.M
            z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & self.M
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & XcRng.M

    def next(self):
        s = self.s
        out = (self.rotl((s[1] * 5) & self.M, 7) * 9) & self.M
        t = (s[1] << 17) & self.M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self.rotl(s[3], 45)
        return out

    def below(self, n):
        # Lemire's multiply-and-reject, as xc_rng_below.
        m = (self.next() >> 32) * n
        if (m & 0xFFFFFFFF) < n:
            floor = ((1 << 32) - n) % n
            while (m & 0xFFFFFFFF) < floor:
                m = (self.next() >> 32) * n
        return m >> 32

    def shuffle(self, a):
        for i in range(len(a) - 1, 0, -1):
            j = self.below(i + 1)
            a[i], a[j] = a[j], a[i]


def val_split(names, fraction, seed):
    # runtime/README.md: names in byte order, a permutation seeded by the
    # YAML's seed (stream 4), its first round(n * fraction) entries held out.
    nval = int(math.floor(len(names) * fraction + 0.5))
    perm = list(range(len(names)))
    XcRng(seed, 4).shuffle(perm)
    held = set(perm[:nval])
    train = [n for i, n in enumerate(names) if i not in held]
    val = [n for i, n in enumerate(names) if i in held]
    return train, val


def photo_folder(root, classes, names):
    pixels, labels = [], []
    for f in names:
        # runtime/data.c's rule: the class named by a word of the file name.
        words = re.split(r"[^A-Za-z0-9]+", f.rsplit(".", 1)[0].lower())
        label = [c for c, name in enumerate(classes) if name.lower() in words]
        if len(label) != 1:
            continue
        pixels.append(load_photo(os.path.join(root, f), 32))
        labels.append(label[0])
    return np.stack(pixels), torch.tensor(labels, dtype=torch.long)


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def idx_file(root, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(root, name)):
            return os.path.join(root, name)
    sys.exit(f"torch_seed: no {stem}[.gz] in {root}")


#
# Recipes
#

def recipe_cifar10(args):
    root = args.data or os.path.join(ROOT, "build/data/cifar10")
    mean, std = [0.5] * 3, [0.5] * 3
    xtr, ytr = image_folder(os.path.join(root, "train"), CIFAR_CLASSES)
    xte, yte = image_folder(os.path.join(root, "test"), CIFAR_CLASSES)
    model = Net(10)
    return dict(model=model, xtr=to_tensor(xtr, mean, std), ytr=ytr,
                xte=to_tensor(xte, mean, std), yte=yte, binary=False, batch=32,
                epochs=10, split="test",
                optimizer=torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9),
                loss=nn.CrossEntropyLoss())


def recipe_catdog(args):
    root = args.data or os.path.join(ROOT, "build/data/catdog/train")
    mean, std = [0.5] * 3, [0.5] * 3
    names = sorted(f for f in os.listdir(root) if not f.startswith("."))
    train, val = val_split(names, 0.2, seed=0)
    xtr, ytr = photo_folder(root, ["cat", "dog"], train)
    xte, yte = photo_folder(root, ["cat", "dog"], val)
    model = Net(1)
    return dict(model=model, xtr=to_tensor(xtr, mean, std), ytr=ytr,
                xte=to_tensor(xte, mean, std), yte=yte, binary=True, batch=32,
                epochs=10, split="val",
                optimizer=torch.optim.Adam(model.parameters(), lr=1e-4),
                loss=nn.BCEWithLogitsLoss())


def recipe_mnist(args):
    root = args.data or "/usr/share/datasets/fashion-mnist"
    mean, std = [0.2860], [0.3530]
    def load(prefix):
        x = read_idx(idx_file(root, prefix + "-images-idx3-ubyte"))[..., None]
        y = read_idx(idx_file(root, prefix + "-labels-idx1-ubyte"))
        return to_tensor(np.ascontiguousarray(x), mean, std), torch.from_numpy(y.astype(np.int64))
    xtr, ytr = load("train")
    xte, yte = load("t10k")
    model = LeNet()
    return dict(model=model, xtr=xtr, ytr=ytr, xte=xte, yte=yte, binary=False, batch=64,
                epochs=5, split="test",
                optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                loss=nn.CrossEntropyLoss())


RECIPES = {"cifar10": recipe_cifar10, "catdog": recipe_catdog, "mnist": recipe_mnist}


def accuracy(model, x, y, binary):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            out = model(x[i:i + 1000])
            pred = (out[:, 0] > 0).long() if binary else out.argmax(1)
            correct += (pred == y[i:i + 1000]).sum().item()
    model.train()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description="The seed recipes in PyTorch, timed.")
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", help="data directory (default: the YAML's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-last", action="store_true",
                   help="skip each epoch's last partial batch, as xentcc does")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    r = RECIPES[args.recipe](args)
    data_seconds = time.perf_counter() - t0
    model, opt, loss_fn = r["model"], r["optimizer"], r["loss"]
    xtr, ytr, batch = r["xtr"], r["ytr"], r["batch"]
    epochs = args.epochs or r["epochs"]
    if r["binary"]:
        ytr = ytr.float()

    # The loop of the PyTorch tutorial over a shuffled index per epoch
    # (DataLoader(shuffle=True) over the in-memory tensors, minus its
    # per-sample collation overhead).
    n = len(xtr)
    seen = 0
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        running = 0.0
        steps = 0
        end = n - n % batch if args.drop_last else n
        for i in range(0, end, batch):
            idx = perm[i:i + batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad()
            out = model(x)
            loss = loss_fn(out[:, 0], y) if r["binary"] else loss_fn(out, y)
            loss.backward()
            opt.step()
            running += loss.item()
            steps += 1
            seen += len(idx)
        print(f"torch_seed: epoch {epoch + 1}/{epochs} loss {running / steps:.4f} "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    train_seconds = time.perf_counter() - t0

    acc = accuracy(model, r["xte"], r["yte"], r["binary"])
    print(json.dumps({
        "recipe": args.recipe, "framework": f"pytorch {torch.__version__}",
        "threads": args.threads, "epochs": epochs, "train_images": n,
        "eval_split": r["split"], "eval_images": len(r["xte"]),
        "data_seconds": round(data_seconds, 2), "train_seconds": round(train_seconds, 2),
        "images_per_second": round(seen / train_seconds, 1),
        "accuracy": round(acc, 4)}))


if __name__ == "__main__":
    main()
