#!/usr/bin/env bash
# The batching wait side by side: the tiny and trunk demo shards with
# batching {max_batch_size: 8} and max_delay_us 0, 2000 with the adaptive wait (the
# default) and 2000 with `wait: fixed`, at 1 and 8 calls in flight, all in one daemon;
# optionally a second daemon (an older build, OLD_BIN) serving max_delay_us 0 and 2000
# with its own meaning of the key. Prints the table that docs/benchmarks.md quotes.
#
#   bench/batching_wait.sh [BUILD_DIR]          # BUILD_DIR default: <repo>/build
#   OLD_BIN=path/to/splitlearnd ROUNDS=3 DURATION_S=5 bench/batching_wait.sh
#
# 1 in flight: one load generator sends its calls to the endpoints in turn (loadgen
# --alternate), so each sees the same machine. 8 in flight: one point per endpoint,
# taken in turn, ROUNDS times. Every server is started here and stopped by its PID.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$(cd "${1:-$REPO/build}" && pwd)"
SPLITLEARND="$BUILD/daemon/splitlearnd"
LOADGEN="$BUILD/bench/loadgen"
OLD_BIN="${OLD_BIN:-}"
ROUNDS="${ROUNDS:-3}"
DURATION_S="${DURATION_S:-5}"
WARMUP_S="${WARMUP_S:-1}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/splitlearnd-wait.XXXXXX")}"
mkdir -p "$WORK"
CSV="$WORK/loadgen.csv"
BATCHES="$WORK/batches.csv"
rm -f "$CSV"
echo "label,model,concurrency,round,jobs,batches" >"$BATCHES"
NPROC="$(nproc)"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

for spec in "tiny --kind tiny" "trunk --kind transformer --layers 4 --hidden 768 --heads 12 --ffn 3072"; do
  set -- $spec
  name="$1"; shift
  "$SPLITLEARND" make-demo-shard "$WORK/$name.pt" "$@" >/dev/null
done

# write_config FILE WITH_WAIT_KEY: the bench's thread settings (bench/run.sh's t1).
write_config() {
  local file="$1" with_wait="$2"
  {
    cat <<EOF
server: {listen: "127.0.0.1:0", drain_timeout_s: 5, watch_config: false, log_level: info}
model_root: .
devices:
  cpu: {intra_op_threads: 1, blas_threads: $NPROC, queue_capacity: 1024}
models:
EOF
    local shard delay wait
    for shard in tiny trunk; do
      for variant in d0:0: d2000:2000: fixed:2000:fixed; do
        IFS=: read -r label delay wait <<<"$variant"
        [[ "$with_wait" == 1 || -z "$wait" ]] || continue
        echo "  - id: $shard-$label"
        echo "    path: $shard.pt"
        echo "    warmup: {inputs: [{shape: [1, 10, 768], dtype: float32}], runs: 3}"
        echo "    batching: {max_batch_size: 8, max_delay_us: $delay${wait:+, wait: $wait}}"
        echo "    optimize: true"
        echo "    prepack_linear: true"
        [[ "$shard" != tiny ]] || echo "    blas_threads: 1"
      done
    done
  } >"$file"
}

