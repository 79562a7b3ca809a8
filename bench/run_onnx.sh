#!/usr/bin/env bash
# ONNX import (issue #11): the real ResNets' .onnx files through flexquant's executor beside ONNX Runtime (top-1 on
# CIFAR-10 records 1024-9999, predictions that differ, max |logit diff|), and the ONNX backend node tests per op.
# Writes out/bench_onnx/ and the "ONNX import (issue #11)" section of docs/RESULTS.md.
# Usage: bench/run_onnx.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_onnx; mkdir -p "$OUT"
bench_binary "$BUILD"
for m in resnet20 resnet32 resnet44; do
  bench_run "$OUT/$m.cmd" "$OUT/$m.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} onnx --model $SHARED/data/cifar10/$m.onnx --data cifar10:$SHARED/data/cifar10
done
bench_run "$OUT/conformance.cmd" "$OUT/conformance.log" $BENCH_BIN onnx --conformance /usr/share/libonnx-testdata/data/node
{
  echo "## ONNX import (issue #11)"; echo
  echo "Script: \`bench/run_onnx.sh\`. The exported ResNets (opset 13; BatchNorm folded by the exporter; the option-A"
  echo "shortcut as Slice/Pad with a shape subgraph, folded at load) run through flexquant's ONNX executor and through"
  echo "ONNX Runtime 1.30.0 (onnxruntime-node, CPU, graph optimizations off) on CIFAR-10 records 1024-9999."; echo
  for m in resnet20 resnet32 resnet44; do
    echo "- $(grep -E '^\S+: records' "$OUT/$m.log")"
    echo "  (run $(cat "$OUT/$m.cmd"))"
  done
  echo; echo "ONNX backend node tests (Debian libonnx-testdata 1.12), every case whose model uses only supported ops;"
  echo "float outputs within 1e-4 + 1e-4 |expected|. Run $(cat "$OUT/conformance.cmd")"; echo
  sed -n '/^| op/,$p' "$OUT/conformance.log"
} > "$OUT/section.md"
python3 bench/update_results.py "ONNX import (issue #11)" "$OUT/section.md"
