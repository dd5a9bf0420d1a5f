#!/usr/bin/env python3
"""Compare two safetensors checkpoints tensor by tensor.

usage: compare_weights.py A B [--rtol R] [--atol A]

Exit 0 when both files hold the same tensor names, dtypes and shapes and every
element satisfies |a - b| <= atol + rtol * |b|; otherwise print the worst
tensor and exit 1. Used where two legal schedules of the same model sum in a
different order (the -O0 plain lowering against the tiled -O3 code), so
weights agree to rounding but not bit for bit.
"""
import argparse
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64,
          "F16": np.float16, "BF16": None}


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = DTYPES.get(info["dtype"])
        if dt is None:
            sys.exit(f"{path}: {name}: dtype {info['dtype']} not supported")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=dt).reshape(info["shape"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--atol", type=float, default=1e-6)
    args = ap.parse_args()
    ta, tb = load(args.a), load(args.b)
    if sorted(ta) != sorted(tb):
        sys.exit(f"tensor names differ: {sorted(set(ta) ^ set(tb))}")
    worst = (0.0, None)
    for name in sorted(ta):
        x, y = ta[name], tb[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            sys.exit(f"{name}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        if not np.all(np.isfinite(x64) == np.isfinite(y64)):
            sys.exit(f"{name}: non-finite values differ")
        excess = np.abs(x64 - y64) - (args.atol + args.rtol * np.abs(y64))
        excess = np.where(np.isfinite(excess), excess, 0.0)
        m = float(excess.max()) if excess.size else 0.0
        if m > worst[0] or worst[1] is None:
            worst = (m, name)
    if worst[0] > 0:
        sys.exit(f"{worst[1]}: exceeds atol {args.atol} + rtol {args.rtol} by {worst[0]:.3g}")
    print(f"{len(ta)} tensors agree within atol {args.atol} + rtol {args.rtol}")


if __name__ == "__main__":
    main()
