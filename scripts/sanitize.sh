#!/usr/bin/env bash
# Sanitizer builds of the library, CLI and test suites (issue #14). Never part of scripts/test.sh or CI: a cold
# build takes ~25 min on 2 cores and the suites run 3-20x slower.
#
#   bash scripts/sanitize.sh address,undefined   # build-asan: the fast suites under ASan+UBSan
#   bash scripts/sanitize.sh thread              # build-tsan: the threaded paths under ThreadSanitizer
#   SAN_SUITES="core models" bash scripts/sanitize.sh address,undefined
#   SAN_BUILD=build-fuzz bash scripts/sanitize.sh address,undefined   # reuse the fuzz build (also ASan+UBSan)
#
# Only flexquant's own code is instrumented; LibTorch, OpenBLAS and the system libraries are not, so a race or
# overflow inside them is not seen. Reports inside those libraries are suppressed in scripts/sanitize/*.supp
# (each entry says why); none is suppressed in flexquant code. Leak checking is off (LibTorch keeps its
# allocator caches and registries alive until exit). ThreadSanitizer sees OpenMP's synchronisation through
# LLVM's Archer tool (libarcher, OMP_TOOL_LIBRARIES); flexquant's parallel loops (at::parallel_for in our own
# translation units) run on LLVM's libomp when built with clang.
# Prints one line per suite with its wall time; exit status 1 when any suite fails or reports.
set -euo pipefail
cd "$(dirname "$0")/.."
SAN=${1:-address,undefined}
if [ "$SAN" = thread ]; then
  B=${SAN_BUILD:-build-tsan}
  SUITES=${SAN_SUITES:-core models}
else
  B=${SAN_BUILD:-build-asan}
  SUITES=${SAN_SUITES:-core models llm quant export onnx extension}
fi
JOBS=${SAN_JOBS:-2}
if [ ! -f "$B/CMakeCache.txt" ]; then
  cmake -S . -B "$B" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DFLEXQUANT_SANITIZE="$SAN" \
    -DFLEXQUANT_BUILD_BENCH=OFF >/dev/null
fi
t0=$SECONDS
# the CLI (the whole library) only for the suites that run it
cli=""
case " $SUITES " in *" cli "* | *" llm "* | *" engine "*) cli=flexquant_cli ;; esac
cmake --build "$B" -j"$JOBS" --target $cli $(for s in $SUITES; do echo "test_$s"; done)
echo "build: $((SECONDS - t0)) s"

SUPP=$(pwd)/scripts/sanitize
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:suppressions=$SUPP/asan.supp}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$SUPP/ubsan.supp}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$SUPP/tsan.supp}
if [ "$SAN" = thread ]; then
  export OMP_TOOL_LIBRARIES=${OMP_TOOL_LIBRARIES:-/usr/lib/llvm-14/lib/libarcher.so}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # more threads than cores: interleavings TSan can see
fi
bad=0
for s in $SUITES; do
  t0=$SECONDS
  if ctest --test-dir "$B" -R "^$s\$" --output-on-failure >"$B/sanitize-$s.log" 2>&1; then r=passed; else r=FAILED; bad=1; fi
  echo "$SAN $s: $r in $((SECONDS - t0)) s (log: $B/sanitize-$s.log)"
done
echo "built from $(git describe --always --dirty --abbrev=12)"
exit $bad
