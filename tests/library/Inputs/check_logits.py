"""Compares the library's logits (two_models' JSON lines, standard input)
with NAME-eval --predict --json --logits for the same images: every logit
within 1e-6 relative. usage: check_logits.py MODEL=EVAL.json... < LINES"""
import json
import sys

evals = {}
for arg in sys.argv[1:]:
    model, path = arg.split("=", 1)
    with open(path) as f:
        evals[model] = [p["logits"] for p in json.load(f)["predictions"]]
worst, checked = 0.0, 0
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    got = json.loads(line)
    want = evals[got["model"]]
    for i, row in enumerate(got["logits"]):
        scale = max(abs(x) for x in want[i])
        for a, b in zip(row, want[i]):
            # Relative to the row's largest logit: a logit near zero has no
            # relative precision of its own.
            d = abs(a - b) / scale
            worst = max(worst, d)
            if d > 1e-6:
                sys.exit("%s n=%d image %d: %r vs NAME-eval's %r (%.3g relative)"
                         % (got["model"], got["n"], i, row, want[i], d))
        checked += 1
    print("%s n=%d: %d images match" % (got["model"], got["n"], len(got["logits"])))
print("worst relative difference %.3g over %d images" % (worst, checked))
