#!/usr/bin/env bash
# Cross-layer equalization and bias correction (issue #13 item 5) on ResNet-20 / CIFAR-10: round-to-nearest and
# FlexRound with and without CLE (cle.iters=2) and empirical bias correction, per-tensor weights (where one
# channel's range costs every other channel most), activations FP. Writes out/bench_dfq/ and the "Cross-layer
# equalization and bias correction (issue #13)" section of docs/RESULTS.md.
# Usage: bench/run_dfq.sh [build-dir] [iters] [seeds]      (default 500 iterations, seeds "1005 1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; SEEDS=${3:-1005 1 2}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_dfq; mkdir -p "$OUT"
bench_binary "$BUILD"
CNN="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --set weight.granularity=tensor --set act.bits=32 --set recon.iters=$ITERS"
declare -A PREP=([plain]="" [cle]="--set cle.iters=2" [bc]="--set bias_correction.enabled=true" [cle_bc]="--set cle.iters=2 --set bias_correction.enabled=true")
for bits in 4 3; do
  for prep in plain cle bc cle_bc; do
    f="$OUT/rtn-w$bits-$prep"
    [[ -f "$f.cmd" ]] || bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $CNN --recipe recipes/rtn-w4a4.json \
      --set weight.bits=$bits ${PREP[$prep]} --markdown "$f.md"
  done
  for prep in plain cle_bc; do
    for seed in $SEEDS; do
      f="$OUT/flexround-w$bits-$prep-s$seed"
      [[ -f "$f.cmd" ]] || bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $CNN --recipe recipes/flexround-w4a4.json \
        --set weight.bits=$bits --set seed=$seed ${PREP[$prep]} --markdown "$f.md"
    done
  done
  echo "done W$bits"
done

python3 - "$OUT" "$SEEDS" > "$OUT/section.md" <<'PY'
import glob, os, re, statistics, sys
sys.path.insert(0, "bench")
from mdtable import metrics
out, seeds = sys.argv[1], sys.argv[2].split()
def top1(md): return next(v for k, v in metrics(md).items() if k != "fp32")
def fp(md): return metrics(md)["fp32"]
names = {"plain": "-", "cle": "CLE", "bc": "bias correction", "cle_bc": "CLE + bias correction"}
print("## Cross-layer equalization and bias correction (issue #13)\n")
print("Script: `bench/run_dfq.sh <build> <iters> [seeds]`. ResNet-20, CIFAR-10, calibration records 0-1023, evaluation")
print("1024-9999; per-tensor symmetric MSE-initialised weights (recipes/rtn-w4a4.json, recipes/flexround-w4a4.json")
print("with act.bits=32: activations FP), first/last layer 8-bit, recon.iters as in each command. CLE: 2 sweeps over the")
print("ReLU-joined conv pairs of each block (`cle.iters=2`); bias correction: `bias_correction.enabled=true`. RTN is")
print("deterministic (one run); FlexRound: mean ± sample std over seeds " + ", ".join(seeds) + ".\n")
print("| weights | method | pre/post-processing | top-1 % | vs FP |\n|---|---|---|---|---|")
cmds = []
for bits in (4, 3):
    for prep in ("plain", "cle", "bc", "cle_bc"):
        f = f"{out}/rtn-w{bits}-{prep}"
        if not os.path.exists(f + ".cmd"): continue
        t, F = top1(f + ".md"), fp(f + ".md")
        print(f"| W{bits} per-tensor | RTN | {names[prep]} | {t:.2f} | {t - F:+.2f} |"); cmds.append(open(f + ".cmd").read().strip())
    for prep in ("plain", "cle_bc"):
        vals = []
        for s in seeds:
            f = f"{out}/flexround-w{bits}-{prep}-s{s}"
            if os.path.exists(f + ".cmd"):
                vals.append(top1(f + ".md")); F = fp(f + ".md"); cmds.append(open(f + ".cmd").read().strip())
        if vals:
            m = statistics.mean(vals); sd = statistics.stdev(vals) if len(vals) > 1 else 0
            print(f"| W{bits} per-tensor | FlexRound | {names[prep]} | {m:.2f} ± {sd:.2f} (n={len(vals)}: {', '.join(f'{v:.2f}' for v in vals)}) | {m - F:+.2f} |")
print("\nRuns:\n")
for c in cmds: print("- " + c)
PY
python3 bench/update_results.py "Cross-layer equalization and bias correction (issue #13)" "$OUT/section.md"
