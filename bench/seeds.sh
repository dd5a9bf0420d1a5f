#!/usr/bin/env bash
# The spread of a seed recipe's accuracy over training seeds, xentcc and
# (with --torch) PyTorch 1.13 (bench/torch_seed.py) with the same seeds: the
# seed draws the initial weights and the shuffles; a folder's validation
# split stays the YAML's (seed 0), so every run is scored on the same photos.
# Prints one row per seed and the mean and standard deviation of each side,
# and appends the table to build/bench/seeds.md.
#
#   bench/seeds.sh cifar10|catdog|mnist [--seeds FIRST-LAST] [--threads N] [--torch]
#
# Environment: XENTCC (default build/bin/xentcc), PYTHON (/usr/bin/python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
xentcc=${XENTCC:-$root/build/bin/xentcc}
python=${PYTHON:-/usr/bin/python3}
out=$root/build/bench
name="" first=0 last=4 threads=2 torch=0

usage() {
  echo "usage: bench/seeds.sh cifar10|catdog|mnist [--seeds FIRST-LAST] [--threads N] [--torch]" >&2
  exit 2
}
while (($#)); do
  case $1 in
  cifar10 | catdog | mnist) name=$1 ;;
  --seeds) [[ ${2:-} =~ ^([0-9]+)-([0-9]+)$ ]] || usage; first=${BASH_REMATCH[1]} last=${BASH_REMATCH[2]}; shift ;;
  --threads) threads=${2:?--threads needs a number}; shift ;;
  --torch) torch=1 ;;
  *) usage ;;
  esac
  shift
done
[[ -n $name ]] || usage
[[ -x $xentcc ]] || { echo "bench/seeds.sh: no compiler at $xentcc; build first or set XENTCC" >&2; exit 1; }

"$root/scripts/prepare_data.sh" >/dev/null
mkdir -p "$out"
cd "$out"
"$xentcc" "$root/models/$name.yaml" -o "$out/$name"

json() { "$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

rows=() xs=() ts=()
for ((s = first; s <= last; s++)); do
  echo "== $name seed $s: xentcc" >&2
  "./$name-train" --seed "$s" --threads "$threads" --no-eval --quiet --cache \
    --save "$name.seed$s.safetensors"
  "./$name-eval" --weights "$name.seed$s.safetensors" --threads "$threads" --json --quiet \
    --cache >"$name.seed$s.json"
  x=$(json "$name.seed$s.json" accuracy)
  xs+=("$x")
  t=-
  if ((torch)); then
    echo "== $name seed $s: PyTorch" >&2
    "$python" "$root/bench/torch_seed.py" "$name" --seed "$s" --threads "$threads" \
      >"$name.seed$s.torch.json"
    t=$(json "$name.seed$s.torch.json" accuracy)
    ts+=("$t")
  fi
  rows+=("$(awk -v s="$s" -v x="$x" -v t="$t" 'BEGIN {
    printf "| %d | %.2f%% | %s |", s, 100 * x, t == "-" ? "-" : sprintf("%.2f%%", 100 * t) }')")
done

# stats V...: "mean% ± sd%" (sample standard deviation).
stats() {
  printf '%s\n' "$@" | awk '{ s += $1; q += $1 * $1; n++ } END {
    m = s / n; sd = n > 1 ? sqrt((q - n * m * m) / (n - 1)) : 0
    printf "%.2f%% ± %.2f", 100 * m, 100 * sd }'
}
summary="| mean ± sd | $(stats "${xs[@]}") | $( ((torch)) && stats "${ts[@]}" || echo -) |"
table=$(printf '%s\n' "| seed | xentcc | PyTorch 1.13 |" "| --- | --- | --- |" "${rows[@]}" "$summary")
echo
echo "$table"
{
  echo
  echo "## $name, seeds $first-$last, $(date -u '+%Y-%m-%d %H:%M UTC'), $threads threads"
  echo
  echo "$table"
} >>"$out/seeds.md"
echo "(appended to $out/seeds.md)" >&2
