#!/usr/bin/env python3
"""Small, deterministic data sets in the formats NAME-train reads, for tests
that need the same data on the PyTorch side and ours (parity tests), plus
safetensors reading and writing with nothing but numpy (Debian's python3 has
no safetensors module).

  scripts/make_test_data.py OUTDIR [--n 256] [--seed 0] [--classes 10] [--idx-shape C,H,W]

writes OUTDIR/cifar/{data_batch_1.bin,test_batch.bin} (CIFAR-10 binary,
10 classes), OUTDIR/catdog/train/{cat,dog}.N.png (photos of varying sizes,
PNG so both sides decode them identically) and OUTDIR/idx/{train,t10k}-*-ubyte.gz.
Import it for the helpers: load_cifar_bin, load_folder, read_safetensors,
write_safetensors.
"""
import argparse
import gzip
import json
import os
import struct
import sys

import numpy as np


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: array}, written in the given order: integer arrays as
    I64 (PyTorch's num_batches_tracked), everything else as F32."""
    header, offset, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = np.asarray(t)
        integer = np.issubdtype(t.dtype, np.integer)
        a = np.ascontiguousarray(t.astype("<i8" if integer else "<f4"))
        header[name] = {"dtype": "I64" if integer else "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns ({name: float32 array, or int64 for I64 tensors}, metadata)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        dtype = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8"}[e["dtype"]]
        a = np.frombuffer(data[b:end], dtype=dtype).reshape(e["shape"])
        out[name] = a.astype(np.int64) if e["dtype"] == "I64" else a.astype(np.float32)
    return out, meta


def synthetic(rng, n, h, w, c, nclasses):
    """Images whose class shows in their colour, so networks can learn."""
    labels = rng.integers(0, nclasses, n).astype(np.uint8)
    base = rng.integers(0, 256, (nclasses, c), dtype=np.int64)
    noise = rng.integers(-60, 61, (n, h, w, c))
    x = np.clip(base[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return x, labels


def write_cifar(path, images, labels):
    """images: [n, 32, 32, 3] uint8 HWC."""
    with open(path, "wb") as f:
        for img, lab in zip(images, labels):
            f.write(bytes([int(lab)]))
            f.write(img.transpose(2, 0, 1).tobytes())


def load_cifar_bin(path):
    """[n, 3, 32, 32] uint8 and labels, as the runtime reads them."""
    raw = np.fromfile(path, np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def load_folder(path, classes, size):
    """File-name-labelled photos in byte order, resized like the runtime
    (PIL bilinear); [n, 3, h, w] uint8 and labels."""
    from PIL import Image
    names = sorted(os.listdir(path), key=lambda s: s.encode())
    xs, ys = [], []
    for name in names:
        words = name.rsplit(".", 1)[0].replace("_", ".").replace("-", ".").split(".")
        hits = [i for i, c in enumerate(classes) if c in words]
        if len(hits) != 1:
            continue
        img = Image.open(os.path.join(path, name)).convert("RGB")
        img = img.resize((size[1], size[0]), Image.BILINEAR)
        xs.append(np.asarray(img).transpose(2, 0, 1))
        ys.append(hits[0])
    return np.stack(xs), np.array(ys)


def write_idx(path, array):
    """array: labels [n], grey images [n, h, w] or images [n, c, h, w] (0x0804)."""
    kind = {1: 0x801, 3: 0x803, 4: 0x804}[array.ndim]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", kind))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10, help="classes of the IDX data")
    ap.add_argument("--idx-shape", default="1,28,28",
                    help="C,H,W of the IDX images (C > 1: N x C x H x W, IDX type 0x0804)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    out = args.outdir

    os.makedirs(os.path.join(out, "cifar"), exist_ok=True)
    x, y = synthetic(rng, args.n, 32, 32, 3, 10)
    write_cifar(os.path.join(out, "cifar", "data_batch_1.bin"), x, y)
    x, y = synthetic(rng, max(args.n // 4, 1), 32, 32, 3, 10)
    write_cifar(os.path.join(out, "cifar", "test_batch.bin"), x, y)

    os.makedirs(os.path.join(out, "idx"), exist_ok=True)
    c, h, w = (int(v) for v in args.idx_shape.split(","))
    for prefix, n in (("train", args.n), ("t10k", max(args.n // 4, 1))):
        x, y = synthetic(rng, n, h, w, c, args.classes)
        if c == 1:
            write_idx(os.path.join(out, "idx", f"{prefix}-images-idx3-ubyte.gz"), x[..., 0])
        else:
            write_idx(os.path.join(out, "idx", f"{prefix}-images-idx4-ubyte.gz"),
                      x.transpose(0, 3, 1, 2))
        write_idx(os.path.join(out, "idx", f"{prefix}-labels-idx1-ubyte.gz"), y)

    try:
        from PIL import Image
    except ImportError:
        print("make_test_data: PIL not found; no photo folder", file=sys.stderr)
        return
    folder = os.path.join(out, "catdog", "train")
    os.makedirs(folder, exist_ok=True)
    for i in range(args.n):
        cls = ("cat", "dog")[i % 2]
        h, w = int(rng.integers(24, 90)), int(rng.integers(24, 90))
        x, _ = synthetic(rng, 1, h, w, 3, 1)
        x = x // 2 + (128 if cls == "dog" else 0)  # dogs bright, cats dark
        Image.fromarray(x[0]).save(os.path.join(folder, f"{cls}.{i // 2}.png"))


if __name__ == "__main__":
    main()
