#!/usr/bin/env bash
# Side-by-side benchmark of splitlearnd against the in-process limit, the transport
# limit (echo) and the Python reference server; writes docs/benchmarks.md and the
# plots in docs/benchmarks/. See docs/benchmarks.md for what each number means.
#
#   bench/run.sh [BUILD_DIR]        # BUILD_DIR default: <repo>/build
#   QUICK=1 bench/run.sh [BUILD_DIR]  # short points (~9 min), for a smoke test
#
# Environment: QUICK=1, WAIT_QUIET=N (wait up to N minutes for load average < 1
# before starting), CLIENT_CPUS (CPU list for the load generator, e.g. "0",
# with the daemon's CPU layout to match; default: unpinned), DURATION_S / WARMUP_S (seconds per load point),
# MEM_REQUESTS (requests between the two RSS readings), WORK (scratch folder; default
# a fresh mktemp folder), OUT_DOC (default <repo>/docs/benchmarks.md).
#
# Every server runs on 127.0.0.1 on a free port, is started by this script and
# stopped by its own PID; every wait and every load point is bounded in time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-${BUILD_DIR:-$REPO/build}}"
BUILD="$(cd "$BUILD" && pwd)"
QUICK="${QUICK:-0}"
if [[ "$QUICK" == 1 ]]; then
  DURATION_S="${DURATION_S:-3}"; WARMUP_S="${WARMUP_S:-1}"; MEM_REQUESTS="${MEM_REQUESTS:-10000}"
  INPROC_S="${INPROC_S:-1.5}"; CONC_TINY="1 8"; CONC_TRUNK="1 8"
else
  DURATION_S="${DURATION_S:-10}"; WARMUP_S="${WARMUP_S:-2}"; MEM_REQUESTS="${MEM_REQUESTS:-100000}"
  INPROC_S="${INPROC_S:-4}"; CONC_TINY="1 2 4 8 16"; CONC_TRUNK="1 2 4 8"
fi
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/splitlearnd-bench.XXXXXX")}"
mkdir -p "$WORK"
OUT_DOC="${OUT_DOC:-$REPO/docs/benchmarks.md}"
PLOTS="$(dirname "$OUT_DOC")/benchmarks"
PY=/usr/bin/python3
NPROC="$(nproc)"
# CLIENT_CPUS=0: the load generator runs on CPU 0 only (every server alike), and the
# daemon's main configs keep their own threads there too, leaving the other CPUs to the
# device worker (the layout docs/threading.md measures). Unset: everything anywhere.
CLIENT_CPUS="${CLIENT_CPUS:-}"
[[ "$NPROC" -ge 2 ]] || CLIENT_CPUS=""
ALL_CPUS="0-$(( NPROC - 1 ))"

SPLITLEARND="$BUILD/daemon/splitlearnd"
LOADGEN="$BUILD/bench/loadgen"
ECHO_BIN="$BUILD/bench/echo"
INPROC="$BUILD/bench/inprocess"
STUBS="$BUILD/python"
for f in "$SPLITLEARND" "$LOADGEN" "$ECHO_BIN" "$INPROC" "$STUBS/compute_pb2.py" "$STUBS/compute_pb2_grpc.py"; do
  [[ -e "$f" ]] || { echo "run.sh: missing $f (build first: cmake --build $BUILD)" >&2; exit 1; }
done

LOADGEN_CSV="$WORK/loadgen.csv"; INPROC_CSV="$WORK/inprocess.csv"
SERVER_CSV="$WORK/server.csv"; MEM_CSV="$WORK/memory.csv"; CMDS="$WORK/commands.txt"
rm -f "$LOADGEN_CSV" "$INPROC_CSV" "$SERVER_CSV" "$MEM_CSV" "$CMDS"
echo "label,model,shape,concurrency,server_cpu_s,rss_kb,loadavg_before,loadavg_after,jobs_run,batches_run" >"$SERVER_CSV"
echo "stage,rss_kb,requests_total" >"$MEM_CSV"
CLK_TCK="$(getconf CLK_TCK)"
T_START=$(date +%s)

