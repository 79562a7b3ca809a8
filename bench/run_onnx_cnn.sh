#!/usr/bin/env bash
# The CNN table through the ONNX path (issue #11): each model's .onnx quantized by the generic graph adapter with the
# CNN recipes (RTN, AdaRound, FlexRound, FlexRound+QDrop), written as QDQ ONNX and run by ONNX Runtime; beside it the
# same recipes and seed through the safetensors path (the hand-written resnet_cifar adapter) in the same run.
# Each row writes out/bench_onnx_cnn/<model>-<setting>.{md,log,cmd}; the section of docs/RESULTS.md
# "ONNX path CNN table (issue #11)" is rebuilt from them, rows not rerun keeping their published lines.
# Usage: bench/run_onnx_cnn.sh [build-dir] [iters] [models] [settings] [paths]
#   models "resnet20 resnet32 resnet44", settings "w4a32 w4a4 w2a4", paths "onnx safetensors" (the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}
MODELS=${3:-resnet20 resnet32 resnet44}
SETTINGS=${4:-w4a32 w4a4 w2a4}
PATHS=${5:-onnx safetensors}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_onnx_cnn; mkdir -p "$OUT"
R=recipes/rtn-w4a4.json,recipes/adaround-w4a4.json,recipes/flexround-w4a4.json,recipes/flexround-qdrop-w4a4.json
bench_binary "$BUILD"
for m in $MODELS; do
  for s in $SETTINGS; do
    [[ $s =~ ^w([0-9]+)a([0-9]+)$ ]] || { echo "bad setting '$s' -> expected w<bits>a<bits>, e.g. w4a4" >&2; exit 2; }
    W=${BASH_REMATCH[1]}; A=${BASH_REMATCH[2]}
    common="--data cifar10:$SHARED/data/cifar10 --recipe $R --set weight.bits=$W --set act.bits=$A --set recon.iters=$ITERS"
    for p in $PATHS; do
      row="$m-$s-$p"
      if [[ $p == onnx ]]; then
        rm -rf "$OUT/$row.qdq"
        bench_run "$OUT/$row.cmd" "$OUT/$row.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} compare --model $SHARED/data/cifar10/$m.onnx \
          $common --out-dir "$OUT/$row.qdq" --out-format onnx --markdown "$OUT/$row.md"
        for f in "$OUT/$row.qdq"/*.onnx; do  # ONNX Runtime's top-1 of every exported QDQ file
          $BENCH_BIN eval --model "$f" --data cifar10:$SHARED/data/cifar10 --runtime onnxruntime | tail -1 > "$f.ort"
        done
      else
        bench_run "$OUT/$row.cmd" "$OUT/$row.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} compare \
          --model $SHARED/data/cifar10/$m.safetensors --arch resnet_cifar $common --markdown "$OUT/$row.md"
      fi
      echo "done $row"
    done
  done
done
python3 bench/onnx_cnn_table.py "$OUT" > "$OUT/section.md"
python3 bench/update_results.py "ONNX path CNN table (issue #11)" "$OUT/section.md"
