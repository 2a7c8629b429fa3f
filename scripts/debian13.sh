#!/usr/bin/env bash
# A Debian 13 (trixie) environment for splitlearnd, made from Debian's archive: libtorch
# 2.6, Catch2 3, yaml-cpp 0.8, spdlog 1.15. The host may be Debian 12 or 13.
#
#   scripts/debian13.sh test      # make the root if needed, then `scripts/bootstrap.sh test` in it
#   scripts/debian13.sh run       # the same with `bootstrap.sh run` (serves on :50051)
#   scripts/debian13.sh shell     # a shell in the root, the checkout mounted at its own path
#   scripts/debian13.sh exec CMD  # one command in the root, from the checkout
#
# The root is a plain folder made by debootstrap (minbase) and entered with chroot inside
# a private mount namespace, so the bind mounts (/proc, /dev, /sys, the checkout) vanish
# with the command however it ends. The checkout is mounted at the same absolute path as
# on the host, and builds go to build-debian13/ (BUILD_DIR overrides), beside the host's
# build/. The root is kept between runs (ROOT, default /var/cache/splitlearnd/debian13)
# and brought up to date by bootstrap.sh's package check; delete it to start afresh.
#
# The archive is the host's own Debian archive (from its apt sources) unless MIRROR says
# otherwise. Needs root, debootstrap and util-linux's unshare.
set -euo pipefail

mode=${1:-}
case "$mode" in test|run|shell|exec) ;; *) echo "usage: $0 test|run|shell|exec CMD..." >&2; exit 2 ;; esac
shift || true

repo=$(cd "$(dirname "$0")/.." && pwd)
root=${ROOT:-/var/cache/splitlearnd/debian13}
suite=trixie

. "$repo/scripts/debian-root.sh"
# Debian 12's debootstrap may lack trixie's keyring; the archive keyring package has it.
make_root "$root" "$suite" --keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

case "$mode" in
  test|run) inner=(scripts/bootstrap.sh "$mode") ;;
  shell) inner=(bash -l) ;;
  exec) inner=("$@") ;;
esac

# Inside the namespace: mount, chroot, run. Variables a caller may pass on: JOBS,
# TEST_JOBS, BUILD_DIR, CI.
export SLD_ROOT="$root" SLD_REPO="$repo"
exec unshare --mount --propagation private -- bash -euc '
  mount -t proc proc "$SLD_ROOT/proc"
  mount --rbind /dev "$SLD_ROOT/dev"
  mount --make-rslave "$SLD_ROOT/dev"
  mount --rbind /sys "$SLD_ROOT/sys"
  mount --make-rslave "$SLD_ROOT/sys"
  mount -t tmpfs tmpfs "$SLD_ROOT/tmp"
  mkdir -p "$SLD_ROOT$SLD_REPO"
  mount --bind "$SLD_REPO" "$SLD_ROOT$SLD_REPO"
  exec chroot "$SLD_ROOT" /usr/bin/env -i \
    HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    ${CI:+CI=$CI} ${JOBS:+JOBS=$JOBS} ${TEST_JOBS:+TEST_JOBS=$TEST_JOBS} \
    BUILD_DIR="${BUILD_DIR:-$SLD_REPO/build-debian13}" \
    bash -c "cd \"\$1\" && shift && exec \"\$@\"" _ "$SLD_REPO" "$@"
' _ "${inner[@]}"