log() { printf '[%4ds] %s\n' "$(( $(date +%s) - T_START ))" "$*"; }
# Records a command for the report, with this machine's folders shown as variables.
record() {
  local line="$*"
  line="${line//$WORK/\$WORK}"; line="${line//$BUILD/\$BUILD}"; line="${line//$REPO/.}"
  echo "$line" >>"$CMDS"
}

# ------------------------------------------------------------------ servers
SERVER_PID=""; SERVER_ADDR=""; SERVER_LABEL=""
ALL_PIDS=()

stop_pid() {  # stop one process we started, by its PID; bounded
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: PID $pid ignored SIGTERM for 20 s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${ALL_PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for LOGFILE PATTERN SECONDS: waits until the log has a line matching PATTERN.
wait_for() {
  local logf="$1" pat="$2" secs="$3" i
  for i in $(seq 1 $(( secs * 10 ))); do
    grep -qE "$pat" "$logf" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "run.sh: server exited; log:" >&2; tail -20 "$logf" >&2; return 1; }
    sleep 0.1
  done
  echo "run.sh: timed out waiting for '$pat' in $logf" >&2; tail -20 "$logf" >&2; return 1
}

start_server() {  # start_server LABEL COMMAND...; sets SERVER_PID / SERVER_ADDR
  SERVER_LABEL="$1"; shift
  local logf="$WORK/$SERVER_LABEL.log"
  record "$*  &"
  "$@" >"$logf" 2>&1 &
  SERVER_PID=$!
  ALL_PIDS+=("$SERVER_PID")
  case "$SERVER_LABEL" in
    splitlearnd*) wait_for "$logf" "ready:" 180
                  SERVER_ADDR="$(grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$logf" | head -1 | awk '{print $3}')" ;;
    *)            wait_for "$logf" "^listening on " 120
                  SERVER_ADDR="$(grep -oE '^listening on 127\.0\.0\.1:[0-9]+' "$logf" | head -1 | awk '{print $3}')" ;;
  esac
  [[ -n "$SERVER_ADDR" ]] || { echo "run.sh: no address in $logf" >&2; exit 1; }
  log "$SERVER_LABEL up at $SERVER_ADDR (PID $SERVER_PID, RSS $(rss_kb) kB)"
}

stop_server() {
  stop_pid "$SERVER_PID"
  local keep=() p
  for p in "${ALL_PIDS[@]}"; do [[ "$p" == "$SERVER_PID" ]] || keep+=("$p"); done
  ALL_PIDS=("${keep[@]+"${keep[@]}"}")
  log "$SERVER_LABEL stopped"
  SERVER_PID=""
}

# The load generator's command prefix: pinned to CLIENT_CPUS when set.
CLIENT=("$LOADGEN")
[[ -z "$CLIENT_CPUS" ]] || CLIENT=(taskset -c "$CLIENT_CPUS" "$LOADGEN")

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status"; }
cpu_s() {  # user+system CPU seconds of the server so far
  awk -v t="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / t }' "/proc/$SERVER_PID/stat"
}

# "requests_run batches_run" of the daemon's cpu device (empty for other servers).
device_counters() {
  [[ "$SERVER_LABEL" == splitlearnd* ]] || return 0
  timeout 30 "$LOADGEN" --target "$SERVER_ADDR" --service-info 2>/dev/null |
    awk -F= '/^device\.cpu\.requests_run=/ {r = $2} /^device\.cpu\.batches_run=/ {b = $2} END {if (r != "") print r, b}'
}

# point MODEL SHAPE CONCURRENCY [extra loadgen args]: one load point against the
# running server, recorded under SERVER_LABEL.
point() {
  local model="$1" shape="$2" conc="$3"; shift 3
  local c0 c1 bound l0 b0 b1
  l0="$(cut -d' ' -f1 /proc/loadavg)"
  b0="$(device_counters)"
  bound=$(awk -v d="$DURATION_S" -v w="$WARMUP_S" 'BEGIN { printf "%d", d + w + 120 }')
  c0="$(cpu_s)"
  local cmd=("${CLIENT[@]}" --target "$SERVER_ADDR")
  [[ -z "$model" ]] || cmd+=(--model "$model")
  cmd+=(--shape "$shape" --concurrency "$conc" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S"
        --csv "$LOADGEN_CSV" --label "$SERVER_LABEL" "$@")
  record "${cmd[*]}"
  timeout "$bound" "${cmd[@]}" | sed 's/^/    /' || log "loadgen reported errors (see the CSV)"
  c1="$(cpu_s)"
  b1="$(device_counters)"
  echo "$SERVER_LABEL,$model,$shape,$conc,$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }'),$(rss_kb),$l0,$(cut -d' ' -f1 /proc/loadavg),$(
    awk -v a="$b0" -v b="$b1" 'BEGIN { split(a, x, " "); split(b, y, " "); if (x[1] == "" || y[1] == "") print ","; else print y[1] - x[1] "," y[2] - x[2] }')" >>"$SERVER_CSV"
}

