#!/usr/bin/env bash
# Sanitizer runs of the test suite, each in a build folder of its own.
#
#   tests/sanitizers/run.sh address   # ASan+UBSan: everything built instrumented, then the
#                                     # whole test suite (C++, Python, real daemon)
#   tests/sanitizers/run.sh thread    # TSan: the parts that need no libtorch (config,
#                                     # device queue, model manager, codec, gRPC server
#                                     # with fake models)
#
# BUILD_DIR (default: build-asan / build-tsan in the repository) and JOBS override the
# defaults. Debian's libtorch, gRPC and protobuf are not instrumented; lsan.supp lists
# the few one-time allocations of theirs that LeakSanitizer reports.
set -euo pipefail

# ccache keys on paths relative to the repository, so another clone reuses the objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(cd "$(dirname "$0")/../.." && pwd)} CCACHE_NOHASHDIR=true

mode=${1:-}
repo=$(cd "$(dirname "$0")/../.." && pwd)
jobs=${JOBS:-$(nproc)}
here="$repo/tests/sanitizers"

case "$mode" in
  address)
    build=${BUILD_DIR:-$repo/build-asan}
    targets=(all)
    tests='.'
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=0"
    export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    ;;
  thread)
    build=${BUILD_DIR:-$repo/build-tsan}
    targets=(config_test device_queue_test model_manager_test codec_test server_test packed_gemm_test)
    tests='^(config|device_queue|model_manager|codec|server|packed_gemm):'
    # (the 32-client server case takes about 4 minutes under TSan; its ctest timeout
    # is raised for this build in tests/daemon/CMakeLists.txt)
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$here/tsan.supp"
    ;;
  *) echo "usage: $0 address|thread" >&2; exit 2 ;;
esac

echo "== $mode sanitizer build in $build"
cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPLITLEARND_SANITIZE="$mode" \
  -DSPLITLEARND_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]}"
echo "== $mode sanitizer tests"
cd "$build"
ctest --output-on-failure --no-tests=error -j"${TEST_JOBS:-1}" --timeout 900 -R "$tests"
