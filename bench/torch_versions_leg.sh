#!/usr/bin/env bash
# One variant of bench/torch_versions.sh, run where its build lives (the host or the
# Debian 13 root):
#
#   bench/torch_versions_leg.sh BUILD LABEL MODEL [optimize]
#
# In-process at batch 1 and 8 (bench/inprocess), then splitlearnd serving MODEL alone
# (batching up to 8 rows, max_delay_us 2000, BLAS on every core) under bench/loadgen at 1
# and 8 in flight. Appends to $WORK/inprocess.csv and $WORK/loadgen.csv.
set -euo pipefail
BUILD="$1" LABEL="$2" MODEL="$3" OPT="${4:-}"
: "${WORK:?}" "${DURATION_S:?}" "${INPROC_S:?}" "${SHAPE:?}"

flags=()
[[ "$OPT" == optimize ]] && flags=(--optimize --prepack-linear)
timeout 600 "$BUILD/bench/inprocess" --model "$MODEL" --shape "$SHAPE" --batch 1 8 --duration-s "$INPROC_S" \
  --blas-threads 0 "${flags[@]}" --csv "$WORK/inprocess.csv" --label "$LABEL" | sed 's/^/    /'

dir="$WORK/$LABEL"
mkdir -p "$dir"
extra=""
[[ "$OPT" == optimize ]] && extra=', "optimize": true, "prepack_linear": true'
cat >"$dir/splitlearnd.yaml" <<EOF
{"server": {"listen": "127.0.0.1:0", "watch_config": false, "log_level": "info"},
 "model_root": "$dir",
 "devices": {"cpu": {"intra_op_threads": 1}},
 "models": [{"id": "trunk", "path": "$MODEL", "device": "cpu", "default": true$extra,
             "warmup": {"inputs": [{"shape": [1, 10, 768]}]},
             "batching": {"max_batch_size": 8, "max_delay_us": 2000}}]}
EOF
"$BUILD/daemon/splitlearnd" --config "$dir/splitlearnd.yaml" --log-format text >"$dir/daemon.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
  grep -q "ready:" "$dir/daemon.log" && break
  kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/daemon.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "ready: 1 model" "$dir/daemon.log" || { echo "the daemon did not get ready" >&2; tail -20 "$dir/daemon.log" >&2; exit 1; }
addr="$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$dir/daemon.log" | head -1 | awk '{print $3}')"
for c in 1 8; do
  timeout $(( ${DURATION_S%.*} + 120 )) "$BUILD/bench/loadgen" --target "$addr" --shape "$SHAPE" --concurrency "$c" \
    --duration-s "$DURATION_S" --warmup-s 2 --csv "$WORK/loadgen.csv" --label "$LABEL" | sed 's/^/    /'
done
