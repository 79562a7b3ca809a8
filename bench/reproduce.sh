#!/usr/bin/env bash
# Re-runs named rows of docs/RESULTS.md (bench/reproduce/rows.tsv) with the committed tree's binary and fails if
# any number differs from the expected one beyond the row's tolerance.
# Usage: bench/reproduce.sh [--build DIR] ROW...      check rows (ROW "all": every row)
#        bench/reproduce.sh --record ROW              run ROW and store its values as the expected ones
#        bench/reproduce.sh --list                    the rows, their tolerance and what they check
#        bench/reproduce.sh --results                 write the outcomes in out/reproduce/ to docs/RESULTS.md
# Each checked row leaves out/reproduce/<row>.{log,md,outcome}; exit status 1 if any row failed.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
SHARED=${FLEXQUANT_SHARED:-../shared}
ROWS=bench/reproduce/rows.tsv OUT=out/reproduce BUILD=build-bench MODE=check
mkdir -p "$OUT"
row_field() { awk -F'\t' -v r="$1" -v f="$2" '!/^#/ && $1 == r {print $f}' "$ROWS"; }
all_rows() { awk -F'\t' '!/^#/ && NF >= 4 {print $1}' "$ROWS"; }

run_row() {  # run_row ROW -> out/reproduce/ROW.md (the results table), .log, .cmd
  local row=$1 args
  args=$(row_field "$row" 4)
  [[ -n "$args" ]] || bench_die "unknown row '$row' -> rows: $(all_rows | tr '\n' ' ')"
  args=${args//\$SHARED/$SHARED}
  local cmd="$BENCH_BIN $args --markdown $OUT/$row.md"
  echo "[reproduce] $row: $cmd" >&2
  bench_run "$OUT/$row.cmd" "$OUT/$row.log" $cmd
}

# table_values MD: "label<TAB>value" for every row of a results table.
# Only the first table (the per-unit cost table that follows a blank line is timings, not results).
table_values() { awk -F'|' '/^$/ {exit} NR > 2 && NF > 3 {gsub(/^ +| +$/, "", $2); gsub(/ /, "", $3); print $2 "\t" $3}' "$1"; }

compare_row() {  # compare_row ROW -> prints and stores the outcome; returns 1 on a mismatch
  local row=$1 tol expected=bench/reproduce/$row.expected
  tol=$(row_field "$row" 2)
  [[ -f $expected ]] || bench_die "no $expected: record it first (bench/reproduce.sh --record $row)"
  python3 - "$expected" "$OUT/$row.md" "$tol" "$row" "$(cat "$OUT/$row.cmd")" > "$OUT/$row.outcome" <<'PY'
import sys
exp_path, md_path, tol, row, cmd = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [l.rstrip("\n") for l in open(exp_path)]
source = lines[0].lstrip("# ")
exp = dict(l.split("\t") for l in lines[1:] if l and not l.startswith("#"))
got = {}
for l in open(md_path).read().split("\n\n")[0].splitlines()[2:]:
    cells = [c.strip() for c in l.split("|")]
    if len(cells) > 3 and cells[1] and not cells[1].startswith("-"):
        got[cells[1]] = cells[2]
bad, parts = 0, []
for label, want in exp.items():
    have = got.get(label)
    ok = have is not None and abs(float(have) - float(want)) <= tol + 1e-9
    bad += not ok
    parts.append(f"{label} {want} -> {have if have is not None else 'missing'}{'' if ok else ' (DIFFERS)'}")
print(f"{'PASS' if not bad else 'FAIL'}\t{row}\t{source}\t{'; '.join(parts)}\t{tol}\t{cmd}")
PY
  cut -f1,2,4 "$OUT/$row.outcome" >&2
  grep -q '^PASS' "$OUT/$row.outcome"
}

record_row() {
  local row=$1
  { echo "# recorded $(cat "$OUT/$row.cmd" | cut -d'`' -f1)by bench/reproduce.sh --record $row"
    table_values "$OUT/$row.md"; } > "bench/reproduce/$row.expected"
  echo "[reproduce] wrote bench/reproduce/$row.expected" >&2
  cat "bench/reproduce/$row.expected" >&2
}

write_results() {
  local section=$OUT/section.md
  {
    echo "## Reproduction checks (bench/reproduce.sh)"
    echo
    echo "Each row re-runs a published table's command (verbatim, or shortened where the full row takes hours, against"
    echo "values recorded when that row was made) with a binary built from the committed tree, and compares every"
    echo "number with the expected one (\`bench/reproduce/rows.tsv\`, \`bench/reproduce/<row>.expected\`). Re-run one with"
    echo "\`bench/reproduce.sh ROW\`."
    echo
    echo "| outcome | row | expected from | expected -> reproduced | tolerance | run |"
    echo "|---|---|---|---|---|---|"
    for f in "$OUT"/*.outcome; do
      [[ -f $f ]] && awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$f"
    done
  } > "$section"
  python3 bench/update_results.py "Reproduction checks (bench/reproduce.sh)" "$section"
}

[[ $# -gt 0 ]] || { sed -n '2,9p' "$0"; exit 2; }
case $1 in
  --list) awk -F'\t' '!/^#/ && NF >= 4 {print $1 " (tolerance " $2 "): " $3}' "$ROWS"; exit 0 ;;
  --results) write_results; exit 0 ;;
  --record) MODE=record; shift ;;
esac
if [[ ${1:-} == --build ]]; then BUILD=$2; shift 2; fi
[[ $# -gt 0 ]] || bench_die "name at least one row (--list shows them)"
[[ $1 == all ]] && set -- $(all_rows)
for row in "$@"; do [[ -n "$(row_field "$row" 4)" ]] || bench_die "unknown row '$row' -> rows: $(all_rows | tr '\n' ' ')"; done
bench_binary "$BUILD"
failed=0
for row in "$@"; do
  run_row "$row"
  if [[ $MODE == record ]]; then record_row "$row"; else compare_row "$row" || failed=1; fi
done
exit $failed
