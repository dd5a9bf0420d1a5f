#!/usr/bin/env bash
# How long `xentcc MODEL.yaml -o NAME` takes: each model compiled RUNS times
# after one warm-up, then per model the median wall and CPU seconds (user +
# system, every compile thread and the linker) with their ranges, and the
# `xentcc --time` table of the run nearest the median wall time. Issue 11
# asks for catdog in 1 s and vgg_small in 2 s of wall time on 2 cores; on a
# shared machine quote medians, and the CPU column when wall time is noisy.
#
#   bench/compile_time.sh [--runs N] [MODEL.yaml ...]   (default: 5 runs of
#                         the seed models and bench/models/*.yaml)
#
# Environment: XENTCC (default build/bin/xentcc).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
xentcc=${XENTCC:-$root/build/bin/xentcc}
runs=5
models=()
while (($#)); do
  case $1 in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "compile_time.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) models+=("$1"); shift ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "compile_time.sh: --runs wants a positive number" >&2; exit 2; }
((${#models[@]})) || models=("$root"/models/{cifar10,catdog,mnist}.yaml "$root"/bench/models/*.yaml)
[[ -x $xentcc ]] || { echo "compile_time.sh: no $xentcc; build first (scripts/setup.sh)" >&2; exit 2; }

# An xentcc from before --time is timed all the same, without the tables.
timeflag=(--time)
"$xentcc" --help | grep -q -e '--time' || timeflag=()

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# median and range of the numbers on stdin, one a line: "M (LO to HI)"
stats() { sort -g | awk '{v[NR]=$1} END {printf "%.2f (%.2f to %.2f)", v[int((NR+1)/2)], v[1], v[NR]}'; }

echo "| model | runs | wall s: median (min to max) | CPU s: median (min to max) |"
echo "| --- | --- | --- | --- |"
tables=""
for model in "${models[@]}"; do
  name=$(basename "$model" .yaml)
  : >"$work/times"
  for ((i = 0; i <= runs; i++)); do
    t=$({ TIMEFORMAT='%R %U %S'; time "$xentcc" "$model" -o "$work/$name" "${timeflag[@]}" \
          >/dev/null 2>"$work/table.$i"; } 2>&1) ||
      { echo "compile_time.sh: $xentcc $model failed:" >&2; cat "$work/table.$i" >&2; exit 1; }
    ((i == 0)) && continue # the warm-up: files and libLLVM into the page cache
    read -r wall user sys <<<"$t"
    echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $i" >>"$work/times"
  done
  echo "| \`$name\` | $runs | $(cut -d' ' -f1 "$work/times" | stats) | $(cut -d' ' -f2 "$work/times" | stats) |"
  median_run=$(sort -g "$work/times" | awk '{r[NR]=$3} END {print r[int((NR+1)/2)]}')
  ((${#timeflag[@]})) &&
    tables+=$'\n'"$name, the median run:"$'\n'"$(cat "$work/table.$median_run")"$'\n'
done
printf '%s' "$tables"
