#!/usr/bin/env bash
# Time to accuracy of a residual network's recipe (models/resnet8_wide.yaml by
# default): xentcc's binaries against the same network and recipe in PyTorch
# 1.13 (bench/torch_resnet.py), seed by seed, one run right after the other
# on this machine. Both sides evaluate the CIFAR-10 test photos after every
# epoch (as the YAML says: resnet8_wide averages each photo's logits with its
# mirror's); the time is training alone (decoding and evaluation excluded),
# summed over epochs. Prints a table and appends it to build/bench/resnet.md.
#
#   bench/resnet.sh [--model NAME] [--seeds "0 1 2"] [--torch-seeds "0"] [--threads N]
#                   [--target 0.85] [--epochs N] [--data DIR] [--no-torch] [-O2|-O3]
#
# --model NAME: models/NAME.yaml (resnet8_wide; resnet8 is its narrower sibling).
# --torch-seeds: the seeds PyTorch trains (default: --seeds); a PyTorch run
# of resnet8_wide takes some 15 minutes, so one seed of it keeps the bench near an hour.
# --data DIR: an ImageFolder root with train/ and test/ (a subset, say) in
# place of the YAML's build/data/cifar10.
# Environment: XENTCC (default build/bin/xentcc), PYTHON (/usr/bin/python3),
# OMP_WAIT_POLICY (default passive, for both sides, as bench/run.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
xentcc=${XENTCC:-$root/build/bin/xentcc}
python=${PYTHON:-/usr/bin/python3}
out=$root/build/bench
name=resnet8_wide
seeds="0 1 2" torch_seeds="" threads=2 target=0.85 epochs="" data="" torch=1 opt=-O3

usage() {
  echo 'usage: bench/resnet.sh [--model NAME] [--seeds "0 1 2"] [--torch-seeds "0"] [--threads N] [--target 0.85] [--epochs N] [--data DIR] [--no-torch] [-O2|-O3]' >&2
  exit 2
}
while (($#)); do
  case $1 in
  --model) name=${2:?--model needs a name from models/}; shift ;;
  --seeds) seeds=${2:?--seeds needs a list}; shift ;;
  --torch-seeds) torch_seeds=${2:?--torch-seeds needs a list}; shift ;;
  --threads) threads=${2:?--threads needs a number}; shift ;;
  --target) target=${2:?--target needs a fraction, e.g. 0.85}; shift ;;
  --epochs) epochs=${2:?--epochs needs a number}; shift ;;
  --data) data=$(cd "${2:?--data needs a directory}" && pwd); shift ;;
  --no-torch) torch=0 ;;
  -O[0-3]) opt=$1 ;;
  -h | --help) usage ;;
  *) echo "bench/resnet.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
torch_seeds=${torch_seeds:-$seeds}
for list in "$seeds" "$torch_seeds"; do
  [[ $list =~ ^[0-9]+( [0-9]+)*$ ]] || { echo "bench/resnet.sh: --seeds and --torch-seeds take numbers separated by spaces, e.g. \"0 1 2\"" >&2; exit 2; }
