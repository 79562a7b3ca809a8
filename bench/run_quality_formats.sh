#!/usr/bin/env bash
# Integer vs minifloat grids at equal bits, round-to-nearest vs FlexRound (issue #9), on ResNet-20 / CIFAR-10 and
# stories260K / TinyStories. Every row runs one `compare` per grid (RTN and FlexRound recipes, the grid set with
# --set weight.format=...) and writes out/bench_formats/<row>-<grid>.{md,log,cmd}; the section "Integer vs
# minifloat grids" of docs/RESULTS.md is assembled from every row file present.
# Usage: bench/run_quality_formats.sh [build-dir] [iters] [row ...]     (row "none": only reassemble)
#   ONLY_GRIDS="fp8_e5m2 ..." runs only those grids of each row (to complete a row).
#   SEEDS="1005 1 2" runs each grid once per seed into <row>-<grid>-s<seed>.*; a cell with seeded files is
#   reported as their mean ± sample std (its unseeded single run, if any, is then left out).
#   rows: r20-ch-w{8,6,4}a{32,8}, r20-t-w{8,6,4}a{32,8} (per-channel / per-tensor), lm-ch-w{8,6,4}, lm-g32-w{8,6,4}
# Weights are symmetric everywhere (minifloats have no zero point), MSE-initialised; CNN first/last layer int8.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-500}; shift 2 || true
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_formats; mkdir -p "$OUT"
declare -A GRIDS=([8]="int fp8_e4m3 fp8_e5m2" [6]="int fp6_e3m2 fp6_e2m3" [4]="int fp4_e2m1")
CNN="compare --model $SHARED/data/cifar10/resnet20.safetensors --arch resnet_cifar --data cifar10:$SHARED/data/cifar10 --recipe recipes/rtn-w4a4.json,recipes/flexround-w4a4.json"
LM="compare --model $SHARED/data/lm/stories260K.bin --data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000 --set calib.samples=512 --recipe recipes/llm-rtn-w4.json,recipes/llm-flexround-w4.json"

row_args() {  # row_args ROW -> the workload and setting flags of a row, without the grid
  local row=$1
  if [[ $row =~ ^r20-(ch|t)-w([0-9]+)a([0-9]+)$ ]]; then
    local g=channel; [[ ${BASH_REMATCH[1]} == t ]] && g=tensor
    echo "$CNN --set weight.granularity=$g --set weight.bits=${BASH_REMATCH[2]} --set act.bits=${BASH_REMATCH[3]}"
  elif [[ $row =~ ^lm-(ch|g32)-w([0-9]+)$ ]]; then
    local g="--set weight.granularity=channel"
    [[ ${BASH_REMATCH[1]} == g32 ]] && g="--set weight.granularity=group --set weight.group_size=32"
    echo "$LM $g --set weight.bits=${BASH_REMATCH[2]}"
  else
    bench_die "unknown row '$row' -> rows look like r20-ch-w4a32, r20-t-w8a8, lm-ch-w6, lm-g32-w4"
  fi
}
row_bits() { [[ $1 =~ -w([0-9]+) ]] && echo "${BASH_REMATCH[1]}"; }

ROWS=${*:-none}
[[ "$ROWS" == none ]] || bench_binary "$BUILD"
for row in $ROWS; do
  [[ $row == none ]] && continue
  args=$(row_args "$row")
  for grid in ${GRIDS[$(row_bits "$row")]}; do
    [[ -n "${ONLY_GRIDS:-}" && " $ONLY_GRIDS " != *" $grid "* ]] && continue
    for seed in ${SEEDS:-default}; do
      f="$OUT/$row-$grid"; seedarg=""
      [[ $seed == default ]] || { f="$f-s$seed"; seedarg="--set seed=$seed"; }
      rm -f "$f.md"
      bench_run "$f.cmd" "$f.log" $BENCH_BIN ${FLEXQUANT_ARGS:-} $args --set weight.format=$grid \
        --set weight.symmetric=true --set weight.init=mse --set recon.iters=$ITERS $seedarg --markdown "$f.md"
      echo "done $row $grid $seed"
    done
  done
done

python3 - "$OUT" <<'PY'
import glob, os, re, statistics, subprocess, sys
sys.path.insert(0, "bench")
import mdtable
out = sys.argv[1]

def cell(md, method):
    """(value, decimals printed) of a method's metric in a compare table."""
    c = mdtable.rows(md).get(method)
    return (float(c[2]), len(c[2].split(".")[1])) if c else None