start() {  # start LABEL BINARY CONFIG: prints the address
  local label="$1" bin="$2" config="$3" log="$WORK/$1.log" i
  "$bin" --config "$config" --log-format text >"$log" 2>&1 &
  PIDS+=("$!")
  for i in $(seq 1 1800); do
    grep -q "ready:" "$log" 2>/dev/null && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { tail -20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  grep -oE 'listening on 127\.0\.0\.1:[0-9]+' "$log" | head -1 | awk '{print $3}'
}

write_config "$WORK/new.yaml" 1
NEW="$(start new "$SPLITLEARND" "$WORK/new.yaml")"
ENDPOINTS=("new:$NEW:d0" "new:$NEW:d2000" "new:$NEW:fixed")
if [[ -n "$OLD_BIN" ]]; then
  write_config "$WORK/old.yaml" 0
  OLD="$(start old "$OLD_BIN" "$WORK/old.yaml")"
  ENDPOINTS+=("old:$OLD:d0" "old:$OLD:d2000")
fi
echo "work folder $WORK; new build at $NEW${OLD_BIN:+, $OLD_BIN at $OLD}; load average $(cut -d' ' -f1-3 /proc/loadavg)"

counters() {  # counters ADDR: "jobs batches" of the cpu device
  timeout 30 "$LOADGEN" --target "$1" --service-info 2>/dev/null |
    awk -F= '/^device\.cpu\.requests_run=/ {r = $2} /^device\.cpu\.batches_run=/ {b = $2} END {print r, b}'
}

for round in $(seq 1 "$ROUNDS"); do
  for shard in tiny trunk; do
    # 1 in flight, call by call: delay 0 and the adaptive wait in a pair (each call
    # follows one of the other), then the fixed waits with the delay-0 model again.
    secs="$DURATION_S"; [[ "$shard" == tiny ]] || secs=$(( DURATION_S * 2 ))
    for group in "d0 d2000" "fixed d0x d2000x"; do
      lanes=()
      for e in "${ENDPOINTS[@]}"; do
        IFS=: read -r who addr port variant <<<"$e"
        for g in $group; do
          # d0x, d2000x: the older build's models (d0, d2000); new-d0 runs in both groups.
          case "$who:$g" in
            new:"$variant") lanes+=("$who-$variant-r$round=$addr:$port#$shard-$variant") ;;
            new:d0x) [[ "$variant" == d0 ]] && lanes+=("$who-d0x-r$round=$addr:$port#$shard-d0") ;;
            old:"$variant"x) lanes+=("$who-$variant-r$round=$addr:$port#$shard-$variant") ;;
          esac
        done
      done
      timeout 600 "$LOADGEN" --alternate "${lanes[@]}" --shape 1x10x768 --concurrency 1 --duration-s "$secs" \
        --warmup-s "$WARMUP_S" --csv "$CSV" >/dev/null || true
    done
    # 8 in flight, one endpoint at a time.
    for e in "${ENDPOINTS[@]}"; do
      IFS=: read -r who addr port variant <<<"$e"
      read -r j0 b0 <<<"$(counters "$addr:$port")"
      timeout 600 "$LOADGEN" --target "$addr:$port" --model "$shard-$variant" --shape 1x10x768 --concurrency 8 \
        --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --csv "$CSV" --label "$who-$variant-r$round" >/dev/null || true
      read -r j1 b1 <<<"$(counters "$addr:$port")"
      echo "$who-$variant,$shard-$variant,8,$round,$(( j1 - j0 )),$(( b1 - b0 ))" >>"$BATCHES"
    done
    echo "round $round, $shard done; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done

/usr/bin/python3 - "$CSV" "$BATCHES" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
batches = list(csv.DictReader(open(sys.argv[2])))
def key(r):
    who, variant, rnd = r["label"].rsplit("-", 2)
    return who, variant, int(r["concurrency"]), r["model"].split("-")[0], int(rnd[1:])
data = {}
for r in rows:
    who, variant, conc, shard, rnd = key(r)
    data.setdefault((who, variant, conc, shard), []).append((float(r["p50_us"]), float(r["rps"])))
mean_batch = {}
for b in batches:
    who, variant = b["label"].split("-", 1)
    if int(b["batches"]) > 0:
        mean_batch.setdefault((who, variant, b["model"].split("-")[0]), []).append(int(b["jobs"]) / int(b["batches"]))
names = {("new", "d0"): "max_delay_us 0", ("new", "d2000"): "2000, adaptive (new default)",
         ("new", "d0x"): "max_delay_us 0 (second group)", ("new", "fixed"): "2000, `wait: fixed`",
         ("old", "d0"): "max_delay_us 0, older build", ("old", "d2000"): "2000, older build (fixed wait)"}
fmt = lambda xs: " / ".join(f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" for x in xs)
print()
print("| shard | in flight | server | p50 µs (rounds) | median p50 µs | req/s (rounds) | median req/s | mean batch |")
print("|---|---|---|---|---|---|---|---|")
med = {}
for shard in ("tiny", "trunk"):
    for conc in (1, 8):
        for (who, variant), name in names.items():
            v = data.get((who, variant, conc, shard))
            if not v: continue
            p50 = [x[0] for x in v]; rps = [x[1] for x in v]
            med[(who, variant, conc, shard)] = (statistics.median(p50), statistics.median(rps))
            mb = mean_batch.get((who, variant, shard)) if conc == 8 else None
            # At 1 in flight the endpoints share one lane: its rate says nothing of each.
            rates = f"{fmt(rps)} | {statistics.median(rps):,.1f}" if conc > 1 else "| "
            print(f"| {shard} | {conc} | {name} | {fmt(p50)} | {statistics.median(p50):,.0f} | {rates} | "
                  f"{'' if not mb else fmt(mb)} |")
print()
print("| shard | 1 in flight: p50 adaptive / delay 0 | 1 in flight: p50 fixed / delay 0 | 8 in flight: req/s adaptive / delay 0 | 8 in flight: req/s adaptive / fixed | 8 in flight: req/s adaptive / older build's fixed |")
print("|---|---|---|---|---|---|")
for shard in ("tiny", "trunk"):
    g = lambda w, v, c, i: med.get((w, v, c, shard), (float("nan"),) * 2)[i]
    print(f"| {shard} | {g('new','d2000',1,0) / g('new','d0',1,0):.3f} | {g('new','fixed',1,0) / g('new','d0x',1,0):.3f} | "
          f"{g('new','d2000',8,1) / g('new','d0',8,1):.3f} | {g('new','d2000',8,1) / g('new','fixed',8,1):.3f} | "
          f"{g('new','d2000',8,1) / g('old','d2000',8,1):.3f} |")
EOF
