#!/usr/bin/env bash
# GGUF benchmark (issue #10): stories260K, the LM table's protocol (calibration 512 x 256 tokens from paragraphs
# 0-1999; evaluation paragraphs 2000-, first 60,000 tokens, windows of 512), perplexity as llama.cpp computes it
# on the exported files (flexquant eval --runtime llama.cpp), beside flexquant's own and the file sizes.
# Per type: llama.cpp's own round-to-nearest (flexquant export of the FP model, byte-identical to
# llama-quantize's reference rounding), then RTN / GPTQ / AdaRound / FlexRound learned on the type's exact grid
# (uint<b> symmetric, groups of 32, fp16 scales) and written from their codes. ffn_down rows (172) fit no 32-block:
# llama.cpp's RTN writes them f16, flexquant's quantized rows f32 (exact); the sizes column shows the cost.
# Q4_1/Q5_1 rows: the same methods on the asymmetric grid whose minimum is a half (weight.symmetric=false with fp16
# scales: value = d * code + m, m fixed at the initial MSE grid, d learned).
# "imatrix": llama.cpp's own quantizer (libggml) with importance matrices computed as its imatrix tool does (mean
# squared layer inputs over the same 512 x 256 calibration tokens), for every type.
# Usage: bench/run_gguf.sh [build-dir] [iters] [row ...]   rows: ref q4_0 q4_1 q5_0 q5_1 q8_0 imatrix (default all); "table" only
# reassembles out/bench_gguf/table.md from finished rows (rows may run as parallel processes, FLEXQUANT_ARGS="--threads 1").
# IMATRIX_TYPES="q4_1 q5_1" limits the imatrix row to those types, keeping the other types' finished lines.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
BUILD=${1:-build-bench}; ITERS=${2:-5000}; shift 2 || true
ROWS=${*:-ref q4_0 q4_1 q5_0 q5_1 q8_0 imatrix}
TYPES="q4_0 q4_1 q5_0 q5_1 q8_0"
SHARED=${FLEXQUANT_SHARED:-../shared}
OUT=out/bench_gguf; mkdir -p "$OUT"
source bench/gguf_grid.sh
R="recipes/llm-rtn-w4.json,recipes/llm-gptq-w4.json,recipes/llm-adaround-w4.json,recipes/llm-flexround-g32.json"
bench_binary "$BUILD"
T="${FLEXQUANT_ARGS:-}"

# judge ROW LABEL FILE: one table line with flexquant's and llama.cpp's perplexity of FILE and its size.
judge() {
  local row=$1 label=$2 file=$3 type=${4:-$1} fq lc
  bench_run "$OUT/$row.$type.$label.fq.cmd" "$OUT/$row.$type.$label.fq.log" $BENCH_BIN $T eval --model "$file" $DATA
  bench_run "$OUT/$row.$type.$label.lc.cmd" "$OUT/$row.$type.$label.lc.log" $BENCH_BIN $T eval --model "$file" $DATA --runtime llama.cpp
  fq=$(sed -n 's/^flexquant perplexity = //p' "$OUT/$row.$type.$label.fq.log")
  lc=$(sed -n 's/^llama.cpp perplexity = //p' "$OUT/$row.$type.$label.lc.log")
  echo "| $type | $label | $fq | $lc | $(stat -c %s "$file") |" >> "$OUT/$row.md"
}

for row in $ROWS; do
  [[ $row == table ]] && continue  # only (re)assemble the table from finished rows
  rm -f "$OUT/$row.cmd"
  [[ $row == imatrix ]] || rm -f "$OUT/$row.md"
  mkdir -p "$OUT/$row"
  if [[ $row == imatrix ]]; then  # IMATRIX_TYPES="q4_1 q5_1" redoes only those types' lines
    for t in ${IMATRIX_TYPES:-$TYPES}; do
      [[ -f "$OUT/imatrix.md" ]] && { grep -v "^| $t |" "$OUT/imatrix.md" > "$OUT/imatrix.md.tmp" || true; mv "$OUT/imatrix.md.tmp" "$OUT/imatrix.md"; }
      bench_run "$OUT/imatrix.$t.export.cmd" "$OUT/imatrix.$t.export.log" $BENCH_BIN $T export --model "$MODEL" --type $t \
        --quantizer llama.cpp --imatrix-data $SHARED/data/lm/tinystories_valid_first.txt --imatrix-samples 512 \
        --imatrix-paragraphs 2000 --out "$OUT/imatrix/$t.gguf"
      judge imatrix "llama.cpp imatrix" "$OUT/imatrix/$t.gguf" $t
    done
  elif [[ $row == ref ]]; then
    for t in f32 f16; do
      bench_run "$OUT/ref.$t.export.cmd" "$OUT/ref.$t.export.log" $BENCH_BIN export --model "$MODEL" --type $t --out "$OUT/ref/$t.gguf"
      judge ref "llama.cpp $t" "$OUT/ref/$t.gguf"
    done
  else
    [[ -n "${BITS[$row]:-}" ]] || bench_die "unknown row '$row' -> allowed: ref ${!BITS[*]}"
    bench_run "$OUT/$row.export.cmd" "$OUT/$row.export.log" $BENCH_BIN export --model "$MODEL" --type $row --out "$OUT/$row/llamacpp-rtn.gguf"
    judge $row "llama.cpp rtn" "$OUT/$row/llamacpp-rtn.gguf"
    bench_run "$OUT/$row.compare.cmd" "$OUT/$row.compare.log" $BENCH_BIN $T compare --model "$MODEL" $DATA --recipe $R \
      $(gguf_grid $row) --set recon.iters=$ITERS --out-dir "$OUT/$row" --out-format gguf
    for f in "$OUT/$row"/[0-9]-*.gguf; do
      m=$(basename "$f" .gguf); judge $row "flexquant ${m#*-}" "$f"
    done
  fi
  cat "$OUT/$row".*.cmd | sed 's/^/- /' > "$OUT/$row.cmd"
done
{
  echo "| type | method | flexquant perplexity | llama.cpp perplexity | file bytes |"
  echo "|---|---|---|---|---|"
  [[ -f "$OUT/ref.md" ]] && grep -E "^\| ref \| llama.cpp f(32|16) " "$OUT/ref.md"
  for row in $TYPES; do
    [[ -f "$OUT/$row.md" ]] && head -1 "$OUT/$row.md"
    [[ -f "$OUT/imatrix.md" ]] && grep "^| $row |" "$OUT/imatrix.md"
    [[ -f "$OUT/$row.md" ]] && tail -n +2 "$OUT/$row.md"
  done
  echo; echo "Commands (start date, provenance, command):"; echo
  for row in ref $TYPES imatrix; do [[ -f "$OUT/$row.cmd" ]] && cat "$OUT/$row.cmd"; done
  true
} > "$OUT/table.md"
cat "$OUT/table.md"
