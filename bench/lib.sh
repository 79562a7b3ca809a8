# Sourced by the benchmark scripts. Published numbers must come from the committed tree, by construction:
# bench_binary refuses a dirty checkout, builds it, checks that the binary says it was built from that exact
# commit, and freezes a copy under out/bench-bin/<commit>/ so that later rebuilds cannot change a running
# benchmark. BENCH_PROVENANCE then names the commit and the binary's hash for every table's command line.
# BENCH_ALLOW_DIRTY=1 lets exploratory runs through; their provenance then says "-dirty", visibly.

bench_die() { echo "bench: $*" >&2; exit 2; }

# bench_binary BUILD_DIR [TARGET]: builds TARGET (default flexquant_cli, the `flexquant` program) and sets
# BENCH_BIN (its frozen copy) and BENCH_PROVENANCE.
bench_binary() {
  local build=$1 target=${2:-flexquant_cli} exe=${2:-flexquant}
  if [[ -n "$(git status --porcelain)" && "${BENCH_ALLOW_DIRTY:-0}" != 1 ]]; then
    git status --short >&2
    bench_die "the checkout has uncommitted or untracked changes (above): a published number must come from a" \
              "committed tree. Commit first (or BENCH_ALLOW_DIRTY=1 for a run you will not publish)."
  fi
  local want; want=$(git describe --always --dirty --abbrev=12)
  mkdir -p "$build"
  # flock: rows of one benchmark may be started as parallel processes on the same build directory.
  flock "$build/.bench-lock" sh -c 'cmake -S . -B "$1" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build "$1" -j"$(nproc)" --target "$2" fq_build_info >/dev/null' sh "$build" "$target"
  # The program itself reports its tree (flexquant --version); others are checked through the generated file.
  local got; got=$(sed -n 's/.*return "\(.*\)";.*/\1/p' "$build/generated/build_info.cpp")
  [[ "$got" == "$want" ]] || bench_die "$build was built from '$got', the checkout is '$want'"
  if [[ $exe == flexquant ]]; then
    got=$("$build/flexquant" --version | sed -n 's/.*(built from \(.*\))$/\1/p')
    [[ "$got" == "$want" ]] || bench_die "$build/flexquant says it was built from '$got', the checkout is '$want'"
  fi
  local dir=out/bench-bin/$want
  mkdir -p "$dir"
  cp "$build/$exe" "$dir/$exe.tmp" && mv "$dir/$exe.tmp" "$dir/$exe"
  BENCH_BIN=$dir/$exe
  local sha; sha=$(sha256sum "$BENCH_BIN" | cut -c1-16)
  BENCH_PROVENANCE="built from commit $want ($exe sha256 $sha...)"
}

# bench_run CMDFILE LOG CMD...: runs CMD (output to LOG) and only then writes CMDFILE: the start date, the
# provenance and CMD verbatim. Written after the run and checked against the commit the program printed in its
# own log, so a table line can only describe the run that produced the table beside it.
bench_run() {
  local cmdfile=$1 log=$2; shift 2
  local start; start=$(date -u '+%F %H:%M UTC')
  rm -f "$cmdfile"
  "$@" > "$log" 2>&1 || { tail -5 "$log" >&2; bench_die "failed: $* (log: $log)"; }
  local commit=${BENCH_PROVENANCE#built from commit }; commit=${commit%% *}
  if grep -q '^flexquant:' "$log" && ! grep -q "^flexquant: .* built from $commit," "$log"; then
    bench_die "$log names another build than $commit: $(grep -m1 '^flexquant:' "$log")"
  fi
  echo "$start, $BENCH_PROVENANCE: \`$*\`" > "$cmdfile"
}

# bench_subsection TITLE PARENT STEM: replaces "### TITLE" under "## PARENT" in docs/RESULTS.md with the run in
# STEM.{cmd,md,log} (its command line, its table and its total-time line). Nothing if the run is incomplete.
bench_subsection() {
  local title=$1 parent=$2 stem=$3
  [[ -f "$stem.md" && -f "$stem.cmd" ]] || return 0
  {
    echo "### $title"; echo
    echo "Run $(cat "$stem.cmd")"; echo
    cat "$stem.md"
    grep -E "^total time" "$stem.log" | sed 's/^/\n/' || true
  } > "$stem.section.md"
  python3 bench/update_results.py "$title" "$stem.section.md" --under "$parent"
}
