#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang-19, ASan+UBSan) in
# build/fuzz and runs one, or each in turn, for SECONDS on one core at low
# priority. New inputs go to build/fuzz/corpus/NAME (seeded from
# tests/fuzz/corpus/NAME, or for the binary formats from build/fuzz/seeds/NAME,
# which tests/fuzz/make_seeds.py writes), findings to build/fuzz/findings/NAME/; the exit
# status is 1 if there is one.
#   scripts/fuzz.sh NAME|all SECONDS [libFuzzer options...]
#   scripts/fuzz.sh list
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
names=()
for f in tests/fuzz/fuzz_*.c; do
  n=${f#tests/fuzz/fuzz_}
  names+=("${n%.c}")
done
if [[ "${1:-}" == "list" ]]; then
  printf '%s\n' "${names[@]}"
  exit 0
fi
if (($# < 2)) || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh NAME|all SECONDS [libFuzzer options...]  (NAME: ${names[*]})" >&2
  exit 2
fi
what=$1 seconds=$2
shift 2
if [[ "$what" == all ]]; then
  run=("${names[@]}")
elif [[ -f "tests/fuzz/fuzz_$what.c" ]]; then
  run=("$what")
else
  echo "fuzz: no fuzzer '$what' (there are: ${names[*]})" >&2
  exit 2
fi

scripts/setup.sh --fuzz
out=build/fuzz
CC=/usr/lib/llvm-19/bin/clang cmake -S . -B "$out" -DXENTCC_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if ! cmake --build "$out" -j2 --target "${run[@]/#/fuzz_}" >"$out/build.log" 2>&1; then
  grep -E 'error|Error' "$out/build.log" >&2 || cat "$out/build.log" >&2
  exit 1
fi

# The harnesses' files in memory are named through a directory there.
export TMPDIR=$root/$out/tmp
mkdir -p "$TMPDIR"
# The binary formats' seeds are generated, not committed.
/usr/bin/python3 tests/fuzz/make_seeds.py "$out/seeds"
status=0
for name in "${run[@]}"; do
  corpus=$out/corpus/$name findings=$out/findings/$name
  mkdir -p "$corpus" "$findings"
  opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192
        -close_fd_mask=2 -print_final_stats=1 -artifact_prefix="$root/$findings/")
  [[ -f tests/fuzz/$name.dict ]] && opts+=(-dict="tests/fuzz/$name.dict")
  echo "fuzz: $name for $seconds s (log: $out/$name.log)"
  rc=0
  seeds=()
  for d in "tests/fuzz/corpus/$name" "$out/seeds/$name"; do
    [[ -d $d ]] && seeds+=("$d")
  done
  nice -n 10 "$out/bin/fuzz_$name" "${opts[@]}" "$@" "$corpus" "${seeds[@]}" \
    >"$out/$name.log" 2>&1 || rc=$?
  # The last status line and the final statistics, e.g.
  # "#1234567 DONE cov: 2345 ft: 6789 corp: 1500/300Kb exec/s: 9000 rss: 450Mb".
  grep -E '^#[0-9]+' "$out/$name.log" | tail -1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' \
    "$out/$name.log" || true
  if ((rc != 0)) || compgen -G "$findings/*" >/dev/null; then
    echo "fuzz: $name: findings in $findings/ (exit status $rc); see $out/$name.log" >&2
    status=1
  fi
done
exit $status
