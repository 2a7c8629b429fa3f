#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for splitlearnd, build it, and then either run the
# daemon on the shipped default config ("run") or run the whole test suite ("test").
#
#   scripts/bootstrap.sh run     # install, build, make the demo shard, serve on :50051
#   scripts/bootstrap.sh test    # install, build, ctest
#
# Needs root (or sudo) for apt-get and for the default model_root under /var/lib.
set -euo pipefail

mode=${1:-}
case "$mode" in run|test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$repo/build}
jobs=${JOBS:-$(nproc)}
# ccache keys on paths relative to the repository, so another clone reuses the objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$repo} CCACHE_NOHASHDIR=true
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=(
  build-essential cmake pkg-config ccache
  libtorch-dev libopenblas0-pthread
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libssl-dev
  libyaml-cpp-dev libspdlog-dev libcli11-dev catch2 libsystemd-dev prometheus-cpp-dev zlib1g-dev
  python3-torch python3-grpcio python3-protobuf python3-numpy python3-yaml python3-setuptools
  systemd clang gnuplot-nox curl openssl
  dataset-fashion-mnist
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# libtorch picks its BLAS through alternatives; the reference BLAS is several times
# slower than OpenBLAS. Make sure the OpenBLAS one is selected.
alt=libblas.so.3-x86_64-linux-gnu
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if [ -e "$openblas" ] && ! update-alternatives --query "$alt" 2>/dev/null | grep -q "^Value: $openblas"; then
  echo "== selecting OpenBLAS for libblas.so.3"
  $sudo update-alternatives --set "$alt" "$openblas"
fi

echo "== building in $build"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$jobs"

if [ "$mode" = test ]; then
  echo "== running the test suite"
  cd "$build"
  ctest --output-on-failure -j"${TEST_JOBS:-1}" --timeout 900
  exit $?
fi

config="$repo/examples/configs/default.yaml"
model_root=$(sed -n 's/^model_root:[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$config")
shard="$model_root/demo-trunk.pt"
if [ ! -f "$shard" ]; then
  echo "== writing the demo trunk shard to $shard"
  $sudo mkdir -p "$model_root"
  $sudo "$build/daemon/splitlearnd" make-demo-shard "$shard"
fi
echo "== starting splitlearnd on $config (Ctrl-C stops it)"
echo "   try: $build/client/splitlearnctl infer --shape 1x10x768"
exec "$build/daemon/splitlearnd" --config "$config"
