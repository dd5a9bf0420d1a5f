#!/usr/bin/env bash
# Data-parallel scaling on this machine: NAME-train under mpirun -np 1, 2
# and 4, one OpenMP thread per rank, each rank training the compiled batch
# (a global batch of N x B: weak scaling). Synthetic CIFAR-10-shaped data
# (scripts/make_test_data.py), read by every rank. Prints, per model and
# rank count, images/s of the whole job, the speed-up over one rank, the
# efficiency (speed-up / N), and the time rank 0 spent in the gradient sums
# (waiting for the slowest rank included); appends the table to
# build/bench/mpi.md. With more ranks than cores (4 on a 2-core machine)
# the ranks share cores and the efficiency is bounded by cores / N.
#
#   bench/mpi.sh [--models "cifar10 resnet8"] [--ranks "1 2 4"] [--steps N] [--rounds R]
#
# --steps: per run (default 300, resnet8 40: one rank trains 1-3 s).
# Environment: XENTCC (default build/bin/xentcc), PYTHON (/usr/bin/python3),
# MPIRUN (default: mpirun --oversubscribe --mca mpi_yield_when_idle 1, and
# --allow-run-as-root as root: a rank waiting in a collective yields its
# core instead of spinning, which on a shared 2-core machine measured 1.3
# to 1.5 times faster at 2 ranks).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
xentcc=${XENTCC:-$root/build/bin/xentcc}
python=${PYTHON:-/usr/bin/python3}
out=$root/build/bench
models="cifar10 resnet8" ranks="1 2 4" steps="" rounds=3 batch=32
if [[ -z ${MPIRUN:-} ]]; then
  MPIRUN="mpirun --oversubscribe --mca mpi_yield_when_idle 1"
  [[ $(id -u) -eq 0 ]] && MPIRUN+=" --allow-run-as-root"
fi

usage() {
  echo 'usage: bench/mpi.sh [--models "cifar10 resnet8"] [--ranks "1 2 4"] [--steps N] [--rounds R]' >&2
  exit 2
}
while (($#)); do
  case $1 in
  --models) models=${2:?--models needs a list}; shift ;;
  --ranks) ranks=${2:?--ranks needs a list}; shift ;;
  --steps) steps=${2:?--steps needs a number}; shift ;;
  --rounds) rounds=${2:?--rounds needs a number}; shift ;;
  -h | --help) usage ;;
  *) echo "bench/mpi.sh: unknown argument '$1'" >&2; usage ;;
  esac
  shift
done
command -v mpirun >/dev/null || { echo "bench/mpi.sh: mpirun not found: apt-get install openmpi-bin" >&2; exit 1; }
[[ -f $root/build/lib/xentcc_rt_mpi.link ]] ||
  { echo "bench/mpi.sh: xentcc was built without MPI (scripts/setup.sh installs libopenmpi-dev)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" "$root/scripts/make_test_data.py" "$work/data" --n 4096 >/dev/null
mkdir -p "$out"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

# images/s and the gradient-sum seconds of one run, from rank 0's last lines.
run() { # model ranks steps
  local log
  log=$($MPIRUN -np "$2" "$work/$1-train" --data "$work/data/cifar" --steps "$3" --threads 1 \
        --no-eval --save "$work/$1.safetensors" 2>&1) || { echo "$log" >&2; exit 1; }
  local ips sum
  ips=$(sed -n 's/^Finished Training: .*, \([0-9.]*\) images\/s;.*/\1/p' <<<"$log")
  sum=$(sed -n 's/^[0-9]* ranks: \([0-9.]*\) s in the gradient sums.*/\1/p' <<<"$log")
  echo "$ips ${sum:-0}"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

{
  echo
  echo "### $(date -u '+%Y-%m-%d %H:%M') UTC: batch $batch per rank, 1 thread per rank, median of $rounds rounds ($(getconf _NPROCESSORS_ONLN) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start)"
  echo
  echo "| model | parameters | MFLOP per image (training) | steps | ranks | images/s | speed-up | efficiency | gradient sums (rank 0) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} | tee -a "$out/mpi.md"
for model in $models; do
  sed -e "s/batch_size: [0-9]*/batch_size: $batch/" "$root/models/$model.yaml" >"$work/$model.yaml"
  "$xentcc" "$work/$model.yaml" -o "$work/$model" >/dev/null
  # Parameters (the weights file's float tensors, batch-norm statistics
  # excluded) and the training step's FLOPs per image (--profile-csv:
  # convolutions and linear layers, forward and backward).
  "$work/$model-train" --data "$work/data/cifar" --steps 2 --no-eval --quiet \
    --save "$work/p.safetensors" --profile-csv "$work/p.csv" >/dev/null
  read -r params flops < <("$python" -c "
import csv, json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]
h = json.loads(f.read(n)); h.pop('__metadata__', None)
p = sum((e['data_offsets'][1] - e['data_offsets'][0]) // 4 for k, e in h.items()
        if e['dtype'] == 'F32' and 'running' not in k)
rows = [r for r in csv.DictReader(open(sys.argv[2])) if r['function'] in ('grad', 'apply')]
fl = sum(int(r['flops_per_call']) * int(r['calls']) / int(r['steps']) for r in rows) / $batch
print(p, round(fl))" "$work/p.safetensors" "$work/p.csv")
  n_steps=${steps:-$([[ $model == resnet8 ]] && echo 40 || echo 300)}
  base=""
  for n in $ranks; do
    ips_all="" sum_all=""
    for ((r = 0; r < rounds; r++)); do
      read -r ips sum < <(run "$model" "$n" "$n_steps")
      ips_all+="$ips"$'\n' sum_all+="$sum"$'\n'
    done
    ips=$(printf '%s' "$ips_all" | median)
    sum=$(printf '%s' "$sum_all" | median)
    [[ -z $base ]] && base=$ips
    awk -v m="$model" -v p="$params" -v fl="$flops" -v n="$n" -v i="$ips" -v b="$base" -v s="$sum" -v st="$n_steps" 'BEGIN {
      printf "| `%s` | %d | %.1f | %d | %d | %.0f | %.2fx | %.0f%% | %s |\n", m, p, fl / 1e6, st, n, i, i / b,
        100 * i / b / n,
        (n > 1 ? sprintf("%.2f s (%.1f ms/step)", s, 1000 * s / st) : "") }' | tee -a "$out/mpi.md"
  done
done
