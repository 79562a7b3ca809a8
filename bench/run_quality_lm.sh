#!/usr/bin/env bash
# LM quality benchmark (issue #4): stories260K on TinyStories; calibration = 128 sequences x 256 tokens from
# paragraphs 0-199, evaluation = paragraphs 200- (first 60,000 tokens, windows of 512). Writes docs/RESULTS.md
# section "LM quality". Usage: bench/run_quality_lm.sh [build-dir] [iters]   (FlexRound's LLM code: 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; ITERS=${2:-5000}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_lm; mkdir -p "$OUT"
SECTION="$OUT/section.md"
R="recipes/llm-rtn-w4.json,recipes/llm-gptq-w4.json,recipes/llm-adaround-w4.json,recipes/llm-flexround-w4.json"
{
  echo "## LM quality (issue #4)"
  echo
  echo "Date: $(date -u +%F). Machine: 2 vCPU, CPU only. Command: \`bench/run_quality_lm.sh $BUILD $ITERS\`."
  echo "Model stories260K (llama2.c). Calibration: 128 sequences x 256 tokens drawn (seed 1005) from paragraphs"
  echo "0-199 of tinystories_valid_first.txt; evaluation: paragraphs 200- (disjoint), first 60,000 tokens, BOS per"
  echo "paragraph, windows of 512, stride 512. Asymmetric weights, MSE grid, decoder-layer reconstruction,"
  echo "**$ITERS iterations per layer**, batch 4."
  echo
} > "$SECTION"
run() {  # name, extra args...
  local name=$1; shift
  ./"$BUILD"/flexquant ${FLEXQUANT_ARGS:-} compare --model "$SHARED/data/lm/stories260K.bin" --data "$SHARED/data/lm/tinystories_valid_first.txt" \
    --set recon.iters=$ITERS --markdown "$OUT/$name.md" "$@" > "$OUT/$name.log" 2>&1
  { echo "### $name"; echo; cat "$OUT/$name.md"; grep -E "^total time" "$OUT/$name.log" | sed 's/^/\n/'; echo; } >> "$SECTION"
  echo "done $name"
}
run "W4 per-channel" --recipe "$R"
run "W3 per-channel" --recipe "$R" --set weight.bits=3
run "W4 g32" --recipe "$R" --set weight.granularity=group --set weight.group_size=32
run "W3 g32" --recipe "$R" --set weight.bits=3 --set weight.granularity=group --set weight.group_size=32
run "W8A8 per-tensor static" --recipe "$R,recipes/llm-smoothquant-w8a8.json" --set weight.bits=8 --set act.bits=8
python3 bench/update_results.py "LM quality (issue #4)" "$SECTION"
