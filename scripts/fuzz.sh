#!/usr/bin/env bash
# Fuzzes every file reader with libFuzzer (issue #14): builds fuzz/fuzz_<target>.cpp in build-fuzz (clang,
# ASan+UBSan, -DFLEXQUANT_FUZZ=ON), writes seed corpora from the real files in ../shared (large ones are cut to
# -max_len by libFuzzer; small valid ones come from make_fuzz_seeds), then runs each target for a fixed budget and
# prints one table row per target. Not part of scripts/test.sh or CI.
#
#   bash scripts/fuzz.sh                          # every target: 1,000,000 executions or 300 s, whichever first
#   RUNS=20000 MAX_TIME=60 bash scripts/fuzz.sh gguf onnx
#   build-fuzz/fuzz_gguf build-fuzz/fuzz-findings/gguf/crash-...   # replay one finding
#
# Environment: RUNS, MAX_TIME (seconds per target), FUZZ_JOBS (targets at once, default 2), FUZZ_BUILD (build-fuzz),
# FLEXQUANT_SHARED (../shared), FMNIST (/usr/share/datasets/fashion-mnist). Every run starts from the seeds alone
# (the corpus a previous run grew is deleted) so that its numbers do not depend on earlier runs.
# Exit status 1 when any target has a finding (crash, timeout, out-of-memory); its input is in
# <build>/fuzz-findings/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${FUZZ_BUILD:-build-fuzz}
RUNS=${RUNS:-1000000}
MAX_TIME=${MAX_TIME:-300}
JOBS=${FUZZ_JOBS:-2}
SHARED=$(realpath "${FLEXQUANT_SHARED:-../shared}")
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
ALL=(safetensors llama2c tokenizer tokenizer_json sentencepiece llama_hf gguf onnx cifar10 idx image npy recipe recipe_set fqz)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${ALL[@]}")

# Largest input per target: above its valid seeds, small enough for ~10^4 executions per second.
# Largest input per target: above its small valid seeds (the real files beyond it are cut), small enough for
# thousands of executions per second (cost grows with the input: every input is written and parsed whole).
declare -A MAX_LEN=([safetensors]=16384 [llama2c]=8192 [tokenizer]=8192 [tokenizer_json]=32768 [sentencepiece]=8192 [llama_hf]=16384 [gguf]=24576
  [onnx]=16384 [cifar10]=12800 [idx]=4096 [image]=8192 [npy]=16384 [recipe]=4096 [recipe_set]=4096 [fqz]=262144)

if [ ! -f "$B/CMakeCache.txt" ]; then
  cmake -S . -B "$B" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DFLEXQUANT_FUZZ=ON \
    -DFLEXQUANT_SANITIZE=address,undefined -DFLEXQUANT_BUILD_BENCH=OFF >/dev/null
fi
cmake --build "$B" -j"$JOBS" --target make_fuzz_seeds flexquant_cli $(printf 'fuzz_%s ' "${targets[@]}") >"$B/fuzz-build.log" ||
  { tail -30 "$B/fuzz-build.log"; exit 2; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export FLEXQUANT_SHARED=$SHARED

# ---------------------------------------------------------------- seeds (written once; rm -rf <build>/fuzz-seeds to redo)
S=$B/fuzz-seeds
if [ ! -f "$S/.done" ]; then
  rm -rf "$S"
  "$B/make_fuzz_seeds" "$S" "$SHARED/data" "$FMNIST"
  mkdir -p "$S"/{safetensors,tokenizer,tokenizer_json,sentencepiece,onnx,recipe,recipe_set,fqz}
  cp "$SHARED/data/cifar10/resnet20.safetensors" "$S/safetensors/"
  cp "$SHARED/data/lm/stories260K.bin" "$S/llama2c/"
  cp "$SHARED/data/lm/tok512.bin" "$S/tokenizer/"
  cp "$SHARED/data/lm/tok512.model" "$S/sentencepiece/"
  # tok512 as tokenizer.json, as `convert` writes it beside an HF folder
  "$B/flexquant" convert --model "$SHARED/data/lm/stories260K.bin" --out "$S/hf-stories" >/dev/null
  cp "$S/hf-stories/tokenizer.json" "$S/tokenizer_json/tok512.json" && rm -rf "$S/hf-stories"
  cp "$SHARED/data/cifar10/resnet20.onnx" "$S/onnx/"
  # the ONNX project's backend node tests: one small real model per op and variant
  for m in /usr/share/libonnx-testdata/data/node/*/model.onnx; do
    [ "$(stat -c %s "$m")" -le 4096 ] && cp "$m" "$S/onnx/$(basename "$(dirname "$m")").onnx"
  done
  cp recipes/*.json "$S/recipe/"
  # --set lines: every key of each resolved recipe, as the CLI takes them
  for r in recipes/*.json; do
    "$B/flexquant" recipe --recipe "$r" | python3 -c '
import json, sys
def flat(j, p=""):
    for k, v in j.items():
        if isinstance(v, dict): yield from flat(v, p + k + ".")
        else: yield p + k, v
for k, v in flat(json.load(sys.stdin)):
    print(f"{k}={str(v).lower() if isinstance(v, bool) else v}")' > "$S/recipe_set/$(basename "$r" .json).txt"
  done
  # a real .fqz: ResNet-20 RTN W4A4 (64 calibration images)
  "$B/flexquant" quantize --model "$SHARED/data/cifar10/resnet20.safetensors" --arch resnet_cifar \
    --data "cifar10:$SHARED/data/cifar10" --recipe recipes/rtn-w4a4.json --set calib.samples=64 \
    --out "$S/fqz/resnet20-rtn-w4a4.fqz" >/dev/null 2>&1
  touch "$S/.done"
fi

# ---------------------------------------------------------------- runs
run_one() {
  local t=$1 corpus=$B/fuzz-corpus/$1 findings=$B/fuzz-findings/$1 log=$B/fuzz-logs/$1.log
  rm -rf "$corpus" "$findings"
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  local t0=$SECONDS rc=0
  "$B/fuzz_$t" -runs="$RUNS" -max_total_time="$MAX_TIME" -max_len="${MAX_LEN[$t]}" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$findings/" \
    "$corpus" "$S/$t" >"$log" 2>&1 || rc=$?
  echo "$t $rc $((SECONDS - t0))" >"$log.status"
}
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

# ---------------------------------------------------------------- table
stat() { grep -m1 "^stat::$2:" "$1" | awk '{print $2}'; }
count() { find "$B/fuzz-findings/$1" -name "$2-*" | wc -l; }
echo
echo "| target | executions | exec/s | seconds | crashes | timeouts | OOMs | corpus units added | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
bad=0
for t in "${targets[@]}"; do
  log=$B/fuzz-logs/$t.log
  read -r _ rc secs <"$log.status"
  execs=$(stat "$log" number_of_executed_units); eps=$(stat "$log" average_exec_per_sec)
  c=$(count "$t" crash); to=$(count "$t" timeout); oom=$(count "$t" oom)
  [ $((c + to + oom)) -gt 0 ] || [ "$rc" != 0 ] && bad=1
  echo "| $t | ${execs:-?} | ${eps:-?} | $secs | $c | $to | $oom | $(stat "$log" new_units_added) | $(stat "$log" peak_rss_mb) |"
done
echo
echo "built from $(git describe --always --dirty --abbrev=12); logs in $B/fuzz-logs, findings in $B/fuzz-findings"
exit $bad
