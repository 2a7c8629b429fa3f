#!/usr/bin/env bash
# splitlearnd under a real, booted systemd (boot_test.py): in the Debian 12 root with the
# machine's build (build/, or BUILD_DIR), and in the Debian 13 root with build-debian13/
# where scripts/debian13.sh made both. Installs systemd-nspawn and debootstrap when
# missing and makes the Debian 12 root once (scripts/debian12-root.sh). Needs root.
#
#   tests/systemd/run.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$repo/build}
root13=${ROOT13:-/var/cache/splitlearnd/debian13}
build13=$repo/build-debian13

if [ "$(id -u)" -ne 0 ]; then
  echo "$0: needs root (mounts, systemd-nspawn)" >&2
  exit 2
fi
missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

"$repo/scripts/debian12-root.sh" "$build"
status=0
/usr/bin/python3 "$repo/tests/systemd/boot_test.py" --root "${ROOT:-/var/cache/splitlearnd/debian12}" \
  --build "$build" --label debian12 || status=1
if [ -e "$root13/.splitlearnd-root" ] && [ -x "$build13/daemon/splitlearnd" ]; then
  /usr/bin/python3 "$repo/tests/systemd/boot_test.py" --root "$root13" --build "$build13" --label debian13 || status=1
else
  echo "== no Debian 13 root or build (scripts/debian13.sh makes both); Debian 13 not tested"
fi
exit $status
