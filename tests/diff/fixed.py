#!/usr/bin/python3
"""Fixed models for the tile pass's rules, differentially: scripts/
diff_models.py's checks (-O0 against -O3: every step's loss, the weights,
the evaluation; -O3 on 1 and 2 threads bit for bit) on models chosen to
take a rule instead of drawn ones.

--set strided: strided convolutions large enough for the cache rules. s0's
stride-2 weight gradient (18 images, 32 -> 64 channels, 13x13 -> 7x7) reads
dy (221 KB) and x's phase planes (576 KB): its tiles run in-channels
outermost, and each tile, whose sum streams more than L1 holds, takes 16
lanes of out-channels. s1 and s2 are odd sizes, padding or none, one
channel in and out, a 1x1 stride-2 projection. s3's input gradient (64
channels) has phase planes 7 wide (15x15, stride 2), tiled 2 rows by 7
columns on AVX-512.

--set border: the guards that skip steps reading only a zero border. b0's
7x7 input gradient without padding reads dy with a border of 6 (a tile of
6 images, 7 in the batch: one whole tile and one of 1 image, which spans
columns and skips a step when all of them read the border); b1's layers
on 5x5 images with padding 1 are guarded in all three directions; b2 has
odd sizes, a 5x5 window without padding and a 4x4 with padding 3. Each
model's loop nests must hold a guard (the count is printed).

--set edges: tiles whose last, shorter block takes another size along
the other unrolled dimension (tile's edge), and tap loops kept rolled. e0
is cifar10's conv2 (6 -> 16 channels, 5x5, 14x14 -> 10x10): its forward
tile of 2 rows by 3 columns leaves a last column, taken 6 rows at a time
in a nest of its own, and its tap loop stays rolled; e1 (5x5, stride 2,
padding 3) has edges in every direction, its weight gradient's blocked
sum (%part, by output element) among them; e2 (128 channels of 4x4
images, allconv's conv3) tiles 3 images, its last image 4 rows at a time.
Each model prints the rolled tap loops in its nests.

--set vectors: the vector choices of tile's fuller_vector and the
threads' loop (wide_outside), as an AVX-512 host takes them. v0's 3x3
weight gradient on 16x16 images of 32 channels runs along its in-channels,
its padded input transposed; v1 (cifar10's conv2 shape, 32 images) takes
its input gradient along the batch; v2 (16 images of 7 channels, 15x15
out) runs forward along the batch with its rows, not its columns, split
between the threads; v3 (a 6x6 window with padding 3) keeps its channels.

Each model's weight comparison is also shown to fail: on a copy of the
-O3 weights with one weight scaled by 1 + 1e-3 it must exit 1.

  tests/diff/fixed.py --set strided|border|vectors|edges --workdir DIR [--xentcc PATH] [--mcpu CPU]
                     [--perturb]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import diff_models as dm  # noqa: E402


def conv(name, o, k, s, p, bias=True):
    spec = {"out_channels": o, "kernel": k, "stride": s, "padding": p}
    if not bias:
        spec["bias"] = False
    return {"name": name, "conv2d": spec}


SETS = {
    "strided": [
        ("s0", 1, 13, 13, 18, [conv("conv1", 32, 3, 1, 1), "relu", conv("conv2", 64, 3, 2, 1),
                              "relu", conv("conv3", 32, 1, 2, 0), "relu"]),
        ("s1", 3, 15, 15, 5, [conv("conv1", 32, 3, 2, 0, bias=False), "relu",
                              conv("conv2", 24, 3, 2, 1), "relu"]),
        ("s2", 1, 13, 11, 7, [conv("conv1", 1, 3, 2, 1), "relu", conv("conv2", 40, 2, 2, 0),
                              "relu", conv("conv3", 1, 1, 2, 0)]),
        ("s3", 1, 15, 15, 16, [conv("pre", 64, 1, 1, 0), "relu", conv("conv", 64, 3, 2, 1),
                               "relu"]),
    ],
    "border": [
        ("b0", 1, 19, 19, 7, [conv("pre", 16, 1, 1, 0), "relu", conv("conv7", 16, 7, 1, 0),
                              "relu"]),
        ("b1", 3, 5, 5, 6, [conv("conv1", 32, 3, 1, 1), "relu", conv("conv2", 32, 3, 1, 1),
                            "relu"]),
        ("b2", 2, 13, 11, 5, [conv("conv1", 8, 1, 1, 0), "relu", conv("conv5", 16, 5, 1, 0),
                              "relu", conv("conv4", 4, 4, 1, 3, bias=False), "relu"]),
    ],
    "vectors": [
        ("v0", 3, 16, 16, 8, [conv("conv1", 32, 3, 1, 1), "relu", conv("conv2", 32, 3, 1, 1),
                             "relu"]),
        ("v1", 3, 14, 14, 32, [conv("pre", 6, 1, 1, 0), "relu", conv("conv2", 16, 5, 1, 0),
                               "relu"]),
        ("v2", 1, 13, 13, 16, [conv("pre", 5, 1, 1, 0), "relu", conv("conv", 7, 3, 1, 2),
                               "relu"]),
        ("v3", 1, 13, 13, 16, [conv("pre", 16, 1, 1, 0), "relu", conv("conv", 16, 6, 1, 3),
                               "relu"]),
    ],
    "edges": [
        ("e0", 1, 14, 14, 8, [conv("pre", 6, 1, 1, 0), "relu", conv("conv2", 16, 5, 1, 0),
                              "relu"]),
        ("e1", 1, 19, 19, 16, [conv("pre", 8, 1, 1, 0), "relu", conv("conv", 16, 5, 2, 3),
                               "relu"]),
        ("e2", 1, 4, 4, 16, [conv("pre", 128, 1, 1, 0), "relu", conv("conv3", 128, 3, 1, 1),
                             "relu"]),
    ],
}
MODELS = SETS["strided"]


def fixed_model(seed, i):
    name, c, h, w, batch, layers = MODELS[i]
    model = {
        "model": name,
        "input": {"channels": c, "height": h, "width": w},
        "layers": list(layers) + ["flatten", {"name": "out", "linear": {"out_features": 3}}],
        "loss": {"cross_entropy": {}},
        "optimizer": {"sgd": {"lr": 0.01, "momentum": 0.9}},
        "train": {"epochs": dm.EPOCHS, "batch_size": batch, "seed": 7},
        "data": {"format": "idx", "train": "data", "test": "data",
                 "normalize": {"mean": [0.5] * c, "std": [0.25] * c}},
    }
    return model, [name, f"{h}x{w}"], 3


def model_loops(args, name):
    """The model's loop nests, as --emit=loops prints them."""
    yaml_path = os.path.join(args.workdir, name, f"{name}.yaml")
    mcpu = [f"-mcpu={args.mcpu}"] if args.mcpu else []
    return subprocess.run([args.xentcc, yaml_path, "--emit=loops"] + mcpu, check=True,
                          capture_output=True, text=True).stdout


