#!/usr/bin/python3
"""The metrics a user watches, held against PyTorch 1.13 in the real
executables: NAME-train's per-epoch history and NAME-eval's report.

  scripts/history_parity.py --workdir DIR [--xentcc PATH] MODEL.yaml...

For each model, data and initial weights are made as option_parity.py makes
them, and PyTorch trains on the same batches, recording per epoch what a
Keras or PyTorch user logs: the mean of the steps' losses weighted by their
samples, the accuracy of the training forward's own logits, and after the
epoch, in eval mode, the criterion (the YAML's loss, l2 terms included) of
the logits of the whole validation set at once and their accuracy, and the
lr of the epoch's last step. NAME-train runs as the YAML says (--init from
the same weights), then NAME.history.csv must hold, per epoch:

  train_loss, val_loss   relative to PyTorch's       <= 1e-4
  train_accuracy, val_accuracy                        equal
  lr                     relative                     <= 1e-6
  epoch, step            1, 2, ... and steps per epoch times it
  images_per_s, seconds  positive

NAME-eval --json on the validation data must give exactly the last epoch's
val_loss and val_accuracy (the same logits, the same arithmetic), its
top_k_accuracy PyTorch's (torch.topk), and its classification_report the
values of sklearn's formulas (computed below, and by sklearn itself when
python3-sklearn is installed) on PyTorch's predictions. A run stopped after
one epoch and one stopped mid-epoch by --steps (which evaluates and writes a
row for the part it trained), each continued with --resume, must end with
the uninterrupted run's history, timings aside. rsvg-convert must render
NAME.curves.svg.

Exit status 0 when everything holds, 1 when not, 2 on a usage or setup error.
"""
import argparse
import csv
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import option_parity as op  # noqa: E402
import torch_model as tm  # noqa: E402

LOSS_RTOL, LR_RTOL = 1e-4, 1e-6
TIMINGS = ("images_per_s", "seconds")


