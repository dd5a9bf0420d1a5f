#!/usr/bin/env python3
"""Writes a model file that is big in one direction, for the front end's
linear-time tests (large.test):
  big_model.py classes N [dup]   N class names (dup: the last repeats the first)
  big_model.py layers N [dup]    N named relu layers (dup: the last repeats the first's name)
  big_model.py keys N            one layer item with N unknown keys before its type
  big_model.py nest N            a value nested in N flow lists"""
import sys

kind, n = sys.argv[1], int(sys.argv[2])
prefix = "layer_" + "x" * 250 + "_"
dup = sys.argv[3:] == ["dup"]
head = "input: {channels: 1, height: 2, width: 2}\n"
tail = "loss: cross_entropy\noptimizer: {sgd: {lr: 0.1}}\ndata: {format: idx}\n"
if kind == "classes":
    names = [f"c{i}" for i in range(n - 1)] + ["c0" if dup else f"c{n - 1}"]
    body = (f"classes: [{', '.join(names)}]\n"
            f"layers: [flatten, {{name: fc, linear: {{out_features: {n}}}}}]\n")
elif kind == "layers":
    # Long names sharing a prefix: comparing two costs what it would in a
    # real model, where names like block3_conv2 share most of their letters.
    names = [f"{prefix}{i}" for i in range(n - 1)] + [f"{prefix}0" if dup else f"{prefix}{n - 1}"]
    body = "layers:\n  - flatten\n" + "".join(f"  - {{name: {name}, relu: }}\n" for name in names)
    body += "  - {name: fc, linear: {out_features: 2}}\n"
elif kind == "keys":
    keys = ", ".join(f"k{i}: 1" for i in range(n))
    body = f"layers: [flatten, {{name: fc, {keys}, linear: {{out_features: 2}}}}]\n"
elif kind == "nest":
    body = "layers: " + "[" * n + "flatten" + "]" * n + "\n"
else:
    sys.exit(f"big_model.py: unknown kind {kind}")
sys.stdout.write(head + body + tail)