def border_guards(args, name):
    """The guards of the tile pass in the model's loop nests: tests of a
    window index, which moves with a kernel tap (kh, kw), against a border."""
    return len(re.findall(r"^\s*if \(\(\(.* - k[hw]|^\s*if \(\(\(.* \+ k[hw]",
                          model_loops(args, name), re.M))


def tile_end_guards(args, name):
    """Those of the border guards that test a tile's two ends (the window
    index of its first output against the border's end, of its last
    against the border's start): the tile spans that index."""
    n = 0
    for m in re.finditer(r"^\s*if \(\(\((.*)\) >= -?\d+\) & \(\((.*)\) < \d+\)\)$",
                         model_loops(args, name), re.M):
        n += m.group(1) != m.group(2) and re.search(r"k[hw]", m.group(1)) is not None
    return n


def rolled_loops(args, name):
    """The tap loops the tile pass keeps rolled in the model's loop nests."""
    return len(re.findall(r"^\s*for .* reduce rolled$", model_loops(args, name), re.M))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--xentcc", default=shutil.which("xentcc") or "xentcc")
    ap.add_argument("--set", choices=sorted(SETS), required=True)
    ap.add_argument("--mcpu", help="xentcc's -mcpu for both builds (default: the host's)")
    ap.add_argument("--perturb", action="store_true",
                    help="scale one -O3 weight by 1 + 1e-3: the comparison must fail")
    args = ap.parse_args()
    args.seed = 1
    args.check_perturbed = not args.perturb
    if os.sep in args.xentcc:
        args.xentcc = os.path.abspath(args.xentcc)
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    global MODELS
    MODELS = SETS[args.set]
    dm.random_model = fixed_model
    failed = 0
    for i, (name, *_) in enumerate(MODELS):
        try:
            _, _, steps, worst = dm.check_model(args, i)
        except dm.Mismatch as e:
            failed += 1
            print(f"{name}: MISMATCH: {e}")
            continue
        print(f"{name}: -O0 and -O3 agree over {steps} steps; worst " +
              ", ".join(f"{k} {v:.2g}" for k, v in worst.items()) + " of the tolerances")
        if args.set == "border":
            print(f"{name}: {border_guards(args, name)} border guards, "
                  f"{tile_end_guards(args, name)} of them at a tile's two ends")
        if args.set == "edges":
            print(f"{name}: {rolled_loops(args, name)} rolled tap loops")
        if args.check_perturbed:
            print(f"{name}: one -O3 weight scaled by 1 + 1e-3 fails the comparison")
        shutil.rmtree(os.path.join(args.workdir, name), ignore_errors=True)
    print(f"{len(MODELS) - failed} of {len(MODELS)} models agree")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
