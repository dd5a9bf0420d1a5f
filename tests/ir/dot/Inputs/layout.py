#!/usr/bin/python3
"""Checks how Graphviz lays out a training-step picture of `xentcc --emit=dot
--stage=train`, from `dot -Tplain` of it:

  layout.py GRAPH.dot

The three clusters are stacked, optimizer over backward over forward, every
node of one cluster above every node of the one below; each parameter, its
gradient (PARAM.grad) and the update of it (sgd_update or adam_update of
its shape, in the same column) share an x coordinate. Prints one summary
line; exits 1 saying what does not hold.
"""
import re
import subprocess
import sys


def main():
    text = open(sys.argv[1]).read()
    part, label = {}, {}
    for m in re.finditer(r"subgraph cluster_(\w+) \{(.*?)\n  \}", text, re.S):
        for node, lab in re.findall(r'^    (n\w+) \[label="([^"]*)"', m.group(2), re.M):
            part[node], label[node] = m.group(1), lab
    plain = subprocess.run(["dot", "-Tplain", sys.argv[1]], capture_output=True, text=True,
                           check=True).stdout
    x, y, h = {}, {}, {}
    for line in plain.splitlines():
        f = line.split()
        if f[0] == "node" and f[1] in part:
            x[f[1]], y[f[1]], h[f[1]] = float(f[2]), float(f[3]), float(f[5])
    bottom = {p: min(y[n] - h[n] / 2 for n in y if part[n] == p) for p in set(part.values())}
    top = {p: max(y[n] + h[n] / 2 for n in y if part[n] == p) for p in set(part.values())}
    order = ["forward", "backward", "optimizer"]
    for lower, upper in zip(order, order[1:]):
        if top[lower] >= bottom[upper]:
            sys.exit(f"layout: the {lower} cluster reaches {top[lower]:.2f}, above the bottom "
                     f"{bottom[upper]:.2f} of the {upper} cluster")
    name = {lab.split("\\n")[0][1:]: n for n, lab in label.items()}
    params = [n for n, lab in label.items() if lab.split("\\n")[1] == "param"]
    for p in params:
        pname = label[p].split("\\n")[0][1:]
        shape = label[p].split("\\n")[2]
        grad = name.get(pname + ".grad")
        updates = [n for n, lab in label.items() if re.search(r"\\n(sgd|adam)_update\\n", lab)
                   and lab.endswith(shape) and abs(x[n] - x[p]) < 0.01]
        if grad is None or abs(x[grad] - x[p]) > 0.01 or not updates:
            sys.exit(f"layout: {pname} at x {x[p]:.2f}, its gradient at "
                     f"{x[grad] if grad else None}, updates of its shape there: {len(updates)}")
    print(f"layout: {len(params)} parameters aligned with their gradients and updates; "
          f"clusters stacked {' < '.join(order)}")


if __name__ == "__main__":
    main()
