#!/usr/bin/env bash
# PD-Quant's prediction-difference loss (issue #13 item 1) against FlexRound + QDrop at equal iterations: ResNet-20 /
# CIFAR-10 W2A4 (per-channel weights, first/last layer 8-bit), seeds 1005 1 2. Writes out/bench_pdquant/ and the
# "PD-Quant (issue #13)" section of docs/RESULTS.md.
# Usage: bench/run_pdquant.sh [build-dir] [iters] [seeds]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; SEEDS=${3:-1005 1 2}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_pdquant; mkdir -p "$OUT"
bench_binary "$BUILD"
ARGS="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/flexround-qdrop-w4a4.json --set weight.bits=2 --set weight.granularity=channel --set recon.iters=$ITERS"
for seed in $SEEDS; do
  for v in qdrop pd; do
    f="$OUT/w2a4-$v-s$seed"
    [[ -f "$f.cmd" ]] && continue
    extra=""; [[ $v == pd ]] && extra="--set pd.weight=10 --set pd.temperature=4"
    bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $ARGS --set seed=$seed $extra --markdown "$f.md"
    echo "done $v seed $seed"
  done
done
python3 - "$OUT" > "$OUT/section.md" <<'PY'
import glob, os, re, statistics, sys
sys.path.insert(0, "bench")
from mdtable import metrics, rows
out = sys.argv[1]
def top1(md): return float(rows(md)["flexround"][2]), rows(md)["flexround"][5]
def fp(md): return metrics(md)["fp32"]
print("## PD-Quant (issue #13)\n")
print("Script: `bench/run_pdquant.sh <build> <iters> [seeds]`. ResNet-20, CIFAR-10 W2A4: FlexRound + QDrop")
print("(recipes/flexround-qdrop-w4a4.json with weight.bits=2, per-channel weights, first/last layer 8-bit) with and without")
print("PD-Quant's prediction-difference loss (`pd.weight=10 pd.temperature=4`: the paper's 1/lambda_r and T for ResNets),")
print("the same iterations. Distribution correction (PD-Quant's part b) is not implemented. Calibration records 0-1023,")
print("evaluation 1024-9999. Mean ± sample std over seeds.\n")
print("| W/A | method | top-1 % | per seed | quantize time |\n|---|---|---|---|---|")
cmds = []
for v, name in (("qdrop", "FlexRound + QDrop"), ("pd", "FlexRound + QDrop + PD loss")):
    mds = [m for m in sorted(glob.glob(f"{out}/w2a4-{v}-s*.md")) if os.path.exists(m[:-3] + ".cmd")]
    if not mds: continue
    vals = [top1(m)[0] for m in mds]; times = [top1(m)[1] for m in mds]
    sd = statistics.stdev(vals) if len(vals) > 1 else 0
    print(f"| W2A4 | {name} | {statistics.mean(vals):.2f} ± {sd:.2f} | {', '.join(f'{x:.2f}' for x in vals)} | {', '.join(times)} |")
    cmds += [open(m[:-3] + ".cmd").read().strip() for m in mds]
print(f"\nFP32: {fp(mds[0]):.2f}.\n\nRuns:\n")
for c in cmds: print("- " + c)
PY
python3 bench/update_results.py "PD-Quant (issue #13)" "$OUT/section.md"
