# Sourced by the GGUF benchmarks (run_gguf.sh, run_gguf_seeds.sh) after SHARED is set: the model, data and per-type
# grid of the GGUF table, written once so that every GGUF row runs the same settings.
MODEL=$SHARED/data/lm/stories260K.bin
DATA="--data $SHARED/data/lm/tinystories_valid_first.txt --calib-paragraphs 2000"
declare -A BITS=([q4_0]=4 [q4_1]=4 [q5_0]=5 [q5_1]=5 [q8_0]=8)
GRID="--set weight.granularity=group --set weight.group_size=32 --set weight.scale_dtype=fp16"

# gguf_grid TYPE: the flags that put a method on TYPE's exact grid (groups of 32, fp16 scales; *_0 symmetric, *_1
# with a half-precision minimum) with the table's 512 calibration sequences.
gguf_grid() {
  echo "--set weight.bits=${BITS[$1]} --set weight.symmetric=$([[ $1 == *_0 ]] && echo true || echo false) $GRID" \
       "--set calib.samples=512"
}
