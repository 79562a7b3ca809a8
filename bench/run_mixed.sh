#!/usr/bin/env bash
# Mixed precision under a size budget (issue #13 item 4): hidden-layer weights at widths {2,3,4} chosen by measured
# sensitivity to average at most 3 bits, against uniform 3-bit weights; round-to-nearest and FlexRound, weight-only,
# on ResNet-20 / CIFAR-10 (per-channel symmetric, first/last layer 8-bit) and stories260K / TinyStories (per-channel
# asymmetric, the LM table's protocol). Writes out/bench_mixed/ and the "Mixed precision (issue #13)" section of
# docs/RESULTS.md.
# Usage: bench/run_mixed.sh [build-dir] [iters] [rows]   rows: r20 lm (default both)
#   SEEDS (default "1005 1 2") for ResNet-20, LM_SEEDS (default "1005") for stories260K.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; shift 2 || true
ROWS=${*:-r20 lm}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_mixed; mkdir -p "$OUT"
CNN="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/rtn-w4a4.json,recipes/flexround-w4a4.json --set weight.granularity=channel --set act.bits=32"
LM="compare --model $SHARED/data/lm/stories260K.bin --data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000 --set calib.samples=512 --recipe recipes/llm-rtn-w4.json,recipes/llm-flexround-w4.json --set weight.granularity=channel"
declare -A MODE=([uniform]="--set weight.bits=3" [mixed]="--set mixed.bits=2,3,4 --set mixed.budget=3")
[[ "$ROWS" == none ]] || bench_binary "$BUILD"
for row in $ROWS; do
  [[ $row == none ]] && continue
  case $row in r20) args=$CNN; seeds=${SEEDS:-1005 1 2};; lm) args=$LM; seeds=${LM_SEEDS:-1005};;
    *) bench_die "unknown row '$row' -> rows: r20 lm";; esac
  for mode in uniform mixed; do
    for seed in $seeds; do
      f="$OUT/$row-$mode-s$seed"
      [[ -f "$f.cmd" ]] && continue
      bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $args ${MODE[$mode]} --set recon.iters=$ITERS \
        --set seed=$seed --markdown "$f.md"
      echo "done $row $mode seed $seed"
    done
  done
done

python3 - "$OUT" > "$OUT/section.md" <<'PY'
import glob, os, re, statistics, sys
sys.path.insert(0, "bench")
from mdtable import mean_sd as ms, metrics
out = sys.argv[1]
def alloc(log):
    for line in open(log):
        m = re.match(r"mixed precision: hidden weights average ([0-9.]+) bits", line)
        if m: return float(m.group(1)), line.split(":", 2)[2].strip()
    return None, ""
print("## Mixed precision (issue #13)\n")
print("Script: `bench/run_mixed.sh <build> <iters> [rows]`. Hidden-layer weights at widths {2, 3, 4} chosen per layer")
print("(`mixed.bits=2,3,4 mixed.budget=3`: sensitivity = logit MSE on 64 calibration inputs with one layer round-to-nearest")
print("at each width; greedy steps down the cheapest bits per weight first) against uniform 3-bit weights; weight-only.")
print("ResNet-20: per-channel symmetric, first/last layer 8-bit (both runs), top-1 % on records 1024-9999; stories260K:")
print("per-channel asymmetric, perplexity under the LM table's protocol. Mean ± sample std over seeds where several.\n")
print("| model | method | uniform 3-bit | mixed, average <= 3 bits | mixed - uniform | average bits | seeds |\n|---|---|---|---|---|---|---|")
cmds, allocs = [], []
for row in ("r20", "lm"):
    runs = {mode: sorted(glob.glob(f"{out}/{row}-{mode}-s*.md")) for mode in ("uniform", "mixed")}
    runs = {k: [m for m in v if os.path.exists(m[:-3] + ".cmd")] for k, v in runs.items()}
    if not runs["uniform"] or not runs["mixed"]: continue
    avg, text = alloc(runs["mixed"][0][:-3] + ".log")
    allocs.append(f"- {row}: {text}")
    for method in ("rtn", "flexround"):
        u = [metrics(m)[method] for m in runs["uniform"]]; x = [metrics(m)[method] for m in runs["mixed"]]
        if method == "rtn": u, x = u[:1], x[:1]  # deterministic
        d = statistics.mean(x) - statistics.mean(u)
        better = d > 0 if row == "r20" else d < 0
        seeds = "deterministic" if method == "rtn" else ", ".join(re.search(r"-s(\d+)\.md$", m).group(1) for m in runs["mixed"])
        print(f"| {row} | {method} | {ms(u)} | {ms(x)} | {d:+.2f} {'mixed better' if better else 'mixed WORSE'} | {avg:.3f} | {seeds} |")
    cmds += [open(m[:-3] + ".cmd").read().strip() for v in runs.values() for m in v]
print("\nAllocations (layer=bits; ResNet-20's calibration images, and so its allocation, do not depend on the seed):\n")
print("\n".join(allocs))
print("\nRuns:\n")
for c in cmds: print("- " + c)
PY
python3 bench/update_results.py "Mixed precision (issue #13)" "$OUT/section.md"