# ------------------------------------------------------------------ shards and configs
log "work folder $WORK, build $BUILD, QUICK=$QUICK, ${DURATION_S}s per point"
for spec in "tiny --kind tiny" "trunk --kind transformer --layers 4 --hidden 768 --heads 12 --ffn 3072" \
            "identity --kind identity"; do
  set -- $spec
  name="$1"; shift
  record "$SPLITLEARND make-demo-shard $WORK/$name.pt $*"
  "$SPLITLEARND" make-demo-shard "$WORK/$name.pt" "$@" >/dev/null
done
log "shards written: $(cd "$WORK" && ls -s --block-size=K ./*.pt | tr '\n' ' ')"

# write_config FILE INTRA BLAS MODELS...: a daemon config on 127.0.0.1:0.
write_config() {
  local file="$1" intra="$2" blas="$3"; shift 3
  {
    cat <<EOF
server:
  listen: "127.0.0.1:0"
  max_message_bytes: 268435456
  drain_timeout_s: 5
  watch_config: false
  log_level: info${SERVER_CPUS:+
  cpus: "$SERVER_CPUS"}
model_root: .
devices:
  cpu: {intra_op_threads: $intra, blas_threads: $blas, queue_capacity: 1024, idle_spin_us: ${SPIN:-0}${DEVICE_CPUS:+, cpus: "$DEVICE_CPUS"}}
models:
EOF
    local m first=true
    for m in "$@"; do
      local id path batch delay
      IFS=: read -r id path batch delay blas prepack <<<"$m"
      echo "  - id: $id"
      echo "    path: $path.pt"
      $first && echo "    default: true"
      first=false
      echo "    warmup: {inputs: [{shape: [1, 10, 768], dtype: float32}], runs: 3}"
      echo "    batching: {max_batch_size: $batch, max_delay_us: ${delay:-0}}"
      echo "    optimize: true"
      [[ -z "$blas" ]] || echo "    blas_threads: $blas"
      [[ -z "$prepack" ]] || echo "    prepack_linear: true"
    done
  } >"$file"
}
# id:file:max_batch_size[:max_delay_us[:blas_threads[:prepack]]]. Both shards have their
# Linear weights prepacked (models[].prepack_linear: they serve a few rows per forward,
# docs/configuration.md); the tiny shard runs on one thread (models[].blas_threads: 1),
# the trunk on the device's BLAS thread count, which its packed layers use too. The
# thread-settings configs (t1-plain, t2-t4) leave every model on the device's setting.
ALL_MODELS=(tiny:tiny:8:0:1:prepack trunk:trunk:8:0::prepack trunk-nobatch:trunk:1:0::prepack
            trunk-wait:trunk:8:5000::prepack identity:identity:8)
