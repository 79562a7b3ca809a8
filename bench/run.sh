#!/usr/bin/env bash
# Runs one `flexquant` command with the committed tree's binary (bench/lib.sh) and keeps its provenance, for
# numbers that are not a row of a table script (hyperparameter sweeps, one-off checks).
# Usage: bench/run.sh NAME FLEXQUANT-ARGS...   -> out/runs/NAME.{cmd,log,md}
#   e.g. bench/run.sh val-g32-a --threads 1 compare --model ... --eval-skip 60000 --recipe ...
# The .cmd file holds the date, the commit and binary hash, and the command verbatim; cite it with the number.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
[[ $# -ge 2 ]] || { sed -n '2,6p' "$0"; exit 2; }
NAME=$1; shift
OUT=out/runs; mkdir -p "$OUT"
bench_binary "${BENCH_BUILD:-build-bench}"
cmd="$BENCH_BIN $* --markdown $OUT/$NAME.md"
bench_run "$OUT/$NAME.cmd" "$OUT/$NAME.log" $cmd
cat "$OUT/$NAME.md"
