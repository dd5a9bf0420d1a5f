#!/usr/bin/env python3
"""Compares the per-step losses of NAME-train --log files: the rows of every
file after the first must be rows of the first (same step, epoch and lr) with
a loss within --rel of its loss. Prints the largest relative difference."""
import argparse
import csv
import sys


def rows(path):
    with open(path) as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("reference")
    ap.add_argument("others", nargs="+")
    ap.add_argument("--rel", type=float, default=1e-5)
    a = ap.parse_args()
    ref = rows(a.reference)
    worst = 0.0
    for path in a.others:
        other = rows(path)
        if not other:
            sys.exit(f"{path}: no steps")
        for step, r in sorted(other.items()):
            if step not in ref:
                sys.exit(f"{path}: step {step} is not in {a.reference}")
            want = ref[step]
            if (r["epoch"], r["lr"]) != (want["epoch"], want["lr"]):
                sys.exit(f"{path}: step {step} is epoch {r['epoch']}, lr {r['lr']}; "
                         f"{a.reference} has epoch {want['epoch']}, lr {want['lr']}")
            x, y = float(r["loss"]), float(want["loss"])
            rel = abs(x - y) / abs(y)
            worst = max(worst, rel)
            if not rel <= a.rel:
                sys.exit(f"{path}: step {step}: loss {x} against {y}: {rel:.3g} relative "
                         f"(more than {a.rel:g})")
    print(f"{len(other)} steps; losses within {worst:.2g} relative")


if __name__ == "__main__":
    main()
