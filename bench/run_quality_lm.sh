#!/usr/bin/env bash
# LM quality benchmark (issue #4): stories260K on TinyStories; calibration = 512 sequences x 256 tokens from
# paragraphs 0-1999, evaluation = paragraphs 2000- (first 60,000 tokens, windows of 512). Each row writes
# out/bench_lm/<row>.{md,log,cmd} and replaces that row's subsection of docs/RESULTS.md "LM quality", so rows can
# run in separate processes (e.g. one per core with FLEXQUANT_ARGS="--threads 1").
# Usage: bench/run_quality_lm.sh [build-dir] [iters] [row ...]
#   rows: w4ch w3ch w4g32 w3g32 w8a8 w4a8kv8 (default all)
# FlexRound's released LLM code runs 5000 iterations per decoder layer.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-5000}; shift 2 || true
ROWS=${*:-w4ch w3ch w4g32 w3g32 w8a8 w4a8kv8}
ALL_ROWS="w4ch w3ch w4g32 w3g32 w8a8 w4a8kv8"
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_lm; mkdir -p "$OUT"
W="recipes/llm-rtn-w4.json,recipes/llm-gptq-w4.json,recipes/llm-adaround-w4.json,recipes/llm-flexround-w4.json"
R="$W,recipes/llm-lrq-w4.json"
# Group-wise rows: FlexRound with its g32 recipe (min-max start, lr 5e-4; chosen on a validation slice, see the file).
RG="${W/llm-flexround-w4.json/llm-flexround-g32.json},recipes/llm-lrq-w4.json"
G32="--set weight.granularity=group --set weight.group_size=32"
declare -A TITLE=([w4ch]="W4 per-channel" [w3ch]="W3 per-channel" [w4g32]="W4 g32" [w3g32]="W3 g32"
                  [w8a8]="W8A8 per-tensor static (+SmoothQuant)"
                  [w4a8kv8]="W4A8 per-token dynamic + KV8 (the released code's W4A8 setting)")
declare -A ARGS=([w4ch]="--recipe $R" [w3ch]="--recipe $R --set weight.bits=3" [w4g32]="--recipe $RG $G32"
                 [w3g32]="--recipe $RG --set weight.bits=3 $G32"
                 [w8a8]="--recipe $W,recipes/llm-smoothquant-w8a8.json --set weight.bits=8 --set act.bits=8"
                 [w4a8kv8]="--recipe recipes/llm-rtn-w4.json,recipes/llm-gptq-w4.json,recipes/llm-flexround-w4.json --set act.bits=8 --set act.per_token=true --set act.kv_bits=8")
[[ "$ROWS" == none ]] || bench_binary "$BUILD"
for row in $ROWS; do
  [[ $row == none ]] && continue
  [[ -n "${ARGS[$row]:-}" ]] || { echo "unknown row '$row' -> allowed: ${!ARGS[*]}" >&2; exit 2; }
  cmd="$BENCH_BIN ${FLEXQUANT_ARGS:-} compare --model $SHARED/data/lm/stories260K.bin --data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000 ${ARGS[$row]} --set calib.samples=512 --set recon.iters=$ITERS --markdown $OUT/$row.md"
  rm -f "$OUT/$row.md"
  bench_run "$OUT/$row.cmd" "$OUT/$row.log" $cmd
  echo "done $row"
done

# Each row that ran replaces its own "### <title>" subsection of "## LM quality (issue #4)"; the hand-written text
# of the section (targets, sweeps) and the rows not run now stay as they are.
for row in $ROWS; do
  [[ $row == none ]] || bench_subsection "${TITLE[$row]}" "LM quality (issue #4)" "$OUT/$row"
done
