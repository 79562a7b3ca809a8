#!/usr/bin/env bash
# CNN quality benchmark (issue #3): ResNet-20/32/44 on CIFAR-10, per-tensor weights, for each bit setting
# RTN, AdaRound, FlexRound and FlexRound+QDrop on one table. Calibration: records 0-1023; evaluation:
# records 1024-9999 (8,976 images). Writes docs/RESULTS.md section "CNN quality".
# Usage: bench/run_quality_cnn.sh [build-dir] [iters] [models...]   (the papers use 20000 iters per block)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}; ITERS=${2:-20000}; shift 2 || true
MODELS=${*:-resnet20 resnet32 resnet44}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_cnn; mkdir -p "$OUT"
SECTION="$OUT/section.md"
{
  echo "## CNN quality (issue #3)"
  echo
  echo "Date: $(date -u +%F). Machine: 2 vCPU (AVX2-bound by OPENBLAS_CORETYPE), CPU only. Command:"
  echo "\`bench/run_quality_cnn.sh $BUILD $ITERS $MODELS\`. Calibration: CIFAR-10 test records 0-1023;"
  echo "evaluation: records 1024-9999 (8,976 images, disjoint). Per-tensor symmetric weights (MSE grid), first and"
  echo "last layer 8-bit, LSQ activations where A < 32, block reconstruction, **$ITERS iterations per block**"
  echo "(the papers: 20,000), batch 32, seed 1005."
  echo
} > "$SECTION"
for m in $MODELS; do
  for wa in "4 32" "3 32" "2 32" "4 4" "2 4"; do
    set -- $wa; W=$1; A=$2
    log="$OUT/$m-w${W}a${A}.log"
    ./"$BUILD"/flexquant ${FLEXQUANT_ARGS:-} compare --model "$SHARED/data/cifar10/$m.safetensors" --arch resnet_cifar \
      --data "cifar10:$SHARED/data/cifar10" \
      --recipe recipes/rtn-w4a4.json,recipes/adaround-w4a4.json,recipes/flexround-w4a4.json,recipes/flexround-qdrop-w4a4.json \
      --set weight.bits=$W --set act.bits=$A --set recon.iters=$ITERS --markdown "$OUT/$m-w${W}a${A}.md" > "$log" 2>&1
    {
      echo "### $m W${W}A${A}"; echo; cat "$OUT/$m-w${W}a${A}.md"
      grep -E "^total time" "$log" | sed 's/^/\n/'
      echo
    } >> "$SECTION"
    echo "done $m W${W}A${A}"
  done
done
python3 bench/update_results.py "CNN quality (issue #3)" "$SECTION"