PLAIN_MODELS=(tiny:tiny:8 trunk:trunk:8 trunk-nobatch:trunk:1 trunk-wait:trunk:8:5000 identity:identity:8)
# With CLIENT_CPUS, the main configs get a CPU layout: the daemon's own threads (gRPC,
# loader, housekeeping) on the client's CPUs (server.cpus), the device worker and
# OpenBLAS's helpers free to use every CPU (devices.cpu.cpus), so that the scheduler
# keeps the worker where the network is not; t1-open.yaml is t1 without it.
layout() {  # layout COMMAND...: runs write_config with the main layout's CPU lists
  if [[ -n "$CLIENT_CPUS" ]]; then SERVER_CPUS="$CLIENT_CPUS" DEVICE_CPUS="$ALL_CPUS" "$@"; else "$@"; fi
}
layout write_config "$WORK/t1.yaml" 1 "$NPROC" "${ALL_MODELS[@]}"
layout write_config "$WORK/t1-plain.yaml" 1 "$NPROC" "${PLAIN_MODELS[@]}"
layout write_config "$WORK/t2.yaml" 2 "$NPROC" "${PLAIN_MODELS[@]}"
layout write_config "$WORK/t3.yaml" 1 1 "${PLAIN_MODELS[@]}"
# t1 without CPU lists: every thread of the daemon anywhere.
write_config "$WORK/t1-open.yaml" 1 "$NPROC" "${ALL_MODELS[@]}"
# Pinned: the daemon's own threads (gRPC) on CPU 0, the device worker and OpenBLAS on
# the others (devices.cpu.cpus, server.cpus).
PIN_DEV="1"; [[ "$NPROC" -gt 2 ]] && PIN_DEV="1-$(( NPROC - 1 ))"
PIN_BLAS=$(( NPROC > 1 ? NPROC - 1 : 1 ))
[[ "$NPROC" -ge 2 ]] && SERVER_CPUS=0 DEVICE_CPUS="$PIN_DEV" write_config "$WORK/t4.yaml" 1 "$PIN_BLAS" "${PLAIN_MODELS[@]}"
layout write_config "$WORK/mem.yaml" 1 "$NPROC" trunk:trunk:8 tiny:tiny:8:0:1

# ------------------------------------------------------------------ machine
# WAIT_QUIET=N: wait up to N minutes for the 1-minute load average to fall below 1
# (the machine is shared; other work skews every number).
if [[ "${WAIT_QUIET:-0}" -gt 0 ]]; then
  log "waiting up to $WAIT_QUIET min for a quiet machine (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for _ in $(seq 1 $(( WAIT_QUIET * 6 ))); do
    awk '{ exit !($1 < 1.0) }' /proc/loadavg && break
    sleep 10
  done
  log "load average now $(cut -d' ' -f1-3 /proc/loadavg)"
fi
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(lscpu | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2}'), $NPROC logical CPUs ($(lscpu | awk -F: '/^Thread\(s\) per core/ {gsub(/ /, "", $2); print $2}') thread(s) per core), L2 $(lscpu | awk -F: '/^L2 cache/ {gsub(/^ +/, "", $2); print $2}'), L3 $(lscpu | awk -F: '/^L3 cache/ {gsub(/^ +/, "", $2); print $2}')"
  echo "hypervisor: $(lscpu | awk -F: '/^Hypervisor vendor/ {gsub(/^ +/, "", $2); print $2}')"
  echo "memory: $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
  echo "kernel: $(uname -sr)"
  echo "nproc: $NPROC"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "blas alternative: $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || echo unknown)"
  echo "python: $($PY -c 'import sys, torch, grpc, numpy; print(sys.version.split()[0], "torch", torch.__version__, "grpcio", grpc.__version__, "numpy", numpy.__version__)')"
  echo "gcc: $(${CXX:-c++} --version | head -1)"
  echo "splitlearnd binary: built $(date -u -r "$SPLITLEARND" '+%Y-%m-%d %H:%M UTC'); last commit touching daemon/manager/config/proto/common: $(
    TZ=UTC git -C "$REPO" log -1 --format='%h %cd' --date=format-local:'%Y-%m-%d %H:%M UTC' -- daemon manager config proto common 2>/dev/null || echo unknown)"
  echo "splitlearnd: commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    [[ -n "$(git -C "$REPO" status --porcelain -- daemon manager config proto common 2>/dev/null)" ]] &&
    echo " with uncommitted changes in daemon/manager/config/proto/common"), build type $(
    awk -F= '/^CMAKE_BUILD_TYPE:/ {print $2}' "$BUILD/CMakeCache.txt" 2>/dev/null)"
} >"$WORK/machine.txt"

