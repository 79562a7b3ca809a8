#!/usr/bin/env bash
# Precision sweep (issue #13 item 6): ResNet-20 / CIFAR-10 and stories260K / TinyStories run with every model
# tensor and activation rounded to fp32 with k significand bits (k = 23..2) and to fp16, bf16 and the minifloat
# presets, with round-to-nearest and stochastic rounding; metric and the Wasserstein-1 distance between the FP32
# and the reduced-precision output distributions. Writes out/bench_sweep/, the plots docs/img/sweep-<row>.png and
# the "Precision sweep (issue #13)" section of docs/RESULTS.md.
# Usage: bench/run_sweep.sh [build-dir] [row ...]     rows: r20 lm (default both); "none": only reassemble
#   R20_IMAGES (default 2000) evaluation images, LM_TOKENS (default 10000) evaluation tokens per point.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; shift || true
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_sweep; mkdir -p "$OUT" docs/img
ROWS=${*:-r20 lm}
declare -A WORK=(
  [r20]="--model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --eval-limit ${R20_IMAGES:-2000}"
  [lm]="--model $SHARED/data/lm/stories260K.bin --data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000 --eval-limit ${LM_TOKENS:-10000}")
[[ "$ROWS" == none ]] || bench_binary "$BUILD"
for row in $ROWS; do
  [[ $row == none ]] && continue
  [[ -n "${WORK[$row]:-}" ]] || bench_die "unknown row '$row' -> rows: r20 lm"
  bench_run "$OUT/$row.cmd" "$OUT/$row.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} sweep ${WORK[$row]} \
    --markdown "$OUT/$row.md" --csv "$OUT/$row.csv" --plot "docs/img/sweep-$row.png"
  echo "done $row"
done

python3 - "$OUT" > "$OUT/section.md" <<'PY'
import csv, os, sys
out = sys.argv[1]
names = {"r20": "ResNet-20, CIFAR-10 (top-1 %, per-class logits)", "lm": "stories260K, TinyStories (perplexity, per-token NLL)"}
print("## Precision sweep (issue #13)\n")
print("Script: `bench/run_sweep.sh <build> [rows]` (`flexquant sweep`). Every model tensor (weights, biases, norms,")
print("embeddings) and every activation (each activation site, each unit's output, the input and the logits) rounded to")
print("fp32 with k fraction bits (`sbits<k>`, unscaled, Paxton et al.; sbits7 is bf16) or to fp16 / a minifloat preset (per-tensor scale")
print("amax / max), with round-to-nearest-even and with stochastic rounding (seed 0). W1: Wasserstein-1 distance between")
print("the FP32 and the reduced-precision output distributions (mean over classes of the logit distributions;")
print("per-token NLL for the LM). Evaluation: ResNet-20 records 1024-3023, stories260K the first 10,000 tokens of the")
print("evaluation paragraphs (2000-), windows of 512.\n")
for row in ("r20", "lm"):
    if not os.path.exists(f"{out}/{row}.md") or not os.path.exists(f"{out}/{row}.cmd"):
        continue
    pts = list(csv.DictReader(open(f"{out}/{row}.csv")))
    fp = float(pts[0]["metric"]); hib = row == "r20"
    tol = 0.5 if hib else 0.05
    ok = lambda m: (fp - float(m) <= tol) if hib else (float(m) - fp <= tol)
    sb = {(int(p["significand_bits"]), p["mode"]): p for p in pts[1:] if p["fp32_range"] == "1"}
    print(f"### {names[row]}\n")
    print(f"Run {open(f'{out}/{row}.cmd').read().strip()}\n")
    print(open(f"{out}/{row}.md").read().strip() + "\n")
    for mode in ("nearest_even", "stochastic"):
        ks = sorted(k for (k, m) in sb if m == mode)
        need = next((k for k in ks if all(ok(sb[(j, mode)]["metric"]) for j in ks if j >= k)), None)
        unit = "points" if hib else "perplexity"
        print(f"- {mode}: the fewest significand bits k with every k' >= k within {tol} {unit} of FP32: **{need}**.")
    better = [p["format"] for p in pts[1:] if p["mode"] == "stochastic" and
              (lambda n: n and float(p["w1"]) < float(n["w1"]))(next((q for q in pts[1:] if q["format"] == p["format"] and q["mode"] == "nearest_even"), None))]
    print(f"- Stochastic rounding gives a smaller W1 than round-to-nearest at: {', '.join(better) if better else 'no format'}.\n")
    print(f"![{row} sweep](img/sweep-{row}.png)\n")
PY
python3 bench/update_results.py "Precision sweep (issue #13)" "$OUT/section.md"
