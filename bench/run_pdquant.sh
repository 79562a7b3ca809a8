#!/usr/bin/env bash
# PD-Quant (issue #13 item 1) against FlexRound + QDrop at equal iterations: ResNet-20 / CIFAR-10 W2A4 (per-channel
# weights, first/last layer 8-bit), seeds 1005 1 2. Variants: qdrop (FlexRound + QDrop), pd (+ the prediction-difference
# loss), pdquant (+ the loss and the distribution correction: the whole method). Writes out/bench_pdquant/ and the
# "PD-Quant (issue #13)" section of docs/RESULTS.md.
# Usage: [VARIANTS="qdrop pd pdquant"] bench/run_pdquant.sh [build-dir] [iters] [seeds]
# (two instances with different seeds or VARIANTS may run at once; each writes the section from what is done)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; SEEDS=${3:-1005 1 2}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_pdquant; mkdir -p "$OUT"
bench_binary "$BUILD"
ARGS="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/flexround-qdrop-w4a4.json --set weight.bits=2 --set weight.granularity=channel --set recon.iters=$ITERS"
for seed in $SEEDS; do
  for v in ${VARIANTS:-qdrop pd pdquant}; do
    f="$OUT/w2a4-$v-s$seed"
    [[ -f "$f.cmd" ]] && continue
    extra=""
    [[ $v != qdrop ]] && extra="--set pd.weight=10 --set pd.temperature=4"
    [[ $v == pdquant ]] && extra="$extra --set pd.dc_iters=500 --set pd.dc_lr=1e-3 --set pd.dc_lambda=0.02"
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
print("(recipes/flexround-qdrop-w4a4.json with weight.bits=2, per-channel weights, first/last layer 8-bit), then with")
print("PD-Quant's prediction-difference loss (`pd.weight=10 pd.temperature=4`: the paper's 1/lambda_r and T for ResNets),")
print("then with the loss and PD-Quant's distribution correction of each unit's FP input (`pd.dc_iters=500 pd.dc_lr=1e-3")
print("pd.dc_lambda=0.02`: the paper's settings for ResNets, per batch of 32), the same reconstruction iterations.")
print("Calibration records 0-1023, evaluation 1024-9999. Mean ± sample std over seeds.\n")
print("| W/A | method | top-1 % | per seed | quantize time |\n|---|---|---|---|---|")
cmds = []
for v, name in (("qdrop", "FlexRound + QDrop"), ("pd", "FlexRound + QDrop + PD loss"),
                ("pdquant", "FlexRound + QDrop + PD loss + distribution correction (PD-Quant)")):
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
