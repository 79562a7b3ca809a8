#!/usr/bin/env bash
# Installs every Debian package flexquant needs. Idempotent: skips what is installed.
# Why libopenblas0-openmp: libtorch's Recommends is satisfied by the reference libblas3 (20x slower GEMM),
# and the pthread OpenBLAS fights libtorch's OpenMP pool (see docs/toolchain notes in README).
set -euo pipefail
PKGS=(cmake g++ make zlib1g-dev ccache libtorch-dev libopenblas0-openmp nlohmann-json3-dev libcli11-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev dataset-fashion-mnist)
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
