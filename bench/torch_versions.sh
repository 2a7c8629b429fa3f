#!/usr/bin/env bash
# TorchScript and AOTInductor on libtorch 1.13 and 2.6, side by side in one run: a trunk
# of 4 nn.TransformerEncoderLayer (d=768, 12 heads, input 1x10x768 per request), timed
# in-process (bench/inprocess) at batch 1 and 8, and through splitlearnd (bench/loadgen)
# at 1 and 8 in flight. Variants:
#
#   ts-1.13            TorchScript saved by PyTorch 1.13, on the Debian 12 build
#   ts-1.13-prepack    the same with optimize + prepack_linear (the packed GEMM)
#   ts-2.6             TorchScript saved by PyTorch 2.6, on the Debian 13 build
#   ts-2.6-prepack     the same with optimize + prepack_linear
#   aoti-2.6           the AOTInductor package of the same trunk, on the Debian 13 build
#
#   bench/torch_versions.sh [BUILD12 [BUILD13]]   # defaults: build, build-debian13
#
# The Debian 13 legs run in scripts/debian13.sh's root. Results: $WORK/inprocess.csv,
# $WORK/loadgen.csv and a table on stdout (docs/benchmarks.md quotes one run). WORK
# defaults to build-bench-torch/ in the checkout (the root sees the checkout only).
# Each daemon is started here and stopped by its own PID; every wait is bounded.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
B12="$(cd "${1:-$REPO/build}" && pwd)"
B13="$(cd "${2:-$REPO/build-debian13}" && pwd)"
WORK="${WORK:-$REPO/build-bench-torch}"
DURATION_S="${DURATION_S:-10}"
INPROC_S="${INPROC_S:-4}"
SHAPE=1x10x768
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
rm -f "$WORK"/inprocess.csv "$WORK"/loadgen.csv

# leg ENV BUILD LABEL MODEL [optimize]: inprocess and daemon points of one variant.
# ENV is "host" or "debian13"; the leg runs bench/torch_versions_leg.sh there.
leg() {
  local env="$1"; shift
  echo "== $2"
  if [[ "$env" == host ]]; then
    "$REPO/bench/torch_versions_leg.sh" "$@"
  else
    # The root starts with a clean environment: the settings go in by name.
    "$REPO/scripts/debian13.sh" exec env WORK="$WORK" DURATION_S="$DURATION_S" INPROC_S="$INPROC_S" SHAPE="$SHAPE" \
      bench/torch_versions_leg.sh "$@"
  fi
}
export WORK DURATION_S INPROC_S SHAPE

echo "== writing the trunk: TorchScript by PyTorch 1.13, TorchScript and AOTInductor by PyTorch 2.6"
/usr/bin/python3 "$REPO/examples/python/export_trunk.py" --out "$WORK/t113" --seq 10 --max-batch 64 --no-pt2
"$REPO/scripts/debian13.sh" exec python3 examples/python/export_trunk.py --out "$WORK/t26" --seq 10 --max-batch 64

leg host "$B12" ts-1.13 "$WORK/t113/trunk.pt"
leg host "$B12" ts-1.13-prepack "$WORK/t113/trunk.pt" optimize
leg debian13 "$B13" ts-2.6 "$WORK/t26/trunk.pt"
leg debian13 "$B13" ts-2.6-prepack "$WORK/t26/trunk.pt" optimize
leg debian13 "$B13" aoti-2.6 "$WORK/t26/trunk.pt2"

echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo
echo "| variant | in-process batch 1 p50 | in-process batch 8 | daemon 1 in flight p50 | daemon 8 in flight |"
echo "|---|---|---|---|---|"
/usr/bin/python3 - "$WORK" <<'EOF'
import csv, sys, os
work = sys.argv[1]
inproc = {}
for r in csv.DictReader(open(os.path.join(work, "inprocess.csv"))):
    inproc[(r["label"], int(r["batch"]))] = r
served = {}
for r in csv.DictReader(open(os.path.join(work, "loadgen.csv"))):
    served[(r["label"], int(r["concurrency"]))] = r
def ms(r, key):
    return "%.2f ms" % (float(r[key]) / 1e3) if r else "-"
def rate(r, key):
    return "%.0f req/s" % float(r[key]) if r else "-"
for label in ["ts-1.13", "ts-1.13-prepack", "ts-2.6", "ts-2.6-prepack", "aoti-2.6"]:
    print(f"| {label} | {ms(inproc.get((label, 1)), 'p50_us')} | {rate(inproc.get((label, 8)), 'requests_per_s')} "
          f"| {ms(served.get((label, 1)), 'p50_us')} | {rate(served.get((label, 8)), 'rps')} |")
EOF
