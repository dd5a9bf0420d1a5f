#!/usr/bin/python3
"""Mixed-precision parity of the seed CIFAR-10 net (models/cifar10.yaml with
precision: bf16 or fp16) against PyTorch 1.13, from the same initial weights
and batches (synthetic CIFAR-10 in file order, batch 32, SGD as the YAML).

  scripts/amp_parity.py --workdir DIR [--xentcc PATH] [--precision bf16|fp16] [--steps 32]
  scripts/amp_parity.py --workdir DIR [--xentcc PATH] --overflows

The reference is torch.autocast's rounding points with float32 sums
(scripts/torch_model.py low_forward): on this CPU PyTorch's own bf16
convolution sums in lower precision, which is not autocast's semantics but
a property of its CPU kernels. For fp16 the reference adds GradScaler
(torch_model.CpuGradScaler: torch.cuda.amp.GradScaler's algorithm, which
1.13 runs only on CUDA). Checks:

  step 1 loss          |ours - ref| / |ref|      <= 3e-6
  steps 2..N loss      |ours - ref| / |ref|      <= 1e-3
  final weights        relative L2 per tensor    <= 1e-3

and prints, for scale, the first step's loss of the float32 net and of
torch.autocast("cpu", dtype=torch.bfloat16) itself (bf16 only), and how far
each is from the reference.

--overflows trains in fp16 with a GradScaler that overflows often
(grad_scaler: {init_scale: 2^30, growth_factor: 8, backoff_factor: 0.25,
growth_interval: 3}): the first steps' gradients are infinite until the
scale has backed off, and every growth brings new overflows. It checks,
besides the above, that the scale and the skipped flag of every step (the
--log columns) are GradScaler's, that a skipped step changes no weight and
no optimizer state (the checkpoint after it against the one before, bit
for bit), and that a run stopped right after a skipped step and continued
with --resume ends bit for bit where the uninterrupted run does.

Exit status 0 when the checks hold, 1 when not, 2 on a usage error.
"""
import argparse
import csv
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import make_test_data as td  # noqa: E402
import torch_model as tm  # noqa: E402

BATCH, THREADS = 32, 2
FIRST_RTOL, LOSS_RTOL, WEIGHT_RTOL = 3e-6, 1e-3, 1e-3


def die(msg):
    print(f"amp_parity: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        die(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}")
    return r.stdout


def batches(x_all, y_all, steps):
    """The first `steps` batches in file order, as torchvision's ToTensor and
    Normalize(0.5, 0.5) make them."""
    for i in range(steps):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        x = torch.from_numpy(np.ascontiguousarray(x_all[sl])).float().div(255).sub(0.5).div(0.5)
        yield x, torch.from_numpy(y_all[sl]).long()


def reference(spec, init, train_set, steps):
    """The emulated-autocast trajectory: losses and final weights."""
    net = tm.Net(spec)
    net.load_state_dict(init)
    _, crit = tm.loss_of(spec, net)
    opt = tm.optimizer_of(spec, net.parameters())
    scaler = tm.CpuGradScaler(spec) if spec["precision"] == "fp16" else None
    losses, scales = [], []
    net.train()
    for x, y in batches(*train_set, steps):
        opt.zero_grad()
        loss = crit(net(x), y)
        if scaler:
            used = scaler.scale_value()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scales.append((used, int(scaler.found_inf)))
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}, scales


def first_losses(spec, init, train_set):
    """The first batch's loss in float32 and under PyTorch's own autocast."""
    f32 = dict(spec, precision="fp32")
    net = tm.Net(f32)
    net.load_state_dict(init)
    _, crit = tm.loss_of(f32, net)
    x, y = next(batches(*train_set, 1))
    out = {"float32": crit(net(x), y).item()}
    if spec["precision"] == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["torch.autocast bf16"] = crit(net(x), y).item()
    return out