runs = {}  # (row, grid) -> {seed or None: (fp, rtn, flexround, cmd)}
for md in sorted(glob.glob(f"{out}/*.md")):
    m = re.match(r"((?:r20|lm)-[a-z0-9]+-w\d+(?:a\d+)?)-(.+?)(?:-s(\d+))?$", os.path.basename(md)[:-3])
    if not m or not os.path.exists(md[:-3] + ".cmd"):
        continue  # section.md
    row, grid, seed = m.groups()
    runs.setdefault((row, grid), {})[seed] = (cell(md, "fp32"), cell(md, "rtn"), cell(md, "flexround"),
                                              open(md[:-3] + ".cmd").read().strip())
rows = {}
for (row, grid), by_seed in runs.items():
    seeded = {s: v for s, v in by_seed.items() if s is not None}
    use = seeded or by_seed
    dec = max(v[i][1] for v in use.values() for i in range(3))
    col = lambda i: [v[i][0] for v in use.values()]
    rows.setdefault(row, {})[grid] = (statistics.mean(col(0)), col(1), col(2), dec,
                                      sorted(s for s in use if s), [v[3] for v in use.values()])
fmt = mdtable.mean_sd

lines = ["## Integer vs minifloat grids (issue #9)", "",
         "Script: `bench/run_quality_formats.sh <build> <iters> [rows]` (SEEDS=\"...\" for repeated cells); the",
         "iterations per unit are in each run's command below (`recon.iters`). Symmetric weights on every grid",
         "(minifloats have no zero point), per channel (ch), per tensor (t) or per group of 32 (g32), MSE-initialised",
         "scale; ResNet-20 (r20): top-1 %, calibration records",
         "0-1023, evaluation 1024-9999, first/last layer int8, activations FP (A32); stories260K (lm): perplexity, the",
         "LM table's protocol (FP 7.27). RTN and FlexRound on each grid; **bold** marks the best FlexRound grid of the",
         "row (ResNet-20: highest top-1; stories260K: lowest perplexity). Cells without a seed count are single runs",
         "(seed 1005): gaps under 1 point (ResNet-20) or 0.1 (perplexity) are within run-to-run noise (see the LM",
         "and CNN sections). Cells that tied in a single run were repeated over 3 seeds: mean ± sample std (RTN does",
         "not depend on the seed). Values are printed at the precision `compare` printed them (perplexity: 3 decimals",
         "from commit 'compare prints perplexity to 3 decimals' on).", "",
         "| row | FP | grid | RTN | FlexRound | FlexRound - RTN | seeds |", "|---|---|---|---|---|---|---|"]
cmds, wins = [], {}
mean = statistics.mean
for row in sorted(rows, key=lambda r: (r.split("-")[0], r.split("-")[1], -int(re.search(r"-w(\d+)", r).group(1)), r)):
    grids = rows[row]
    lm = row.startswith("lm")
    best = (min if lm else max)(grids, key=lambda g: mean(grids[g][2]))
    for g in sorted(grids, key=lambda g: (g != "int", g)):
        fp, rtn, fr, dec, seeds, cmd = grids[g]
        d = mean(rtn) - mean(fr) if lm else mean(fr) - mean(rtn)
        frs = f"**{fmt(fr, dec)}**" if g == best else fmt(fr, dec)
        sd = statistics.stdev(fr) if len(fr) > 1 else 0.0
        if round(d, dec) == 0:
            verdict = f"tie at {dec} decimals"
        elif abs(d) <= sd:
            verdict = f"tie within the seed spread ({'better' if d > 0 else 'worse'} by mean)"
        else:
            verdict = "better" if d > 0 else "WORSE"
        lines.append(f"| {row} | {fp:.{dec}f} | {g} | {fmt(rtn, dec)} | {frs} | {d:+.{dec}f} {verdict} | "
                     f"{' '.join(seeds) if seeds else '1005'} |")
        cmds += [f"- {row} {g}: {c}" for c in cmd]
    wins.setdefault(int(re.search(r"-w(\d+)", row).group(1)), []).append((row, best, grids))
# Which grid wins at each width, after FlexRound (ties at the table's precision named as ties).
lines += ["", "Which grid wins after FlexRound, per width:", ""]
for bits in sorted(wins, reverse=True):
    parts, mini = [], 0
    for row, best, grids in wins[bits]:
        top = round(mean(grids[best][2]), 2)
        tied = [g for g in grids if round(mean(grids[g][2]), 2) == top]
        parts.append(f"{row}: {' = '.join(sorted(tied, key=lambda g: (g != 'int', g)))}")
        mini += "int" not in tied
    lines.append(f"- W{bits}: a minifloat alone is best in {mini} of {len(wins[bits])} rows ({'; '.join(parts)}).")
lines += ["", "Commands:", ""] + cmds + [""]
sec = os.path.join(out, "section.md")
open(sec, "w").write("\n".join(lines))
subprocess.run(["python3", "bench/update_results.py", "Integer vs minifloat grids (issue #9)", sec], check=True)
PY
