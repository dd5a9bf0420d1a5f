#!/usr/bin/env python3
"""compare_weights.py REF W... [--rel 1e-5]: every tensor of each W within
--rel of REF's, measured against the L2 norm of REF's tensor."""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "scripts"))
from make_test_data import read_safetensors  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("reference")
    ap.add_argument("others", nargs="+")
    ap.add_argument("--rel", type=float, default=1e-5)
    a = ap.parse_args()
    ref = read_safetensors(a.reference)[0]
    worst = 0.0
    for path in a.others:
        w = read_safetensors(path)[0]
        if sorted(w) != sorted(ref):
            sys.exit(f"{path}: tensors {sorted(w)}, not {sorted(ref)}")
        for name, t in ref.items():
            rel = float(np.linalg.norm(w[name] - t) / max(np.linalg.norm(t), 1e-30))
            worst = max(worst, rel)
            if not rel <= a.rel:
                sys.exit(f"{path}: {name} differs by {rel:.3g} of its norm (more than {a.rel:g})")
    print(f"{len(ref)} tensors within {worst:.2g} of their norms")


if __name__ == "__main__":
    main()
