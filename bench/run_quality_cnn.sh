#!/usr/bin/env bash
# CNN quality benchmark (issue #3): ResNet-20/32/44 on CIFAR-10, per-tensor weights; each row runs RTN,
# AdaRound, FlexRound and FlexRound+QDrop on one table. Calibration: records 0-1023; evaluation: records
# 1024-9999 (8,976 images). Each row writes out/bench_cnn/<model>-w<W>a<A>.{md,log,cmd} and replaces its
# subsection of docs/RESULTS.md "CNN quality", so rows can run in separate processes.
# Usage: [RECIPES=a.json,b.json] bench/run_quality_cnn.sh [build-dir] [iters] [models] [settings]
#   models: "resnet20 resnet32 resnet44" (default), settings: "w4a32 w3a32 w2a32 w4a4 w2a4" (default)
# The papers use 20000 iterations per block.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-20000}
MODELS=${3:-resnet20 resnet32 resnet44}
SETTINGS=${4:-w4a32 w3a32 w2a32 w4a4 w2a4}
ALL_MODELS="resnet20 resnet32 resnet44"; ALL_SETTINGS="w4a32 w3a32 w2a32 w4a4 w2a4"
SHARED=${FLEXQUANT_SHARED:-../shared}
# The published table ran 500 iterations; other lengths (the papers' 20,000) get their own folder and subsections
# ("<model> <SETTING> at <iters> iterations") so that both stand.
OUT=out/bench_cnn; TAG=""
if [[ $ITERS != 500 ]]; then OUT=out/bench_cnn_$ITERS; TAG=" at $ITERS iterations"; fi
mkdir -p "$OUT"
# RECIPES narrows a row to some methods (e.g. a full-length row that has time for AdaRound and FlexRound only).
R=${RECIPES:-recipes/rtn-w4a4.json,recipes/adaround-w4a4.json,recipes/flexround-w4a4.json,recipes/flexround-qdrop-w4a4.json}
[[ "$MODELS" == none ]] || bench_binary "$BUILD"
for m in $MODELS; do
  [[ $m == none ]] && continue  # "none": only reassemble the section
  for s in $SETTINGS; do
    [[ $s =~ ^w([0-9]+)a([0-9]+)$ ]] || { echo "bad setting '$s' -> expected w<bits>a<bits>, e.g. w4a4" >&2; exit 2; }
    W=${BASH_REMATCH[1]}; A=${BASH_REMATCH[2]}
    row="$m-$s"
    cmd="$BENCH_BIN ${FLEXQUANT_ARGS:-} compare --model $SHARED/data/cifar10/$m.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe $R --set weight.bits=$W --set act.bits=$A --set recon.iters=$ITERS --markdown $OUT/$row.md"
    rm -f "$OUT/$row.md"
  bench_run "$OUT/$row.cmd" "$OUT/$row.log" $cmd
    echo "done $row"
  done
done

# Each row that ran replaces its own "### <model> <SETTING>" subsection of "## CNN quality (issue #3)"; the
# hand-written text of the section and the rows not run now stay as they are.
for m in $MODELS; do
  [[ $m == none ]] && continue
  for s in $SETTINGS; do bench_subsection "$m ${s^^}$TAG" "CNN quality (issue #3)" "$OUT/$m-$s"; done
done
