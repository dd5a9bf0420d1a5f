#!/usr/bin/env bash
# Side-by-side benchmark of xentcc's binaries against the same recipe in
# PyTorch (bench/torch_seed.py), one right after the other on this machine.
# Prints a table and appends it to build/bench/results.md.
#
#   bench/run.sh [cifar10|catdog|mnist|all] [--epochs N] [--threads N] [-O2|-O3]
#
# Environment: XENTCC (the compiler; default build/bin/xentcc), PYTHON
# (default /usr/bin/python3), OMP_WAIT_POLICY (default passive, for both
# sides). The data comes from scripts/prepare_data.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
xentcc=${XENTCC:-$root/build/bin/xentcc}
python=${PYTHON:-/usr/bin/python3}
out=$root/build/bench
what=all epochs="" threads=2 opt=-O3

usage() {
  echo "usage: bench/run.sh [cifar10|catdog|mnist|all] [--epochs N] [--threads N] [-O2|-O3]" >&2
  exit 2
}
while (($#)); do
  case $1 in
  cifar10 | catdog | mnist | all) what=$1 ;;
  --epochs) epochs=${2:?--epochs needs a number}; shift ;;
  --epochs=*) epochs=${1#*=} ;;
  --threads) threads=${2:?--threads needs a number}; shift ;;
  --threads=*) threads=${1#*=} ;;
  -O[0-3]) opt=$1 ;;
  -h | --help) usage ;;
  *) echo "bench/run.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
[[ -x $xentcc ]] || { echo "bench/run.sh: no compiler at $xentcc; build first or set XENTCC" >&2; exit 1; }
[[ $what == all ]] && models=(cifar10 catdog mnist) || models=("$what")
# xentcc's executables choose passive OpenMP threads themselves; PyTorch
# needs telling, or on a shared 2-core machine its spinning threads make it
# up to 13x slower (catdog, 1 epoch: 12.8 s against 1.0 s).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

"$root/scripts/prepare_data.sh" >/dev/null
mkdir -p "$out"
cd "$out"

# json FILE KEY: one value of a one-line JSON object.
json() { "$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

rows=()
for name in "${models[@]}"; do
  echo "== $name: compiling (xentcc $opt)" >&2
  "$xentcc" "$root/models/$name.yaml" "$opt" -o "$out/$name"

  ep=()
  [[ -n $epochs ]] && ep=(--epochs "$epochs")
  echo "== $name: xentcc training (${epochs:-default} epochs, $threads threads)" >&2
  "./$name-train" "${ep[@]}" --threads "$threads" --save "$name.safetensors" | tee "$name.train.log" |
    grep -v '^\[' >&2 || { echo "bench/run.sh: $name-train failed" >&2; exit 1; }
  # "Finished Training: S steps in T s (E s evaluating), ..."; the per-epoch
  # evaluation is not training, so it is taken out.
  summary=$(grep '^Finished Training' "$name.train.log")
  total=$(sed -E 's/.* steps in ([0-9.]+) s.*/\1/' <<<"$summary")
  evals=$(sed -E 's/.*\(([0-9.]+) s evaluating\).*/\1/' <<<"$summary")
  xc_time=$(awk -v t="$total" -v e="$evals" 'BEGIN { printf "%.1f", t - e }')
  xc_ips=$(sed -E 's/.*, ([0-9]+) images\/s.*/\1/' <<<"$summary")
  xc_load=$(sed -E 's/.*data loaded in ([0-9.]+) s.*/\1/' <<<"$summary")
  xc_wait=$(sed -E 's/.*, ([0-9.]+) s waiting for batches.*/\1/' <<<"$summary")
  "./$name-eval" --weights "$name.safetensors" --threads "$threads" --json --quiet >"$name.eval.json"
  xc_acc=$(json "$name.eval.json" accuracy)

  echo "== $name: PyTorch training" >&2
  "$python" "$root/bench/torch_seed.py" "$name" "${ep[@]}" --threads "$threads" >"$name.torch.json"
  pt_time=$(json "$name.torch.json" train_seconds)
  pt_ips=$(json "$name.torch.json" images_per_second)
  pt_acc=$(json "$name.torch.json" accuracy)
  pt_epochs=$(json "$name.torch.json" epochs)
  pt_load=$(json "$name.torch.json" data_seconds)

  rows+=("$(awk -v n="$name" -v e="$pt_epochs" -v xa="$xc_acc" -v xt="$xc_time" -v xi="$xc_ips" \
    -v pa="$pt_acc" -v pt="$pt_time" -v pi="$pt_ips" -v xl="$xc_load" -v pl="$pt_load" \
    -v xw="$xc_wait" 'BEGIN {
      printf "| %s | %d | %.2f%% | %.1f s (%d img/s) | %.2f%% | %.1f s (%d img/s) | %.2fx | %.1f s / %.1f s | %.2f s |",
             n, e, 100 * xa, xt, xi, 100 * pa, pt, pi, pt / xt, xl, pl, xw }')")
done

header="| model | epochs | xentcc accuracy | xentcc train time | PyTorch accuracy | PyTorch train time | PyTorch/xentcc | data loading xentcc / PyTorch | xentcc waiting for batches |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
table=$(printf '%s\n' "$header" "${rows[@]}")
echo
echo "$table"

{
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), xentcc $opt, $threads threads"
  echo
  echo "$table"
} >>"$out/results.md"
echo "(appended to $out/results.md)" >&2
