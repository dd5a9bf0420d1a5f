#!/usr/bin/env python3
"""Writes a model file that is big in one direction, for the front end's
linear-time tests (large.test):
  big_model.py classes N [dup]   N class names (dup: the last repeats the first)
  big_model.py layers N [dup]    N named linear layers (dup: the last repeats the first's name)
  big_model.py keys N            one layer item with N unknown keys before its type
  big_model.py nest N            a value nested in N flow lists"""
import sys

kind, n = sys.argv[1], int(sys.argv[2])
dup = sys.argv[3:] == ["dup"]
head = "input: {channels: 1, height: 2, width: 2}\n"
tail = "loss: cross_entropy\noptimizer: {sgd: {lr: 0.1}}\ndata: {format: idx}\n"
if kind == "classes":
    names = [f"c{i}" for i in range(n - 1)] + ["c0" if dup else f"c{n - 1}"]
    body = (f"classes: [{', '.join(names)}]\n"
            f"layers: [flatten, {{name: fc, linear: {{out_features: {n}}}}}]\n")
elif kind == "layers":
    names = [f"l{i}" for i in range(n - 1)] + ["l0" if dup else f"l{n - 1}"]
    body = "layers:\n  - flatten\n" + "".join(
        f"  - {{name: {name}, linear: {{out_features: 2}}}}\n" for name in names)
elif kind == "keys":
    keys = ", ".join(f"k{i}: 1" for i in range(n))
    body = f"layers: [flatten, {{name: fc, {keys}, linear: {{out_features: 2}}}}]\n"
elif kind == "nest":
    body = "layers: " + "[" * n + "flatten" + "]" * n + "\n"
else:
    sys.exit(f"big_model.py: unknown kind {kind}")
sys.stdout.write(head + body + tail)
