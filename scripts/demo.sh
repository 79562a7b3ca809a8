#!/usr/bin/env bash
# The main job (README): set-up, build, then quantize the bundled real ResNet-20 (CIFAR-10) to W4A4 with
# round-to-nearest, AdaRound and FlexRound, and print FP vs each method on the same 8,976 held-out images.
# Iterations are cut from the papers' 20,000 per block to 500 (the quantization took 1m43s on 2 idle cores;
# docs/RESULTS.md "Main job"). RECON_ITERS overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
SHARED=${FLEXQUANT_SHARED:-../shared}
ITERS=${RECON_ITERS:-500}
./build/flexquant compare \
  --model "$SHARED/data/cifar10/resnet20.safetensors" --arch resnet_cifar --data "cifar10:$SHARED/data/cifar10" \
  --recipe recipes/rtn-w4a4.json,recipes/adaround-w4a4.json,recipes/flexround-w4a4.json \
  --set recon.iters="$ITERS" --out-dir out/demo --markdown out/demo/table.md