# ------------------------------------------------------------------ in-process limit
# inprocess INTRA BLAS [LABEL [CPUS]]: the compute limit, timed right before the daemon
# runs with the same thread settings (the machine is shared; adjacent runs see similar
# load); with CPUS, on those CPUs only (taskset), as a pinned device worker.
inprocess() {
  log "in-process forward (the compute limit), intra-op $1, BLAS $2${4:+, CPUs $4}"
  local m cmd
  for m in tiny trunk; do
    cmd=()
    [[ -z "${4:-}" ]] || cmd=(taskset -c "$4")
    cmd+=("$INPROC" --model "$WORK/$m.pt" --shape 1x10x768 --batch 1 8 --duration-s "$INPROC_S"
         --intra-op-threads "$1" --blas-threads "$2" --optimize --csv "$INPROC_CSV" --label "${3:-intra$1-blas$2}")
    record "${cmd[*]}"
    timeout 300 "${cmd[@]}" | sed 's/^/    /'
  done
}

# ------------------------------------------------------------------ echo: transport limit
log "echo server (the transport limit)"
start_server echo "$ECHO_BIN" --listen 127.0.0.1:0
for c in $CONC_TINY; do point "" 1x10x768 "$c"; done
point "" 8x1024x1024 1
stop_server

# ------------------------------------------------------------------ splitlearnd
inprocess 1 "$NPROC"
log "splitlearnd, intra-op 1, BLAS $NPROC (the documented default)"
start_server splitlearnd "$SPLITLEARND" --config "$WORK/t1.yaml" --log-format text
loadgen_info() { timeout 30 "$LOADGEN" --target "$SERVER_ADDR" --service-info; }
loadgen_info >"$WORK/splitlearnd-info.txt"
point identity 1x10x768 1
for c in $CONC_TINY; do point tiny 1x10x768 "$c"; done
point trunk 1x10x768 1
for c in $CONC_TRUNK; do [[ "$c" == 1 ]] || point trunk 1x10x768 "$c"; done
point trunk-nobatch 1x10x768 8
point trunk-wait 1x10x768 8
point identity 8x1024x1024 1
loadgen_info >"$WORK/splitlearnd-info-end.txt"
stop_server

settings=("1 $NPROC t1-plain plain")
[[ -z "$CLIENT_CPUS" ]] || settings+=("1 $NPROC t1-open open")
settings+=("2 $NPROC t2" "1 1 t3")
[[ "$NPROC" -ge 2 ]] && settings+=("1 $PIN_BLAS t4 pinned $PIN_DEV")
for t in "${settings[@]}"; do
  set -- $t
  inprocess "$1" "$2" "${4:-}" "${5:-}"
  log "splitlearnd, intra-op $1, BLAS $2${4:+, $4}"
  start_server "splitlearnd-${4:-intra$1-blas$2}" "$SPLITLEARND" --config "$WORK/$3.yaml" --log-format text
  point tiny 1x10x768 1
  point tiny 1x10x768 8
  point trunk 1x10x768 1
  point trunk 1x10x768 8
  stop_server
done

# ------------------------------------------------------------------ reference (Python)
log "reference server (Python, grpc.aio + one-thread executor, torch's default threads)"
start_server reference "$PY" "$REPO/bench/reference_server.py" --stubs "$STUBS" \
  --model "tiny=$WORK/tiny.pt" --model "trunk=$WORK/trunk.pt" --model "identity=$WORK/identity.pt"
for c in $CONC_TINY; do point tiny 1x10x768 "$c"; done
for c in $CONC_TRUNK; do point trunk 1x10x768 "$c"; done
point identity 8x1024x1024 1
stop_server
# The same server tuned by hand (one intra-op thread): what a user who knew about the
# two thread pools could get from the old design.
log "reference server, tuned: torch.set_num_threads(1)"
start_server reference-1t "$PY" "$REPO/bench/reference_server.py" --stubs "$STUBS" --threads 1 \
  --model "tiny=$WORK/tiny.pt" --model "trunk=$WORK/trunk.pt"
point tiny 1x10x768 1
point tiny 1x10x768 8
point trunk 1x10x768 1
point trunk 1x10x768 8
stop_server

