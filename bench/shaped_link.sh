#!/usr/bin/env bash
# Split learning over a rate-limited link, on this machine: the daemon in one network
# namespace, the client in another, joined by a veth pair whose two ends are shaped by
# `tc tbf` to the same rate (each direction has the full rate, as on a symmetric link).
# The script creates the namespaces and removes them itself, on success and on failure;
# nothing leaves the machine. Needs root (ip netns, tc).
#
# Round-trip delay is not emulated (this kernel has no netem): the link adds only
# transmission time. A real link's delay adds by calculation: a sequential training step
# makes two calls, so it costs 2 x RTT more; with d micro-batches in flight the calls
# overlap and the delay is hidden while d x step time exceeds the RTT.
#
#   bench/shaped_link.sh [--build DIR] [--rates "100mbit 20mbit"] [--out DIR]
#                        [--cnn-steps N] [--gpt-steps N] [--gpt-blocks N] [--quick]
#
# Writes OUT/results.jsonl (one line per run), OUT/shaped-link.md (tables) and the plots
# OUT/shaped-link-cnn.png and OUT/shaped-link-gpt.png.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build
rates="100mbit 20mbit"
out=""
cnn_steps=12
gpt_steps=8
gpt_blocks=1
depths="1 2 4"
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cnn-steps) cnn_steps=$2; shift 2 ;;
    --gpt-steps) gpt_steps=$2; shift 2 ;;
    --gpt-blocks) gpt_blocks=$2; shift 2 ;;
    --quick) cnn_steps=2; gpt_steps=2; depths="1 2"; shift ;;
    *) echo "usage: $0 [--build DIR] [--rates \"100mbit 20mbit\"] [--out DIR] [--cnn-steps N] [--gpt-steps N] [--gpt-blocks N] [--quick]" >&2; exit 2 ;;
  esac
done
python=/usr/bin/python3
daemon=$build/daemon/splitlearnd
[ -x "$daemon" ] || { echo "$0: no $daemon; build first" >&2; exit 2; }
work=$(mktemp -d /tmp/splitlearnd-link.XXXXXX)
out=${out:-$work/out}
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"

# Unique names: two runs at once do not collide.
tag=sl$$
ns_srv=$tag-srv ns_cli=$tag-cli
net=10.$(( 100 + $$ % 100 )).$(( $$ / 100 % 250 ))
srv_ip=$net.1 cli_ip=$net.2
port=50061
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$ns_srv" 2>/dev/null || true
  ip netns del "$ns_cli" 2>/dev/null || true
  rm -rf "$work/models"
}
trap cleanup EXIT

link_up() {  # rate
  ip netns add "$ns_srv"
  ip netns add "$ns_cli"
  ip link add "$tag-s" type veth peer name "$tag-c"
  ip link set "$tag-s" netns "$ns_srv"
  ip link set "$tag-c" netns "$ns_cli"
  ip -n "$ns_srv" addr add "$srv_ip/24" dev "$tag-s"
  ip -n "$ns_cli" addr add "$cli_ip/24" dev "$tag-c"
  for pair in "$ns_srv:$tag-s" "$ns_cli:$tag-c"; do
    local ns=${pair%%:*} dev=${pair#*:}
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "$dev" up
    # burst: a few ms of data at the rate (at least one 64 KiB GSO segment); the queue
    # holds up to 200 ms before dropping.
    ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$1" burst 64kb latency 200ms
  done
}

link_down() {
  ip netns del "$ns_srv"
  ip netns del "$ns_cli"
}

stop_server() {
  local p=${pids[-1]}
  kill "$p"
  wait "$p" 2>/dev/null || true
  unset 'pids[-1]'
}

wait_ready() {  # file, pattern, what
  local deadline=$(( $(date +%s) + 300 ))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$0: $3 did not get ready" >&2; exit 1; }
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "$0: $3 exited" >&2; exit 1; }
    sleep 0.2
  done
}

client() {  # rate server args...
  local rate=$1 server=$2
  shift 2
  local line
  line=$(ip netns exec "$ns_cli" "$python" "$repo/bench/split_link.py" "$@" --target "$srv_ip:$port")
  echo "$line" | "$python" -c 'import json,sys; r=json.loads(sys.stdin.read()); r["rate"]=sys.argv[1]; r["server"]=sys.argv[2]; print(json.dumps(r))' "$rate" "$server" | tee -a "$results"
}

echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs; rates: $rates"
mkdir -p "$work/models"
"$python" "$repo/examples/python/fashion_mnist_split.py" export --out "$work/models/cnn" >/dev/null
"$python" "$repo/bench/split_link.py" make-gpt --out "$work/models/gpt.pt" --blocks "$gpt_blocks"
cp "$work/models/cnn/trunk.pt" "$work/models/cnn.pt"
# Every trunk computes in float32 whatever the wire carries; each trains by SGD.
cat > "$work/splitlearnd.yaml" <<EOF
server: {listen: "$srv_ip:$port", drain_timeout_s: 5, watch_config: false, log_level: warn}
model_root: $work/models
devices: {cpu: {intra_op_threads: 1, queue_capacity: 256}}
models:
  - {id: cnn, path: cnn.pt, device: cpu, compute_dtype: float32,
     training: {enabled: true, optimizer: sgd, learning_rate: 0.01, max_graphs: 16}}
  - {id: gpt, path: gpt.pt, device: cpu, compute_dtype: float32,
     training: {enabled: true, optimizer: sgd, learning_rate: 0.0001, max_graphs: 16}}
  - {id: gpt-gen, path: gpt.pt, device: cpu, compute_dtype: float32, sessions: {max_sessions: 4}}
EOF

for rate in $rates; do
  echo "== link at $rate"
  link_up "$rate"
  ready=$work/ready-$rate.json
  ip netns exec "$ns_srv" "$daemon" --config "$work/splitlearnd.yaml" --ready-file "$ready" \
    >"$work/daemon-$rate.log" 2>&1 &
  pids+=($!)
  wait_ready "$ready" serving splitlearnd
  for kind in cnn gpt; do
    steps=$cnn_steps
    [ "$kind" = gpt ] && steps=$gpt_steps
    for enc in float32 float16 int8; do
      for depth in $depths; do
        client "$rate" splitlearnd train --kind "$kind" --model "$kind" --encoding "$enc" --depth "$depth" \
          --steps "$steps" --warmup "$depth"
      done
    done
  done
  for mode in legacy session; do
    client "$rate" splitlearnd generate --model gpt-gen --mode "$mode"
  done
  client "$rate" splitlearnd generate --model gpt-gen --mode legacy --encoding int8
  stop_server

  # The reference Python server on the same link: float32, sequential.
  ip netns exec "$ns_srv" "$python" "$repo/bench/reference_server.py" --stubs "$build/python" \
    --model "cnn=$work/models/cnn.pt" --model "gpt=$work/models/gpt.pt" --listen "$srv_ip:$port" \
    --learning-rate 0.0001 >"$work/reference-$rate.log" 2>&1 &
  pids+=($!)
  wait_ready "$work/reference-$rate.log" "listening on" "the reference server"
  client "$rate" reference train --kind cnn --model cnn --encoding float32 --depth 1 --steps "$cnn_steps" --warmup 1
  client "$rate" reference train --kind gpt --model gpt --encoding float32 --depth 1 --steps "$gpt_steps" --warmup 1
  stop_server
  link_down
done

"$python" "$repo/bench/split_link.py" report --results "$results" --markdown "$out/shaped-link.md" --plots "$out"
echo "== results in $out"
cat "$out/shaped-link.md"