def die(msg):
    print(f"history_parity: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return r.stdout


#
# PyTorch
#

def predictions(r, out):
    return (torch.sigmoid(out[:, 0]) > 0.5).long() if r.binary else out.argmax(1)


def evaluate(r, net, criterion, test):
    """Eval mode over the whole set at once: loss, accuracy, logits, labels."""
    net.eval()
    with torch.no_grad():
        out = net(torch.stack([op.transform(r, s[0], None) for s in test]))
        y = op.labels_of(r, [s[1] for s in test])
        loss = criterion(out, y).item()
    net.train()
    labels = np.array([s[1] for s in test])
    acc = float((predictions(r, out).numpy() == labels).mean())
    return loss, acc, out, labels


def torch_history(r, net, samples, test, init_path):
    """op.torch_train, recording each epoch's row of the history."""
    tm_dict = {k: v.numpy() for k, v in net.state_dict().items()}
    op.td.write_safetensors(init_path, tm_dict)
    _, criterion = tm.loss_of(r.spec, net)
    opt = tm.optimizer_of(r.spec, net.parameters())
    n = len(samples)
    steps = n // r.batch if r.drop_last else -(-n // r.batch)
    per_step = tm.schedule_kind(r.spec)[3]
    sched, _ = tm.scheduler_of(r.spec, opt, r.epochs * steps if per_step else r.epochs)
    augment = r.crop > 0 or r.flip
    rows, step = [], 0
    net.train()
    for epoch in range(r.epochs):
        order = tm.epoch_order(n, r.shuffle, r.seed, epoch)
        aug = tm.XcRng(r.seed, 1000000 + epoch) if augment else None
        loss_sum, right, seen = 0.0, 0, 0
        for it in range(steps):
            idx = order[it * r.batch:(it + 1) * r.batch]
            x = torch.stack([op.transform(r, samples[i][0], aug) for i in idx])
            ys = [samples[i][1] for i in idx]
            y = op.labels_of(r, ys)
            step += 1
            net.set_step(step)
            lr = opt.param_groups[0]["lr"]
            opt.zero_grad()
            out = net(x)
            loss = criterion(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            right += int((predictions(r, out.detach()).numpy() == np.array(ys)).sum())
            seen += len(idx)
            if per_step and sched:
                sched.step()
        if not per_step and sched:
            sched.step()
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / seen,
               "train_accuracy": right / seen, "lr": lr}
        if test is not None:
            row["val_loss"], row["val_accuracy"], _, _ = evaluate(r, net, criterion, test)
        rows.append(row)
    return rows, criterion


#
# sklearn's classification_report, from its formulas
#

def report(conf):
    """classification_report(labels=range(k), output_dict=True,
    zero_division=0) of a confusion matrix (rows: true classes)."""
    k = conf.shape[0]
    out, rows = {}, []
    for c in range(k):
        tp, predicted, actual = conf[c, c], conf[:, c].sum(), conf[c, :].sum()
        p = tp / predicted if predicted else 0.0
        rc = tp / actual if actual else 0.0
        f = 2 * p * rc / (p + rc) if p + rc else 0.0
        rows.append((p, rc, f, int(actual)))
        out[c] = {"precision": p, "recall": rc, "f1-score": f, "support": int(actual)}
    total = sum(s for *_, s in rows)
    out["accuracy"] = np.trace(conf) / total if total else 0.0
    out["macro avg"] = {m: sum(row[i] for row in rows) / k
                        for i, m in enumerate(("precision", "recall", "f1-score"))}
    out["weighted avg"] = {m: sum(row[i] * row[3] for row in rows) / total if total else 0.0
                           for i, m in enumerate(("precision", "recall", "f1-score"))}
    out["macro avg"]["support"] = out["weighted avg"]["support"] = total
    return out


def sklearn_report(labels, preds, k):
    try:
        from sklearn.metrics import classification_report
    except ImportError:
        return None
    return classification_report(labels, preds, labels=list(range(k)), output_dict=True,
                                 zero_division=0)


#
# One model
#

def read_history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def without_timings(rows):
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return struct.unpack(">II", head[16:24])


def check_model(path, xentcc, workdir):
    r = op.Recipe(path)
    work = os.path.join(workdir, r.name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.manual_seed(0)
    net = tm.Net(r.spec, r.seed)
    rng = np.random.default_rng(1)
    paths, samples, test = op.make_data(r, net, work, rng)
    extra = []
    if test is None:
        # No test data in the YAML and no split: a test set for --eval-data.
        names = op.class_names(r, net)
        sc, sh, sw = r.stored_shape()
        xt, yt = op.td.synthetic(rng, 2 * r.batch + 3, sh, sw, sc, len(names))
        data = op.write_set(r, os.path.join(work, "data"), "test", xt, yt, names)
        test = [(op.to_input(r, xt[i].transpose(2, 0, 1)), int(yt[i]))
                for i in op.runtime_order(r, yt, names)]
        extra = ["--eval-data", data]
    init = os.path.join(work, "init.safetensors")
    want, criterion = torch_history(r, net, samples, test, init)

    yaml_path = op.rewrite_yaml(r, work, paths)
    exe = os.path.join(work, r.name)
    run([xentcc, yaml_path, "-o", exe])
    save = exe + ".safetensors"
    base = ["--threads", str(op.THREADS)] + extra
    run([exe + "-train", "--init", init, "--save", save, "--quiet"] + base)
    got = read_history(exe + ".history.csv")

    ok = True
    print(f"\n== {os.path.basename(path)}: {r.epochs} epochs of {want[0]['step']} steps, "
          f"{len(test)} validation images ==")

    def row(what, diff, tol, good, note=""):
        nonlocal ok
        ok &= bool(good)
        print(f"  {what:<38} {diff:>11.3e} {tol:>9.1e}  {'ok' if good else 'FAIL'}{note}")

    if len(got) != len(want):
        print(f"  history has {len(got)} rows, PyTorch trained {len(want)} epochs: FAIL")
        return False
    for col, tol in (("train_loss", LOSS_RTOL), ("val_loss", LOSS_RTOL), ("lr", LR_RTOL)):
        rel = [abs(float(g[col]) - w[col]) / max(abs(w[col]), 1e-12) for g, w in zip(got, want)]
        i = int(np.argmax(rel))
        row(f"{col} (relative)", rel[i], tol, rel[i] <= tol,
            f"  (epoch {i + 1}: ours {got[i][col]}, torch {want[i][col]:.9g})")
    for col in ("train_accuracy", "val_accuracy"):
        diff = [abs(float(g[col]) - w[col]) for g, w in zip(got, want)]
        i = int(np.argmax(diff))
        row(col, diff[i], 0, diff[i] == 0,
            f"  (epoch {i + 1}: ours {got[i][col]}, torch {want[i][col]:.9g})")
    same = all(int(g["epoch"]) == w["epoch"] and int(g["step"]) == w["step"]
               for g, w in zip(got, want))
    row("epoch, step", 0.0 if same else 1.0, 0, same)
    timed = all(float(g[t]) > 0 for g in got for t in TIMINGS)
    row("images_per_s, seconds > 0", 0.0 if timed else 1.0, 0, timed)

    # NAME-eval on the same data: the history's numbers, exactly.
    k = 0 if r.binary else min(2, len(op.class_names(r, net)) - 1)
    eval_args = ["--weights", save, "--json", "--quiet", "--threads", str(op.THREADS)]
    if extra:
        eval_args += ["--data", extra[1]]
    ev = json.loads(run([exe + "-eval"] + eval_args + (["--top-k", str(k)] if k else [])))
    last = got[-1]
    d = abs(float(ev["loss"]) - float(last["val_loss"]))
    row("NAME-eval loss == last val_loss", d, 0, d == 0,
        f"  ({ev['loss']} vs {last['val_loss']})")
    d = abs(float(ev["accuracy"]) - float(last["val_accuracy"]))
    row("NAME-eval accuracy == val_accuracy", d, 0, d == 0)
    _, _, out, labels = evaluate(r, net, criterion, test)
    if k:
        t_top = float(np.mean([labels[i] in out[i].topk(k).indices.tolist()
                               for i in range(len(labels))]))
        d = abs(ev["top_k_accuracy"] - t_top)
        row(f"top-{k} accuracy (torch.topk)", d, 0, d == 0 and ev["top_k"] == k,
            f"  ({ev['top_k_accuracy']} vs {t_top})")
    preds = predictions(r, out).numpy()
    nk = len(ev["classes"])
    conf = np.zeros((nk, nk), np.int64)
    for y, p in zip(labels, preds):
        conf[y, p] += 1
    want_rep = report(conf)
    got_rep = ev["classification_report"]
    err = 0.0
    for c, name in enumerate(ev["classes"]):
        for m in ("precision", "recall", "f1-score", "support"):
            err = max(err, abs(got_rep[name][m] - want_rep[c][m]))
    for avg in ("macro avg", "weighted avg"):
        for m in ("precision", "recall", "f1-score", "support"):
            err = max(err, abs(got_rep[avg][m] - want_rep[avg][m]))
    err = max(err, abs(got_rep["accuracy"] - want_rep["accuracy"]))
    row("classification_report (formulas)", err, 1e-12, err <= 1e-12,
        f"  (macro F1 {got_rep['macro avg']['f1-score']:.6g})")
    sk = sklearn_report(labels, preds, nk)
    if sk is not None:
        err = max(abs(got_rep[ev["classes"][c]][m] - sk[str(c)][m])
                  for c in range(nk) for m in ("precision", "recall", "f1-score", "support"))
        err = max([err] + [abs(got_rep[a][m] - sk[a][m]) for a in ("macro avg", "weighted avg")
                           for m in ("precision", "recall", "f1-score", "support")])
        row("classification_report (sklearn)", err, 1e-12, err <= 1e-12)

    # --resume continues the history; a --steps run writes a partial row.
    per_epoch = want[0]["step"]
    stops = (("epoch", ["--epochs", "1"]),
             ("steps", ["--steps", str(per_epoch + 1), "--epochs", str(r.epochs)]))
    for name, first in stops:
        cut = exe + f".{name}.safetensors"
        out1 = run([exe + "-train", "--init", init, "--save", cut] + base + first)
        hist = read_history(exe + f".{name}.history.csv")
        if name == "steps":
            partial = float(hist[-1]["epoch"])
            good = len(hist) == 2 and abs(partial - (1 + 1 / per_epoch)) < 1e-12 and \
                "epoch %g:" % partial in out1 and hist[-1]["val_loss"] != ""
            row("--steps: a partial row, evaluated", 0.0 if good else 1.0, 0, good,
                f"  (epoch {hist[-1]['epoch']})")
        run([exe + "-train", "--save", cut, "--resume", "--quiet"] + base)
        same = without_timings(read_history(exe + f".{name}.history.csv")) == without_timings(got)
        row(f"--resume after {'epoch 1' if name == 'epoch' else 'step %d' % (per_epoch + 1)}",
            0.0 if same else 1.0, 0, same)

    png = exe + ".curves.png"
    subprocess.run(["rsvg-convert", exe + ".curves.svg", "-o", png], check=True)
    size = png_size(png)
    row("rsvg-convert renders the curves", 0.0 if size == (1320, 380) else 1.0, 0,
        size == (1320, 380), f"  ({size})")
    print(f"{os.path.basename(path)}: {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    args = ap.parse_args()
    if not shutil.which("rsvg-convert"):
        die("rsvg-convert is missing: run scripts/setup.sh --test (librsvg2-bin)")
    xentcc = os.path.abspath(args.xentcc) if os.sep in args.xentcc else args.xentcc
    torch.set_num_threads(op.THREADS)
    ok = True
    for m in args.models:
        ok &= check_model(m, xentcc, os.path.abspath(args.workdir))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