# ------------------------------------------------------------------ side by side
# The checks' ratios, measured with the servers they compare up at the same time, so
# that a change in the shared machine's load falls on both sides alike:
#  - one load generator alternating call by call between endpoints (--alternate), for
#    latencies at 1 in flight (checks 1 and 3);
#  - short points of each server in turn, three pairs in alternating order, for
#    throughput at 8 in flight (checks 2a, 2b, 2c); the median pair is quoted.
log "side by side: echo, splitlearnd and the reference up together"
start_server echo-sbs "$ECHO_BIN" --listen 127.0.0.1:0
ECHO_PID=$SERVER_PID; ECHO_ADDR=$SERVER_ADDR
start_server reference-sbs "$PY" "$REPO/bench/reference_server.py" --stubs "$STUBS" \
  --model "tiny=$WORK/tiny.pt" --model "trunk=$WORK/trunk.pt"
REF_PID=$SERVER_PID; REF_ADDR=$SERVER_ADDR
start_server splitlearnd-sbs "$SPLITLEARND" --config "$WORK/t1.yaml" --log-format text
SL_PID=$SERVER_PID; SL_ADDR=$SERVER_ADDR
use_server() { SERVER_LABEL="$1"; SERVER_PID="$2"; SERVER_ADDR="$3"; }

# alternate SECONDS CONC ENDPOINT...: one loadgen, calls taken in turn by the endpoints.
alternate() {
  local secs="$1" conc="$2"; shift 2
  local cmd=("${CLIENT[@]}" --shape "${ALT_SHAPE:-1x10x768}" --concurrency "$conc" --duration-s "$secs" --warmup-s "$WARMUP_S"
             --csv "$LOADGEN_CSV")
  local e; for e in "$@"; do
    case "$e" in
      --*) cmd+=("$e") ;;  # a loadgen flag (the inprocess: endpoint's settings)
      *) cmd+=(--alternate "$e") ;;
    esac
  done
  record "${cmd[*]}"
  timeout $(( ${secs%.*} + 180 )) "${cmd[@]}" | sed 's/^/    /' || log "loadgen reported errors (see the CSV)"
}
# inprocess_one LABEL MODEL BATCH [ARGS]: one in-process point with t1's settings for the
# model: tiny on one thread and trunk on BLAS = cores, both with their Linear weights
# prepacked; the others on BLAS = cores.
inprocess_one() {
  local label="$1" model="$2" batch="$3"; shift 3
  local threads=(--blas-threads "$NPROC")
  [[ "$model" != tiny ]] || threads=(--blas-threads 1 --prepack-linear)
  [[ "$model" != trunk ]] || threads=(--blas-threads "$NPROC" --prepack-linear)
  local cmd=("$INPROC" --model "$WORK/$model.pt" --shape 1x10x768 --batch "$batch" --duration-s "$INPROC_S"
             --intra-op-threads 1 "${threads[@]}" --optimize --csv "$INPROC_CSV" --label "$label" "$@")
  record "${cmd[*]}"
  timeout 300 "${cmd[@]}" | sed 's/^/    /'
}
alt_s=$(awk -v d="$DURATION_S" 'BEGIN { printf "%g", 3 * d }')
half=$(awk -v d="$DURATION_S" 'BEGIN { printf "%g", d / 2 }')
# Check 1: echo, splitlearnd tiny, splitlearnd identity and the tiny forward run
# in-process by the load generator itself (the daemon's adapter, with t1's settings for
# tiny: process BLAS = cores, the model's own 1, optimized), call by call; a tight
# in-process loop before and after for comparison.
inprocess_one sbs-before tiny 1
alternate "$alt_s" 1 "sbs-echo=$ECHO_ADDR" "sbs-splitlearnd=$SL_ADDR#tiny" "sbs-splitlearnd-identity=$SL_ADDR#identity" \
  "sbs-inprocess=inprocess:$WORK/tiny.pt" --blas-threads="$NPROC" --model-blas-threads=1 --optimize --prepack-linear
