#!/usr/bin/env bash
# Installs every Debian package flexquant needs. Idempotent: skips what is installed.
# Why libopenblas0-openmp: libtorch's Recommends is satisfied by the reference libblas3 (20x slower GEMM),
# and the pthread OpenBLAS fights libtorch's OpenMP pool (see docs/toolchain notes in README).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(cmake g++ make zlib1g-dev ccache libtorch-dev libopenblas0-openmp nlohmann-json3-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev dataset-fashion-mnist libonnx-dev libonnx-testdata libprotobuf-dev libstb-dev gnuplot-nox)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "[setup] all ${#PKGS[@]} packages present"
fi
# Prefer the OpenMP OpenBLAS if the pthread flavour is also installed (it would win on priority).
for lib in libblas.so.3 liblapack.so.3; do
  alt="/usr/lib/x86_64-linux-gnu/openblas-openmp/$lib"
  if [ -e "$alt" ]; then
    cur=$(update-alternatives --query "$lib-x86_64-linux-gnu" 2>/dev/null | awk '/^Value:/{print $2}')
    if [ "$cur" != "$alt" ]; then $SUDO update-alternatives --set "$lib-x86_64-linux-gnu" "$alt" >/dev/null; fi
  fi
done
# llama.cpp's prebuilt CPU libraries (node-llama-cpp, pinned in tools/llamacpp/package-lock.json): the runtime that
# checks GGUF exports in tests and benchmarks. --ignore-scripts: its postinstall would try to download GPU builds.
if ! command -v npm >/dev/null 2>&1; then
  echo "[setup] installing: nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -e tools/llamacpp/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so ]; then
  echo "[setup] npm ci in tools/llamacpp (node-llama-cpp 3.21.1, CPU only)"
  (cd tools/llamacpp && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
# ONNX Runtime's CPU library (onnxruntime-node, pinned in tools/onnxruntime/package-lock.json): checks ONNX imports
# and QDQ exports. --ignore-scripts: its install script fetches GPU binaries from a host these machines cannot reach.
if [ ! -e tools/onnxruntime/node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1 ]; then
  echo "[setup] npm ci in tools/onnxruntime (onnxruntime-node 1.30.0, CPU)"
  (cd tools/onnxruntime && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
