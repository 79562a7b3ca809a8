#!/usr/bin/env bash
# NUPES vs uniform FlexRound (issue #13 item 2): weight-only W3 and W2, per-channel symmetric (both methods on the
# same symmetric setting), ResNet-20 / CIFAR-10 (top-1 %) and stories260K / TinyStories (perplexity, the LM
# table's protocol), round-to-nearest as the floor. Writes out/bench_nupes/ and the "NUPES power grids (issue #13)"
# section of docs/RESULTS.md.
# Usage: bench/run_nupes.sh [build-dir] [iters] [rows]   rows: r20-w3 r20-w2 lm-w3 lm-w2 (default all)
#   SEEDS (default "1005 1 2") for ResNet-20; LM_SEEDS (default "1005") for stories260K.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; shift 2 || true
ROWS=${*:-r20-w3 r20-w2 lm-w3 lm-w2}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_nupes; mkdir -p "$OUT"
CNN="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/rtn-w4a4.json,recipes/flexround-w4a4.json,recipes/nupes-w3.json --set weight.granularity=channel --set act.bits=32"
LM="compare --model $SHARED/data/lm/stories260K.bin --data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000 --set calib.samples=512 --recipe recipes/llm-rtn-w4.json,recipes/llm-flexround-w4.json,recipes/llm-nupes-w3.json --set weight.granularity=channel"
[[ "$ROWS" == none ]] || bench_binary "$BUILD"
for row in $ROWS; do
  [[ $row == none ]] && continue
  [[ $row =~ ^(r20|lm)-w([0-9])$ ]] || bench_die "unknown row '$row' -> rows: r20-w3 r20-w2 lm-w3 lm-w2"
  kind=${BASH_REMATCH[1]}; bits=${BASH_REMATCH[2]}
  if [[ $kind == r20 ]]; then args=$CNN; seeds=${SEEDS:-1005 1 2}; else args=$LM; seeds=${LM_SEEDS:-1005}; fi
  for seed in $seeds; do
    f="$OUT/$row-s$seed"
    [[ -f "$f.cmd" ]] && continue
    bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $args --set weight.bits=$bits --set weight.symmetric=true \
      --set weight.init=mse --set recon.iters=$ITERS --set seed=$seed --markdown "$f.md"
    echo "done $row seed $seed"
  done
done

python3 - "$OUT" > "$OUT/section.md" <<'PY'
import glob, os, re, statistics, sys
sys.path.insert(0, "bench")
from mdtable import mean_sd as ms, metrics
out = sys.argv[1]
print("## NUPES power grids (issue #13)\n")
print("Script: `bench/run_nupes.sh <build> <iters> [rows]`. Weight-only, per-channel symmetric, MSE-initialised")
print("grids for every method (NUPES's transform is odd, so FlexRound and RTN run symmetric too): RTN and FlexRound on")
print("the integers q = -2^(b-1)..2^(b-1)-1, NUPES on sign(q)|q|^(1/a) over the same q (pow<b>_a<1/a>_full, 2^b levels")
print("like the integer grid), a learned per layer from PowerQuant's search start. ResNet-20: top-1 %, calibration")
print("records 0-1023, evaluation 1024-9999, first/last layer 8-bit; stories260K: perplexity, the LM table's protocol.")
print("Mean ± sample std over the seeds listed; RTN is deterministic. The exponent trains at a tenth of the divisors'")
print("rate (nupes.a_rate = 0.1). At W2 the positive side of the grid has the one level 1, so the exponent only places")
print("the lone level -2^(1/a): NUPES there is FlexRound with one level moved.\n")
print("| row | FP | RTN | FlexRound | NUPES | NUPES - FlexRound | seeds |\n|---|---|---|---|---|---|---|")
rows = {}
for md in sorted(glob.glob(f"{out}/*-s*.md")):
    m = re.match(r"(.*)-s(\d+)\.md$", os.path.basename(md))
    if not m or not os.path.exists(md[:-3] + ".cmd"): continue
    rows.setdefault(m.group(1), []).append((m.group(2), metrics(md), open(md[:-3] + ".cmd").read().strip()))
cmds = []
for row in sorted(rows, key=lambda r: (r.split("-")[0] != "r20", -int(r[-1]))):
    runs = rows[row]
    fp = runs[0][1]["fp32"]
    fr = [r[1]["flexround"] for r in runs]; nu = [r[1]["nupes"] for r in runs]
    d = statistics.mean(nu) - statistics.mean(fr)
    better = d > 0 if row.startswith("r20") else d < 0
    print(f"| {row} | {fp:.2f} | {runs[0][1]['rtn']:.2f} | {ms(fr)} | {ms(nu)} | {d:+.2f} {'NUPES better' if better else 'NUPES worse'} | {', '.join(r[0] for r in runs)} |")
    cmds += [r[2] for r in runs]
print("\nRuns:\n")
for c in cmds: print("- " + c)
PY
python3 bench/update_results.py "NUPES power grids (issue #13)" "$OUT/section.md"