done
[[ -f $root/models/$name.yaml ]] || { echo "bench/resnet.sh: no models/$name.yaml; --model takes a name from models/, e.g. resnet8_wide" >&2; exit 2; }
[[ $target =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || { echo "bench/resnet.sh: --target is a fraction, e.g. 0.85" >&2; exit 2; }
[[ -z $epochs || $epochs =~ ^[1-9][0-9]*$ ]] || { echo "bench/resnet.sh: --epochs needs a positive number" >&2; exit 2; }
[[ -x $xentcc ]] || { echo "bench/resnet.sh: no compiler at $xentcc; build first or set XENTCC" >&2; exit 1; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

"$root/scripts/prepare_data.sh" >/dev/null
mkdir -p "$out"
cd "$out"
echo "== $name: compiling (xentcc $opt)" >&2
"$xentcc" "$root/models/$name.yaml" "$opt" -o "$out/$name"

ep=() xdata=() tdata=()
[[ -n $epochs ]] && ep=(--epochs "$epochs")
[[ -n $data ]] && xdata=(--data "$data/train") tdata=(--data "$data")
runs=()
torch_run() {
  local s=$1
  echo "== $name seed $s: PyTorch, $threads threads" >&2
  "$python" "$root/bench/torch_resnet.py" "$root/models/$name.yaml" --seed "$s" \
    --threads "$threads" --target "$target" "${ep[@]}" "${tdata[@]}" >"$name.seed$s.torch.json"
  runs+=("pytorch:$s:$name.seed$s.torch.json")
}
for s in $seeds; do
  echo "== $name seed $s: xentcc, $threads threads" >&2
  # The first run decodes the photos into the cache; later ones read it.
  "./$name-train" --seed "$s" --threads "$threads" --cache "${ep[@]}" "${xdata[@]}" \
    --save "$name.seed$s.safetensors" | grep '^epoch' >&2 ||
    { echo "bench/resnet.sh: $name-train failed" >&2; exit 1; }
  runs+=("xentcc:$s:$name.seed$s.history.csv")
  if ((torch)) && [[ " $torch_seeds " == *" $s "* ]]; then torch_run "$s"; fi
done
for s in $torch_seeds; do # PyTorch's seeds that xentcc does not train
  if ((torch)) && [[ " $seeds " != *" $s "* ]]; then torch_run "$s"; fi
done

# The table from the runs' histories: xentcc's NAME.history.csv (val_accuracy
# and seconds per epoch) and torch_resnet.py's JSON (the same per epoch).
table=$("$python" - "$target" "${runs[@]}" <<'EOF'
import csv, json, statistics, sys

target = float(sys.argv[1])
rows = {"xentcc": [], "pytorch": []}
reach = {"xentcc": [], "pytorch": []}
finals = {"xentcc": [], "pytorch": []}
totals = {"xentcc": [], "pytorch": []}
for run in sys.argv[2:]:
    side, seed, path = run.split(":", 2)
    if side == "xentcc":
        with open(path) as f:
            hist = [(float(r["seconds"]), float(r["val_accuracy"])) for r in csv.DictReader(f)]
    else:
        with open(path) as f:
            hist = [(h["seconds"], h["test_accuracy"]) for h in json.load(f)["history"]]
    hit = next(((e + 1, t) for e, (t, a) in enumerate(hist) if a >= target), None)
    reach[side].append(hit[1] if hit else None)
    finals[side].append(hist[-1][1])
    totals[side].append(hist[-1][0])
    when = f"{hit[1]:.1f} s (epoch {hit[0]})" if hit else "not reached"
    rows[side].append(f"| {side} | {seed} | {when} | {100 * hist[-1][1]:.2f}% "
                f"| {len(hist)} | {hist[-1][0]:.1f} s |")

def mean_time(side):
    ts = reach[side]
    return statistics.mean(ts) if ts and None not in ts else None

print(f"| side | seed | time to {100 * target:g}% | final accuracy | epochs | train time |")
print("| --- | --- | --- | --- | --- | --- |")
for side in ("xentcc", "pytorch"):
    if finals[side]:
        m = mean_time(side)
        print("\n".join(rows[side]))
        print(f"| {side} | mean | {f'{m:.1f} s' if m else 'not reached by every seed'} "
              f"| {100 * statistics.mean(finals[side]):.2f}% | "
              f"| {statistics.mean(totals[side]):.1f} s |")
x, p = mean_time("xentcc"), mean_time("pytorch")
if finals["pytorch"]:
    print()
    print(f"PyTorch/xentcc, time to {100 * target:g}%: "
          + (f"{p / x:.2f}x" if x and p else "- (a side did not reach it every seed)"))
EOF
)
echo
echo "$table"
{
  echo
  echo "## $name, seeds $seeds (PyTorch: $( ((torch)) && echo "$torch_seeds" || echo none)), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), xentcc $opt, $threads threads"
  echo
  echo "$table"
} >>"$out/resnet.md"
echo "(appended to $out/resnet.md)" >&2
