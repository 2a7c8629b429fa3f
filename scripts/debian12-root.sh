#!/usr/bin/env bash
# A bootable Debian 12 (bookworm) root for the test under a real systemd (tests/systemd/):
# debootstrap's minbase, systemd as init, the libraries a build links against, and what
# the test runs inside (cmake for `cmake --install`, the Python client's packages,
# openssl). No compiler: the project is built on the machine and installed into a copy.
#
#   scripts/debian12-root.sh [BUILD_DIR]   # make the root if needed, add what is missing
#
# The runtime libraries are the Debian packages that own what BUILD_DIR's binaries link
# (default build/), so the list follows the code. The root is kept between runs (ROOT,
# default /var/cache/splitlearnd/debian12) and only brought up to date; delete it to
# start afresh. The archive is the host's own (its apt sources) unless MIRROR says
# otherwise. Needs root, a Debian 12 host (the package names come from its dpkg),
# debootstrap (installed when missing) and util-linux's unshare.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
root=${ROOT:-/var/cache/splitlearnd/debian12}
suite=bookworm

. "$repo/scripts/debian-root.sh"
make_root "$root" "$suite"

# The packages that own the libraries the binaries load (ldd: the whole closure).
for bin in daemon/splitlearnd client/splitlearnctl; do
  [ -x "$build/$bin" ] || { echo "$0: $build/$bin is missing; build first (scripts/bootstrap.sh)" >&2; exit 2; }
done
libs=$(ldd "$build/daemon/splitlearnd" "$build/client/splitlearnctl" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p' | sort -u)
runtime=$(for lib in $libs; do echo "$lib"; readlink -f "$lib"; done | sort -u | xargs dpkg -S 2>/dev/null |
  sed 's/:.*//; s/,.*//' | sort -u || true)
packages=(
  systemd systemd-sysv dbus libopenblas0-pthread
  cmake openssl
  python3-torch python3-grpcio python3-protobuf python3-numpy
  $runtime
)
missing=()
for p in "${packages[@]}"; do
  chroot "$root" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# apt and the maintainer scripts want /proc, /dev and /sys; a private mount namespace
# drops these mounts however the command ends.
in_root() {
  SLD_ROOT="$root" unshare --mount --propagation private -- bash -euc '
    mount -t proc proc "$SLD_ROOT/proc"
    mount --rbind /dev "$SLD_ROOT/dev"; mount --make-rslave "$SLD_ROOT/dev"
    mount --rbind /sys "$SLD_ROOT/sys"; mount --make-rslave "$SLD_ROOT/sys"
    exec chroot "$SLD_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"
  ' _ "$@"
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing into $root: ${missing[*]}"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  in_root apt-get update -q
  in_root apt-get install -y -q --no-install-recommends "${missing[@]}"
  in_root apt-get clean
fi

# As on the host (scripts/bootstrap.sh): libtorch finds its BLAS through alternatives.
alt=libblas.so.3-x86_64-linux-gnu
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
if ! chroot "$root" update-alternatives --query "$alt" 2>/dev/null | grep -q "^Value: $openblas"; then
  chroot "$root" update-alternatives --set "$alt" "$openblas"
fi
# debootstrap leaves no /etc/hosts; clients resolve localhost through it.
[ -e "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
echo "== $root is ready"
