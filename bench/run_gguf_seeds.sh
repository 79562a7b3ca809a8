#!/usr/bin/env bash
# GGUF, AdaRound against FlexRound over seeds (issue #10: "FlexRound best at every type"): the GGUF table's
# single-seed gaps between the two are under 0.1 perplexity, the size of seed noise, so each type here runs both
# methods at SEEDS (default 1005 1 2) on the type's exact grid (the GGUF table's settings: groups of 32, fp16
# scales, symmetric for *_0, asymmetric with a half-precision minimum for *_1; 5000 iterations per layer) and
# scores every exported file in llama.cpp itself (flexquant eval --runtime llama.cpp). Writes out/bench_gguf_seeds/
# and the "GGUF: AdaRound and FlexRound over seeds (issue #10)" section of docs/RESULTS.md.
# Usage: bench/run_gguf_seeds.sh [build-dir] [iters] [type ...]   types: q4_0 q4_1 q5_0 q5_1 q8_0 (default q4_1 q5_0 q5_1)
#   Types may run as parallel processes (FLEXQUANT_ARGS="--threads 1"); a finished (type, seed) is not rerun.
#   VARIANT=-mse-start EXTRA="--set weight.init=mse": rows <type>-mse-start with those settings added (AdaRound's
#   recipe already starts from the MSE grid, so this moves FlexRound's start only). The other variants published:
#   -zp EXTRA="--set flexround.min_as_zero_point=1" (FlexRound only), -signed EXTRA="--set weight.init=signed".
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-5000}; shift 2 || true
TYPES=${*:-q4_1 q5_0 q5_1}
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_gguf_seeds; mkdir -p "$OUT"
source bench/gguf_grid.sh
R="recipes/llm-adaround-w4.json,recipes/llm-flexround-g32.json"
[[ "$TYPES" == table ]] || bench_binary "$BUILD"
T="${FLEXQUANT_ARGS:-}"

for t in $TYPES; do
  [[ $t == table ]] && continue
  [[ -n "${BITS[$t]:-}" ]] || bench_die "unknown type '$t' -> allowed: ${!BITS[*]}"
  for seed in ${SEEDS:-1005 1 2}; do
    d="$OUT/$t${VARIANT:-}-s$seed"
    [[ -f "$d.done" ]] && continue
    mkdir -p "$d"
    bench_run "$d/compare.cmd" "$d/compare.log" $BENCH_BIN $T compare --model "$MODEL" $DATA --recipe $R \
      $(gguf_grid $t) --set recon.iters=$ITERS --set seed=$seed ${EXTRA:-} --out-dir "$d" --out-format gguf
    for f in "$d"/[0-9]-*.gguf; do
      m=$(basename "$f" .gguf); m=${m#*-}
      bench_run "$d/$m.lc.cmd" "$d/$m.lc.log" $BENCH_BIN $T eval --model "$f" $DATA --runtime llama.cpp
    done
    touch "$d.done"
  done
done

python3 - "$OUT" > "$OUT/section.md" <<'PY'
import glob, os, re, statistics, sys
sys.path.insert(0, "bench")
from mdtable import mean_sd
out = sys.argv[1]
ms = lambda v: mean_sd(v, 3)
print("## GGUF: AdaRound and FlexRound over seeds (issue #10)\n")
print("Script: `bench/run_gguf_seeds.sh <build> 5000 [types]`. The GGUF table's settings (stories260K, calibration 512 x")
print("256 tokens from paragraphs 0-1999, 5000 iterations per decoder layer, each method on the type's exact grid and")
print("written from its codes), at three seeds; **perplexity as llama.cpp computes it** on each exported file")
print("(evaluation paragraphs 2000-, first 60,000 tokens, windows of 512; FP 7.27). Mean ± sample std over the seeds.")
print("Rows `<type>-mse-start`: FlexRound from the MSE-clipped grid instead of its recipe's min-max start (AdaRound's")
print("recipe already starts there), the start chosen on the validation slice (`--eval-skip 60000`, seed 1005, flexquant")
print("perplexity: Q5_0 6.524 against 6.540 with min-max; Q4_1 6.737 against 6.728, so Q4_1 keeps min-max). Those four")
print("runs, 2026-12-07 23:52-00:12 UTC, built from commit c8e1cf49290b: `out/bench-bin/c8e1cf49290b/flexquant --threads 1")
print("compare --model ../shared/data/lm/stories260K.bin --data ../shared/data/lm/tinystories_valid_first.txt")
print("--calib-paragraphs 2000 --eval-skip 60000 --recipe recipes/llm-flexround-g32.json --set weight.bits=<4|5>")
print("--set weight.symmetric=<false|true> --set weight.granularity=group --set weight.group_size=32 --set")
print("weight.scale_dtype=fp16 --set calib.samples=512 --set recon.iters=5000 --set weight.init=<minmax|mse>`.")
print("Rows `<type>-zp`: FlexRound rounds w/S + m/s1, the block minimum m a fractional zero point")
print("(`flexround.min_as_zero_point=1`), instead of (w + m)/S; AdaRound is unchanged by it. Chosen on the validation")
print("slice (Q4_1, seed 1005, the command above with `--set flexround.min_as_zero_point=<0|1>`, a build of the tree of")
print("commit bcab940: 6.728 with 0, 6.677 with 1). Rows `<type>-signed`: both methods start from llama.cpp's orientation")
print("of the symmetric grid (`weight.init=signed`: each block's largest magnitude on the extra level of its own side).\n")
print("| type | AdaRound | FlexRound | FlexRound - AdaRound | per seed (AdaRound / FlexRound) | seeds |\n|---|---|---|---|---|---|")
rows, cmds = {}, []
for d in sorted(glob.glob(f"{out}/*-s*.done")):
    m = re.match(r"(.*)-s(\d+)\.done$", os.path.basename(d)); t, seed = m.group(1), m.group(2)
    run = d[:-5]
    ppl = {}
    for meth in ("adaround", "flexround"):
        txt = open(f"{run}/{meth}.lc.log").read()
        ppl[meth] = float(re.search(r"^llama.cpp perplexity = ([0-9.]+)", txt, re.M).group(1))
        cmds.append(open(f"{run}/{meth}.lc.cmd").read().strip())
    cmds.insert(len(cmds) - 2, open(f"{run}/compare.cmd").read().strip())
    rows.setdefault(t, []).append((seed, ppl))
for t in sorted(rows):
    a = [p["adaround"] for _, p in rows[t]]; f = [p["flexround"] for _, p in rows[t]]
    d = statistics.mean(f) - statistics.mean(a)
    per = ", ".join(f"{p['adaround']:.3f} / {p['flexround']:.3f}" for _, p in rows[t])
    print(f"| {t} | {ms(a)} | {ms(f)} | {d:+.3f} {'FlexRound better' if d < 0 else 'FlexRound WORSE'} | {per} | {', '.join(s for s, _ in rows[t])} |")
print("\nRuns:\n")
for c in cmds: print("- " + c)
PY
python3 bench/update_results.py "GGUF: AdaRound and FlexRound over seeds (issue #10)" "$OUT/section.md"
