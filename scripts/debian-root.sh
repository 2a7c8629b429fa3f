# Sourced by scripts/debian13.sh and scripts/debian12-root.sh: makes a Debian root with
# debootstrap, once. Needs root; the archive is the host's own (its apt sources) unless
# MIRROR says otherwise.

if [ "$(id -u)" -ne 0 ]; then
  echo "$0: needs root (debootstrap, mounts and chroot)" >&2
  exit 2
fi

# The host's Debian archive: the first URI of a deb822 or one-line source whose path ends
# in /debian (not -security, not a third-party repository).
host_mirror() {
  local f line
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    while read -r line; do
      case "$line" in
        URIs:*) set -- ${line#URIs:} ;;
        deb\ *) set -- $(echo "$line" | sed 's/^deb \(\[[^]]*\] \)\?//') ;;
        *) continue ;;
      esac
      for uri in "$@"; do
        case "$uri" in */debian|*/debian/) echo "${uri%/}"; return 0 ;; esac
      done
    done < "$f"
  done
  return 1
}

# make_root ROOT SUITE [DEBOOTSTRAP OPTIONS...]: a minbase root in ROOT unless one is
# there (marked by .splitlearnd-root); built aside and renamed, so a failed run leaves
# no half root behind.
make_root() {
  local root=$1 suite=$2
  shift 2
  [ -e "$root/.splitlearnd-root" ] && return 0
  command -v debootstrap >/dev/null || {
    echo "== installing debootstrap"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
  }
  local mirror=${MIRROR:-$(host_mirror || true)}
  if [ -z "$mirror" ]; then
    echo "$0: no Debian archive found in the host's apt sources; set MIRROR" >&2
    exit 2
  fi
  echo "== making the Debian root in $root (debootstrap $suite, a few minutes)"
  rm -rf "$root.partial"
  mkdir -p "$(dirname "$root")"
  debootstrap --variant=minbase "$@" "$suite" "$root.partial" "$mirror" >"$root.partial.log" 2>&1 || {
    tail -20 "$root.partial.log" >&2
    echo "$0: debootstrap failed (whole log: $root.partial.log)" >&2
    exit 1
  }
  # Package scripts must not start services inside the root.
  printf '#!/bin/sh\nexit 101\n' > "$root.partial/usr/sbin/policy-rc.d"
  chmod 755 "$root.partial/usr/sbin/policy-rc.d"
  rm -rf "$root"
  mv "$root.partial" "$root"
  rm -f "$root.partial.log"
  touch "$root/.splitlearnd-root"
}
