#!/bin/sh
# Soak test by hand: tests/soak/run.sh [SECONDS] (default 600) against the daemon of
# BUILD_DIR (default: build, relative to the repository root). Extra arguments after
# SECONDS go to soak.py (e.g. --json figures.json, --keep). Needs Debian's python3-torch,
# python3-grpcio and python3-numpy, and the build's targets splitlearnd and
# splitlearnd_python_stubs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-600}
[ $# -gt 0 ] && shift
build=${BUILD_DIR:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
python=${PYTHON:-/usr/bin/python3}

bin=$build/daemon/splitlearnd
stubs=$build/python
[ -x "$bin" ] || { echo "run.sh: no $bin (build the target splitlearnd, or set BUILD_DIR)" >&2; exit 2; }
[ -f "$stubs/compute_pb2.py" ] || { echo "run.sh: no $stubs/compute_pb2.py (build splitlearnd_python_stubs)" >&2; exit 2; }

exec env PYTHONDONTWRITEBYTECODE=1 "$python" "$here/soak.py" --bin "$bin" --stubs "$stubs" --duration "$seconds" "$@"
