#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in their own build folder and runs each one
# for a while on its seed corpus. Needs clang (Debian: clang); no libtorch is linked.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     # default: 60 seconds, all targets
#
# BUILD_DIR (default: build-fuzz in the repository) and JOBS override the defaults.
# New inputs are kept in BUILD_DIR/corpus/<target>; crashes land in BUILD_DIR/crashes.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_compute_request fuzz_config fuzz_management)
build=${BUILD_DIR:-$repo/build-fuzz}
jobs=${JOBS:-$(nproc)}
# ccache keys on paths relative to the repository, so another clone reuses the objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$repo} CCACHE_NOHASHDIR=true

CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPLITLEARND_FUZZ=ON -DSPLITLEARND_BUILD_BENCH=OFF -DSPLITLEARND_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]}"

mkdir -p "$build/crashes"
status=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  echo "== $t for ${seconds}s"
  # The seed corpus is read-only input; new findings go to the build folder's corpus.
  if ! "$build/tests/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 \
      -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$build/crashes/$t-" \
      "$corpus" "$repo/tests/fuzz/corpus/$t" 2>&1 | tail -n 25; then
    status=1
  fi
done
exit $status
