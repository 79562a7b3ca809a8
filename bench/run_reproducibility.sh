#!/usr/bin/env bash
# Reproducibility across thread counts (issue #14 item 4): the same quantization (ResNet-20, FlexRound W4A4, seed
# 1005) at --threads 1 and --threads 2, and with --deterministic at both; how many stored tensors differ, the
# accuracy, and the wall time (the cost of --deterministic). Writes out/bench_repro/ and the "Reproducibility across
# thread counts (issue #14)" section of docs/RESULTS.md. Run it on an otherwise idle machine: the times are the point.
# Usage: bench/run_reproducibility.sh [build-dir] [iters]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-200}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_repro; mkdir -p "$OUT"
bench_binary "$BUILD"
args="quantize --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/flexround-w4a4.json --set recon.iters=$ITERS --no-checkpoint"
for cfg in "t1:--threads 1" "t2:--threads 2" "t1d:--threads 1 --deterministic" "t2d:--threads 2 --deterministic"; do
  name=${cfg%%:*}; flags=${cfg#*:}
  start=$(date +%s.%N)
  bench_run "$OUT/$name.cmd" "$OUT/$name.log" $BENCH_BIN $flags $args --out "$OUT/$name.fqz"
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)" > "$OUT/$name.wall"
done
python3 - "$OUT" > "$OUT/section.md" <<'EOF'
import json, re, struct, sys
out = sys.argv[1]
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: d[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}, h["__metadata__"]
def top1(name):
    m = re.search(r"\| flexround W4A4 \| ([0-9.]+) \|", open(f"{out}/{name}.log").read())
    return m.group(1) if m else "?"
def differ(x, y):
    (a, ma), (b, mb) = load(f"{out}/{x}.fqz"), load(f"{out}/{y}.fqz")
    return sum(a[k] != b[k] for k in a), len(a), ma["activations"] == mb["activations"]
print("## Reproducibility across thread counts (issue #14)\n")
print("Script: `bench/run_reproducibility.sh <build> <iters>`. ResNet-20, FlexRound W4A4 (recipes/flexround-w4a4.json),")
print("seed 1005, calibration records 0-1023, evaluation 1024-9999. LibTorch splits its parallel reductions (conv")
print("weight gradients, sums) by thread count, so without `--deterministic` the last bits of the gradients, and after")
print("reconstruction some codes, depend on `--threads`; `--deterministic` runs every op on one thread.\n")
print("| run | top-1 % | wall s |\n|---|---|---|")
for n, label in [("t1", "--threads 1"), ("t2", "--threads 2"), ("t1d", "--threads 1 --deterministic"), ("t2d", "--threads 2 --deterministic")]:
    print(f"| `{label}` | {top1(n)} | {open(f'{out}/{n}.wall').read().strip()} |")
print()
for x, y in [("t1", "t2"), ("t1d", "t2d")]:
    d, n, acts = differ(x, y)
    print(f"- {x} vs {y}: {d} of {n} stored tensors differ; activation grids {'equal' if acts else 'differ'}.")
print("\nRuns:\n")
for n in ("t1", "t2", "t1d", "t2d"):
    print("- " + open(f"{out}/{n}.cmd").read().strip())
EOF
python3 bench/update_results.py "Reproducibility across thread counts (issue #14)" "$OUT/section.md"