inprocess_one sbs-after tiny 1
# Diagnostic: the same forward with a 250 µs sleep before each call, about the time a
# server's worker waits for the network between two calls.
inprocess_one sbs-gap tiny 1 --gap-us 250
# Check 3: trunk with batching on (max_delay_us 0) and off, call by call, one daemon.
alternate "$alt_s" 1 "sbs-lone-on=$SL_ADDR#trunk" "sbs-lone-off=$SL_ADDR#trunk-nobatch"
# Check 4: echo and splitlearnd's identity shard with 32 MiB in and out, call by call.
ALT_SHAPE=8x1024x1024 alternate "$alt_s" 1 "sbs-big-echo=$ECHO_ADDR" "sbs-big-splitlearnd=$SL_ADDR#identity"
# The reference has served nothing yet, splitlearnd has (checks 1 and 3): one point of
# each shard first, not counted, so that every pair below meets both servers warm (the
# reference's tiny rate roughly doubles once it has served the trunk).
use_server "reference-sbs-warmup" "$REF_PID" "$REF_ADDR"
DURATION_S="$half" point tiny 1x10x768 8
DURATION_S="$half" point trunk 1x10x768 8
# Checks 2a/2b/2c: three pairs of half-length points, order alternating.
for i in 1 2 3; do
  order="ref sl"; [[ "$i" == 2 ]] && order="sl ref"
  for who in $order; do
    if [[ "$who" == ref ]]; then use_server "reference-pair$i" "$REF_PID" "$REF_ADDR"
    else use_server "splitlearnd-pair$i" "$SL_PID" "$SL_ADDR"; fi
    DURATION_S="$half" point tiny 1x10x768 8
    DURATION_S="$half" point trunk 1x10x768 8
  done
  order="inp sl"; [[ "$i" == 2 ]] && order="sl inp"
  for who in $order; do
    if [[ "$who" == inp ]]; then inprocess_one "pair$i" trunk 8
    else use_server "splitlearnd-pair$i" "$SL_PID" "$SL_ADDR"; DURATION_S="$half" point trunk-wait 1x10x768 8; fi
  done
done
for t in "splitlearnd-sbs $SL_PID" "reference-sbs $REF_PID" "echo-sbs $ECHO_PID"; do
  set -- $t
  SERVER_LABEL="$1"; SERVER_PID="$2"; stop_server
done

# ------------------------------------------------------------------ memory
log "memory: RSS idle with the trunk loaded, then after $MEM_REQUESTS requests"
start_server splitlearnd-mem "$SPLITLEARND" --config "$WORK/mem.yaml" --log-format text
sleep 2
total_requests() { loadgen_info | awk -F= '/^total_requests=/ {print $2}'; }
echo "idle,$(rss_kb),$(total_requests)" >>"$MEM_CSV"
loadgen_info >"$WORK/mem-info.txt"
point trunk 1x10x768 8
echo "after-trunk-warmup,$(rss_kb),$(total_requests)" >>"$MEM_CSV"
mem_bound=$(( MEM_REQUESTS / 100 + 120 ))  # seconds; far above the expected run time
cmd=("${CLIENT[@]}" --target "$SERVER_ADDR" --model tiny --shape 1x10x768 --concurrency 8 --warmup-s 0
     --duration-s "$mem_bound" --requests "$MEM_REQUESTS" --csv "$LOADGEN_CSV" --label splitlearnd-mem-count)
record "${cmd[*]}"
timeout $(( mem_bound + 120 )) "${cmd[@]}" | sed 's/^/    /' || log "loadgen reported errors"
echo "after-count,$(rss_kb),$(total_requests)" >>"$MEM_CSV"
point trunk 1x10x768 8
echo "after-count-and-trunk,$(rss_kb),$(total_requests)" >>"$MEM_CSV"
awk '/^VmHWM:/ {print "peak," $2 ","}' "/proc/$SERVER_PID/status" >>"$MEM_CSV"
stop_server

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$WORK/machine.txt"
echo "run time: $(( $(date +%s) - T_START )) s" >>"$WORK/machine.txt"

# ------------------------------------------------------------------ report
log "writing $OUT_DOC and plots in $PLOTS"
mkdir -p "$PLOTS"
"$PY" "$REPO/bench/report.py" --work "$WORK" --doc "$OUT_DOC" --plots "$PLOTS" --quick "$QUICK" \
  --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --mem-requests "$MEM_REQUESTS" --nproc "$NPROC" \
  --client-cpus "$CLIENT_CPUS"
log "done (raw results in $WORK)"