def compile_model(xentcc, spec, work):
    path = os.path.join(work, "cifar10.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    exe = os.path.join(work, "cifar10")
    run([xentcc, path, "-o", exe])
    return exe


def train(exe, data, init_path, steps, save, log, resume=False):
    """NAME-train for `steps` steps in file order; its log rows."""
    start = ["--resume"] if resume else ["--init", init_path]
    run([exe + "-train", "--data", data, *start, "--no-shuffle", "--steps", str(steps),
         "--no-eval", "--log", log, "--save", save, "--threads", str(THREADS), "--quiet"])
    with open(log) as f:
        return list(csv.DictReader(f))


def ours(xentcc, spec, work, data, init_path, steps):
    exe = compile_model(xentcc, spec, work)
    log, saved = exe + ".log.csv", exe + ".final.safetensors"
    rows = train(exe, data, init_path, steps, saved, log)
    weights, _ = td.read_safetensors(saved)
    return [float(r["loss"]) for r in rows], weights, rows


def checkpoint(path):
    """The weights and the optimizer state saved at path (W.safetensors and
    W.optim.safetensors), as raw bytes per tensor, and the optimizer file's
    metadata."""
    w, _ = td.read_safetensors(path)
    o, meta = td.read_safetensors(path.replace(".safetensors", ".optim.safetensors"))
    return {k: v.tobytes() for k, v in {**w, **o}.items()}, meta


def overflow_checks(exe, work, data, init_path, rows, steps, row):
    """Skipped steps change nothing; --resume after one (and after a clean
    step, growth tracker above 0) is exact."""
    skipped = [int(r["step"]) for r in rows if int(r["skipped"])]
    mid = [s for s in skipped if 1 < s < steps - 4]
    if not mid:
        row("a skipped step mid-run", 1.0, 0.0, "  (none in this run)")
        return
    k = min(mid, key=lambda s: abs(s - steps // 2))
    at = lambda n: os.path.join(work, f"at{n}.safetensors")  # noqa: E731
    train(exe, data, init_path, k - 1, at(k - 1), at(k - 1) + ".csv")
    train(exe, data, init_path, k, at(k), at(k) + ".csv")
    before, _ = checkpoint(at(k - 1))
    after, _ = checkpoint(at(k))
    changed = [name for name in before if before[name] != after.get(name)]
    row(f"tensors changed by skipped step {k}", float(len(changed)), 0.0,
        f"  ({len(before)} weights and optimizer states{': ' + ', '.join(changed) if changed else ''})")
    whole, _ = checkpoint(exe + ".final.safetensors")
    # Two clean steps after a skipped one: the growth tracker is at 2.
    clean = next((s for s in range(k + 2, steps) if s - 2 in skipped and
                  s - 1 not in skipped and s not in skipped), None)
    for stop in [k] + ([clean] if clean else []):
        if stop != k:
            train(exe, data, init_path, stop, at(stop), at(stop) + ".csv")
        resumed = os.path.join(work, f"resumed{stop}.safetensors")
        shutil.copy(at(stop), resumed)
        shutil.copy(at(stop).replace(".safetensors", ".optim.safetensors"),
                    resumed.replace(".safetensors", ".optim.safetensors"))
        _, meta = checkpoint(resumed)
        tail = train(exe, data, init_path, steps, resumed, resumed + ".csv", resume=True)
        cont, _ = checkpoint(resumed)
        differ = [name for name in whole if whole[name] != cont.get(name)]
        same_log = [(r["loss"], r["scale"], r["skipped"]) for r in rows[stop:]] == \
            [(r["loss"], r["scale"], r["skipped"]) for r in tail]
        what = "skipped" if stop == k else "clean"
        row(f"--resume after {what} step {stop}", float(len(differ) + (not same_log)), 0.0,
            f"  (saved scale {meta.get('grad_scaler.scale')}, growth tracker "
            f"{meta.get('grad_scaler.growth_tracker')}; final tensors and the log of steps "
            f"{stop + 1}-{steps} as the uninterrupted run's, bit for bit"
            f"{': ' + ', '.join(differ) if differ else ''}{'' if same_log else '; LOG DIFFERS'})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    ap.add_argument("--models", default=os.path.join(os.path.dirname(HERE), "models"))
    ap.add_argument("--precision", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--overflows", action="store_true",
                    help="fp16 with a GradScaler that overflows often (see above)")
    args = ap.parse_args()
    if args.overflows:
        args.precision = "fp16"
    torch.set_num_threads(THREADS)
    xentcc = os.path.abspath(args.xentcc) if os.sep in args.xentcc else args.xentcc
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    with open(os.path.join(args.models, "cifar10.yaml")) as f:
        spec = yaml.safe_load(f)
    spec["precision"] = args.precision
    if args.overflows:
        spec["grad_scaler"] = {"init_scale": 2.0 ** 30, "growth_factor": 8.0,
                               "backoff_factor": 0.25, "growth_interval": 3}
    rng = np.random.default_rng(0)
    x, y = td.synthetic(rng, args.steps * BATCH, 32, 32, 3, 10)
    data = os.path.join(work, "data_batch_1.bin")
    td.write_cifar(data, x, y)
    train_set = td.load_cifar_bin(data)

    torch.manual_seed(0)
    init = tm.Net(spec).state_dict()
    init_path = os.path.join(work, "init.safetensors")
    td.write_safetensors(init_path, {k: v.numpy() for k, v in init.items()})

    ref_losses, ref_w, ref_scales = reference(spec, init, train_set, args.steps)
    o_losses, o_w, rows = ours(xentcc, spec, work, data, init_path, args.steps)
    if len(o_losses) != args.steps:
        die(f"the log has {len(o_losses)} steps, not {args.steps}")

    ok = True
    print(f"== cifar10, precision {args.precision}: {args.steps} steps of batch {BATCH} ==")

    def row(what, diff, tol, note=""):
        nonlocal ok
        good = diff <= tol
        ok &= good
        print(f"  {what:<30} {diff:>11.3e} {tol:>9.1e}  {'ok' if good else 'FAIL'}{note}")

    rel = [abs(o - t) / abs(t) for o, t in zip(o_losses, ref_losses)]
    row("step 1 loss (relative)", rel[0], FIRST_RTOL,
        f"  (ours {o_losses[0]:.9g}, reference {ref_losses[0]:.9g})")
    i = 1 + int(np.argmax(rel[1:]))
    row(f"steps 2-{args.steps} loss (relative)", rel[i], LOSS_RTOL,
        f"  (worst step {i + 1}: ours {o_losses[i]:.9g}, reference {ref_losses[i]:.9g})")
    for name, t in ref_w.items():
        o = o_w[name]
        err = float(np.linalg.norm(o.astype(np.float64) - t)) / max(float(np.linalg.norm(t)), 1e-30)
        row(f"{name} (rel. L2)", err, WEIGHT_RTOL)
    if ref_scales:
        o_scales = [float(np.float32(r["scale"])) for r in rows]  # %.9g: a float32 exactly
        o_skips = [int(r["skipped"]) for r in rows]
        bad = [i + 1 for i in range(args.steps)
               if o_scales[i] != ref_scales[i][0] or o_skips[i] != ref_scales[i][1]]
        row("GradScaler: steps unlike it", float(len(bad)), 0.0,
            f"  (scale {o_scales[0]:g} to {o_scales[-1]:g}, {sum(o_skips)} of {args.steps} "
            f"steps skipped{'; first differing: step ' + str(bad[0]) if bad else ''})")
        print("  scale, skipped: " + " ".join(f"{s:g}{'*' if k else ''}"
                                              for s, k in zip(o_scales, o_skips)))
    if args.overflows:
        overflow_checks(os.path.join(work, "cifar10"), work, data, init_path, rows, args.steps,
                        row)
    print("  for scale, the first step's loss of PyTorch itself:")
    for what, v in first_losses(spec, init, train_set).items():
        print(f"    {what:<22} {v:.9g}: {abs(v - ref_losses[0]) / abs(ref_losses[0]):.2e} from "
              f"the reference, {abs(v - o_losses[0]) / abs(o_losses[0]):.2e} from ours")
    print(f"amp_parity {args.precision}: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
